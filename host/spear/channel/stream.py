"""`StreamChannel`: the channel over any byte stream (Unix socket, TCP, TLS).

It does not care who dialled whom: the process runtime accepts connections its workers dial,
while the Kubernetes runtime dials pods that listen. Either way it gets an asyncio
(reader, writer) pair that has already been authenticated (see `channel.handshake`).

The transport's read callback (`StreamTakeover`, installed after the handshake) splits every
read into frames (`FrameBuffer`) and hands each reply straight to the request waiting for it
(`PendingRequests`); all writes go through one
`FrameWriter`, which coalesces the frames written in one loop iteration into one send. No
task is created per message, which keeps a round trip to a few callbacks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import socket
import ssl as ssl_module
import time
from collections.abc import Callable

from spear import codec
from spear.channel.base import CommunicationChannel
from spear.channel.correlation import PendingRequests
from spear.channel.handshake import send_handshake
from spear.config import ChannelConfig
from spear.errors import ChannelClosed, CommunicationError, InvalidMessage, Timeout
from spear.instance_id import RuntimeInstanceId
from spear.messages import (
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
from spear.transport.frame_io import FrameBuffer, FrameWriter, StreamTakeover
from spear.transport.tcp import dial_tcp
from spear.transport.unix import dial_unix

log = logging.getLogger(__name__)

# Heartbeats a peer may leave unanswered (with no other traffic either) before it is dead.
MISSED_HEARTBEATS = 3
# Unsolicited messages kept for `receive()`; beyond this the oldest reader is too slow.
INBOX_LIMIT = 10_000

# Distinct request timeouts that get a deadline queue; others fall back to a timer each.
MAX_DEADLINE_QUEUES = 16

CloseCallback = Callable[["StreamChannel", CommunicationError], None]
_Deadline = tuple[float, str, "asyncio.Future[RuntimeMessage]"]

_encode = codec.encode
_decode = codec.decode
_perf_counter = time.perf_counter


class StreamChannel(CommunicationChannel):
    """A full-duplex, multiplexed channel over one authenticated stream connection."""

    def __init__(
        self,
        instance_id: RuntimeInstanceId,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        config: ChannelConfig | None = None,
        *,
        peer: str | None = None,
    ) -> None:
        self._instance_id = instance_id
        self._config = config = config or ChannelConfig()
        self._reader = reader
        self._writer = writer
        self._peer = peer or _describe_peer(writer)
        self._loop = asyncio.get_running_loop()
        self._out = FrameWriter(writer)
        self._frames = FrameBuffer(config.max_message_size)
        self._max_size = config.max_message_size
        self._request_timeout = config.request_timeout
        self._pending = PendingRequests()
        self._stats = StatsRecorder()
        self._inbox = _Inbox(INBOX_LIMIT)
        self._closed: CommunicationError | None = None
        self._close_callbacks: list[CloseCallback] = []
        self._closed_event = asyncio.Event()
        self._closed_by_peer = False
        self._heartbeat_id: str | None = None
        self._heard = False
        self._receiver = StreamTakeover(reader, writer, self._on_data, self._on_eof,
                                        self._on_lost)
        self._deadlines: dict[float, collections.deque[_Deadline]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        if config.keepalive_interval_ms > 0:
            self._heartbeat_task = self._loop.create_task(
                self._heartbeat_loop(config.keepalive_interval_ms / 1000.0),
                name=f"spear-heartbeat:{instance_id.full_id}",
            )
        # Last: bytes that arrived with the handshake are dispatched right away.
        self._receiver.start()

    def __repr__(self) -> str:
        state = "open" if self._closed is None else "closed"
        return f"<StreamChannel {self._instance_id.full_id} {self._peer} {state}>"

    # -- CommunicationChannel -----------------------------------------------------------

    @property
    def instance_id(self) -> RuntimeInstanceId:
        return self._instance_id

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
        if self._closed is not None:
            raise ChannelClosed(f"channel to {self._instance_id.full_id} is closed: {self._closed}")
        self._write(self._checked(message))
        if self._out.needs_drain:
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
        if cls is not ExecutionRequest and cls is not HealthCheck:
            raise InvalidMessage(
                f"request_response takes an ExecutionRequest or HealthCheck, not {cls.__name__}"
            )
        payload = _encode(request)
        if len(payload) > self._max_size:
            self._checked(request)  # raises, naming the sizes
        request_id: str = request.request_id  # type: ignore[union-attr]
        future = self._pending.register(request_id)
        started = _perf_counter()
        out = self._out
        self._stats.sent(out.write(payload))
        if timeout is None:
            timeout = self._request_timeout
        handle = self._arm_deadline(request_id, future, timeout) if timeout > 0 else None
        try:
            if out.needs_drain:
                await self._drain()
            reply = await future
        except asyncio.CancelledError:
            # The caller gave up: forget the request and tell the worker to stop working on it.
            if not future.done() or future.cancelled():
                self._pending.discard(request_id)
                self._send_cancel(request_id)
            raise
        finally:
            if handle is not None:
                handle.cancel()
        self._stats.completed(_perf_counter() - started)
        return reply

    async def close(self) -> None:
        """Close the connection; requests still in flight fail with `ChannelClosed`."""
        self._shutdown(ChannelClosed(f"channel to {self._instance_id.full_id} was closed"),
                       error=False)
        # Bounded, and never swallowing the caller's own cancellation.
        closing = asyncio.ensure_future(self._writer.wait_closed())
        await asyncio.wait({closing}, timeout=1.0)
        if not closing.done():
            closing.cancel()
        elif not closing.cancelled():
            closing.exception()  # retrieved: a reset peer is no news here

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
        self._stats.sent(self._out.write(payload))

    async def _drain(self) -> None:
        try:
            await self._out.drain()
        except (ConnectionError, RuntimeError) as exc:
            self._shutdown(ChannelClosed(f"connection lost while writing: {exc}"), error=True)
            raise ChannelClosed(str(self._closed)) from exc

    def _send_cancel(self, request_id: str) -> None:
        if self._closed is None:
            self._write(_encode(Cancel(request_id)))

    def _arm_deadline(self, request_id: str, future: asyncio.Future[RuntimeMessage],
                      timeout: float) -> asyncio.TimerHandle | None:
        """Make `future` fail with `Timeout` after `timeout` seconds.

        Requests with the same timeout expire in the order they were sent, so each distinct
        timeout gets a FIFO queue and the channel keeps a single timer for the earliest
        deadline: a deque append per request instead of a timer handle. Answered requests
        are dropped from the queues lazily. Returns a handle only for the rare request whose
        timeout has no queue (too many distinct values); the caller cancels it.
        """
        queue = self._deadlines.get(timeout)
        if queue is None:
            if len(self._deadlines) >= MAX_DEADLINE_QUEUES:
                return self._loop.call_later(timeout, self._expire, request_id, future, timeout)
            queue = self._deadlines[timeout] = collections.deque()
        while queue and queue[0][2].done():
            queue.popleft()
        deadline = self._loop.time() + timeout
        queue.append((deadline, request_id, future))
        if len(queue) > 2 * len(self._pending) + 64:
            self._deadlines[timeout] = collections.deque(e for e in queue if not e[2].done())
        if self._timer is None or deadline < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._check_deadlines)
        return None

    def _check_deadlines(self) -> None:
        self._timer = None
        if self._closed is not None:
            return
        now = self._loop.time()
        earliest: float | None = None
        for timeout, queue in list(self._deadlines.items()):
            while queue:
                deadline, request_id, future = queue[0]
                if future.done():
                    queue.popleft()
                elif deadline <= now:
                    queue.popleft()
                    self._expire(request_id, future, timeout)
                else:
                    break
            if not queue:
                del self._deadlines[timeout]
            elif earliest is None or queue[0][0] < earliest:
                earliest = queue[0][0]
        if earliest is not None:
            self._timer = self._loop.call_at(earliest, self._check_deadlines)

    def _expire(self, request_id: str, future: asyncio.Future[RuntimeMessage],
                timeout: float) -> None:
        if future.done():
            return
        self._pending.discard(request_id)
        self._stats.timeout_errors += 1
        future.set_exception(Timeout(
            f"request {request_id!r} to {self._instance_id.full_id} timed out after {timeout:.3g} s"
        ))
        self._send_cancel(request_id)

    def _on_data(self, data: bytes) -> None:
        """The transport's read callback: split, decode and dispatch every complete frame."""
        if self._closed is not None:
            return
        self._heard = True
        received = self._stats.received
        dispatch = self._dispatch
        try:
            for payload in self._frames.feed(data):
                received(len(payload) + 4)
                dispatch(_decode(payload))
                if self._closed is not None:
                    return
        except InvalidMessage as exc:
            log.warning("closing channel to %s (%s): invalid message: %s",
                        self._instance_id.full_id, self._peer, exc)
            with contextlib.suppress(Exception):
                self._write(_encode(Error("", f"invalid message: {exc}", "invalid_message")))
            self._shutdown(ChannelClosed(
                f"invalid message from {self._instance_id.full_id}: {exc}"), error=True)
        except Exception as exc:
            # A bug here must not leave callers waiting forever on a channel nobody reads.
            log.exception("reader of %s failed", self._instance_id.full_id)
            self._shutdown(ChannelClosed(
                f"reader of {self._instance_id.full_id} failed: {exc!r}"), error=True)

    def _on_eof(self) -> None:
        if self._closed is None:
            self._closed_by_peer = True
            self._shutdown(ChannelClosed(
                f"{self._instance_id.full_id} closed the connection"), error=True)

    def _on_lost(self, exc: Exception | None) -> None:
        if self._closed is None:
            if exc is None:
                self._on_eof()
            else:
                self._shutdown(ChannelClosed(
                    f"connection to {self._instance_id.full_id} lost: {exc}"), error=True)

    def _dispatch(self, message: RuntimeMessage) -> None:
        cls = type(message)
        if cls is ExecutionResponse or cls is HealthResponse or cls is Ack or cls is Error:
            request_id: str = message.request_id  # type: ignore[union-attr]
            if cls is HealthResponse and request_id == self._heartbeat_id:
                self._heartbeat_id = None
                return
            if self._pending.resolve(request_id, message):
                return
            if cls is Error:
                self._inbox.put(message)
                return
            log.debug("dropping reply %r from %s: nobody waits for it (timed out or cancelled)",
                      request_id, self._instance_id.full_id)
            return
        if cls is HealthCheck:
            self._write(_encode(HealthResponse(message.request_id, "serving", {})))  # type: ignore[union-attr]
            return
        if not self._inbox.put(message):
            log.warning("inbox of %s is full; dropping %s", self._instance_id.full_id,
                        cls.__name__)

    async def _heartbeat_loop(self, interval: float) -> None:
        missed = 0
        for n in itertools.count(1):
            await asyncio.sleep(interval)
            if self._closed is not None:
                return
            if self._heartbeat_id is None or self._heard:
                missed = 0
            else:
                missed += 1
                if missed >= MISSED_HEARTBEATS:
                    log.warning("%s missed %d heartbeats (%.3g s apart); declaring it dead",
                                self._instance_id.full_id, missed, interval)
                    self._shutdown(ChannelClosed(
                        f"{self._instance_id.full_id} missed {missed} heartbeats"), error=True)
                    return
            self._heard = False
            self._heartbeat_id = f"spear.heartbeat.{n}"
            self._write(_encode(HealthCheck(self._heartbeat_id)))

    def _shutdown(self, reason: CommunicationError, *, error: bool) -> None:
        if self._closed is not None:
            return
        self._closed = reason
        if error:
            self._stats.connection_errors += 1
        self._pending.fail_all(reason)
        self._inbox.close(reason)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadlines.clear()
        current = asyncio.current_task()
        task = self._heartbeat_task
        if task is not None and task is not current:
            task.cancel()
        with contextlib.suppress(Exception):
            self._out.flush()  # frames still coalescing (an Error, a Cancel) go out first
            self._writer.close()
        self._closed_event.set()
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            try:
                callback(self, reason)
            except Exception:
                log.exception("close callback of %s failed", self._instance_id.full_id)


class _Inbox:
    """Unsolicited messages waiting for `receive()`; closing wakes every receiver."""

    __slots__ = ("_closed", "_items", "_limit", "_waiters")

    def __init__(self, limit: int) -> None:
        self._items: collections.deque[RuntimeMessage] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed: CommunicationError | None = None
        self._limit = limit

    def put(self, message: RuntimeMessage) -> bool:
        if len(self._items) >= self._limit:
            return False
        self._items.append(message)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
        return True

    def close(self, reason: CommunicationError) -> None:
        self._closed = reason
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def get(self) -> RuntimeMessage:
        while not self._items:
            if self._closed is not None:
                raise ChannelClosed(str(self._closed))
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # Pass a wake-up we may have consumed on to the next receiver.
                if waiter.done() and not waiter.cancelled() and self._items:
                    self._wake_one()
                raise
        return self._items.popleft()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _describe_peer(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return "stream"
    try:
        if sock.family == getattr(socket, "AF_UNIX", None):
            return f"unix:{sock.getsockname() or sock.getpeername() or '?'}"
        host, port = sock.getpeername()[:2]
        return f"tcp:{host}:{port}"
    except OSError:
        return "stream"


async def _establish(
    instance_id: RuntimeInstanceId,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    config: ChannelConfig,
    token: str | None,
    peer: str,
) -> StreamChannel:
    try:
        if token is not None:
            await send_handshake(
                reader, writer, instance_id=instance_id.full_id, token=token,
                timeout=config.connect_timeout or 5.0, max_message_size=config.max_message_size,
            )
    except BaseException:
        writer.close()
        raise
    return StreamChannel(instance_id, reader, writer, config, peer=peer)


async def open_unix_channel(
    instance_id: RuntimeInstanceId,
    path: str,
    config: ChannelConfig,
    *,
    token: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> StreamChannel:
    """Dial the Unix socket at `path`, authenticate with `token` if given, return the channel."""
    reader, writer = await dial_unix(path, timeout=config.connect_timeout, ssl=ssl)
    return await _establish(instance_id, reader, writer, config, token, f"unix:{path}")


async def open_tcp_channel(
    instance_id: RuntimeInstanceId,
    address: str,
    config: ChannelConfig,
    *,
    token: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> StreamChannel:
    """Dial `host:port`, authenticate with `token` if given, return the channel."""
    reader, writer = await dial_tcp(address, timeout=config.connect_timeout, ssl=ssl)
    return await _establish(instance_id, reader, writer, config, token, f"tcp:{address}")
