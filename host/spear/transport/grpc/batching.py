"""Both ends of the `Channel` stream send through one writer that batches what queued up.

gRPC allows one write in flight per call. Rather than make senders queue for the write, each
sender appends its encoded message to an `Outbox`; the single writer takes everything that
accumulated while its previous write ran and sends it as one `Envelope`. No delay is ever
added to wait for a batch to fill: an idle stream sends a batch of one at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from spear.transport.grpc.generated import spear_runtime_pb2 as pb

# Room for the Envelope's own framing (a tag and a length per entry) above the payload limit.
ENVELOPE_OVERHEAD = 64 * 1024
# A batch of several messages stays under this, so two ends configured with different
# maximum message sizes still accept each other's batches; a single message may be larger
# (up to the sender's maximum), and the receiver checks each message against its own.
BATCH_BYTES = 4 * 1024 * 1024


def batch_limit(max_message_size: int) -> int:
    """Payload bytes one multi-message Envelope may carry."""
    return min(max_message_size, BATCH_BYTES)


def receive_limit(max_message_size: int) -> int:
    """gRPC's message limit for a side whose messages may be `max_message_size` bytes."""
    return max(max_message_size, BATCH_BYTES) + ENVELOPE_OVERHEAD


class Outbox:
    """Encoded messages waiting for one stream's writer, counted in bytes.

    `put` never refuses (a reply must not be lost); producers that can wait call
    `wait_for_room()` first, which returns once the queue is below `limit` bytes.
    """

    __slots__ = ("_closed", "_items", "_ready", "_room", "_size", "limit")

    def __init__(self, limit: int | None = None) -> None:
        self._items: list[bytes] = []
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False
        self._size = 0
        self.limit = limit

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """Bytes queued."""
        return self._size

    def put(self, payload: bytes) -> None:
        self._items.append(payload)
        self._size += len(payload)
        self._ready.set()
        if self.limit is not None and self._size >= self.limit:
            self._room.clear()

    async def wait_for_room(self) -> None:
        """Return once fewer than `limit` bytes are queued (or the outbox is closed)."""
        while not self._room.is_set() and not self._closed:
            await self._room.wait()

    def close(self) -> None:
        """No more messages; the writer sends what is queued, then stops."""
        self._closed = True
        self._ready.set()
        self._room.set()

    async def take(self, max_bytes: int) -> list[bytes]:
        """Everything queued up to `max_bytes` (always at least one message); [] once closed
        and empty."""
        while not self._items:
            if self._closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        items = self._items
        total = 0
        for index, item in enumerate(items):
            if total + len(item) > max_bytes and index > 0:
                self._items = items[index:]
                self._taken(total)
                return items[:index]
            total += len(item)
        self._items = []
        self._taken(total)
        return items

    def _taken(self, count: int) -> None:
        self._size -= count
        if self.limit is None or self._size < self.limit:
            self._room.set()


async def write_batches(
    outbox: Outbox, write: Callable[[pb.Envelope], Awaitable[object]], max_bytes: int
) -> None:
    """Send `outbox` through `write`, one `Envelope` per batch, until it is closed and empty."""
    while True:
        batch = await outbox.take(max_bytes)
        if not batch:
            return
        await write(pb.Envelope(messages=batch))
