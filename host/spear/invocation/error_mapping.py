"""One mapping from what went wrong to what a caller is told, shared by both front doors.

A `Failure` carries the HTTP status, the gRPC status code (by name, so the HTTP side never
imports grpc), a short machine-readable `kind` (sent as `X-Spear-Error-Code`) and a message
for people. `failure_of(exc, ...)` maps a raised error; `failure_of_reply(response, ...)`
maps a reply that is not a success. A timeout has one shape whichever side timed out first
(the request's deadline, the function's own limit, a wait in the queue, the worker): HTTP 504
/ `DEADLINE_EXCEEDED`, kind `timeout`, and a message naming the function and the limit.

| what | HTTP | gRPC | kind |
|---|---|---|---|
| the function failed (its own error) | 500 | reply with status ERROR | its error code |
| timed out, anywhere | 504 | DEADLINE_EXCEEDED | timeout |
| no such function | 404 | NOT_FOUND | not_found |
| queue full | 429 | RESOURCE_EXHAUSTED | queue_full |
| input over `max_input_bytes` | 413 | INVALID_ARGUMENT | input_too_large |
| bad option (timeout, metadata) | 400 | INVALID_ARGUMENT | invalid_request |
| missing or wrong token | 401 | UNAUTHENTICATED | unauthenticated |
| instance died or none could start | 503 | UNAVAILABLE | unavailable |
| the server is draining | 503 | UNAVAILABLE | draining |
| the call failed (trap, invalid reply) | 500 | INTERNAL | its code |
| another channel failure | 502 | INTERNAL | bad_gateway |
| a bug of ours | 500 | INTERNAL | internal |
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from spear.errors import ChannelClosed, CommunicationError, ExecutionFailed, InvalidConfiguration
from spear.invocation.errors import (
    FunctionNotFound,
    InstanceStartFailed,
    InvalidRequest,
    QueueFull,
    Unauthenticated,
)
from spear.invocation.request_limits import format_seconds
from spear.log_limit import LogLimiter
from spear.messages import ExecutionResponse, ExecutionStatus

log = logging.getLogger("spear.serve")
# Callers decide how often requests fail: the lines they cause are bounded (per level, so a
# flood of the callers' own mistakes never hides server errors).
_failure_lines = {
    logging.WARNING: LogLimiter(log, "failed invocations (server side)"),
    logging.INFO: LogLimiter(log, "failed invocations (caller side)", level=logging.INFO),
}


def flush_failure_lines() -> None:
    """Say now what the failure log held back (a server stopping: no later line would)."""
    for limiter in _failure_lines.values():
        limiter.flush()


@dataclass(frozen=True, slots=True)
class Failure:
    http_status: int
    grpc_code: str  # a grpc.StatusCode member name
    kind: str
    message: str
    retry_after: bool = False  # worth retrying soon (429, 503): HTTP sends Retry-After


def timeout_failure(function: str, timeout: float | None) -> Failure:
    within = f" within {format_seconds(timeout)}" if timeout else ""
    return Failure(504, "DEADLINE_EXCEEDED", "timeout",
                   f"function {function!r} did not answer{within}")


def failure_of(exc: BaseException, function: str, timeout: float | None) -> Failure:
    """What to tell the caller about `exc`, raised while invoking `function` with the
    effective `timeout` (seconds)."""
    if isinstance(exc, TimeoutError):  # spear's Timeout is one too
        return timeout_failure(function, timeout)
    if isinstance(exc, FunctionNotFound):
        return Failure(404, "NOT_FOUND", "not_found", f"no function {function!r} is deployed")
    if isinstance(exc, QueueFull):
        return Failure(429, "RESOURCE_EXHAUSTED", "queue_full", str(exc), retry_after=True)
    if isinstance(exc, InvalidRequest | InvalidConfiguration):
        return Failure(400, "INVALID_ARGUMENT", "invalid_request", str(exc))
    if isinstance(exc, Unauthenticated):
        return Failure(401, "UNAUTHENTICATED", "unauthenticated", str(exc))
    if isinstance(exc, ChannelClosed | InstanceStartFailed):
        return Failure(503, "UNAVAILABLE", "unavailable", str(exc), retry_after=True)
    if isinstance(exc, ExecutionFailed):
        if exc.code == "input_too_large":
            return Failure(413, "INVALID_ARGUMENT", "input_too_large", str(exc))
        return Failure(500, "INTERNAL", str(exc.code or "execution_failed"), str(exc))
    if isinstance(exc, CommunicationError):
        return Failure(502, "INTERNAL", "bad_gateway", f"{type(exc).__name__}: {exc}")
    return Failure(500, "INTERNAL", "internal", "internal error (see the server log)")


def failure_of_reply(response: ExecutionResponse, function: str,
                     timeout: float | None) -> Failure:
    """A reply whose status is not success: the function's own error, or a timeout."""
    if response.status is ExecutionStatus.TIMEOUT:
        return timeout_failure(function, timeout)
    return Failure(500, "OK", str(response.error_code or "error"),
                   response.error_message or "function failed")


def draining_failure() -> Failure:
    return Failure(503, "UNAVAILABLE", "draining",
                   "the server is shutting down; retry on another instance", retry_after=True)


def log_failure(failure: Failure, function: str, request_id: str, door: str,
                exc: BaseException | None = None) -> None:
    """Failed invocations at WARNING (server errors) or INFO (the caller's mistakes), within
    the bound of `LogLimiter` (what it holds back is counted and summarised)."""
    level = logging.WARNING if failure.http_status >= 500 or failure.http_status == 429 \
        else logging.INFO
    if not log.isEnabledFor(level) or not _failure_lines[level].allow(failure.kind):
        return
    extra = {"function": function, "request_id": request_id, "status": failure.http_status,
             "kind": failure.kind, "event": "invoke_failed", "door": door}
    # A bug of ours gets its traceback; everything else is one line.
    log.log(level, "%s %s failed: %s: %s", door, function, failure.kind, failure.message,
            extra=extra, exc_info=exc if failure.kind == "internal" else None)
