"""Deadlines of requests whose handler threads cannot be interrupted.

One FIFO per distinct `timeout_ms`: requests with the same timeout expire in the order they
arrived, so adding one is an append and finding those due looks only at queue heads.
Answered requests are dropped lazily (and in bulk when a queue grows past twice what is in
flight).
"""

from __future__ import annotations

import collections

from spear.worker.session import Call


class DeadlineQueues:
    """Requests with a `timeout_ms`, one FIFO per distinct timeout (requests with the same
    timeout expire in arrival order); answered ones are dropped lazily."""

    __slots__ = ("_queues",)

    def __init__(self) -> None:
        self._queues: dict[int, collections.deque[tuple[float, Call]]] = {}

    def add(self, call: Call, now: float, in_flight: int) -> None:
        timeout_ms = call.request.timeout_ms
        queue = self._queues.get(timeout_ms)
        if queue is None:
            queue = self._queues[timeout_ms] = collections.deque()
        while queue and queue[0][1].answered:
            queue.popleft()
        queue.append((now + timeout_ms / 1000.0, call))
        if len(queue) > 2 * in_flight + 64:
            self._queues[timeout_ms] = collections.deque(e for e in queue if not e[1].answered)

    def next_due(self) -> float | None:
        due = [queue[0][0] for queue in self._queues.values() if queue]
        return min(due) if due else None

    def expired(self, now: float) -> list[Call]:
        out: list[Call] = []
        for timeout_ms, queue in list(self._queues.items()):
            while queue and (queue[0][1].answered or queue[0][0] <= now):
                _, call = queue.popleft()
                if not call.answered:
                    out.append(call)
            if not queue:
                del self._queues[timeout_ms]
        return out
