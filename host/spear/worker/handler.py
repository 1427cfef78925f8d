"""User handlers: loading one, calling a synchronous one, and turning what it returns (or
raises) into the `ExecutionResponse` the host gets."""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from spear.errors import InvalidConfiguration
from spear.protocol.messages import ExecutionRequest, ExecutionResponse, ExecutionStatus

Handler = Callable[[ExecutionRequest], bytes | Awaitable[bytes]]

_perf_counter = time.perf_counter
_SUCCESS = ExecutionStatus.SUCCESS
_ERROR = ExecutionStatus.ERROR


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


def is_async(handler: Handler) -> bool:
    # A callable object whose __call__ is a coroutine function is async too.
    method = vars(type(handler)).get("__call__")
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(method)


def failure(request_id: str, message: str, code: str, elapsed_ms: float = 0.0
            ) -> ExecutionResponse:
    return ExecutionResponse(request_id, b"", _ERROR, message, code, elapsed_ms)


def output_response(request: ExecutionRequest, output: Any, started: float) -> ExecutionResponse:
    """The reply for what a handler returned: bytes-like (or str, as UTF-8) is success."""
    elapsed = (_perf_counter() - started) * 1000.0
    cls = type(output)
    if cls is bytes:
        return ExecutionResponse(request.request_id, output, _SUCCESS, None, None, elapsed)
    if cls is str:
        output = output.encode()
    elif not isinstance(output, bytes | bytearray | memoryview):
        return failure(request.request_id,
                       f"handler returned {type(output).__name__}, expected bytes",
                       "handler_error", elapsed)
    return ExecutionResponse(request.request_id, bytes(output), _SUCCESS, None, None, elapsed)


def call_sync(handler: Handler, request: ExecutionRequest) -> ExecutionResponse:
    """Run a synchronous handler; its exceptions become `handler_error` replies."""
    started = _perf_counter()
    try:
        output = handler(request)
    except Exception as exc:
        return failure(request.request_id, f"{type(exc).__name__}: {exc}", "handler_error",
                       (_perf_counter() - started) * 1000.0)
    return output_response(request, output, started)


def timed_out(request: ExecutionRequest, elapsed_ms: float) -> ExecutionResponse:
    return ExecutionResponse(
        request.request_id, b"", ExecutionStatus.TIMEOUT,
        f"handler did not finish within {request.timeout_ms} ms", "timeout", elapsed_ms,
    )


def cancelled(request_id: str) -> ExecutionResponse:
    return failure(request_id, "cancelled by the caller", "cancelled")
