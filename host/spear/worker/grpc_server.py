"""The pod worker's gRPC server: the `SpearRuntime` service and `grpc.health.v1.Health`.

`Channel` is one long-lived stream per host. Each incoming `Envelope` holds a batch of
encoded messages, handed one by one to the stream's `WorkerSession` (the same message switch
the socket server uses, so every rule of docs/wire-protocol.md holds here too); replies go
back through a single writer that sends whatever has queued up while its previous write was
in flight as one `Envelope`. Many requests in flight therefore cost far fewer gRPC messages
than requests. `Execute` is the typed unary call for simple clients.

Bounded before trusted: a call without the right token is refused by an interceptor before
its request message is read (a 60 MiB unauthenticated `Execute` costs nothing), failures are
logged in aggregate, and once the failure budget is spent each further failure is held for
`TARPIT` seconds (a bounded number at a time) before its refusal. After authentication a
stream may have `WORKER_MAX_IN_FLIGHT` requests in flight (more are answered
`too_many_requests`) and `WORKER_OUTBOX_BYTES` of replies waiting for the host; beyond that
the worker stops reading the stream until the host takes some.

Health: the overall service (`""`) and `spear.runtime.v1.SpearRuntime` are `SERVING` while the
worker takes work and `NOT_SERVING` from the moment it starts draining (SIGTERM or a
`Shutdown` message), so Kubernetes' gRPC readiness probe takes the pod out of the Service
before it stops; `liveness` stays `SERVING` until the process exits. The kubelet's gRPC
probes cannot present a token or a client certificate, so health is never authenticated, and
with TLS it can be served on a separate plaintext port (`health_address`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from spear.errors import InvalidMessage
from spear.protocol.admission import Admission
from spear.protocol.codec import encode
from spear.protocol.limits import (
    DEFAULT_MAX_MESSAGE_SIZE,
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    WORKER_MAX_CONNECTIONS,
    WORKER_MAX_IN_FLIGHT,
    WORKER_OUTBOX_BYTES,
)
from spear.protocol.messages import (
    ExecutionRequest,
    ExecutionResponse,
    ExecutionStatus,
    Shutdown,
)
from spear.transport.grpc.batching import Outbox, batch_limit, receive_limit, write_batches
from spear.transport.grpc.generated import spear_runtime_pb2 as pb
from spear.transport.grpc.generated import spear_runtime_pb2_grpc as pb_grpc
from spear.transport.tls import TlsConfig
from spear.worker.auth import token_from_metadata, token_matches
from spear.worker.dispatcher import Dispatcher
from spear.worker.session import RESPONSE_TOO_LARGE, WorkerSession

log = logging.getLogger(__name__)

SERVICE_NAME = "spear.runtime.v1.SpearRuntime"
# Stays SERVING while the process is alive, draining or not: the liveness probe asks for it,
# so a pod that is draining (readiness NOT_SERVING) is not also restarted as "dead".
LIVENESS_SERVICE = "liveness"
_HEALTH_PREFIX = "/grpc.health.v1.Health/"
# Once the failure budget is spent, each failed call waits this long before its refusal...
TARPIT = 1.0
# ...at most this many at a time (more are refused at once).
MAX_TARPITTED = 32
# Streams (calls) one connection may have open at once.
MAX_CONCURRENT_STREAMS = 64

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
        # Bounded before trusted: connections (more are closed as they are accepted), the
        # time to complete the HTTP/2 handshake, calls per connection, and connections that
        # carry none.
        ("grpc.max_allowed_incoming_connections", WORKER_MAX_CONNECTIONS),
        ("grpc.server_handshake_timeout_ms", int(HANDSHAKE_TIMEOUT * 1000)),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.max_connection_idle_ms", int(IDLE_TIMEOUT * 1000)),
    ]


class TokenCheck(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without the right token before their request is read.

    Health is open (kubelet probes cannot present a token). A refused call is answered
    UNAUTHENTICATED by a streaming handler that never reads the request, so the body of a
    hostile call is never received beyond gRPC's flow-control window.
    """

    def __init__(self, token: str) -> None:
        self._token = token
        self.admission = Admission("gRPC worker", log)
        self._tarpit = asyncio.Semaphore(MAX_TARPITTED)
        self._deny = grpc.stream_unary_rpc_method_handler(self._refuse)

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any,
    ) -> Any:
        method: str = details.method or ""
        if method.startswith(_HEALTH_PREFIX):
            return await continuation(details)
        if token_matches(token_from_metadata(details.invocation_metadata), self._token):
            return await continuation(details)
        return self._deny

    async def _refuse(self, request_iterator: Any, context: Any) -> None:
        throttled = self.admission.throttled()
        self.admission.charge("missing or wrong token")
        if throttled and not self._tarpit.locked():
            async with self._tarpit:
                await asyncio.sleep(TARPIT)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong spear token")


class _Stream:
    """One host's stream: its session, outbox and reading."""

    __slots__ = ("ended", "outbox", "session")

    def __init__(self, dispatcher: Dispatcher, max_message_size: int, max_in_flight: int,
                 allow_shutdown: bool, on_shutdown: Callable[[Shutdown], None] | None,
                 metrics: Callable[[], dict[str, float]]) -> None:
        self.outbox = Outbox(WORKER_OUTBOX_BYTES)
        # Resolved when the stream should end: the host half-closed, or the worker drained.
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.session = WorkerSession(
            dispatcher, self.outbox.put, max_message_size=max_message_size,
            max_in_flight=max_in_flight, allow_shutdown=allow_shutdown, on_shutdown=on_shutdown,
            on_idle=self.end, metrics=metrics,
        )

    def end(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


class SpearRuntimeService(pb_grpc.SpearRuntimeServicer):
    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_in_flight: int = WORKER_MAX_IN_FLIGHT,
        allow_shutdown: bool = True,
        on_shutdown: Callable[[Shutdown], None] | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._max = max_message_size
        self._max_in_flight = max_in_flight
        self._allow_shutdown = allow_shutdown
        self._on_shutdown = on_shutdown
        self._streams: set[_Stream] = set()
        self._notice: bytes | None = None  # the Shutdown every stream gets once draining
        self._ended = False

    @property
    def streams(self) -> int:
        return len(self._streams)

    def end_streams(self) -> None:
        """End every stream cleanly (status OK) once queued replies are sent: the drain is
        over, and hosts should not wait for the server's grace period to find out."""
        self._ended = True
        for stream in self._streams:
            stream.end()

    def announce(self, message: Shutdown) -> None:
        """Tell every connected host (unsolicited) that this worker is going away, and
        refuse new requests on every stream."""
        payload = self._notice = encode(message)
        for stream in self._streams:
            stream.session.begin_drain()
            stream.outbox.put(payload)

    def _metrics(self) -> dict[str, float]:
        return {"streams": float(len(self._streams))}

    # -- the stream ---------------------------------------------------------------------------

    async def Channel(  # the gRPC method name
        self, request_iterator: AsyncIterator[pb.Envelope],
        context: grpc.aio.ServicerContext[pb.Envelope, pb.Envelope],
    ) -> None:
        # Registered before the host learns it is accepted, so a drain that starts right
        # after still reaches this stream.
        stream = _Stream(self._dispatcher, self._max, self._max_in_flight,
                         self._allow_shutdown, self._on_shutdown, self._metrics)
        self._streams.add(stream)
        if self._notice is not None:
            stream.session.begin_drain()
            stream.outbox.put(self._notice)
        if self._ended:
            stream.end()
        writer: asyncio.Task[None] | None = None
        reader: asyncio.Task[None] | None = None
        try:
            # Initial metadata tells the host it got past authentication before it sends work.
            await context.send_initial_metadata((("spear-protocol", "1"),))
            writer = asyncio.create_task(write_batches(stream.outbox, context.write,
                                                       batch_limit(self._max)))
            reader = asyncio.create_task(self._read_stream(stream, context))
            await stream.ended
            stream.outbox.close()
            await writer  # the replies already queued still go out
        finally:
            self._streams.discard(stream)
            stream.outbox.close()
            for call in stream.session.close():
                if call.on_cancel is not None:
                    call.on_cancel()
            for task in (reader, writer):
                if task is not None and not task.done():
                    task.cancel()

    async def _read_stream(
        self, stream: _Stream, context: grpc.aio.ServicerContext[pb.Envelope, pb.Envelope],
    ) -> None:
        session = stream.session
        try:
            while True:
                # Back-pressure: while the host does not take its replies, take no more work.
                await stream.outbox.wait_for_room()
                envelope = await context.read()
                if envelope is grpc.aio.EOF:
                    break
                for payload in envelope.messages:
                    # A bad message is answered with an error; the stream's framing is intact.
                    with contextlib.suppress(InvalidMessage):
                        session.handle(payload)
            # The host half-closed: finish what it asked for (the session ends the stream
            # when the last reply is queued), then end the stream.
            if not session.begin_drain():
                await stream.ended
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the call is over (cancelled, connection lost)
            log.debug("stream from %s ended: %s", context.peer(), exc)
        finally:
            stream.end()

    # -- unary ----------------------------------------------------------------------------------

    async def Execute(  # the gRPC method name
        self, request: pb.ExecuteRequest,
        context: grpc.aio.ServicerContext[pb.ExecuteRequest, pb.ExecuteResponse],
    ) -> pb.ExecuteResponse:
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
        RESPONSE_TOO_LARGE, response.execution_time_ms,
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
        allow_remote_shutdown: bool = False,
        max_in_flight: int = WORKER_MAX_IN_FLIGHT,
    ) -> None:
        self._dispatcher = dispatcher
        self._tls = tls
        self._health_address = health_address
        self._options = server_options(max_message_size)
        self.token_check = TokenCheck(token) if token is not None else None
        self.service = SpearRuntimeService(
            dispatcher, max_message_size=max_message_size, on_shutdown=on_shutdown,
            max_in_flight=max_in_flight,
            # A worker without a token would take a Shutdown from anyone who can reach it.
            allow_shutdown=token is not None or allow_remote_shutdown,
        )
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self.port = 0
        self.health_port = 0

    async def start(self, address: str) -> int:
        interceptors = [self.token_check] if self.token_check is not None else []
        server = grpc.aio.server(options=self._options, interceptors=interceptors)
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
