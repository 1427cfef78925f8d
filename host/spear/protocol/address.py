"""`HOST:PORT` addresses: the one parser and formatter every part of spear uses.

IPv6 hosts are written in brackets (`[::1]:50051`). `parse` accepts an optional `scheme://`
prefix and a trailing `/path` (what gRPC targets and URLs look like) and strips them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spear.errors import InvalidConfiguration

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)

    def with_port(self, port: int) -> HostPort:
        return HostPort(self.host, port)

    @classmethod
    def parse(cls, address: str) -> HostPort:
        """`host:port`, `[v6]:port`, optionally `scheme://...` and `/path`; port 0-65535.

        Raises `InvalidConfiguration` naming the address otherwise.
        """
        parsed = try_parse(address)
        if parsed is None:
            raise InvalidConfiguration(f"{address!r} is not a HOST:PORT address")
        return parsed


def try_parse(address: str) -> HostPort | None:
    """`HostPort.parse`, or None for text that is not a HOST:PORT address (a path, say)."""
    text = _SCHEME.sub("", address.strip()).split("/", 1)[0]
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 host must be bracketed, or the port is ambiguous
    if not host:
        return None
    return HostPort(host, int(port))


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
