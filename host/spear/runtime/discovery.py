"""Finding a function's pods: a static list, a headless Service's DNS records, or the
Service's EndpointSlices.

A `Discovery` answers one question, "which endpoints are there now?"; `InstanceWatcher` asks
it periodically and keeps one runtime instance per endpoint, starting instances for pods that
appear and stopping those of pods that are gone.

A headless Service (`clusterIP: None`) has one DNS A/AAAA record per *ready* pod, so DNS
alone tracks readiness with no API access. CoreDNS answers cluster names with a 5 s TTL by
default, so re-resolving every few seconds follows pods closely.
EndpointSlices are faster and carry pod names, but need the `kubernetes` package and RBAC to
list them; that path is imported lazily and is not exercised by the test suite.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spear.config import ChannelConfig
from spear.errors import CommunicationError, InvalidConfiguration
from spear.instance_id import RuntimeInstanceId, RuntimeType
from spear.protocol.address import HostPort, format_host_port
from spear.runtime.base import RuntimeInstance

if TYPE_CHECKING:
    from spear.runtime.kubernetes import KubernetesRuntime
    from spear.transport.tls import TlsConfig

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
ChangeCallback = Callable[[list[RuntimeInstance], list[RuntimeInstance]], object]


class DiscoveryFailed(CommunicationError):
    """Discovery could not answer this time (DNS server down, API error); keep what we have."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One pod's worker: its gRPC port and, when it serves one, its TCP fallback port."""

    host: str
    port: int
    tcp_port: int | None = None
    name: str | None = None  # the pod name, when discovery knows it

    @property
    def address(self) -> str:
        return format_host_port(self.host, self.port)

    @property
    def tcp_address(self) -> str | None:
        return None if self.tcp_port is None else format_host_port(self.host, self.tcp_port)

    @property
    def instance_name(self) -> str:
        return self.name or self.address

    def channel_config(self, base: ChannelConfig) -> ChannelConfig:
        """`base` pointed at this endpoint: gRPC at `address`, TCP at `tcp_address`."""
        extra = dict(base.extra)
        extra.pop("grpc_address", None)
        extra.pop("tcp_port", None)
        if self.tcp_address is not None:
            extra["tcp_address"] = self.tcp_address
        else:
            extra.pop("tcp_address", None)
        return base.with_changes(address=self.address, extra=extra)


class Discovery(abc.ABC):
    """Where the endpoints of one function's pods come from."""

    @abc.abstractmethod
    async def endpoints(self) -> list[Endpoint]:
        """The endpoints right now. Raises `DiscoveryFailed` when it cannot tell."""


class StaticDiscovery(Discovery):
    """A fixed list, e.g. pods reached through port-forwards or a list from configuration."""

    def __init__(self, endpoints: Iterable[Endpoint | str]) -> None:
        self._endpoints = [_as_endpoint(e) for e in endpoints]

    async def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)


def _as_endpoint(value: Endpoint | str) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    parsed = HostPort.parse(value)
    return Endpoint(parsed.host, parsed.port)


async def getaddrinfo_resolver(name: str, port: int) -> list[str]:
    """Every address `name` resolves to, through the system resolver (off the event loop)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


# "No such name" and "no records" mean the Service has no ready pods right now, not failure.
_NO_RECORDS = {
    code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
}


class DnsDiscovery(Discovery):
    """The A/AAAA records of a headless Service: one endpoint per ready pod.

    `resolver(name, port)` returns addresses; the default uses `loop.getaddrinfo`. Tests (and
    unusual setups) inject their own.
    """

    def __init__(
        self, name: str, port: int, *, tcp_port: int | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.tcp_port = tcp_port
        self._resolve = resolver or getaddrinfo_resolver

    async def endpoints(self) -> list[Endpoint]:
        try:
            addresses = await self._resolve(self.name, self.port)
        except socket.gaierror as exc:
            if exc.errno in _NO_RECORDS:
                return []
            raise DiscoveryFailed(f"resolving {self.name}: {exc}") from exc
        except OSError as exc:
            raise DiscoveryFailed(f"resolving {self.name}: {exc}") from exc
        unique = sorted(set(addresses))
        return [Endpoint(address, self.port, self.tcp_port) for address in unique]


class EndpointSliceDiscovery(Discovery):
    """Ready endpoints from the Service's EndpointSlices (needs the `kubernetes` package).

    Uses the in-cluster service account when running in a pod, else the local kubeconfig.
    The host needs RBAC `list` on `endpointslices.discovery.k8s.io` in `namespace`.
    Ports are found by name (`grpc`, `tcp`), as in the manifests `spear k8s manifest` writes.
    """

    def __init__(
        self, service: str, namespace: str = "default", *, port_name: str = "grpc",
        tcp_port_name: str | None = "tcp", api: Any = None,
    ) -> None:
        self.service = service
        self.namespace = namespace
        self.port_name = port_name
        self.tcp_port_name = tcp_port_name
        self._api = api

    def _client(self) -> Any:
        if self._api is None:
            try:
                from kubernetes import client, config
            except ImportError as exc:
                raise InvalidConfiguration(
                    "EndpointSlice discovery needs the `kubernetes` package "
                    "(pip install kubernetes); DnsDiscovery needs nothing"
                ) from exc
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api = client.DiscoveryV1Api()
        return self._api

    def _list(self) -> list[Endpoint]:
        api = self._client()
        slices = api.list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"kubernetes.io/service-name={self.service}"
        )
        found: dict[tuple[str, int], Endpoint] = {}
        for item in slices.items or ():
            ports = {p.name: p.port for p in item.ports or () if p.port is not None}
            port = ports.get(self.port_name)
            if port is None:
                continue
            tcp_port = ports.get(self.tcp_port_name) if self.tcp_port_name else None
            for endpoint in item.endpoints or ():
                conditions = endpoint.conditions
                if conditions is not None and conditions.ready is False:
                    continue
                name = endpoint.target_ref.name if endpoint.target_ref is not None else None
                for address in endpoint.addresses or ():
                    found[(address, port)] = Endpoint(address, port, tcp_port, name)
        return sorted(found.values(), key=lambda e: (e.host, e.port))

    async def endpoints(self) -> list[Endpoint]:
        try:
            return await asyncio.to_thread(self._list)
        except InvalidConfiguration:
            raise
        except Exception as exc:  # API errors, network, auth: all transient from our side
            raise DiscoveryFailed(f"listing EndpointSlices of {self.service}: {exc}") from exc


@dataclass
class InstanceWatcher:
    """One runtime instance per discovered endpoint, refreshed every `interval` seconds.

    A pod that appears gets an instance once it accepts a connection (until then it is
    retried at every refresh); a pod that disappears has its instance stopped. When discovery
    fails, the current instances are kept.
    """

    runtime: KubernetesRuntime
    discovery: Discovery
    config: ChannelConfig = field(default_factory=ChannelConfig)
    interval: float = 5.0
    namespace: str | None = None
    token: str | None = None
    tls: TlsConfig | None = None
    on_change: ChangeCallback | None = None
    _by_endpoint: dict[Endpoint, RuntimeInstance] = field(default_factory=dict, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    @property
    def instances(self) -> list[RuntimeInstance]:
        return list(self._by_endpoint.values())

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._by_endpoint)

    async def start(self) -> InstanceWatcher:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="spear-discovery")
        return self

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep watching whatever went wrong this round
                log.exception("discovery refresh failed")

    async def refresh(self) -> tuple[list[RuntimeInstance], list[RuntimeInstance]]:
        """Reconcile once; returns (added, removed) instances."""
        async with self._lock:
            try:
                current = set(await self.discovery.endpoints())
            except DiscoveryFailed as exc:
                log.warning("discovery failed, keeping %d instances: %s",
                            len(self._by_endpoint), exc)
                return [], []
            removed: list[RuntimeInstance] = []
            for endpoint in [e for e in self._by_endpoint if e not in current]:
                instance = self._by_endpoint.pop(endpoint)
                await self.runtime.stop_instance(instance)
                removed.append(instance)
            new = [e for e in current if e not in self._by_endpoint]
            results = await asyncio.gather(*(self._start(e) for e in new),
                                           return_exceptions=True)
            added: list[RuntimeInstance] = []
            for endpoint, result in zip(new, results, strict=True):
                if isinstance(result, RuntimeInstance):
                    self._by_endpoint[endpoint] = result
                    added.append(result)
                elif isinstance(result, asyncio.CancelledError):
                    raise result
                else:
                    log.info("pod %s not reachable yet: %s", endpoint.address, result)
            if (added or removed) and self.on_change is not None:
                self.on_change(added, removed)
            return added, removed

    async def _start(self, endpoint: Endpoint) -> RuntimeInstance:
        instance_id = RuntimeInstanceId(
            RuntimeType.KUBERNETES, endpoint.instance_name, self.namespace
        )
        return await self.runtime.start_instance(
            instance_id, config=endpoint.channel_config(self.config),
            token=self.token, tls=self.tls,
        )

    async def close(self, *, stop_instances: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if stop_instances:
            async with self._lock:
                for instance in self._by_endpoint.values():
                    await self.runtime.stop_instance(instance)
                self._by_endpoint.clear()
