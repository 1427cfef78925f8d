"""TCP sockets: address parsing, listening on an ephemeral port, dialling.

Listeners bind port 0 so the kernel picks a free port: two instances never collide and
nothing races for a port number. asyncio turns on TCP_NODELAY for every TCP transport, which
a request/response protocol of small frames needs.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Awaitable, Callable

from spear.errors import ConnectionFailed, InvalidConfiguration, Timeout
from spear.transport.unix import STREAM_LIMIT

LOOPBACK = "127.0.0.1"

ClientCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port)."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidConfiguration(f"{address!r} is not a HOST:PORT address")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise InvalidConfiguration(f"IPv6 address {address!r} must be written [host]:port")
    return host, int(port)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def listen_tcp(
    on_client: ClientCallback, *, host: str = LOOPBACK, port: int = 0,
    ssl: ssl_module.SSLContext | None = None,
) -> tuple[asyncio.Server, str]:
    """Serve `on_client` on `host:port` (port 0: an ephemeral one); returns the bound address."""
    server = await asyncio.start_server(
        on_client, host=host, port=port, ssl=ssl, limit=STREAM_LIMIT, reuse_address=True
    )
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    return server, format_address(bound_host, bound_port)


async def dial_tcp(
    address: str, *, timeout: float, ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to `host:port`; `ConnectionFailed` (or `Timeout`) names the address and cause."""
    host, port = parse_address(address)
    try:
        async with asyncio.timeout(timeout if timeout > 0 else None):
            return await asyncio.open_connection(
                host, port, ssl=ssl, limit=STREAM_LIMIT,
                server_hostname=(server_hostname or host) if ssl is not None else None,
            )
    except TimeoutError:
        raise Timeout(f"connecting to tcp:{address} took longer than {timeout:.3g} s") from None
    except (OSError, ssl_module.SSLError) as exc:
        raise ConnectionFailed(f"cannot connect to tcp:{address}: {exc}") from exc
