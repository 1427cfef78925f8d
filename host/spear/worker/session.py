"""`WorkerSession`: the message switch of one host connection (a socket or a gRPC stream).

Both worker servers feed it the payloads they receive and give it a `send` for what goes
back; it decodes, refuses what it must (draining, a duplicate id, too many in flight), starts
requests on a `Runner`, answers health checks, honours `Cancel` and `Shutdown`, and encodes
each reply exactly once (a reply too large for the host becomes an error reply instead).
The servers differ only in how bytes move and how handlers run, so the rules of the
protocol (docs/wire-protocol.md) exist once.

Thread-safe: a blocking server calls `handle` from whichever thread reads and `Call.finish`
from handler threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from spear.errors import InvalidMessage
from spear.protocol import codec
from spear.protocol.limits import WORKER_IN_FLIGHT_BYTES, WORKER_MAX_IN_FLIGHT
from spear.protocol.messages import (
    Cancel,
    Error,
    ExecutionRequest,
    ExecutionResponse,
    ExecutionStatus,
    HealthCheck,
    HealthResponse,
    RuntimeMessage,
    Shutdown,
)
from spear.worker.handler import cancelled, failure

log = logging.getLogger(__name__)

_encode = codec.encode
_decode = codec.decode

# Error codes of the replies the session itself makes (docs/wire-protocol.md).
DUPLICATE = "duplicate_request"
TOO_MANY = "too_many_requests"
UNAVAILABLE = "unavailable"
RESPONSE_TOO_LARGE = "response_too_large"
REQUEST_TOO_LARGE = "request_too_large"
FORBIDDEN = "forbidden"


class Call:
    """One request in flight. `finish` answers it (once; later answers are dropped), from
    any thread; `on_cancel`, when the runner sets it, stops the work on `Cancel`."""

    __slots__ = ("_answer", "answered", "on_cancel", "request", "size")

    def __init__(self, request: ExecutionRequest,
                 answer: Callable[[Call, ExecutionResponse], None], size: int = 0) -> None:
        self.request = request
        self._answer = answer
        self.answered = False
        self.on_cancel: Callable[[], object] | None = None
        self.size = size  # bytes of the request, counted against the in-flight budget

    def finish(self, response: ExecutionResponse) -> None:
        self._answer(self, response)


class Runner(Protocol):
    def start(self, call: Call) -> None:
        """Run `call.request` and `call.finish` its response; never raise for a handler."""


class WorkerSession:
    def __init__(
        self,
        runner: Runner,
        send: Callable[[bytes], None],
        *,
        max_message_size: int,
        max_in_flight: int = WORKER_MAX_IN_FLIGHT,
        max_in_flight_bytes: int = WORKER_IN_FLIGHT_BYTES,
        allow_shutdown: bool = True,
        on_shutdown: Callable[[Shutdown], None] | None = None,
        on_idle: Callable[[], None] | None = None,
        metrics: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self._runner = runner
        self._send = send
        self.max_message_size = max_message_size
        self.max_in_flight = max(1, max_in_flight)
        self.max_in_flight_bytes = max_in_flight_bytes
        self.in_flight_bytes = 0
        self.allow_shutdown = allow_shutdown
        self._on_shutdown = on_shutdown
        self._on_idle = on_idle
        self._metrics = metrics
        self._lock = threading.Lock()
        self.calls: dict[str, Call] = {}
        self.draining = False
        self.closed = False

    @property
    def in_flight(self) -> int:
        return len(self.calls)

    # -- inbound ------------------------------------------------------------------------

    def handle(self, payload: bytes | memoryview) -> None:
        """One message from the host. Raises `InvalidMessage` (after telling the host) when
        it is not a valid message; the caller then closes the connection."""
        self.dispatch(self.decode(payload), len(payload))

    def decode(self, payload: bytes | memoryview) -> RuntimeMessage:
        try:
            return _decode(payload)
        except InvalidMessage as exc:
            self.refuse_invalid(exc)
            raise

    def refuse_invalid(self, exc: InvalidMessage) -> None:
        """Tell the host its message was invalid (the caller then closes the connection)."""
        log.warning("invalid message from the host: %s", exc)
        self._send(_encode(Error("", f"invalid message: {exc}"[:1024], "invalid_message")))

    def dispatch(self, message: RuntimeMessage, size: int) -> None:
        """One decoded message of `size` bytes from the host."""
        cls = type(message)
        if cls is ExecutionRequest:
            self._start(message, size)  # type: ignore[arg-type]
        elif cls is HealthCheck:
            metrics = {"in_flight": float(len(self.calls))}
            if self._metrics is not None:
                metrics.update(self._metrics())
            status = "draining" if self.draining else "serving"
            self._send(_encode(HealthResponse(message.request_id, status,  # type: ignore[union-attr]
                                              metrics)))
        elif cls is Cancel:
            call = self.calls.get(message.request_id)  # type: ignore[union-attr]
            if call is not None:
                if call.on_cancel is not None:
                    # The runner can stop it (an async handler's task): its ending answers
                    # "cancelled", once the handler has really stopped.
                    call.on_cancel()
                else:
                    # A thread cannot be stopped: answer now, and drop its late result.
                    self.answer(call, cancelled(call.request.request_id))
        elif cls is Shutdown:
            self._shutdown(message)  # type: ignore[arg-type]
        elif cls is Error:
            log.warning("the host reported an error: %s (%s)", message.message,  # type: ignore[union-attr]
                        message.code)  # type: ignore[union-attr]
        else:
            log.debug("ignoring an unexpected %s from the host", cls.__name__)

    def _start(self, request: ExecutionRequest, size: int) -> None:
        rid = request.request_id
        refusal: ExecutionResponse | None = None
        with self._lock:
            if self.closed:
                return
            if self.draining:
                refusal = failure(rid, "worker is shutting down", UNAVAILABLE)
            elif rid in self.calls:
                refusal = failure(rid, f"request id {rid!r} is already in flight", DUPLICATE)
            elif len(self.calls) >= self.max_in_flight:
                refusal = failure(rid, f"this connection already has {len(self.calls)} "
                                  "requests in flight, the worker's maximum", TOO_MANY)
            elif size > self.max_message_size:
                refusal = failure(rid, f"request of {size} bytes exceeds this worker's maximum "
                                  f"of {self.max_message_size} bytes", REQUEST_TOO_LARGE)
            elif self.calls and self.in_flight_bytes + size > self.max_in_flight_bytes:
                refusal = failure(rid, f"this connection already has {self.in_flight_bytes} "
                                  f"bytes of requests in flight; {size} more would pass the "
                                  f"worker's maximum of {self.max_in_flight_bytes}", TOO_MANY)
            else:
                call = self.calls[rid] = Call(request, self.answer, size)
                self.in_flight_bytes += size
        if refusal is not None:
            self._send(_encode(refusal))
            return
        self._runner.start(call)

    def adopt(self, request: ExecutionRequest) -> Call | None:
        """Register a request a server started without the session (run inline) once it
        turns out to take a while, so that `Cancel`, deadlines, duplicates and drains see
        it; None if its id is taken meanwhile or the session is closed."""
        with self._lock:
            if self.closed or request.request_id in self.calls:
                return None
            call = self.calls[request.request_id] = Call(request, self.answer)
            return call  # not counted in bytes: it was read and started within one read

    def refuse(self, request: ExecutionRequest, message: str, code: str) -> None:
        self._send(_encode(failure(request.request_id, message, code)))

    def encoded(self, response: ExecutionResponse) -> bytes:
        """The reply's payload, or an error reply when it cannot be sent as it is."""
        return self._encoded(response)

    def _shutdown(self, message: Shutdown) -> None:
        if not self.allow_shutdown:
            log.warning("refused a Shutdown from the network: this worker has no token; start "
                        "it with --allow-remote-shutdown to honour one")
            self._send(_encode(Error("", "shutdown is not allowed from the network on a worker "
                                     "without a token", FORBIDDEN)))
            return
        self.draining = True
        if self._on_shutdown is not None:
            self._on_shutdown(message)

    # -- outbound -----------------------------------------------------------------------

    def answer(self, call: Call, response: ExecutionResponse) -> None:
        """Send `response` for `call` unless it was answered already (cancelled, timed out)."""
        with self._lock:
            if call.answered:
                return
            call.answered = True
            calls = self.calls
            rid = call.request.request_id
            if calls.get(rid) is call:
                del calls[rid]
                self.in_flight_bytes -= call.size
            idle = self.draining and not calls
            closed = self.closed
        if not closed:
            self._send(self._encoded(response))
        if idle and self._on_idle is not None:
            self._on_idle()

    def _encoded(self, response: ExecutionResponse) -> bytes:
        try:
            payload = _encode(response)
        except InvalidMessage as exc:
            payload = _encode(failure(response.request_id, str(exc), "internal_error"))
        if len(payload) > self.max_message_size:
            # The host would drop the whole connection for an oversized frame; fail only this
            # request instead.
            payload = _encode(ExecutionResponse(
                response.request_id, b"", ExecutionStatus.ERROR,
                f"response of {len(payload)} bytes exceeds the maximum message size of "
                f"{self.max_message_size} bytes", RESPONSE_TOO_LARGE,
                response.execution_time_ms))
        return payload

    def begin_drain(self) -> bool:
        """Refuse new requests from now on; True when nothing is in flight already."""
        with self._lock:
            self.draining = True
            return not self.calls

    def close(self) -> list[Call]:
        """The connection is gone: drop every answer still to come; returns the calls that
        were in flight (for their runners to cancel)."""
        with self._lock:
            self.closed = True
            calls = list(self.calls.values())
            self.calls.clear()
            self.in_flight_bytes = 0
            for call in calls:
                call.answered = True
        return calls
