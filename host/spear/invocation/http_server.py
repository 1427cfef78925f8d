"""Runs the ASGI front door on uvicorn (httptools parser, uvloop) inside the caller's
event loop, with spear's protocol (`http_protocol`: bounded heads, read deadlines, one write
per small answer, one task per connection) and a sweep that enforces its deadlines and
closes idle keep-alive connections every `SWEEP_INTERVAL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any

import uvicorn

from spear.errors import InvalidConfiguration
from spear.invocation.http_protocol import HttpLimits, protocol_class

__all__ = ["SWEEP_INTERVAL_S", "HttpLimits", "HttpServer"]

SWEEP_INTERVAL_S = 0.5


class HttpServer:
    """uvicorn serving `app` on one socket, started and stopped from the caller's loop."""

    def __init__(self, app: Any, limits: HttpLimits | None = None) -> None:
        self.app = app
        self.limits = limits or HttpLimits()
        self._server: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        sock = _listen(host, port)
        self.port = int(sock.getsockname()[1])
        limits = self.limits
        tls: dict[str, Any] = {}
        if limits.tls_cert_file:
            tls = {"ssl_certfile": limits.tls_cert_file, "ssl_keyfile": limits.tls_key_file}
            if limits.tls_client_ca_file:
                tls.update(ssl_ca_certs=limits.tls_client_ca_file,
                           ssl_cert_reqs=ssl.CERT_REQUIRED)
        config = uvicorn.Config(
            self.app, http=protocol_class(limits), ws="none", lifespan="off",
            log_config=None, access_log=False, server_header=False, proxy_headers=False,
            limit_concurrency=limits.max_connections, timeout_keep_alive=limits.keep_alive_s,
            timeout_graceful_shutdown=1, **tls)
        try:
            config.load()
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise InvalidConfiguration(f"HTTP TLS: cannot load the certificate or key: "
                                       f"{exc}") from None
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(server.main_loop(), name="spear-http-ticks"),
                       loop.create_task(self._sweep(), name="spear-http-sweep")]
        return self.port

    @property
    def connections(self) -> int:
        return 0 if self._server is None else len(self._server.server_state.connections)

    async def _sweep(self) -> None:
        server = self._server
        assert server is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = loop.time()
            for connection in list(server.server_state.connections):
                check = getattr(connection, "check_deadlines", None)
                if check is not None:
                    check(now)

    async def stop(self) -> None:
        """Close the listener and the idle connections; wait (about a second at most) for
        responses being written, then drop what is left."""
        server, self._server = self._server, None
        if server is None:
            return
        server.should_exit = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await server.shutdown()


def _listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket here, so a taken port is a clear error (SO_REUSEADDR only:
    a second server on the same port fails instead of sharing it)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidConfiguration(f"cannot listen for HTTP on {host}:{port}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise InvalidConfiguration(
            f"cannot listen for HTTP on {host}:{port}: {exc.strerror or exc}") from None
    return sock
