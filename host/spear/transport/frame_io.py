"""Frames in bulk: split many frames out of one read, and coalesce many writes into one send.

`framing.read_frame` reads one frame per await, which costs an event-loop wakeup per message.
A busy socket channel instead reads whatever the kernel has (often dozens of frames) and
splits it with `FrameBuffer`; replies produced in the same loop iteration leave in one
`send` through `FrameWriter`. Both sides of a stream connection (the host's channel and the
worker's server) use these two classes, so the wire format lives in exactly one place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from spear.transport.framing import HEADER, HEADER_SIZE, check_length

# Payloads above this are written as header + payload (two buffers) instead of being copied
# into one; below it one concatenated write is cheaper than a second syscall.
_COPY_LIMIT = 64 * 1024
# Frames coalesced before a batch is written without waiting for the end of the iteration.
BATCH_FRAMES = 16
_BATCH_PARTS = 2 * BATCH_FRAMES
_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack


class FrameBuffer:
    """Incremental frame splitter. The length is checked before a byte of payload is kept."""

    __slots__ = ("_buf", "_max_size", "_need")

    def __init__(self, max_size: int) -> None:
        self._buf = bytearray()
        self._max_size = max_size
        # Total bytes the buffer must hold before the frame at its head is complete.
        self._need = HEADER_SIZE

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | memoryview]:
        """Add `data`; return the payloads of every frame it completes, in order.

        Raises `InvalidMessage` for an empty or oversized frame; the buffer is then unusable
        (the stream has lost sync), so the caller must close the connection.
        """
        buf = self._buf
        if not buf:
            # Fast path: frames straight out of the (immutable) chunk, no copy.
            return self._split(data)
        buf += data
        if len(buf) < self._need:
            return []
        data = bytes(buf)
        buf.clear()
        return self._split(data)

    def _split(self, data: bytes) -> list[bytes | memoryview]:
        frames: list[bytes | memoryview] = []
        view = memoryview(data)
        size = len(data)
        pos = 0
        max_size = self._max_size
        while size - pos >= HEADER_SIZE:
            (length,) = _unpack_header(data, pos)
            if length == 0 or length > max_size:
                check_length(length, max_size)
            end = pos + HEADER_SIZE + length
            if end > size:
                self._need = end - pos
                self._buf += view[pos:]
                return frames
            frames.append(view[pos + HEADER_SIZE:end])
            pos = end
        self._need = HEADER_SIZE
        if pos < size:
            self._buf += view[pos:]
        return frames


class FrameWriter:
    """Writes frames to a transport, coalescing those produced in the same loop iteration.

    The first frame of an iteration goes out at once (no added latency for a lone request);
    frames written after it in the same iteration are joined and sent by one callback at the
    end of the iteration. Writes never interleave: everything goes through one transport.
    """

    __slots__ = ("_high_water", "_loop", "_pending", "_scheduled", "_transport", "_writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._transport = writer.transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._scheduled = False
        self._high_water = self._transport.get_write_buffer_limits()[1]

    def write(self, payload: bytes) -> int:
        """Queue one frame; returns the bytes it adds to the wire."""
        header = _pack_header(len(payload))
        if self._scheduled:
            pending = self._pending
            pending.append(header)
            pending.append(payload)
            if len(pending) >= _BATCH_PARTS:
                # Hand a batch to the kernel now, so the peer can start on it while we
                # produce the rest: both processes work at once instead of taking turns.
                self._pending = []
                self._transport.write(b"".join(pending))
        else:
            self._scheduled = True
            self._loop.call_soon(self._flush)
            if len(payload) > _COPY_LIMIT:
                self._transport.write(header)
                self._transport.write(payload)
            else:
                self._transport.write(header + payload)
        return HEADER_SIZE + len(payload)

    def flush(self) -> None:
        """Send what is coalescing now instead of at the end of the loop iteration."""
        pending = self._pending
        if pending:
            self._pending = []
            if not self._transport.is_closing():
                self._transport.write(b"".join(pending))

    def _flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        if pending:
            self._pending = []
            if not self._transport.is_closing():
                self._transport.write(b"".join(pending))

    @property
    def needs_drain(self) -> bool:
        """True when the kernel is not keeping up and the caller should `await drain()`."""
        return self._transport.get_write_buffer_size() > self._high_water

    async def drain(self) -> None:
        self.flush()
        await self._writer.drain()


class StreamTakeover(asyncio.Protocol):
    """Receives an authenticated stream's bytes straight from its transport.

    Streams are convenient for the handshake, but `StreamReader.read` costs a task wake-up
    (one event-loop iteration) per read. After the handshake a channel or server installs
    this protocol on the transport instead: `on_data` runs inside the transport's read
    callback. Everything else (write flow control for `StreamWriter.drain`, `wait_closed`)
    is still delegated to the stream's own protocol, so the `StreamWriter` keeps working.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_data: Callable[[bytes], None],
        on_eof: Callable[[], None],
        on_lost: Callable[[Exception | None], None],
    ) -> None:
        self._reader = reader
        self._inner: Any = writer._protocol  # type: ignore[attr-defined]
        self._transport: Any = writer.transport
        self._on_data = on_data
        self._on_eof = on_eof
        self._on_lost = on_lost
        self._lost = False

    def start(self) -> None:
        """Install on the transport, then replay what the `StreamReader` already buffered."""
        reader: Any = self._reader
        self._transport.set_protocol(self)
        buffered = getattr(reader, "_buffer", None)
        if buffered:
            data = bytes(buffered)
            buffered.clear()
            self._on_data(data)
        if getattr(reader, "_paused", False):
            reader._paused = False
            with contextlib.suppress(Exception):
                self._transport.resume_reading()
        exception = reader.exception()
        if exception is not None:
            self.connection_lost(exception)
        elif reader.at_eof():
            self._on_eof()

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def eof_received(self) -> bool | None:
        result = self._inner.eof_received()
        self._on_eof()
        return result  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        with contextlib.suppress(Exception):
            self._inner.connection_lost(exc)
        self._on_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
