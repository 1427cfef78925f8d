"""The bounded wait queue of requests that found every instance at capacity.

A request that cannot be placed parks a future here. When a request finishes, its slot is
handed *directly* to the oldest waiter (its capacity stays reserved), so a newcomer never
barges past a waiter and a woken waiter never finds its slot taken. A full queue refuses at
once with `QueueFull` instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING

from spear.errors import CommunicationError, Timeout
from spear.invocation.errors import QueueFull

if TYPE_CHECKING:
    from spear.invocation.pool import Slot


class WaitQueue:
    __slots__ = ("function", "limit", "waiters")

    def __init__(self, function: str, limit: int) -> None:
        self.function = function
        self.limit = limit
        # The deque itself is read on the hot path (`if pool.waiting:`); never replace it.
        self.waiters: deque[asyncio.Future[Slot]] = deque()

    def __len__(self) -> int:
        return len(self.waiters)

    def __bool__(self) -> bool:
        return bool(self.waiters)

    async def wait(self, timeout: float | None) -> Slot:
        """Wait for a slot handed over by `hand_off`; its capacity is already reserved."""
        if len(self.waiters) >= self.limit:
            raise QueueFull(
                f"function {self.function!r}: all instances are busy and {len(self.waiters)} "
                f"requests already wait (queue_limit={self.limit})"
            )
        future: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except BaseException as exc:
            if future.done() and not future.cancelled() and future.exception() is None:
                # Handed a slot just as we gave up (timeout, cancellation): pass it on.
                future.result().release()
            else:
                future.cancel()
                with contextlib.suppress(ValueError):
                    self.waiters.remove(future)
            if isinstance(exc, TimeoutError) and not isinstance(exc, Timeout):
                raise Timeout(
                    f"function {self.function!r}: no instance became free within "
                    f"{timeout:g} s"
                ) from exc
            raise

    def hand_off(self, slot: Slot) -> bool:
        """Give `slot` (capacity still reserved) to the oldest live waiter; False if none."""
        waiters = self.waiters
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(slot)
                return True
        return False

    def fail_all(self, error: CommunicationError) -> None:
        waiters = self.waiters
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_exception(error)

