"""Channel type -> how to dial it: the registry the factory walks.

Each connector knows two things: where its transport lives for a given instance (its own
address, so a fallback never reuses the address the preferred transport was dialled on) and
which function opens it. The dial functions live in the transport-specific channel modules and
are imported on first use, so asking for a Unix channel never imports grpc or wasmtime.

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
from spear.errors import InvalidConfiguration, UnsupportedTransport
from spear.instance_id import RuntimeInstanceId

DialFunction = Callable[..., Awaitable[CommunicationChannel]]
AddressResolver = Callable[[RuntimeInstanceId, ChannelConfig, Collection[str]], str]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def _fill(template: str, instance_id: RuntimeInstanceId) -> str:
    if "{instance}" not in template:
        return template
    return template.replace("{instance}", _UNSAFE.sub("_", instance_id.full_id))


def split_host_port(address: str) -> tuple[str, int] | None:
    """`host:port` / `[v6]:port`, with any `scheme://` and trailing path removed; None if not."""
    address = _SCHEME.sub("", address).split("/", 1)[0]
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _host_port(address: str) -> str:
    parts = split_host_port(address)
    if parts is None:
        raise InvalidConfiguration(f"{address!r} is not a HOST:PORT address")
    host, port = parts
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    if address and split_host_port(address) is None and address not in used:
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
        if config.address and (parts := split_host_port(config.address)) is not None:
            host = parts[0]
        return _host_port(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}")
    address = config.address
    if address and split_host_port(address) is not None:
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
    if address and split_host_port(address) is not None:
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
    """Dials one channel type. `target` is `module:function`, imported on first dial."""

    channel_type: str
    target: str
    resolve_address: AddressResolver
    # Keyword options (token, ssl, tls, artifact...) this dial function understands; others
    # given to the factory are not passed, so one call can carry options for every fallback.
    options: frozenset[str] = frozenset()
    # An option that, when given, *is* the address (the memory channel's artifact bytes).
    address_option: str | None = None
    _loaded: list[DialFunction] = field(default_factory=list, compare=False, repr=False)

    def dial_function(self) -> DialFunction:
        if not self._loaded:
            module_name, _, attr = self.target.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise UnsupportedTransport(
                    f"channel type {self.channel_type!r} is not available: cannot import "
                    f"{module_name}: {exc}"
                ) from exc
            self._loaded.append(getattr(module, attr))
        return self._loaded[0]

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
                      frozenset({"token", "ssl"})),
    "tcp": Connector("tcp", "spear.channel.stream:open_tcp_channel", _tcp_address,
                     frozenset({"token", "ssl"})),
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
