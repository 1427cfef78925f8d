"""The pod worker's framed-TCP listener: the fallback transport of the Kubernetes runtime.

Unlike the process runtime (where the worker dials its host), a pod listens and hosts dial
it. Each connection is authenticated with the shared handshake (`spear.channel.handshake`:
the host sends `Handshake` with the token first and gets `Ack` or `auth_failed`) when the
worker has a token, optionally inside TLS, and is then served by the same `serve_stream` the
process worker uses, so the framed protocol (docs/wire-protocol.md) has one implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from spear.channel.handshake import accept_handshake
from spear.config import DEFAULT_MAX_MESSAGE_SIZE
from spear.errors import AuthenticationFailed
from spear.messages import Shutdown
from spear.transport.tcp import listen_tcp, parse_address
from spear.transport.tls import TlsConfig
from spear.worker.dispatcher import Dispatcher
from spear.worker.stream_server import serve_stream

log = logging.getLogger(__name__)


class TcpWorkerListener:
    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        token: str | None = None,
        tls: TlsConfig | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        on_shutdown: Callable[[Shutdown], None] | None = None,
        handshake_timeout: float = 5.0,
        drain_timeout: float = 25.0,
    ) -> None:
        self._dispatcher = dispatcher
        self._token = token
        self._tls = tls
        self._max = max_message_size
        self._on_shutdown = on_shutdown
        self._handshake_timeout = handshake_timeout
        self._drain_timeout = drain_timeout
        self._stop = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self, address: str) -> int:
        host, port = parse_address(address)
        ssl = self._tls.server_ssl_context() if self._tls is not None else None
        self._server, bound = await listen_tcp(self._serve, host=host, port=port, ssl=ssl)
        self.port = parse_address(bound)[1]
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        try:
            if self._stop.is_set():
                return
            if self._token is not None:
                try:
                    await accept_handshake(
                        reader, writer, token=self._token, timeout=self._handshake_timeout,
                        max_message_size=self._max,
                    )
                except AuthenticationFailed as exc:
                    log.warning("rejected a TCP host %s: %s", peer, exc)
                    return
            await serve_stream(
                reader, writer, self._dispatcher, max_message_size=self._max, stop=self._stop,
                on_shutdown=self._on_shutdown, drain_timeout=self._drain_timeout,
            )
        except (ConnectionError, OSError) as exc:
            log.info("TCP host %s went away: %s", peer, exc)
        finally:
            self._connections.discard(task)
            if not writer.is_closing():
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    def stop_accepting(self) -> None:
        """Refuse new connections; connected hosts drain (new requests refused)."""
        self._stop.set()
        if self._server is not None:
            self._server.close()

    async def close(self, timeout: float = 1.0) -> None:
        self.stop_accepting()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=timeout)
            for task in pending:
                task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout)
