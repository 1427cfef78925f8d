"""The Kubernetes runtime: functions run in pods; the host talks to each pod's worker.

Kubernetes starts and stops the pods (a Deployment, see `spear k8s manifest`); this runtime
connects to them. `start_instance` dials one pod endpoint with the runtime's strategy, gRPC
first and the framed TCP protocol as fallback (each at its own address: gRPC at
`config.address`, TCP at `config.extra["tcp_address"]` or the same host with
`config.extra["tcp_port"]`), and wraps the connection so that it redials with backoff when the
pod restarts. `watch()` keeps one instance per pod from a `Discovery` (headless-Service DNS,
EndpointSlices, or a static list).

    runtime = spear.KubernetesRuntime()
    instance = await runtime.start_instance(
        "echo-0", config=ChannelConfig(address="10.1.2.3:50051", extra={"tcp_port": "50052"}),
        token=token)
    reply = await instance.channel.request_response(ExecutionRequest("r1", "echo", b"hi"))
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from spear.channel.base import CommunicationChannel
from spear.channel.factory import CommunicationFactory
from spear.channel.reconnecting import ReconnectingChannel
from spear.channel.strategy import CommunicationStrategy
from spear.config import ChannelConfig
from spear.errors import AuthenticationFailed, ChannelCreationFailed, InvalidConfiguration
from spear.instance_id import RuntimeInstanceId, RuntimeType
from spear.runtime.base import Runtime, RuntimeInstance
from spear.runtime.discovery import ChangeCallback, Discovery, InstanceWatcher
from spear.transport.tls import TlsConfig

DEFAULT_CHANNEL_ORDER = ("grpc", "tcp")


class PodAuthenticationFailed(ChannelCreationFailed, AuthenticationFailed):
    """A pod rejected the token (or client certificate). Both a `ChannelCreationFailed`
    listing every attempt and an `AuthenticationFailed`, so either `except` catches it."""


class KubernetesRuntime(Runtime):
    """Connects to pod workers. `channel_order` is the strategy (the factory passes its own);
    `token` and `tls` are defaults that `start_instance` arguments override."""

    runtime_type = RuntimeType.KUBERNETES

    def __init__(
        self,
        *,
        channel_order: Sequence[str] = DEFAULT_CHANNEL_ORDER,
        config: ChannelConfig | None = None,
        token: str | None = None,
        tls: TlsConfig | None = None,
        reconnect: bool = True,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
    ) -> None:
        order = tuple(channel_order)
        if not order:
            raise InvalidConfiguration("channel_order needs at least one channel type")
        self.channel_order = order
        self.default_config = config or ChannelConfig()
        self._token = token
        self._tls = tls
        self._reconnect = reconnect
        self._backoff = (backoff_initial, backoff_max)
        self._factory = CommunicationFactory({
            RuntimeType.KUBERNETES: CommunicationStrategy(
                RuntimeType.KUBERNETES, order[0], order[1:], self.default_config
            )
        })
        self._instances: dict[RuntimeInstanceId, RuntimeInstance] = {}
        self._watchers: list[InstanceWatcher] = []

    # -- instances ----------------------------------------------------------------------------

    async def start_instance(
        self,
        instance_id: RuntimeInstanceId | str,
        *,
        config: ChannelConfig | None = None,
        token: str | None = None,
        tls: TlsConfig | None = None,
        **options: Any,
    ) -> RuntimeInstance:
        """Connect to the pod endpoint in `config`. Raises `ChannelCreationFailed` listing
        each attempted transport and why it failed."""
        if options:
            raise TypeError(f"unexpected options: {sorted(options)}")
        iid = self._coerce_id(instance_id)
        if iid in self._instances:
            raise InvalidConfiguration(f"instance {iid.full_id} is already started")
        config = config or self.default_config
        dial_options = self._dial_options(token or self._token, tls or self._tls)

        async def dial() -> CommunicationChannel:
            return await self._factory.get_or_create_channel(iid, config, **dial_options)

        try:
            channel = await dial()
        except ChannelCreationFailed as exc:
            if any(isinstance(cause, AuthenticationFailed) for cause in exc.causes):
                raise PodAuthenticationFailed(
                    exc.runtime_type, exc.attempted_types, exc.causes
                ) from exc
            raise
        if self._reconnect:
            channel = ReconnectingChannel(
                iid, dial, channel, backoff_initial=self._backoff[0],
                backoff_max=self._backoff[1],
            )
        instance = RuntimeInstance(iid, channel)
        self._instances[iid] = instance
        return instance

    @staticmethod
    def _dial_options(token: str | None, tls: TlsConfig | None) -> dict[str, Any]:
        options: dict[str, Any] = {"token": token}
        if tls is not None:
            options["tls"] = tls  # gRPC builds its credentials from the files
            options["ssl"] = tls.client_ssl_context()  # the TCP channel takes an SSLContext
        return options

    async def stop_instance(self, instance: RuntimeInstance) -> None:
        """Disconnect from the pod (the pod itself belongs to its Deployment)."""
        self._instances.pop(instance.instance_id, None)
        await instance.channel.close()
        await self._factory.close_channel(instance.instance_id)

    def instances(self) -> list[RuntimeInstance]:
        return list(self._instances.values())

    def get_instance(self, instance_id: RuntimeInstanceId | str) -> RuntimeInstance | None:
        return self._instances.get(self._coerce_id(instance_id))

    # -- discovery ----------------------------------------------------------------------------

    async def watch(
        self,
        discovery: Discovery,
        *,
        config: ChannelConfig | None = None,
        interval: float = 5.0,
        namespace: str | None = None,
        token: str | None = None,
        tls: TlsConfig | None = None,
        on_change: ChangeCallback | None = None,
    ) -> InstanceWatcher:
        """Keep one instance per endpoint `discovery` reports, re-checked every `interval`
        seconds. Returns after the first round, so the instances found are ready to use."""
        watcher = InstanceWatcher(
            self, discovery, config or self.default_config, interval, namespace,
            token or self._token, tls or self._tls, on_change,
        )
        self._watchers.append(watcher)
        return await watcher.start()

    async def close(self) -> None:
        watchers, self._watchers = self._watchers, []
        await asyncio.gather(*(w.close(stop_instances=False) for w in watchers))
        await super().close()
        await self._factory.close_all_channels()
