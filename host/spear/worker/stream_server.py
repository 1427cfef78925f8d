"""Serve one authenticated stream connection: frames in, `Dispatcher` calls, frames out.

Transport-free on purpose: the process worker dials its host and calls `serve_stream` after
the handshake; a pod worker that listens on TCP accepts a host, checks its handshake, and
calls the same function. Requests are served concurrently (one dispatcher call each),
replies leave in the order they finish, coalesced per loop iteration.

The connection ends on EOF (the host went away: its requests are cancelled), on a malformed
frame (logged, an `Error` is sent, the connection closes), or on `Shutdown` / the `stop`
event: graceful means new requests are refused while those in flight finish (up to the
drain timeout), then the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from spear import codec
from spear.errors import InvalidMessage
from spear.messages import (
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
from spear.transport.frame_io import FrameBuffer, FrameWriter, StreamTakeover
from spear.worker.dispatcher import Dispatcher

log = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 1024
DEFAULT_DRAIN_TIMEOUT = 30.0

_encode = codec.encode
_decode = codec.decode


async def serve_stream(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    dispatcher: Dispatcher,
    *,
    max_message_size: int,
    stop: asyncio.Event | None = None,
    on_shutdown: Callable[[Shutdown], None] | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
) -> None:
    """Serve requests on an authenticated connection until it ends; closes `writer`.

    `stop` (set by a signal handler, say) starts a graceful drain bounded by `drain_timeout`.
    `on_shutdown` is told about a `Shutdown` from the host before this connection drains.
    At most `max_in_flight` requests run at once; beyond that the socket is not read, so the
    host feels the back-pressure.
    """
    server = _StreamServer(reader, writer, dispatcher, max_message_size, max_in_flight,
                           drain_timeout, on_shutdown)
    await server.run(stop)


class _StreamServer:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        dispatcher: Dispatcher,
        max_message_size: int,
        max_in_flight: int,
        drain_timeout: float,
        on_shutdown: Callable[[Shutdown], None] | None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._dispatcher = dispatcher
        self._frames = FrameBuffer(max_message_size)
        self._max_message_size = max_message_size
        self._out = FrameWriter(writer)
        self._max_in_flight = max(1, max_in_flight)
        self._drain_timeout = drain_timeout
        self._on_shutdown = on_shutdown
        self._loop = asyncio.get_running_loop()
        self._transport: Any = writer.transport
        self._requests: dict[str, asyncio.Future[None]] = {}
        self._reading_paused = False
        self._unblock_task: asyncio.Task[None] | None = None
        self._draining = False
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._drain_task: asyncio.Task[None] | None = None

    async def run(self, stop: asyncio.Event | None) -> None:
        receiver = StreamTakeover(self._reader, self._writer, self._on_data, self._finish,
                                  self._on_lost)
        stop_task = (self._loop.create_task(self._wait_stop(stop), name="spear-worker-stop")
                     if stop is not None else None)
        receiver.start()
        try:
            await self._done
        finally:
            for helper in (stop_task, self._drain_task, self._unblock_task):
                if helper is not None and not helper.done():
                    helper.cancel()
            for request_task in list(self._requests.values()):
                request_task.cancel()
            await self._close()

    async def _wait_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._begin_shutdown(graceful=True, timeout=self._drain_timeout)

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            if not self._writer.is_closing():
                await asyncio.wait_for(self._out.drain(), 1.0)
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)

    def _finish(self) -> None:
        if not self._done.done():
            if self._requests and not self._draining:
                log.info("host closed the connection; cancelling %d requests",
                         len(self._requests))
            self._done.set_result(None)

    def _on_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self._done.done():
            log.info("connection to the host lost: %s", exc)
        self._finish()

    def _on_data(self, data: bytes) -> None:
        """The transport's read callback: every complete frame is handled right here."""
        if self._done.done():
            return
        handle = self._handle
        try:
            for payload in self._frames.feed(data):
                handle(_decode(payload))
        except InvalidMessage as exc:
            log.warning("closing the connection: invalid message from the host: %s", exc)
            with contextlib.suppress(Exception):
                self._out.write(_encode(Error("", f"invalid message: {exc}", "invalid_message")))
            self._finish()
            return
        if self._done.done() or self._reading_paused:
            return
        if len(self._requests) >= self._max_in_flight:
            self._pause_reading()  # resumed when a request finishes
        elif self._out.needs_drain:
            # Replies pile up faster than the host reads them: stop taking work.
            self._pause_reading()
            self._unblock_task = self._loop.create_task(self._resume_after_drain())

    def _pause_reading(self) -> None:
        self._reading_paused = True
        with contextlib.suppress(Exception):
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self._done.done():
            self._reading_paused = False
            with contextlib.suppress(Exception):
                self._transport.resume_reading()

    async def _resume_after_drain(self) -> None:
        try:
            await self._out.drain()
        except (ConnectionError, RuntimeError) as exc:
            self._on_lost(exc)
            return
        if len(self._requests) < self._max_in_flight:
            self._resume_reading()

    def _handle(self, message: RuntimeMessage) -> None:
        cls = type(message)
        if cls is ExecutionRequest:
            self._start(message)  # type: ignore[arg-type]
        elif cls is HealthCheck:
            status = "draining" if self._draining else "serving"
            reply = HealthResponse(message.request_id, status,  # type: ignore[union-attr]
                                   {"in_flight": float(len(self._requests))})
            self._out.write(_encode(reply))
        elif cls is Cancel:
            request_id = message.request_id  # type: ignore[union-attr]
            if request_id in self._requests:
                self._dispatcher.cancel(request_id, scope=self)
        elif cls is Shutdown:
            assert isinstance(message, Shutdown)
            if self._on_shutdown is not None:
                self._on_shutdown(message)
            self._begin_shutdown(message.graceful, message.timeout_ms / 1000.0)
        elif cls is Error:
            log.warning("host reported an error: %s", message)
        else:
            log.debug("ignoring unexpected %s from the host", cls.__name__)

    def _start(self, request: ExecutionRequest) -> None:
        request_id = request.request_id
        if self._draining:
            self._reply(ExecutionResponse(request_id, b"", ExecutionStatus.ERROR,
                                          "worker is shutting down", "unavailable"))
            return
        if request_id in self._requests:
            self._reply(ExecutionResponse(request_id, b"", ExecutionStatus.ERROR,
                                          f"request id {request_id!r} is already in flight",
                                          "duplicate_request"))
            return
        # A handler that finishes without waiting is answered inside this call.
        running = self._dispatcher.serve(request, self._finished, scope=self)
        if running is not None:
            self._requests[request_id] = running

    def _finished(self, response: ExecutionResponse) -> None:
        requests = self._requests
        if requests:
            requests.pop(response.request_id, None)
            if self._reading_paused and len(requests) < self._max_in_flight and (
                    self._unblock_task is None or self._unblock_task.done()):
                self._resume_reading()
        self._reply(response)

    def _reply(self, response: ExecutionResponse) -> None:
        if self._done.done() or self._writer.is_closing():
            return
        try:
            payload = _encode(response)
        except InvalidMessage as exc:
            payload = _encode(ExecutionResponse(response.request_id, b"", ExecutionStatus.ERROR,
                                                str(exc), "internal_error"))
        if len(payload) > self._max_message_size:
            # The host would drop the whole connection for an oversized frame; fail only
            # this request instead.
            payload = _encode(ExecutionResponse(
                response.request_id, b"", ExecutionStatus.ERROR,
                f"response of {len(payload)} bytes exceeds the maximum message size of "
                f"{self._max_message_size} bytes", "response_too_large"))
        self._out.write(payload)

    def _begin_shutdown(self, graceful: bool, timeout: float) -> None:
        if self._draining and graceful:
            return
        self._draining = True
        if not graceful or not self._requests:
            self._finish()
            return
        log.info("draining %d requests (up to %.3g s)", len(self._requests), timeout)
        self._drain_task = self._loop.create_task(self._drain(timeout))

    async def _drain(self, timeout: float) -> None:
        pending = list(self._requests.values())
        _, still_running = await asyncio.wait(pending, timeout=timeout)
        if still_running:
            log.warning("drain timed out; abandoning %d requests", len(still_running))
        # Let the replies of the last requests leave before the connection closes.
        await asyncio.sleep(0)
        self._finish()
