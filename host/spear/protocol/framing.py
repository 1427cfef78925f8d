"""Length-prefixed frames: a 4-byte big-endian length, then the payload.

The length is checked against the receiver's current maximum *before* any byte of payload is
kept, so a hostile 4 GiB prefix costs nothing; before authentication that maximum is a few
kilobytes (`limits.HANDSHAKE_FRAME_LIMIT`).

`ReceiveBuffer` is where both ends of every stream connection, blocking (`recv_into`) or
asyncio (`BufferedProtocol`), receive: one reusable buffer that reads land in and frames are
parsed out of in place. Receiving into a fresh `bytes` per read instead costs an allocation
(on Linux a 256 KiB read buffer is an mmap, a page fault and an munmap) for every message.
"""

from __future__ import annotations

import struct

from spear.errors import InvalidMessage

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack

# What a buffer holds between frames; a larger frame grows it for as long as it takes.
DEFAULT_CAPACITY = 256 * 1024
# Below this much free space at the end, the unread bytes move to the front before a read.
_MIN_READ = 16 * 1024


def frame(payload: bytes) -> bytes:
    return _pack_header(len(payload)) + payload


def header(length: int) -> bytes:
    return _pack_header(length)


def check_length(length: int, max_size: int) -> None:
    if length == 0:
        raise InvalidMessage("empty frame")
    if length > max_size:
        raise InvalidMessage(f"frame of {length} bytes exceeds the maximum of {max_size} bytes")


class ReceiveBuffer:
    """Reads go into `writable()`, `commit(n)` says how many arrived, `frames()` returns the
    complete frames as views into the buffer.

    The views are valid until the next `writable()`: decode them at once. The buffer holds
    at most `capacity` bytes, or one frame of up to `max_frame` (+4) while such a frame is
    arriving; `max_frame` may be raised once the peer has authenticated.
    """

    __slots__ = ("_big", "_buf", "_capacity", "_end", "_need", "_start", "_view", "max_frame")

    def __init__(self, max_frame: int, capacity: int = DEFAULT_CAPACITY) -> None:
        self.max_frame = max_frame
        self._capacity = capacity
        self._buf = bytearray(capacity)
        self._view = memoryview(self._buf)
        self._start = 0  # first unread byte
        self._end = 0  # end of the bytes received
        # Total bytes the frame at `_start` needs (header included), once its header is in.
        self._need = HEADER_SIZE
        self._big = False  # the last frame did not fit the resting capacity

    @property
    def buffered(self) -> int:
        """Bytes received but not returned as frames yet."""
        return self._end - self._start

    @property
    def capacity(self) -> int:
        return len(self._buf)

    def limit(self, max_frame: int, capacity: int | None = None) -> None:
        """Change the frame limit (after the handshake) and the resting capacity."""
        self.max_frame = max_frame
        if capacity is not None:
            self._capacity = capacity

    def writable(self) -> memoryview:
        """Where the next read should put its bytes (never empty)."""
        start, end = self._start, self._end
        if start == end:
            # Everything received was used (the common case): the whole buffer is free.
            self._start = self._end = 0
            if not self._big and len(self._buf) != self._capacity:
                # Large frames are over: give their room back (not between two of them).
                self._resize(self._capacity)
            return self._view
        size = len(self._buf)
        need = self._need
        if need > size - start:
            # The frame at the head does not fit where it starts: make room (its length
            # was checked against the limit when its header arrived).
            if need > size:
                self._resize(need)
            else:
                self._compact()
        elif size - end < _MIN_READ and start > 0:
            self._compact()
        return self._view[self._end:]

    def commit(self, count: int) -> None:
        self._end += count

    def received(self, count: int) -> list[memoryview]:
        """`commit(count)` then `frames()`, in one call (the read path of every message)."""
        end = self._end = self._end + count
        buf = self._buf
        view = self._view
        pos = self._start
        max_frame = self.max_frame
        out: list[memoryview] = []
        while end - pos >= HEADER_SIZE:
            (length,) = _unpack_header(buf, pos)
            if length == 0 or length > max_frame:
                check_length(length, max_frame)
            stop = pos + HEADER_SIZE + length
            if stop > end:
                self._need = stop - pos
                self._start = pos
                return out
            out.append(view[pos + HEADER_SIZE:stop])
            self._big = length >= self._capacity
            pos = stop
        self._need = HEADER_SIZE
        self._start = pos
        return out

    def frames(self) -> list[memoryview]:
        """Every complete frame received so far, in order; `InvalidMessage` for an empty or
        oversized one (the stream has then lost sync: close the connection)."""
        return self.received(0)

    def unread(self, count: int) -> None:
        """Put back the last `count` bytes `frames()` returned (whole frames, not used yet):
        the next `frames()` returns them again."""
        self._start -= count
        self._need = HEADER_SIZE

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        """Copy `data` in and return the complete frames as `bytes` (for tests and tools
        that read in chunks of their own)."""
        data = memoryview(data)
        out: list[bytes] = []
        while data:
            room = self.writable()
            count = min(len(room), len(data))
            room[:count] = data[:count]
            self.commit(count)
            data = data[count:]
            out.extend(bytes(frame) for frame in self.frames())
        return out

    def _compact(self) -> None:
        start, end = self._start, self._end
        self._buf[0:end - start] = self._buf[start:end]
        self._start, self._end = 0, end - start

    def _resize(self, size: int) -> None:
        start, end = self._start, self._end
        new = bytearray(size)
        new[0:end - start] = self._buf[start:end]
        self._buf = new
        self._view = memoryview(new)
        self._start, self._end = 0, end - start
