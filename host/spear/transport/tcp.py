"""TCP sockets: listening on an ephemeral port, dialling (asyncio and blocking).

Listeners bind port 0 so the kernel picks a free port: two instances never collide and
nothing races for a port number. Every TCP connection gets TCP_NODELAY (asyncio sets it for
its transports; the blocking side sets it here), which a protocol of small frames needs.
Addresses are parsed by `spear.protocol.address`, the one HOST:PORT helper.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from spear.errors import ConnectionFailed, Timeout
from spear.protocol.address import HostPort, format_host_port

if TYPE_CHECKING:
    # Imported where it is used: a worker that only needs the blocking helpers here starts
    # without loading asyncio or ssl.
    import asyncio
    import ssl as ssl_module

LOOPBACK = "127.0.0.1"

P = TypeVar("P", bound="asyncio.BaseProtocol")


async def listen_tcp(
    protocol_factory: Callable[[], asyncio.BaseProtocol], *, host: str = LOOPBACK, port: int = 0,
    ssl: ssl_module.SSLContext | None = None,
) -> tuple[asyncio.Server, str]:
    """Serve on `host:port` (port 0: an ephemeral one); returns the bound address."""
    import asyncio

    server = await asyncio.get_running_loop().create_server(
        protocol_factory, host=host, port=port, ssl=ssl, reuse_address=True
    )
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    return server, format_host_port(bound_host, bound_port)


async def dial_tcp(
    address: str, protocol_factory: Callable[[], P], *, timeout: float,
    ssl: ssl_module.SSLContext | None = None, server_hostname: str | None = None,
) -> P:
    """Connect to `host:port`; `ConnectionFailed` (or `Timeout`) names the address and cause."""
    import asyncio

    target = HostPort.parse(address)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout if timeout > 0 else None):
            _, protocol = await loop.create_connection(
                protocol_factory, target.host, target.port, ssl=ssl,
                server_hostname=(server_hostname or target.host) if ssl is not None else None,
            )
    except TimeoutError:
        raise Timeout(f"connecting to tcp:{address} took longer than {timeout:.3g} s") from None
    except OSError as exc:  # ssl.SSLError is an OSError too
        raise ConnectionFailed(f"cannot connect to tcp:{address}: {exc}") from exc
    return protocol


def connect_tcp_socket(address: str, *, timeout: float) -> socket.socket:
    """A blocking connection to `host:port` with TCP_NODELAY (the worker side)."""
    target = HostPort.parse(address)
    try:
        sock = socket.create_connection((target.host, target.port),
                                        timeout=timeout if timeout > 0 else None)
    except TimeoutError:
        raise Timeout(f"connecting to tcp:{address} took longer than {timeout:.3g} s") from None
    except OSError as exc:
        raise ConnectionFailed(f"cannot connect to tcp:{address}: {exc}") from exc
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def bind_tcp_socket(address: str, *, backlog: int = 128) -> socket.socket:
    """A listening blocking socket on `host:port` (port 0: ephemeral), for threaded servers."""
    target = HostPort.parse(address)
    infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    if not infos:
        raise OSError(f"cannot resolve {address}")
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock
