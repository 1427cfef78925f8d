"""Small handlers for tests, docs and benchmarks.

Serve one with `python -m spear.worker spear.worker.examples:echo`.

Each is a plain function of the `ExecutionRequest`. `route` serves all of them from one
worker, choosing by `request.function_name`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

from spear.messages import ExecutionRequest

# Request ids whose `async_slow` call was cancelled (by a host `Cancel`, usually a timeout).
CANCELLED: list[str] = []


def echo(request: ExecutionRequest) -> bytes:
    return request.input_data


def upper(request: ExecutionRequest) -> bytes:
    return request.input_data.upper()


def tagged_echo(request: ExecutionRequest) -> bytes:
    """`request_id|input`, so a caller can prove each reply answers its own request."""
    return request.request_id.encode() + b"|" + request.input_data


def slow(request: ExecutionRequest) -> bytes:
    """Sleeps for the number of seconds in the input (default 0.1), on a handler thread."""
    time.sleep(_seconds(request))
    return request.input_data


def fail(request: ExecutionRequest) -> bytes:
    raise RuntimeError(f"failed on purpose (input {request.input_data[:32]!r})")


def shout(request: ExecutionRequest) -> bytes:
    """Writes the input to stdout and stderr, to show the host logs worker output."""
    text = request.input_data.decode(errors="replace")
    print(f"stdout: {text}", flush=True)
    print(f"stderr: {text}", file=sys.stderr, flush=True)
    return request.input_data


async def async_echo(request: ExecutionRequest) -> bytes:
    return request.input_data


async def async_slow(request: ExecutionRequest) -> bytes:
    """Sleeps without a thread, so a `Cancel` really stops it; records the cancellation."""
    try:
        await asyncio.sleep(_seconds(request))
    except asyncio.CancelledError:
        CANCELLED.append(request.request_id)
        raise
    return request.input_data


async def cancelled(request: ExecutionRequest) -> bytes:
    """The ids of the `async_slow` requests cancelled so far, comma separated."""
    return ",".join(CANCELLED).encode()


def _seconds(request: ExecutionRequest) -> float:
    try:
        return float(request.input_data or b"0.1")
    except ValueError:
        return 0.1


SyncHandler = Callable[[ExecutionRequest], bytes]
AsyncHandler = Callable[[ExecutionRequest], Awaitable[bytes]]

# Quick enough to run on the event loop; the rest of the sync ones get a thread.
_INLINE: dict[str, SyncHandler] = {
    "echo": echo, "upper": upper, "tagged_echo": tagged_echo, "fail": fail, "shout": shout,
}
_THREADED: dict[str, SyncHandler] = {"slow": slow}
_ASYNC: dict[str, AsyncHandler] = {
    "async_echo": async_echo, "async_slow": async_slow, "cancelled": cancelled,
}
FUNCTIONS = sorted([*_INLINE, *_THREADED, *_ASYNC])


async def route(request: ExecutionRequest) -> bytes:
    """Serve every example from one worker: the request's `function_name` picks one."""
    name = request.function_name
    inline = _INLINE.get(name)
    if inline is not None:
        return inline(request)
    threaded = _THREADED.get(name)
    if threaded is not None:
        return await asyncio.to_thread(threaded, request)
    handler = _ASYNC.get(name)
    if handler is None:
        raise LookupError(f"no example function {name!r}; have {', '.join(FUNCTIONS)}")
    return await handler(request)
