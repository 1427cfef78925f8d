"""Unsolicited messages waiting for `receive()`, within a byte budget.

A peer decides how many it sends; the channel decides how much it keeps: beyond
`limit` bytes of payload a new message is refused (the channel drops and counts it). Closing
wakes every receiver.
"""

from __future__ import annotations

import asyncio
import collections

from spear.errors import ChannelClosed, CommunicationError
from spear.protocol.messages import RuntimeMessage


class Inbox:
    """Unsolicited messages waiting for `receive()`, within a byte budget; closing wakes
    every receiver."""

    __slots__ = ("_bytes", "_closed", "_items", "_limit", "_waiters")

    def __init__(self, limit: int) -> None:
        self._items: collections.deque[tuple[RuntimeMessage, int]] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed: CommunicationError | None = None
        self._limit = limit
        self._bytes = 0

    @property
    def size(self) -> int:
        return self._bytes

    def put(self, message: RuntimeMessage, size: int) -> bool:
        if self._bytes + size > self._limit:
            return False
        self._items.append((message, size))
        self._bytes += size
        self._wake_one()
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
        message, size = self._items.popleft()
        self._bytes -= size
        return message

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
