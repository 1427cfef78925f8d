"""`Dispatcher`: runs handlers for a worker whose I/O is asyncio (the gRPC server) and for the
async handlers of the blocking stream server.

Async handlers run as tasks on the loop (cancelled by a host's `Cancel`, bounded by the
request's `timeout_ms` through `asyncio.timeout`); sync handlers run on a thread pool, and a
deadline answers `timeout` on time even though the thread cannot be stopped (its late result
is dropped). Every answer is delivered on the loop. `drain` waits for what runs; `close`
cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from spear.protocol.limits import WORKER_MAX_THREADS
from spear.protocol.messages import ExecutionRequest, ExecutionResponse
from spear.worker.handler import (
    Handler,
    call_sync,
    cancelled,
    failure,
    is_async,
    load_handler,
    output_response,
    timed_out,
)
from spear.worker.session import Call

__all__ = ["Dispatcher", "Handler", "load_handler"]

_perf_counter = time.perf_counter
_EAGER = sys.version_info >= (3, 12)


class Dispatcher:
    def __init__(self, handler: Handler, *, max_threads: int = WORKER_MAX_THREADS) -> None:
        self.handler = handler
        self.is_async = is_async(handler)
        self._executor = None if self.is_async else ThreadPoolExecutor(
            max_workers=max_threads, thread_name_prefix="spear-handler")
        # Every running request (a task, or a loop future for a thread's job), for drain.
        self._running: set[asyncio.Future[Any]] = set()
        self._draining = False

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def draining(self) -> bool:
        return self._draining

    # -- the Runner interface (called on the loop) --------------------------------------

    def start(self, call: Call) -> None:
        if self._draining:
            call.finish(failure(call.request.request_id, "worker is shutting down",
                                "unavailable"))
            return
        loop = asyncio.get_running_loop()
        if self.is_async:
            coro = self._run_async(call)
            task = (asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]
                    if _EAGER else loop.create_task(coro))
            if task.done():
                return
            call.on_cancel = task.cancel
            self._track(task)
        else:
            self._run_on_thread(call, loop)

    async def execute(self, request: ExecutionRequest) -> ExecutionResponse:
        """Run one request to its response (the unary gRPC call); never raises for the
        handler's failures."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[ExecutionResponse] = loop.create_future()

        def deliver(_call: Call, response: ExecutionResponse) -> None:
            if not answer.done():
                answer.set_result(response)

        call = Call(request, deliver)
        self.start(call)
        try:
            return await answer
        except asyncio.CancelledError:
            if call.on_cancel is not None:
                call.on_cancel()
            raise

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait for those in flight; True if all finished in time."""
        self._draining = True
        pending = list(self._running)
        if not pending:
            return True
        _, still_running = await asyncio.wait(pending, timeout=timeout)
        return not still_running

    def close(self) -> None:
        self._draining = True
        for running in list(self._running):
            running.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -- internals ----------------------------------------------------------------------

    def _track(self, future: asyncio.Future[Any]) -> None:
        self._running.add(future)
        future.add_done_callback(self._running.discard)

    async def _run_async(self, call: Call) -> None:
        request = call.request
        started = _perf_counter()
        scope: asyncio.Timeout | None = None
        try:
            if request.timeout_ms > 0:
                async with asyncio.timeout(request.timeout_ms / 1000.0) as scope:
                    output = await self.handler(request)  # type: ignore[misc]
            else:
                output = await self.handler(request)  # type: ignore[misc]
        except asyncio.CancelledError:
            call.finish(cancelled(request.request_id))
            return  # already answered when the host cancelled; dropped when we are closing
        except Exception as exc:  # the handler's failure is the caller's answer, not ours
            elapsed = (_perf_counter() - started) * 1000.0
            # Only our own deadline is a timeout; a TimeoutError the handler raised itself
            # (a socket timeout, say) is an ordinary handler error.
            if isinstance(exc, TimeoutError) and scope is not None and scope.expired():
                call.finish(timed_out(request, elapsed))
            else:
                call.finish(failure(request.request_id, f"{type(exc).__name__}: {exc}",
                                    "handler_error", elapsed))
            return
        call.finish(output_response(request, output, started))

    def _run_on_thread(self, call: Call, loop: asyncio.AbstractEventLoop) -> None:
        request = call.request
        done: asyncio.Future[None] = loop.create_future()
        deadline: asyncio.TimerHandle | None = None

        def finished(response: ExecutionResponse) -> None:  # on the loop
            if deadline is not None:
                deadline.cancel()
            if not done.done():
                done.set_result(None)
            call.finish(response)

        def job() -> None:  # on a handler thread
            try:
                response = call_sync(self.handler, request)
            except BaseException as exc:  # the caller must get an answer
                response = failure(request.request_id, f"{type(exc).__name__}: {exc}",
                                   "internal_error")
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to answer
                loop.call_soon_threadsafe(finished, response)

        assert self._executor is not None
        try:
            self._executor.submit(job)
        except RuntimeError as exc:  # shut down
            call.finish(failure(request.request_id, f"worker is closing: {exc}", "unavailable"))
            return
        if request.timeout_ms > 0:
            started = _perf_counter()
            deadline = loop.call_later(
                request.timeout_ms / 1000.0,
                lambda: call.finish(timed_out(request, (_perf_counter() - started) * 1000.0)))
        self._track(done)
