"""`StreamChannel`: the channel over any framed byte stream (Unix socket, TCP, TLS).

It does not care who dialled whom: the process runtime accepts connections its workers dial,
while the Kubernetes runtime dials pods that listen. Either way it gets a `FrameStream` that
has already been authenticated (see `channel.handshake`).

Per message it does as little as it can: frames are split and decoded inside the
transport's read callback, each reply completes the future of the request waiting for it,
writes made in one loop iteration leave in one send, and no task or timer is created per
message. Deadlines cost nothing when a request is sent: a sweep that runs now and then while
requests are in flight gives each request it has not seen yet the deadline `now + timeout`
(the request was sent before `now`, so it never expires early) and fails those past theirs.
Most requests are answered before any sweep sees them. The sweep comes at least every
`SWEEP_FRACTION` of the shortest timeout in flight (and within `MAX_SWEEP_INTERVAL`), so a
request times out at most that much late.

Bounded before trusted: at most `HOST_MAX_IN_FLIGHT` requests wait at once (one more fails
with `TooManyInFlight`), unsolicited messages wait for `receive()` within `HOST_INBOX_BYTES`,
and a reply nobody waits for is dropped and counted (`ChannelStats.messages_dropped`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl as ssl_module
import time
from collections.abc import Callable

from spear.channel.base import CommunicationChannel
from spear.channel.capabilities import ChannelCapabilities
from spear.channel.handshake import present_token
from spear.channel.inbox import Inbox
from spear.config import ChannelConfig
from spear.errors import (
    ChannelClosed,
    CommunicationError,
    DuplicateRequestId,
    InvalidMessage,
    Timeout,
    TooManyInFlight,
)
from spear.instance_id import RuntimeInstanceId
from spear.protocol import codec
from spear.protocol.framing import HEADER_SIZE, frame
from spear.protocol.limits import HOST_INBOX_BYTES, HOST_MAX_IN_FLIGHT
from spear.protocol.messages import (
    Ack,
    Cancel,
    Error,
    ExecutionRequest,
    ExecutionResponse,
    HealthCheck,
    HealthResponse,
    RuntimeMessage,
)
from spear.stats import ChannelStats, StatsRecorder
from spear.transport.frame_stream import FrameStream
from spear.transport.tcp import dial_tcp
from spear.transport.unix import dial_unix

log = logging.getLogger(__name__)

# Heartbeats a peer may leave unanswered (with no other traffic either) before it is dead.
MISSED_HEARTBEATS = 3
# How late a request may time out, as a fraction of its timeout: the deadline sweep comes at
# least this often while requests are in flight.
SWEEP_FRACTION = 1 / 16
MAX_SWEEP_INTERVAL = 0.5
MIN_SWEEP_INTERVAL = 0.001
# A sweep looks at every request in flight; with very many of them it comes less often (this
# many seconds per request at least), so that it never takes more than a sliver of the CPU.
SWEEP_COST_PER_REQUEST = 2e-6

CloseCallback = Callable[["StreamChannel", CommunicationError], None]
_Future = asyncio.Future[RuntimeMessage]

_encode = codec.encode
_request_frame = codec.request_frame
_decode = codec.decode
_perf_counter = time.perf_counter
_NEVER = float("inf")


class StreamChannel(CommunicationChannel):
    """A full-duplex, multiplexed channel over one authenticated framed connection."""

    def __init__(
        self,
        instance_id: RuntimeInstanceId,
        stream: FrameStream,
        config: ChannelConfig | None = None,
        *,
        transport: str = "unix",
        peer: str | None = None,
        max_in_flight: int = HOST_MAX_IN_FLIGHT,
        inbox_bytes: int = HOST_INBOX_BYTES,
    ) -> None:
        self._instance_id = instance_id
        self._config = config = config or ChannelConfig()
        self._stream = stream
        self._capabilities = ChannelCapabilities(transport, notifies_close=True)
        self._peer = peer or stream.peer()
        self._loop = asyncio.get_running_loop()
        self._max_size = config.max_message_size
        self._max_frame = config.max_message_size + HEADER_SIZE
        self._max_in_flight = max_in_flight
        self._request_timeout = config.request_timeout
        # Requests in flight: id -> (the future its caller awaits, its timeout; 0 for none).
        self._pending: dict[str, tuple[_Future, float]] = {}
        self._create_future = self._loop.create_future
        self._stats = StatsRecorder()
        self._inbox = Inbox(inbox_bytes)
        self._closed: CommunicationError | None = None
        self._close_callbacks: list[CloseCallback] = []
        self._closed_event = asyncio.Event()
        self._closed_by_peer = False
        self._heartbeat_id: str | None = None
        # Deadlines of the requests a sweep has seen (perf_counter clock), and the next sweep.
        self._deadlines: dict[_Future, float] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_at = _NEVER  # when `_sweep` runs
        self._heartbeat_task: asyncio.Task[None] | None = None
        if config.keepalive_interval_ms > 0:
            self._heartbeat_task = self._loop.create_task(
                self._heartbeat_loop(config.keepalive_interval_ms / 1000.0),
                name=f"spear-heartbeat:{instance_id.full_id}",
            )
        stream.authenticated(config.max_message_size)
        stream.on_frame = self._on_frame
        stream.on_close = self._on_close
        if stream.closed is not None:
            self._on_close(stream.closed if not stream.eof else None)
        else:
            stream.release()  # frames that came right behind the handshake

    def __repr__(self) -> str:
        state = "open" if self._closed is None else "closed"
        return f"<StreamChannel {self._instance_id.full_id} {self._peer} {state}>"

    # -- CommunicationChannel -----------------------------------------------------------

    @property
    def instance_id(self) -> RuntimeInstanceId:
        return self._instance_id

    @property
    def capabilities(self) -> ChannelCapabilities:
        return self._capabilities

    @property
    def connected(self) -> bool:
        return self._closed is None

    @property
    def peer(self) -> str:
        """Where the other end is (`unix:/path`, `tcp:host:port`), for logs and reprs."""
        return self._peer

    @property
    def close_reason(self) -> CommunicationError | None:
        return self._closed

    @property
    def closed_by_peer(self) -> bool:
        """True when the peer hung up cleanly (EOF), as a worker does after `Shutdown`."""
        return self._closed_by_peer

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def send(self, message: RuntimeMessage) -> None:
        """Send one message that expects no reply (or whose reply arrives via `receive`)."""
        self._write(self._checked(message))
        if self._stream.needs_drain:
            await self._drain()

    async def receive(self) -> RuntimeMessage:
        """The next unsolicited message from the peer; `ChannelClosed` once closed and empty."""
        return await self._inbox.get()

    async def request_response(
        self, request: RuntimeMessage, timeout: float | None = None
    ) -> RuntimeMessage:
        """Send an `ExecutionRequest` or `HealthCheck` and wait for the reply with its id.

        `timeout=None` uses the config's `request_timeout_ms`; 0 (either way) waits forever.
        On timeout the peer is sent `Cancel(request_id)` and `Timeout` is raised.
        """
        cls = type(request)
        if cls is ExecutionRequest:
            data = _request_frame(request)  # type: ignore[arg-type]
        elif cls is HealthCheck:
            data = frame(_encode(request))
        else:
            raise InvalidMessage(
                f"request_response takes an ExecutionRequest or HealthCheck, not {cls.__name__}"
            )
        if self._closed is not None:
            raise ChannelClosed(f"channel to {self._instance_id.full_id} is closed: {self._closed}")
        if len(data) > self._max_frame:
            self._checked(request)  # raises, naming the sizes
        request_id: str = request.request_id  # type: ignore[union-attr]
        pending = self._pending
        if request_id in pending:
            raise DuplicateRequestId(f"request id {request_id!r} is already in flight")
        if len(pending) >= self._max_in_flight:
            raise TooManyInFlight(
                f"channel to {self._instance_id.full_id} already has {len(pending)} requests "
                f"in flight, its maximum"
            )
        stream = self._stream
        # Out first, bookkeeping after: the worker starts on it meanwhile. (Its reply cannot
        # be read before this coroutine yields, so registering after the write is safe.)
        stream.write_frame(data)
        started = _perf_counter()
        future: _Future = self._create_future()
        if timeout is None:
            timeout = self._request_timeout
        pending[request_id] = (future, timeout)
        stats = self._stats
        stats.messages_sent += 1
        stats.bytes_sent += len(data)
        if timeout > 0 and started + timeout * SWEEP_FRACTION < self._sweep_at:
            self._schedule_sweep(started, timeout)  # no sweep comes soon enough for this one
        try:
            if stream.needs_drain:
                await self._drain()
            reply = await future
        except asyncio.CancelledError:
            # The caller gave up: forget the request and tell the worker to stop working on it.
            if not future.done() or future.cancelled():
                entry = pending.get(request_id)
                if entry is not None and entry[0] is future:
                    del pending[request_id]
                self._send_cancel(request_id)
            raise
        stats.requests_completed += 1
        stats.latency_total += _perf_counter() - started
        return reply

    async def close(self) -> None:
        """Close the connection; requests still in flight fail with `ChannelClosed`."""
        self._shutdown(ChannelClosed(f"channel to {self._instance_id.full_id} was closed"),
                       error=False)
        # Give the transport a moment to send what it holds and report the close.
        await asyncio.sleep(0)

    async def get_stats(self) -> ChannelStats:
        return self._stats.snapshot()

    def stats(self) -> ChannelStats:
        """Synchronous `get_stats()`."""
        return self._stats.snapshot()

    # -- lifecycle hooks for runtimes ---------------------------------------------------

    def add_close_callback(self, callback: CloseCallback) -> None:
        """Call `callback(channel, reason)` once when the channel closes for any reason."""
        if self._closed is not None:
            self._loop.call_soon(callback, self, self._closed)
        else:
            self._close_callbacks.append(callback)

    async def wait_closed(self) -> CommunicationError:
        """Wait until the channel is closed; returns why."""
        await self._closed_event.wait()
        assert self._closed is not None
        return self._closed

    def fail(self, reason: str) -> None:
        """Close at once because the runtime knows the peer is gone (its process exited)."""
        self._shutdown(ChannelClosed(reason), error=True)

    # -- internals ----------------------------------------------------------------------

    def _checked(self, message: RuntimeMessage) -> bytes:
        payload = _encode(message)
        if len(payload) > self._max_size:
            raise InvalidMessage(
                f"message of {len(payload)} bytes exceeds the maximum of {self._max_size} bytes"
            )
        return payload

    def _write(self, payload: bytes) -> None:
        if self._closed is not None:
            raise ChannelClosed(f"channel to {self._instance_id.full_id} is closed: {self._closed}")
        self._stats.sent(self._stream.write(payload))

    async def _drain(self) -> None:
        try:
            await self._stream.drain()
        except ChannelClosed as exc:
            self._shutdown(ChannelClosed(f"connection lost while writing: {exc}"), error=True)
            raise ChannelClosed(str(self._closed)) from exc

    def _send_cancel(self, request_id: str) -> None:
        if self._closed is None:
            self._write(_encode(Cancel(request_id)))

    def _schedule_sweep(self, now: float, timeout: float) -> None:
        """Make sure a sweep comes soon enough for a request with `timeout` sent at `now`."""
        interval = max(min(timeout * SWEEP_FRACTION, MAX_SWEEP_INTERVAL), MIN_SWEEP_INTERVAL,
                       len(self._pending) * SWEEP_COST_PER_REQUEST)
        self._set_sweep(now, now + interval)

    def _set_sweep(self, now: float, when: float) -> None:
        if self._sweep is not None:
            if self._sweep_at <= when:
                return
            self._sweep.cancel()
        self._sweep_at = when
        # A millisecond late rather than early: uvloop's timers round to milliseconds.
        self._sweep = self._loop.call_later(when - now + 0.001, self._run_sweep)

    def _run_sweep(self) -> None:
        """Note the deadline of every request first seen now, fail those past theirs, and
        come back in time for the rest."""
        self._sweep = None
        self._sweep_at = _NEVER
        if self._closed is not None:
            return
        now = _perf_counter()
        pending = self._pending
        seen = self._deadlines
        deadlines: dict[_Future, float] = {}  # only those still in flight
        expired: list[tuple[str, _Future, float]] = []
        shortest = _NEVER
        earliest = _NEVER
        for request_id, (future, timeout) in pending.items():
            if timeout <= 0:
                continue
            deadline = seen.get(future)
            if deadline is None:
                deadline = now + timeout  # it was sent before now: never early
            elif deadline <= now:
                expired.append((request_id, future, timeout))
                continue
            deadlines[future] = deadline
            if deadline < earliest:
                earliest = deadline
            if timeout < shortest:
                shortest = timeout
        self._deadlines = deadlines
        for request_id, future, timeout in expired:
            self._expire(request_id, future, timeout)
        if self._closed is None and earliest < _NEVER:
            # Back for the earliest deadline, and soon enough to see new requests in time.
            interval = max(min(shortest * SWEEP_FRACTION, MAX_SWEEP_INTERVAL),
                           MIN_SWEEP_INTERVAL, len(pending) * SWEEP_COST_PER_REQUEST)
            self._set_sweep(now, min(earliest, now + interval))

    def _expire(self, request_id: str, future: _Future, timeout: float) -> None:
        if future.done():
            return
        entry = self._pending.get(request_id)
        if entry is not None and entry[0] is future:
            del self._pending[request_id]
        self._stats.timeout_errors += 1
        future.set_exception(Timeout(
            f"request {request_id!r} to {self._instance_id.full_id} timed out after {timeout:.3g} s"
        ))
        self._send_cancel(request_id)

    def _on_frame(self, payload: memoryview | bytes) -> None:
        """Every complete frame, inside the transport's read callback."""
        stats = self._stats
        stats.messages_received += 1
        stats.bytes_received += len(payload) + HEADER_SIZE
        try:
            message = _decode(payload)
        except InvalidMessage as exc:
            log.warning("closing channel to %s (%s): invalid message: %s",
                        self._instance_id.full_id, self._peer, exc)
            self._stream.write_raw(_error_frame(f"invalid message: {exc}"))
            self._shutdown(ChannelClosed(
                f"invalid message from {self._instance_id.full_id}: {exc}"), error=True)
            return
        cls = type(message)
        if cls is ExecutionResponse or cls is HealthResponse or cls is Ack or cls is Error:
            request_id: str = message.request_id  # type: ignore[union-attr]
            entry = self._pending.pop(request_id, None)
            if entry is not None:
                try:  # noqa: SIM105 (cheaper than a `with suppress` on every reply)
                    entry[0].set_result(message)
                except asyncio.InvalidStateError:
                    pass  # its caller was cancelled in this very loop iteration
                return
            if cls is HealthResponse and request_id == self._heartbeat_id:
                self._heartbeat_id = None
                return
            if cls is Error:
                self._deliver(message, len(payload))
                return
            stats.messages_dropped += 1
            log.debug("dropped a reply to %r from %s: nobody waits for it",
                      request_id, self._instance_id.full_id)
            return
        if cls is HealthCheck:
            self._write(_encode(HealthResponse(message.request_id, "serving", {})))  # type: ignore[union-attr]
            return
        self._deliver(message, len(payload))

    def _deliver(self, message: RuntimeMessage, size: int) -> None:
        if not self._inbox.put(message, size):
            self._stats.messages_dropped += 1
            log.debug("inbox of %s is full; dropped a %s", self._instance_id.full_id,
                      type(message).__name__)

    def _on_close(self, error: Exception | None) -> None:
        if self._closed is not None:
            return
        if error is None:
            self._closed_by_peer = True
            reason = ChannelClosed(f"{self._instance_id.full_id} closed the connection")
        elif isinstance(error, InvalidMessage):
            log.warning("closing channel to %s (%s): %s", self._instance_id.full_id,
                        self._peer, error)
            self._stream.write_raw(_error_frame(f"invalid message: {error}"))
            reason = ChannelClosed(f"invalid message from {self._instance_id.full_id}: {error}")
        else:
            reason = ChannelClosed(f"connection to {self._instance_id.full_id} lost: {error}")
        self._shutdown(reason, error=True)

    async def _heartbeat_loop(self, interval: float) -> None:
        missed = 0
        heard = self._stats.messages_received
        for n in itertools.count(1):
            await asyncio.sleep(interval)
            if self._closed is not None:
                return
            # Anything received since the last beat (not only its answer) shows it is alive.
            if self._heartbeat_id is None or self._stats.messages_received != heard:
                missed = 0
            else:
                missed += 1
                if missed >= MISSED_HEARTBEATS:
                    log.warning("%s missed %d heartbeats (%.3g s apart); declaring it dead",
                                self._instance_id.full_id, missed, interval)
                    self._shutdown(ChannelClosed(
                        f"{self._instance_id.full_id} missed {missed} heartbeats"), error=True)
                    return
            heard = self._stats.messages_received
            self._heartbeat_id = f"spear.heartbeat.{n}"
            self._write(_encode(HealthCheck(self._heartbeat_id)))

    def _shutdown(self, reason: CommunicationError, *, error: bool) -> None:
        if self._closed is not None:
            return
        self._closed = reason
        if error:
            self._stats.connection_errors += 1
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(reason)
                future.exception()  # the waiter may have gone; no "never retrieved" warning
        self._inbox.close(reason)
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._sweep_at = _NEVER
        self._deadlines.clear()
        task = self._heartbeat_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._stream.close()  # frames still coalescing (an Error, a Cancel) go out first
        self._closed_event.set()
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            try:
                callback(self, reason)
            except Exception:
                log.exception("close callback of %s failed", self._instance_id.full_id)


def _error_frame(text: str) -> bytes:
    return frame(_encode(Error("", text[:1024], "invalid_message")))


async def _establish(
    instance_id: RuntimeInstanceId,
    stream: FrameStream,
    config: ChannelConfig,
    token: str | None,
    transport: str,
    peer: str,
) -> StreamChannel:
    try:
        if token is not None:
            await present_token(
                stream, instance_id=instance_id.full_id, token=token,
                timeout=config.connect_timeout or 5.0, max_message_size=config.max_message_size,
            )
    except BaseException:
        stream.abort()
        raise
    return StreamChannel(instance_id, stream, config, transport=transport, peer=peer)


async def open_unix_channel(
    instance_id: RuntimeInstanceId,
    path: str,
    config: ChannelConfig,
    *,
    token: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> StreamChannel:
    """Dial the Unix socket at `path`, authenticate with `token` if given, return the channel."""
    stream = await dial_unix(path, FrameStream, timeout=config.connect_timeout, ssl=ssl)
    return await _establish(instance_id, stream, config, token, "unix", f"unix:{path}")


async def open_tcp_channel(
    instance_id: RuntimeInstanceId,
    address: str,
    config: ChannelConfig,
    *,
    token: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> StreamChannel:
    """Dial `host:port`, authenticate with `token` if given, return the channel."""
    stream = await dial_tcp(address, FrameStream, timeout=config.connect_timeout, ssl=ssl)
    return await _establish(instance_id, stream, config, token, "tcp", f"tcp:{address}")
