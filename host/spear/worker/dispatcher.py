"""Runs user handlers for a worker, independent of the transport that feeds it.

Socket and gRPC workers both hand each `ExecutionRequest` to one `Dispatcher`, which runs
sync handlers on a thread pool and async handlers on the loop, enforces each request's
`timeout_ms`, turns exceptions into error responses, cancels on request, and drains.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import importlib
import inspect
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from spear.errors import InvalidConfiguration
from spear.messages import ExecutionRequest, ExecutionResponse, ExecutionStatus

Handler = Callable[[ExecutionRequest], bytes | Awaitable[bytes]]


def load_handler(spec: str) -> Handler:
    """Import `package.module:function` and return the function."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidConfiguration(f"handler must look like MODULE:FUNCTION, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidConfiguration(f"cannot import handler module {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise InvalidConfiguration(f"module {module_name!r} has no {attr!r}") from None
    if not callable(target):
        raise InvalidConfiguration(f"{spec!r} is not callable")
    return target  # type: ignore[no-any-return]


class Dispatcher:
    def __init__(self, handler: Handler, *, max_threads: int = 32) -> None:
        self._handler = handler
        self._is_async = inspect.iscoroutinefunction(handler)
        self._executor = None if self._is_async else ThreadPoolExecutor(
            max_workers=max_threads, thread_name_prefix="spear-handler"
        )
        # Every running request, for drain/close; and by (scope, request id) for cancel. One
        # worker may serve several connections whose request ids collide: each connection
        # passes itself as `scope`.
        self._running: set[asyncio.Future[Any]] = set()
        self._tasks: dict[tuple[object, str], asyncio.Future[Any]] = {}
        self._draining = False

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def draining(self) -> bool:
        return self._draining

    async def execute(self, request: ExecutionRequest, scope: object = None) -> ExecutionResponse:
        """Run one request to a response; never raises for handler failures."""
        if self._draining:
            return _failure(request.request_id, "worker is shutting down", "unavailable", 0.0)
        task = asyncio.ensure_future(self._run(request))
        key = (scope, request.request_id)
        self._tasks[key] = task
        self._running.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            if task.cancelled() and not _current_task_cancelling():
                return _failure(request.request_id, "cancelled by the caller", "cancelled", 0.0)
            raise
        finally:
            self._running.discard(task)
            if self._tasks.get(key) is task:
                del self._tasks[key]

    def submit(
        self,
        request: ExecutionRequest,
        on_done: Callable[[asyncio.Future[ExecutionResponse]], object] | None = None,
        scope: object = None,
    ) -> asyncio.Future[ExecutionResponse]:
        """Start one request and return its future at once, for servers that answer from a
        done callback instead of awaiting (one task per request instead of two).

        The future never fails for a handler failure; it ends cancelled when `cancel()` (or
        `close()`) stopped the request. `on_done(future)`, if given, is called when it is
        done, after the dispatcher has forgotten the request (one callback, not two).
        """
        if self._draining:
            refused: asyncio.Future[ExecutionResponse] = (
                asyncio.get_running_loop().create_future()
            )
            refused.set_result(
                _failure(request.request_id, "worker is shutting down", "unavailable", 0.0)
            )
            if on_done is not None:
                refused.add_done_callback(on_done)
            return refused
        key = (scope, request.request_id)
        task = asyncio.get_running_loop().create_task(self._run(request))
        self._tasks[key] = task
        self._running.add(task)

        def finished(done: asyncio.Future[ExecutionResponse]) -> None:
            self._running.discard(done)
            if self._tasks.get(key) is done:
                del self._tasks[key]
            if on_done is not None:
                on_done(done)

        task.add_done_callback(finished)
        return task

    def serve(
        self,
        request: ExecutionRequest,
        respond: Callable[[ExecutionResponse], object],
        scope: object = None,
    ) -> asyncio.Future[None] | None:
        """Run one request and hand its response to `respond`, as directly as possible.

        The request's task runs its first step at once (eagerly, as the current task), so a
        handler that finishes without waiting (an async echo) is answered before this
        returns, with no event-loop iteration in between; the result is then None. Otherwise
        the running task is returned (for `drain`); `respond` is called from it when the
        request ends, with a `cancelled` response if `cancel()` (or `close()`) stopped it.
        """
        if self._draining:
            respond(_failure(request.request_id, "worker is shutting down", "unavailable", 0.0))
            return None
        key = (scope, request.request_id)
        if self._executor is not None and request.timeout_ms <= 0:
            return self._serve_on_thread(request, respond, key)
        task, finished = _start_eagerly(self._serve(request, respond, key))
        if finished:
            return None
        self._tasks[key] = task
        self._running.add(task)
        return task

    def _serve_on_thread(
        self,
        request: ExecutionRequest,
        respond: Callable[[ExecutionResponse], object],
        key: tuple[object, str],
    ) -> asyncio.Future[None] | None:
        """A sync handler without a deadline: the handler thread builds the response and
        hands it to the loop, which writes it at once (no task, no chained future)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def forget() -> None:
            if self._tasks.get(key) is done:
                del self._tasks[key]
            self._running.discard(done)

        def finish(response: ExecutionResponse) -> None:  # on the loop
            if done.done():
                return  # cancelled, and already answered
            done.set_result(None)
            forget()
            respond(response)

        def on_cancelled(future: asyncio.Future[None]) -> None:
            if future.cancelled():
                forget()
                respond(_failure(request.request_id, "cancelled by the caller", "cancelled",
                                 0.0))

        def job() -> None:  # on a handler thread
            try:
                response = self._call_sync(request)
            except BaseException as exc:  # the caller must get an answer
                response = _failure(request.request_id, f"{type(exc).__name__}: {exc}",
                                    "internal_error", 0.0)
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to answer
                loop.call_soon_threadsafe(finish, response)

        assert self._executor is not None
        try:
            self._executor.submit(job)
        except RuntimeError as exc:  # shut down
            respond(_failure(request.request_id, f"{type(exc).__name__}: {exc}",
                             "handler_error", 0.0))
            return None
        done.add_done_callback(on_cancelled)
        self._tasks[key] = done
        self._running.add(done)
        return done

    def _call_sync(self, request: ExecutionRequest) -> ExecutionResponse:
        started = time.perf_counter()
        try:
            output = self._handler(request)
        except Exception as exc:
            return _failure(request.request_id, f"{type(exc).__name__}: {exc}", "handler_error",
                            (time.perf_counter() - started) * 1000.0)
        return _output_response(request, output, started)

    async def _serve(
        self,
        request: ExecutionRequest,
        respond: Callable[[ExecutionResponse], object],
        key: tuple[object, str],
    ) -> None:
        try:
            response = await self._run(request)
        except asyncio.CancelledError:
            response = _failure(request.request_id, "cancelled by the caller", "cancelled", 0.0)
        except Exception as exc:  # a bug of ours: still answer, never leave the caller hanging
            response = _failure(request.request_id, f"{type(exc).__name__}: {exc}",
                                "internal_error", 0.0)
        task = self._tasks.get(key)
        if task is not None and task is asyncio.current_task():
            del self._tasks[key]
            self._running.discard(task)
        respond(response)

    def cancel(self, request_id: str, scope: object = None) -> bool:
        task = self._tasks.get((scope, request_id))
        if task is None:
            return False
        task.cancel()
        return True

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait for those in flight; True if all finished in time."""
        self._draining = True
        pending = list(self._running)
        if not pending:
            return True
        _, still_running = await asyncio.wait(pending, timeout=timeout)
        return not still_running

    def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, request: ExecutionRequest) -> ExecutionResponse:
        started = time.perf_counter()
        timeout = request.timeout_ms / 1000.0 if request.timeout_ms > 0 else None
        deadline: asyncio.Timeout | None = None
        try:
            if timeout is None and self._is_async:
                output = await self._handler(request)  # type: ignore[misc]
            elif timeout is None:
                output = await self._call(request)
            else:
                deadline = asyncio.timeout(timeout)
                async with deadline:
                    output = await self._call(request)
        except Exception as exc:  # the handler's failure is the caller's answer, not ours
            elapsed = (time.perf_counter() - started) * 1000.0
            # Only our own deadline is a timeout; a TimeoutError the handler raised itself
            # (a socket timeout, say) is an ordinary handler error.
            if isinstance(exc, TimeoutError) and deadline is not None and deadline.expired():
                return ExecutionResponse(
                    request.request_id, b"", ExecutionStatus.TIMEOUT,
                    f"handler did not finish within {request.timeout_ms} ms", "timeout", elapsed,
                )
            return _failure(request.request_id, f"{type(exc).__name__}: {exc}", "handler_error",
                            elapsed)
        return _output_response(request, output, started)

    async def _call(self, request: ExecutionRequest) -> Any:
        if self._is_async:
            return await self._handler(request)  # type: ignore[misc]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._handler, request)


def _output_response(request: ExecutionRequest, output: Any, started: float
                     ) -> ExecutionResponse:
    elapsed = (time.perf_counter() - started) * 1000.0
    if isinstance(output, str):
        output = output.encode()
    if not isinstance(output, bytes | bytearray | memoryview):
        return _failure(request.request_id,
                        f"handler returned {type(output).__name__}, expected bytes",
                        "handler_error", elapsed)
    return ExecutionResponse(request.request_id, bytes(output), ExecutionStatus.SUCCESS,
                             None, None, elapsed)


def _failure(request_id: str, message: str, code: str, elapsed_ms: float) -> ExecutionResponse:
    return ExecutionResponse(request_id, b"", ExecutionStatus.ERROR, message, code, elapsed_ms)


_FINISHED = object()


class _Resumable(collections.abc.Coroutine):  # type: ignore[type-arg]
    """What the task of an eagerly started coroutine runs: the coroutine from where its
    eager first step left it (or nothing, when that step finished it)."""

    __slots__ = ("_coro", "_first", "_fresh")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._first: Any = _FINISHED  # what the first step yielded, if it did not finish
        self._fresh = True

    def send(self, value: Any) -> Any:
        if self._fresh:
            self._fresh = False
            if self._first is _FINISHED:
                raise StopIteration(None)
            return self._first
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._fresh = False
        return self._coro.throw(typ if val is None else val)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Any:
        return self

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        return self.send(None)


def _start_eagerly(
    coro: Coroutine[Any, Any, None],
) -> tuple[asyncio.Task[None], bool]:
    """Create a task for `coro` and run its first step now; True when that finished it.

    Python 3.12+ does this itself (`eager_start`). On 3.11 the task is created around a
    `_Resumable` and made the current task while the first step runs, so the handler sees
    `asyncio.current_task()` (and `asyncio.timeout` works) exactly as in a normal task.
    """
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        task = asyncio.Task(coro, loop=loop, eager_start=True)
        return task, task.done()
    if _current_task(loop) is not None:
        return loop.create_task(coro), False  # called from a task: an ordinary task, then
    holder = _Resumable(coro)
    task = loop.create_task(holder)
    _enter_task(loop, task)
    try:
        holder._first = coro.send(None)
    except StopIteration:
        return task, True
    except BaseException:
        coro.close()
        raise
    finally:
        _leave_task(loop, task)
    return task, False


_current_task = asyncio.current_task
# What a task's step does around its coroutine (and what 3.12's eager start does).
_enter_task: Callable[[asyncio.AbstractEventLoop, asyncio.Task[Any]], None] = (
    asyncio.tasks._enter_task)
_leave_task: Callable[[asyncio.AbstractEventLoop, asyncio.Task[Any]], None] = (
    asyncio.tasks._leave_task)


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
