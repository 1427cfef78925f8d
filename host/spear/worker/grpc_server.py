"""The pod worker's gRPC server: the `SpearRuntime` service and `grpc.health.v1.Health`.

`Channel` is one long-lived stream per host. Each incoming `Envelope` holds a batch of
spear.codec messages; every `ExecutionRequest` runs as its own task on the shared
`Dispatcher`, and replies go back through a single writer that sends whatever has queued up
while its previous write was in flight as one `Envelope`. Many requests in flight therefore
cost far fewer gRPC messages than requests. `Execute` is the typed unary call for simple
clients.

Health: the overall service (`""`) and `spear.runtime.v1.SpearRuntime` are `SERVING` while the
worker takes work and `NOT_SERVING` from the moment it starts draining (SIGTERM or a
`Shutdown` message), so Kubernetes' gRPC readiness probe takes the pod out of the Service
before it stops; `liveness` stays `SERVING` until the process exits. The kubelet's gRPC
probes cannot present a token or a client certificate, so health is never authenticated, and
with TLS it can be served on a separate plaintext port (`health_address`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from spear.codec import decode, encode
from spear.config import DEFAULT_MAX_MESSAGE_SIZE
from spear.errors import InvalidMessage
from spear.messages import (
    Cancel,
    Error,
    ExecutionRequest,
    ExecutionResponse,
    ExecutionStatus,
    HealthCheck,
    HealthResponse,
    Shutdown,
)
from spear.transport.grpc.batching import Outbox, batch_limit, receive_limit, write_batches
from spear.transport.grpc.generated import spear_runtime_pb2 as pb
from spear.transport.grpc.generated import spear_runtime_pb2_grpc as pb_grpc
from spear.transport.tls import TlsConfig
from spear.worker.auth import token_from_metadata, token_matches
from spear.worker.dispatcher import Dispatcher

log = logging.getLogger(__name__)

SERVICE_NAME = "spear.runtime.v1.SpearRuntime"
# Stays SERVING while the process is alive, draining or not: the liveness probe asks for it,
# so a pod that is draining (readiness NOT_SERVING) is not also restarted as "dead".
LIVENESS_SERVICE = "liveness"

_STATUS_TO_PB = {
    ExecutionStatus.SUCCESS: pb.ExecuteResponse.SUCCESS,
    ExecutionStatus.ERROR: pb.ExecuteResponse.ERROR,
    ExecutionStatus.TIMEOUT: pb.ExecuteResponse.TIMEOUT,
}


def server_options(max_message_size: int) -> list[tuple[str, int]]:
    limit = receive_limit(max_message_size)
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        # Hosts choose their own keepalive (it is how they notice a cut link); never punish
        # them for pinging often.
        ("grpc.http2.min_ping_interval_without_data_ms", 100),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        # And notice vanished hosts ourselves, so their in-flight work is cancelled.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # A second worker on a busy port must fail, not silently share it.
        ("grpc.so_reuseport", 0),
    ]


class _Session:
    """One host's stream: its outbox and the requests it has in flight."""

    __slots__ = ("ended", "outbox", "tasks")

    def __init__(self) -> None:
        self.outbox = Outbox()
        self.tasks: dict[str, asyncio.Future[ExecutionResponse]] = {}
        # Resolved when the stream should end: the host half-closed, or the worker drained.
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def end(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


class SpearRuntimeService(pb_grpc.SpearRuntimeServicer):
    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        token: str | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        on_shutdown: Callable[[Shutdown], None] | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._token = token
        self._max = max_message_size
        self._on_shutdown = on_shutdown
        self._sessions: set[_Session] = set()
        self._notice: bytes | None = None  # the Shutdown every stream gets once draining
        self._ended = False

    @property
    def streams(self) -> int:
        return len(self._sessions)

    def end_streams(self) -> None:
        """End every stream cleanly (status OK) once queued replies are sent: the drain is
        over, and hosts should not wait for the server's grace period to find out."""
        self._ended = True
        for session in self._sessions:
            session.end()

    def announce(self, message: Shutdown) -> None:
        """Tell every connected host (unsolicited) that this worker is going away."""
        payload = self._notice = encode(message)
        for session in self._sessions:
            session.outbox.put(payload)

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self._token is None:
            return
        presented = token_from_metadata(context.invocation_metadata())
        if not token_matches(presented, self._token):
            log.warning("rejected a call from %s: missing or wrong token", context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong spear token")

    # -- the stream ---------------------------------------------------------------------------

    async def Channel(  # the gRPC method name
        self, request_iterator: AsyncIterator[pb.Envelope],
        context: grpc.aio.ServicerContext[pb.Envelope, pb.Envelope],
    ) -> None:
        await self._authenticate(context)
        # Registered before the host learns it is accepted, so a drain that starts right
        # after still reaches this stream.
        session = _Session()
        self._sessions.add(session)
        if self._notice is not None:
            session.outbox.put(self._notice)
        if self._ended:
            session.end()
        writer: asyncio.Task[None] | None = None
        reader: asyncio.Task[None] | None = None
        try:
            # Initial metadata tells the host it got past authentication before it sends work.
            await context.send_initial_metadata((("spear-protocol", "1"),))
            writer = asyncio.create_task(write_batches(session.outbox, context.write,
                                                       batch_limit(self._max)))
            reader = asyncio.create_task(self._read_stream(session, context))
            await session.ended
            session.outbox.close()
            await writer  # the replies already queued still go out
        finally:
            self._sessions.discard(session)
            session.outbox.close()
            pending: list[asyncio.Future[Any] | None] = [reader, writer,
                                                          *session.tasks.values()]
            for task in pending:
                if task is not None and not task.done():
                    task.cancel()

    async def _read_stream(
        self, session: _Session, context: grpc.aio.ServicerContext[pb.Envelope, pb.Envelope],
    ) -> None:
        try:
            while True:
                envelope = await context.read()
                if envelope is grpc.aio.EOF:
                    break
                for payload in envelope.messages:
                    self._handle(session, payload)
            # The host half-closed: finish what it asked for, then end the stream.
            if session.tasks:
                await asyncio.wait(list(session.tasks.values()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the call is over (cancelled, connection lost)
            log.debug("stream from %s ended: %s", context.peer(), exc)
        finally:
            session.end()

    def _handle(self, session: _Session, payload: bytes) -> None:
        try:
            message = decode(payload)
        except InvalidMessage as exc:
            session.outbox.put(encode(Error("", str(exc), "invalid_message")))
            return
        kind = type(message)
        if kind is ExecutionRequest:
            assert isinstance(message, ExecutionRequest)
            rid = message.request_id
            if len(payload) > self._max:
                session.outbox.put(encode(ExecutionResponse(
                    rid, b"", ExecutionStatus.ERROR,
                    f"request of {len(payload)} bytes exceeds this worker's maximum of "
                    f"{self._max} bytes", "too_large")))
                return
            if rid in session.tasks:
                session.outbox.put(encode(Error(rid, "request id already in flight", "duplicate")))
                return
            running = self._dispatcher.submit(message)
            session.tasks[rid] = running
            running.add_done_callback(partial(self._finished, session, rid))
        elif kind is HealthCheck:
            assert isinstance(message, HealthCheck)
            status = "draining" if self._dispatcher.draining else "serving"
            metrics = {"in_flight": float(self._dispatcher.in_flight),
                       "streams": float(len(self._sessions))}
            session.outbox.put(encode(HealthResponse(message.request_id, status, metrics)))
        elif kind is Cancel:
            assert isinstance(message, Cancel)
            cancelled = session.tasks.get(message.request_id)
            if cancelled is not None:
                cancelled.cancel()
        elif kind is Shutdown:
            assert isinstance(message, Shutdown)
            if self._on_shutdown is not None:
                self._on_shutdown(message)
        else:
            log.debug("ignoring unexpected %s on a gRPC stream", kind.__name__)

    def _finished(
        self, session: _Session, rid: str, done: asyncio.Future[ExecutionResponse]
    ) -> None:
        if session.tasks.get(rid) is done:
            del session.tasks[rid]
        if done.cancelled():
            return  # the host cancelled it (or the stream is gone): nobody wants the reply
        error = done.exception()
        if error is not None:
            log.error("dispatcher failed on %r", rid, exc_info=error)
            response = ExecutionResponse(rid, b"", ExecutionStatus.ERROR,
                                         f"{type(error).__name__}: {error}", "internal_error")
        else:
            response = done.result()
        try:
            payload = encode(response)
        except InvalidMessage as exc:
            payload = encode(ExecutionResponse(rid, b"", ExecutionStatus.ERROR, str(exc),
                                               "internal_error"))
        if len(payload) > self._max:
            payload = encode(_too_large(rid, len(payload), self._max, response))
        session.outbox.put(payload)

    # -- unary ----------------------------------------------------------------------------------

    async def Execute(  # the gRPC method name
        self, request: pb.ExecuteRequest,
        context: grpc.aio.ServicerContext[pb.ExecuteRequest, pb.ExecuteResponse],
    ) -> pb.ExecuteResponse:
        await self._authenticate(context)
        execution = ExecutionRequest(
            request.request_id or uuid.uuid4().hex, request.function_name, request.input,
            request.timeout_ms, dict(request.metadata),
        )
        response = await self._dispatcher.execute(execution)
        if len(response.output_data) > self._max:
            response = _too_large(execution.request_id, len(response.output_data), self._max,
                                  response)
        return pb.ExecuteResponse(
            request_id=response.request_id, output=response.output_data,
            status=_STATUS_TO_PB[response.status], error_message=response.error_message or "",
            error_code=response.error_code or "", execution_time_ms=response.execution_time_ms,
            metadata=response.metadata,
        )


def _too_large(
    request_id: str, size: int, limit: int, response: ExecutionResponse
) -> ExecutionResponse:
    return ExecutionResponse(
        request_id, b"", ExecutionStatus.ERROR,
        f"response of {size} bytes exceeds the maximum message size of {limit} bytes",
        "too_large", response.execution_time_ms,
    )


class GrpcWorkerServer:
    """A `Dispatcher` served over gRPC, with health and graceful draining.

    `start()` binds and returns the port (pass port 0 for an ephemeral one); `drain()` flips
    health to NOT_SERVING, tells connected hosts, waits for requests in flight, then stops.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        token: str | None = None,
        tls: TlsConfig | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        health_address: str | None = None,
        on_shutdown: Callable[[Shutdown], None] | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._tls = tls
        self._health_address = health_address
        self._options = server_options(max_message_size)
        self.service = SpearRuntimeService(
            dispatcher, token=token, max_message_size=max_message_size, on_shutdown=on_shutdown
        )
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self.port = 0
        self.health_port = 0

    async def start(self, address: str) -> int:
        server = grpc.aio.server(options=self._options)
        pb_grpc.add_SpearRuntimeServicer_to_server(  # type: ignore[no-untyped-call]
            self.service, server
        )
        if self._health_address is None:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.port = _bind(server, address, self._tls)
        for service in ("", SERVICE_NAME, LIVENESS_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        await server.start()
        self._server = server
        if self._health_address is not None:
            health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, health_server)
            self.health_port = _bind(health_server, self._health_address, None)
            await health_server.start()
            self._health_server = health_server
        else:
            self.health_port = self.port
        return self.port

    async def begin_drain(self, timeout: float) -> None:
        """Health to NOT_SERVING, and an unsolicited `Shutdown` to every connected host."""
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.service.announce(Shutdown(graceful=True, timeout_ms=int(timeout * 1000)))

    async def drain(self, timeout: float) -> bool:
        """Stop taking work, let requests in flight finish (up to `timeout`), then stop."""
        await self.begin_drain(timeout)
        finished = await self._dispatcher.drain(timeout)
        self.service.end_streams()
        await self.stop(grace=1.0)
        return finished

    async def stop(self, grace: float | None = None) -> None:
        for server in (self._server, self._health_server):
            if server is not None:
                await server.stop(grace)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def _bind(server: grpc.aio.Server, address: str, tls: TlsConfig | None) -> int:
    try:
        if tls is not None:
            port = server.add_secure_port(address, tls.grpc_server_credentials())
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from exc
    if port == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    return int(port)
