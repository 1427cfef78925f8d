"""The pod worker's framed-TCP listener: the fallback transport of the Kubernetes runtime.

Unlike the process runtime (where the worker dials its host), a pod listens and hosts dial
it. An accept thread admits each connection within the listener's pre-auth budget (at most
`MAX_PENDING_HANDSHAKES` connections authenticating at once, a failure budget per peer host,
see `spear.protocol.admission`), optionally inside TLS, checks the shared handshake (the host
sends `Handshake` with the token first and gets `Ack` or `auth_failed`) when the worker has
a token, and then serves the connection with the same blocking `StreamServer` the process
worker uses, so the framed protocol (docs/wire-protocol.md) has one implementation.

At most `WORKER_MAX_CONNECTIONS` hosts are served at once; a connection with no traffic for
`IDLE_TIMEOUT` is closed. A worker without a token refuses `Shutdown` from the network unless
it was started with `allow_remote_shutdown`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable

from spear.errors import AuthenticationFailed
from spear.protocol.address import HostPort
from spear.protocol.admission import Admission, peer_host
from spear.protocol.framing import ReceiveBuffer
from spear.protocol.limits import (
    DEFAULT_MAX_MESSAGE_SIZE,
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_PENDING_HANDSHAKES,
    WORKER_MAX_CONNECTIONS,
    WORKER_MAX_IN_FLIGHT,
)
from spear.protocol.messages import Shutdown
from spear.transport.tcp import bind_tcp_socket
from spear.transport.tls import TlsConfig
from spear.worker.async_bridge import AsyncBridge
from spear.worker.handler import Handler
from spear.worker.handshake import await_hello
from spear.worker.stream_server import StreamServer
from spear.worker.thread_budget import ThreadBudget

log = logging.getLogger(__name__)


class TcpWorkerListener:
    def __init__(
        self,
        handler: Handler,
        *,
        bridge: AsyncBridge | None = None,
        threads: ThreadBudget | None = None,
        token: str | None = None,
        tls: TlsConfig | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        on_shutdown: Callable[[Shutdown], None] | None = None,
        allow_remote_shutdown: bool = False,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        drain_timeout: float = 25.0,
        idle_timeout: float | None = IDLE_TIMEOUT,
        max_pending: int = MAX_PENDING_HANDSHAKES,
        max_connections: int = WORKER_MAX_CONNECTIONS,
        max_in_flight: int = WORKER_MAX_IN_FLIGHT,
    ) -> None:
        self._handler = handler
        self._bridge = bridge
        self._threads = threads or ThreadBudget()
        self._token = token
        self._ssl = tls.server_ssl_context() if tls is not None else None
        self._max = max_message_size
        self._on_shutdown = on_shutdown
        self._allow_shutdown = token is not None or allow_remote_shutdown
        self._handshake_timeout = handshake_timeout
        self._drain_timeout = drain_timeout
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._max_in_flight = max_in_flight
        self.admission = Admission("TCP worker listener", log, max_pending=max_pending)
        self._lock = threading.Lock()
        self._servers: set[StreamServer] = set()
        self._handshaking: set[socket.socket] = set()
        self._sock: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopped = threading.Event()
        self.port = 0

    @property
    def connections(self) -> int:
        """Authenticated hosts being served."""
        return len(self._servers)

    def start(self, address: str) -> int:
        """Bind `host:port` (port 0: an ephemeral one), start accepting; returns the port."""
        self.start_on(bind_tcp_socket(address))
        return self.port

    def start_on(self, sock: socket.socket) -> None:
        """Accept on a socket that is already bound and listening (TCP, or a private Unix
        socket from `spear.transport.unix.bind_private_socket`)."""
        sock.setblocking(True)
        self._sock = sock
        name = sock.getsockname()
        self.port = name[1] if isinstance(name, tuple) else 0
        self._acceptor = threading.Thread(target=self._accept_loop, name="spear-tcp-accept",
                                          daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopped.is_set():
            try:
                conn, peer = self._sock.accept()
            except OSError:
                if self._stopped.is_set():
                    return
                continue
            host = peer_host(peer)
            if self._stopped.is_set() or not self.admission.try_admit(host):
                _close(conn)
                continue
            threading.Thread(target=self._serve, args=(conn, host), daemon=True,
                             name="spear-tcp-connection").start()

    def _serve(self, conn: socket.socket, host: str) -> None:
        with self._lock:
            self._handshaking.add(conn)
        server: StreamServer | None = None
        slot = True  # this connection holds a pre-auth slot
        try:
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                conn.settimeout(self._handshake_timeout)
                try:
                    conn = self._ssl.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    slot = False
                    self.admission.failed(f"TLS handshake failed: {type(exc).__name__}", host)
                    return
            slot = False
            received = self._authenticate(conn, host)
            if received is None:
                return
            with self._lock:
                if self._stopped.is_set() or len(self._servers) >= self._max_connections:
                    log.warning("refusing a host at %s: %d connections already served",
                                host or "?", len(self._servers))
                    return
                server = StreamServer(
                    conn, self._handler, received=received, bridge=self._bridge,
                    threads=self._threads, max_in_flight=self._max_in_flight,
                    allow_shutdown=self._allow_shutdown, on_shutdown=self._on_shutdown,
                    drain_timeout=self._drain_timeout, idle_timeout=self._idle_timeout,
                    name=f"tcp:{host}",
                )
                self._servers.add(server)
            server.serve()
        except (OSError, ssl.SSLError) as exc:
            log.info("TCP host %s went away: %s", host or "?", exc)
        finally:
            if slot:
                self.admission.release()
            with self._lock:
                self._handshaking.discard(conn)
                if server is not None:
                    self._servers.discard(server)
            _close(conn)

    def _authenticate(self, conn: socket.socket, host: str) -> ReceiveBuffer | None:
        """The connection's receive buffer once it is in; None (slot given back, failure
        charged) when it is not."""
        if self._token is None:
            self.admission.release()
            return ReceiveBuffer(self._max)
        try:
            _, received = await_hello(conn, token=self._token, timeout=self._handshake_timeout,
                                      max_message_size=self._max)
        except AuthenticationFailed as exc:
            self.admission.failed(str(exc), host)
            return None
        except BaseException:
            self.admission.release()
            raise
        self.admission.release()
        return received

    def stop_accepting(self) -> None:
        """Refuse new connections; connected hosts keep being served."""
        self._stopped.set()
        if self._sock is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone may not.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()

    def begin_drain(self, timeout: float) -> None:
        """Stop accepting; every connected host's requests finish (new ones are refused)
        for up to `timeout` s, then its connection closes."""
        self.stop_accepting()
        for server in list(self._servers):
            server.stop(graceful=True, timeout=timeout)

    def wait_drained(self, timeout: float) -> bool:
        """Block until every connection has ended (or `timeout`); True if they all did."""
        servers = list(self._servers)
        for server in servers:
            server.wait(timeout)
        return all(server.ended for server in servers)

    def close(self) -> None:
        """Stop accepting and drop every connection now."""
        self.stop_accepting()
        for server in list(self._servers):
            server.stop(graceful=False)
        with self._lock:
            pending = list(self._handshaking)
        for conn in pending:
            _close(conn)
        self.admission.flush_log()


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


def listen_address(address: str, port: int) -> str:
    """`address` with its (possibly 0) port replaced by the bound one."""
    return str(HostPort.parse(address).with_port(port))
