"""Channel type -> how to connect it: the registry the factory walks.

A connector reaches its channel in one of two ways. It *dials*: it knows where its transport
lives for a given instance (its own address, so a fallback never reuses the address the
preferred transport was dialled on) and which function opens it. Or it *listens and
accepts* (`accept=Invitation(...)`, see `spear.channel.rendezvous`): it opens a private
endpoint, has the caller start the peer that dials in, and takes the first authenticated
connection; that is how the process runtime gets its channels. The functions live in the
transport-specific channel modules and are imported on first use, so asking for a Unix
channel never imports grpc or wasmtime.

Addresses come from, in order: the transport's own key in `config.extra` (`unix_path`,
`tcp_address`, `grpc_address`, `artifact`), a derivation from `config.address` (`tcp_port` plus
the address's host, for a TCP fallback beside a gRPC endpoint), or `config.address` itself when
it has the transport's form and no earlier attempt used it. `{instance}` in any of them becomes
the instance id, made safe for a file name.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from spear.channel.base import CommunicationChannel
from spear.config import ChannelConfig
from spear.errors import InvalidConfiguration, UnsupportedChannel, UnsupportedTransport
from spear.instance_id import RuntimeInstanceId
from spear.protocol.address import HostPort, try_parse

DialFunction = Callable[..., Awaitable[CommunicationChannel]]
AddressResolver = Callable[[RuntimeInstanceId, ChannelConfig, Collection[str]], str]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _fill(template: str, instance_id: RuntimeInstanceId) -> str:
    if "{instance}" not in template:
        return template
    return template.replace("{instance}", _UNSAFE.sub("_", instance_id.full_id))


def split_host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a HOST:PORT address, or None (`spear.protocol.address.try_parse`)."""
    parsed = try_parse(address)
    return None if parsed is None else (parsed.host, parsed.port)


def _host_port(address: str) -> str:
    return str(HostPort.parse(address))


def _no_address(kind: str, instance_id: RuntimeInstanceId, hint: str) -> InvalidConfiguration:
    return InvalidConfiguration(f"no {kind} address for {instance_id.full_id}: {hint}")


def _unix_address(
    instance_id: RuntimeInstanceId, config: ChannelConfig, used: Collection[str]
) -> str:
    path = config.extra.get("unix_path")
    if path:
        return _fill(path, instance_id)
    address = config.address
    if address and address.startswith("unix:"):
        address = address[5:].removeprefix("//")
    if address and try_parse(address) is None and address not in used:
        return _fill(address, instance_id)
    raise _no_address("unix", instance_id, "set extra['unix_path'] or a path as the address")


def _tcp_address(
    instance_id: RuntimeInstanceId, config: ChannelConfig, used: Collection[str]
) -> str:
    explicit = config.extra.get("tcp_address")
    if explicit:
        return _host_port(_fill(explicit, instance_id))
    port = config.extra.get("tcp_port")
    if port:
        host = "127.0.0.1"
        if config.address and (parts := try_parse(config.address)) is not None:
            host = parts.host
        if not port.isdigit():
            raise InvalidConfiguration(f"extra['tcp_port'] must be a port number, got {port!r}")
        return str(HostPort(host, int(port)))
    address = config.address
    if address and try_parse(address) is not None:
        candidate = _host_port(address)
        if candidate not in used:
            return candidate
    raise _no_address(
        "tcp", instance_id,
        "set extra['tcp_address'] or extra['tcp_port'] (the address is taken by another "
        "transport or is not HOST:PORT)",
    )


def _grpc_address(
    instance_id: RuntimeInstanceId, config: ChannelConfig, used: Collection[str]
) -> str:
    explicit = config.extra.get("grpc_address")
    if explicit:
        return _host_port(_fill(explicit, instance_id))
    address = config.address
    if address and try_parse(address) is not None:
        candidate = _host_port(address)
        if candidate not in used:
            return candidate
    raise _no_address("grpc", instance_id, "set extra['grpc_address'] or a HOST:PORT address")


def _memory_address(
    instance_id: RuntimeInstanceId, config: ChannelConfig, used: Collection[str]
) -> str:
    artifact = config.extra.get("artifact") or config.address
    if artifact:
        return _fill(artifact, instance_id)
    raise _no_address("memory", instance_id, "set extra['artifact'] or the .wasm path as address")


@dataclass(frozen=True)
class Connector:
    """Connects one channel type. `target` (dial) and `accept_target` (listen and accept)
    are `module:function`, imported on first use."""

    channel_type: str
    target: str
    resolve_address: AddressResolver
    # Keyword options (token, ssl, tls, artifact...) this dial function understands; others
    # given to the factory are not passed, so one call can carry options for every fallback.
    options: frozenset[str] = frozenset()
    # An option that, when given, *is* the address (the memory channel's artifact bytes).
    address_option: str | None = None
    # `module:function(instance_id, config, invitation)`, when this type can listen and accept.
    accept_target: str | None = None
    _loaded: dict[str, DialFunction] = field(default_factory=dict, compare=False, repr=False)

    @property
    def can_accept(self) -> bool:
        return self.accept_target is not None

    def _load(self, target: str) -> DialFunction:
        function = self._loaded.get(target)
        if function is None:
            module_name, _, attr = target.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise UnsupportedTransport(
                    f"channel type {self.channel_type!r} is not available: cannot import "
                    f"{module_name}: {exc}"
                ) from exc
            function = self._loaded[target] = getattr(module, attr)
        return function

    def dial_function(self) -> DialFunction:
        return self._load(self.target)

    async def accept(
        self, instance_id: RuntimeInstanceId, config: ChannelConfig, invitation: Any,
    ) -> CommunicationChannel:
        """Listen on a fresh endpoint, invite the peer, return its authenticated channel."""
        if self.accept_target is None:
            raise UnsupportedChannel(
                f"channel type {self.channel_type!r} cannot listen and accept; it only dials"
            )
        return await self._load(self.accept_target)(instance_id, config, invitation)

    async def dial(
        self,
        instance_id: RuntimeInstanceId,
        address: str | bytes,
        config: ChannelConfig,
        options: dict[str, Any],
    ) -> CommunicationChannel:
        kwargs = {k: v for k, v in options.items() if k in self.options and v is not None}
        return await self.dial_function()(instance_id, address, config, **kwargs)


_REGISTRY: dict[str, Connector] = {
    "unix": Connector("unix", "spear.channel.stream:open_unix_channel", _unix_address,
                      frozenset({"token", "ssl"}),
                      accept_target="spear.channel.rendezvous:accept_unix_channel"),
    "tcp": Connector("tcp", "spear.channel.stream:open_tcp_channel", _tcp_address,
                     frozenset({"token", "ssl"}),
                     accept_target="spear.channel.rendezvous:accept_tcp_channel"),
    "grpc": Connector("grpc", "spear.channel.grpc:open_grpc_channel", _grpc_address,
                      frozenset({"token", "tls"})),
    "memory": Connector("memory", "spear.channel.memory:open_memory_channel", _memory_address,
                        address_option="artifact"),
}


def register_connector(connector: Connector) -> None:
    """Add or replace the connector for `connector.channel_type` (process-wide)."""
    _REGISTRY[connector.channel_type] = connector


def get_connector(channel_type: str) -> Connector:
    connector = _REGISTRY.get(channel_type)
    if connector is None:
        raise UnsupportedTransport(
            f"no connector for channel type {channel_type!r}; known: {sorted(_REGISTRY)}"
        )
    return connector


def connector_types() -> list[str]:
    return sorted(_REGISTRY)
