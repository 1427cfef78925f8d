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
    """Encoded messages waiting for one stream's writer."""

    __slots__ = ("_closed", "_items", "_ready")

    def __init__(self) -> None:
        self._items: list[bytes] = []
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, payload: bytes) -> None:
        self._items.append(payload)
        self._ready.set()

    def close(self) -> None:
        """No more messages; the writer sends what is queued, then stops."""
        self._closed = True
        self._ready.set()

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
            total += len(item)
            if total > max_bytes and index > 0:
                self._items = items[index:]
                return items[:index]
        self._items = []
        return items


async def write_batches(
    outbox: Outbox, write: Callable[[pb.Envelope], Awaitable[object]], max_bytes: int
) -> None:
    """Send `outbox` through `write`, one `Envelope` per batch, until it is closed and empty."""
    while True:
        batch = await outbox.take(max_bytes)
        if not batch:
            return
        await write(pb.Envelope(messages=batch))
