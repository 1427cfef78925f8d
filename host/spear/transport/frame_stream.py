"""`FrameStream`: an asyncio BufferedProtocol that speaks frames, for every asyncio stream
connection.

It owns the connection from the first byte: reads land in one reusable `ReceiveBuffer`
(no allocation per read), frames are split inside the transport's read callback (no reader
task, no StreamReader, no event-loop hop per message) and handed to `on_frame`; writes made
in one loop iteration leave in one send. The frame limit starts at the handshake limit and
the buffer at a few kilobytes, so before authentication a peer can make us hold
`PREAUTH_BUFFER` bytes at most; `authenticated()` raises both once the handshake is done.

Callbacks (set by the owner, swapped when the handshake hands the stream to a channel):
`on_frame(payload)` for each complete frame, `on_close(error)` once when the connection ends
(`error` is None for a clean EOF). A malformed frame length closes the connection with an
`InvalidMessage` as the error. A stream starts *held*: frames wait in its buffer (and
reading is paused) until an owner has set `on_frame` and calls `release()`, so nothing that
arrives before the owner is ready is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from spear.errors import ChannelClosed, InvalidMessage
from spear.protocol.framing import DEFAULT_CAPACITY, HEADER, HEADER_SIZE, ReceiveBuffer
from spear.protocol.limits import HANDSHAKE_FRAME_LIMIT

_pack_header = HEADER.pack
# The receive buffer of a connection that has not authenticated: one handshake frame fits.
PREAUTH_BUFFER = 2 * HANDSHAKE_FRAME_LIMIT

# Payloads above this are written as header + payload (two buffers) instead of being copied
# into one; below it one concatenated write is cheaper than a second syscall.
_COPY_LIMIT = 64 * 1024
# Frames coalesced before a batch is written without waiting for the end of the iteration:
# the peer can start on them while we produce the rest.
BATCH_FRAMES = 16

FrameCallback = Callable[[memoryview | bytes], None]
CloseCallback = Callable[[Exception | None], None]


def _ignore_frame(payload: memoryview | bytes) -> None:
    pass


def _ignore_close(error: Exception | None) -> None:
    pass


class FrameStream(asyncio.BufferedProtocol):
    """One framed connection. Create it through a loop's `create_connection`/`create_server`
    with a factory; `connected` resolves when the transport is up."""

    def __init__(self, *, max_frame: int = HANDSHAKE_FRAME_LIMIT,
                 on_connect: Callable[[FrameStream], None] | None = None) -> None:
        self.on_frame: FrameCallback = _ignore_frame
        self.on_close: CloseCallback = _ignore_close
        self._on_connect = on_connect
        self._frames = ReceiveBuffer(max_frame, PREAUTH_BUFFER)
        self._transport: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[bytes] = []
        self._scheduled = False  # a flush at the end of this iteration is scheduled
        self._wrote = False  # a frame went out since the last read
        # True while the transport's buffer is past its high-water mark: the writer should
        # `await drain()`. A plain attribute, read on every request.
        self.needs_drain = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._reading_paused = False
        # Nobody owns the frames yet: they wait in the buffer (reading paused) until an owner
        # sets `on_frame` and calls `release()`.
        self._holding = True
        self.closed: Exception | None = None  # why, once the connection is over
        self._close_reported = False
        self.eof = False  # the peer closed its side cleanly

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._reading_paused = True
        with contextlib.suppress(Exception):
            self._transport.pause_reading()
        if self._on_connect is not None:
            self._on_connect(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._frames.writable()

    def buffer_updated(self, nbytes: int) -> None:
        # The peer answered: the next write starts a new burst and may go out at once.
        if not self._scheduled:
            self._wrote = False
        if self._holding:
            self._frames.commit(nbytes)
            return
        try:
            payloads = self._frames.received(nbytes)
        except InvalidMessage as exc:
            self.fail(exc)
            return
        if len(payloads) == 1:  # the common case: one reply per read
            if self.closed is None:
                self.on_frame(payloads[0])
            return
        self._deliver_each(payloads)

    def _deliver(self) -> None:
        """Deliver what is buffered (after `release()`)."""
        if self.closed is not None:
            return
        try:
            payloads = self._frames.frames()
        except InvalidMessage as exc:
            self.fail(exc)
            return
        self._deliver_each(payloads)

    def _deliver_each(self, payloads: list[memoryview]) -> None:
        for index, payload in enumerate(payloads):
            if self.closed is not None:
                return
            self.on_frame(payload)
            if self._holding:
                # The owner changes hands (a handshake is done): keep the rest for the next.
                self._frames.unread(sum(len(p) + 4 for p in payloads[index + 1:]))
                return

    def eof_received(self) -> bool:
        self.eof = True
        self._finish(None)
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc if exc is not None else None)
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ChannelClosed(f"connection lost: {exc or 'closed'}"))
                waiter.exception()  # retrieved here: a closed stream is no news to the writer
        self._drain_waiters.clear()

    def pause_writing(self) -> None:
        self.needs_drain = True

    def resume_writing(self) -> None:
        self.needs_drain = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- the owner's side ---------------------------------------------------------------

    @property
    def transport(self) -> Any:
        return self._transport

    @property
    def max_frame(self) -> int:
        return self._frames.max_frame

    @property
    def receive_capacity(self) -> int:
        """The receive buffer's size now."""
        return self._frames.capacity

    def authenticated(self, max_frame: int) -> None:
        """The handshake is done: accept frames up to `max_frame` from now on."""
        self._frames.limit(max_frame, DEFAULT_CAPACITY)

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return self._frames.buffered

    def write(self, payload: bytes) -> int:
        """Queue one frame with `payload`; returns the bytes it adds to the wire."""
        if len(payload) > _COPY_LIMIT and not self._wrote and self.closed is None:
            # Large: header and payload as two buffers rather than a copy of the payload.
            self._wrote = True
            self._transport.write(_pack_header(len(payload)))
            self._transport.write(payload)
        else:
            self.write_frame(_pack_header(len(payload)) + payload)
        return HEADER_SIZE + len(payload)

    def write_frame(self, data: bytes) -> None:
        """Queue bytes that are already one or more whole frames (header included).

        Written when nothing has been written since the last read, they go out at once (no
        added latency for a lone request); frames written after them, before anything is
        read, are joined and sent by one callback at the end of the loop iteration (many
        requests in flight cost one send per batch, not one each).
        """
        if self.closed is not None:
            raise ChannelClosed(f"connection is closed: {self.closed}")
        if not self._wrote:
            self._wrote = True
            self._transport.write(data)
            return
        pending = self._pending
        pending.append(data)
        if len(pending) >= BATCH_FRAMES:
            self._pending = []
            self._transport.write(b"".join(pending))
        elif not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush_scheduled)

    def write_raw(self, data: bytes) -> None:
        """Bytes already framed (a handshake frame, a last error), while the transport is
        still open (also from an `on_close` callback that runs before it closes)."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            self.flush()
            transport.write(data)

    def flush(self) -> None:
        """Send what is coalescing now instead of at the end of the loop iteration."""
        pending = self._pending
        if pending:
            self._pending = []
            if not self._transport.is_closing():
                self._transport.write(b"".join(pending))

    def _flush_scheduled(self) -> None:
        self._scheduled = False
        self._wrote = False
        self.flush()

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        self.flush()
        if self.closed is not None:
            raise ChannelClosed(f"connection is closed: {self.closed}")
        if not self.needs_drain:
            return
        assert self._loop is not None
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def hold(self) -> None:
        """Deliver no more frames until `release()`: frames already received stay buffered
        (and reading pauses), so the handshake's next owner gets every one of them."""
        self._holding = True
        self.pause_reading()

    def release(self) -> None:
        """Deliver again, starting with what arrived while held."""
        if self._holding:
            self._holding = False
            self.resume_reading()
            self._deliver()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.closed is None:
            self._reading_paused = True
            with contextlib.suppress(Exception):
                self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.closed is None:
            self._reading_paused = False
            with contextlib.suppress(Exception):
                self._transport.resume_reading()

    def close(self) -> None:
        """Flush what is queued and close (the transport sends what it holds first)."""
        with contextlib.suppress(Exception):
            self.flush()
        if self._transport is not None:
            self._transport.close()
        self._finish(None)

    def fail(self, error: Exception) -> None:
        """Close because of `error` (reported to `on_close`)."""
        self._finish(error)
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self.flush()
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once, unsent bytes too."""
        if self._transport is not None:
            self._transport.abort()
        self._finish(None)

    def peer(self) -> str:
        """`unix:/path` or `tcp:host:port`, for logs."""
        if self._transport is None:
            return "stream"
        peername = self._transport.get_extra_info("peername")
        sockname = self._transport.get_extra_info("sockname")
        if isinstance(peername, tuple) and len(peername) >= 2:
            host, port = peername[:2]
            return f"tcp:[{host}]:{port}" if ":" in str(host) else f"tcp:{host}:{port}"
        return f"unix:{peername or sockname or '?'}"

    def _finish(self, error: Exception | None) -> None:
        if self._close_reported:
            return
        self._close_reported = True
        self.closed = error if error is not None else ChannelClosed("connection closed")
        callback, self.on_close = self.on_close, _ignore_close
        self.on_frame = _ignore_frame
        callback(error)
