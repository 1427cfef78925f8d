"""Asynchronous executions: `submit` now, `result` later, `cancel` in between.

Each submitted execution is a task kept under a random id. Finished executions keep their
outcome for `ttl_s` seconds; at most `max_kept` executions (running or finished) are held at
once: the oldest finished ones make room first, and when all of them are still running a new
submit is refused with `QueueFull` rather than growing without bound.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any, Literal

from spear.errors import InvalidConfiguration, Timeout
from spear.invocation.errors import ExecutionCancelled, ExecutionNotFound, QueueFull
from spear.messages import ExecutionResponse

ExecutionState = Literal["pending", "succeeded", "failed", "cancelled"]


class _Entry:
    __slots__ = ("finished_at", "function", "submitted_at", "task")

    def __init__(self, function: str, task: asyncio.Task[ExecutionResponse]) -> None:
        self.function = function
        self.task = task
        self.submitted_at = time.monotonic()
        self.finished_at: float | None = None


class AsyncExecutions:
    def __init__(self, *, ttl_s: float = 300.0, max_kept: int = 10_000) -> None:
        if ttl_s <= 0 or max_kept < 1:
            raise InvalidConfiguration("result ttl must be > 0 and max_kept >= 1")
        self.ttl_s = ttl_s
        self.max_kept = max_kept
        self._entries: dict[str, _Entry] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()  # completion order

    def __len__(self) -> int:
        return len(self._entries)

    def submit(
        self, function: str, coro: Coroutine[Any, Any, ExecutionResponse]
    ) -> str:
        self.expire()
        if len(self._entries) >= self.max_kept:
            if not self._finished:
                coro.close()
                raise QueueFull(
                    f"{len(self._entries)} asynchronous executions are still running "
                    f"(max_results={self.max_kept})"
                )
            oldest, _ = self._finished.popitem(last=False)
            self._entries.pop(oldest, None)
        execution_id = secrets.token_hex(12)
        task = asyncio.get_running_loop().create_task(coro, name=f"spear-exec-{execution_id}")
        entry = _Entry(function, task)
        self._entries[execution_id] = entry
        task.add_done_callback(lambda _t: self._done(execution_id, entry))
        return execution_id

    def _done(self, execution_id: str, entry: _Entry) -> None:
        entry.finished_at = time.monotonic()
        if self._entries.get(execution_id) is entry:
            self._finished[execution_id] = None
        if not entry.task.cancelled():
            entry.task.exception()  # retrieved here; `result()` re-raises it to the caller

    def _get(self, execution_id: str) -> _Entry:
        self.expire()
        entry = self._entries.get(execution_id)
        if entry is None:
            raise ExecutionNotFound(
                f"no execution {execution_id!r} (unknown, or its result expired after "
                f"{self.ttl_s:g} s)"
            )
        return entry

    def state(self, execution_id: str) -> ExecutionState:
        task = self._get(execution_id).task
        if not task.done():
            return "pending"
        if task.cancelled():
            return "cancelled"
        return "failed" if task.exception() is not None else "succeeded"

    async def result(self, execution_id: str, timeout: float | None = None) -> ExecutionResponse:
        """The execution's response (or its error), waiting up to `timeout` s for it.

        Waiting out the timeout raises `Timeout` and leaves the execution running.
        """
        task = self._get(execution_id).task
        if not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError as exc:
                if task.done():
                    pass  # finished with a Timeout of its own: reported below
                else:
                    raise Timeout(
                        f"execution {execution_id} did not finish within {timeout:g} s"
                    ) from exc
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # we were cancelled, not the execution
        if task.cancelled():
            raise ExecutionCancelled(f"execution {execution_id} was cancelled")
        return task.result()

    def cancel(self, execution_id: str) -> bool:
        """Cancel a running execution; False if it already finished."""
        task = self._get(execution_id).task
        if task.done():
            return False
        task.cancel()
        return True

    def expire(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        finished = self._finished
        while finished:
            execution_id = next(iter(finished))
            entry = self._entries.get(execution_id)
            if entry is not None and entry.finished_at is not None \
                    and now - entry.finished_at < self.ttl_s:
                break
            finished.popitem(last=False)
            self._entries.pop(execution_id, None)

    async def close(self) -> None:
        tasks = [entry.task for entry in self._entries.values() if not entry.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._entries.clear()
        self._finished.clear()
