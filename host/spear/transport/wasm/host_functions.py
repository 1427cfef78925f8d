"""Python host functions: what an embedder gives a guest to call by name (`spear.host_call`).

A host function takes the guest's bytes and returns bytes (or raises). It may be an `async
def`: the guest waits on its own thread while the coroutine runs on an event loop (the one
the instance was started from, for `WasmRuntime` instances; a private one of spear's for
instances made with the synchronous API), within the running call's deadline.

How one run ends, as the guest sees it (docs/wasm-abi.md, "Host functions"):
- bytes (any bytes-like value) up to the instance's maximum message size: the output;
- anything else, or an exception: a failure whose message the guest receives, and which
  fails the call with `ExecutionFailed` if the guest passes it on;
- past the call's deadline (async functions): the guest is interrupted (`Timeout`);
- a BaseException that is not an Exception (KeyboardInterrupt, SystemExit): the guest is
  stopped and the exception re-raised to the caller.

A host function calling back into its own instance would wait for itself forever; the
instance refuses such a call at once (`code="reentrant"`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spear.errors import InvalidConfiguration

if TYPE_CHECKING:
    from spear.transport.wasm.bindings import Bindings

MAX_NAME_BYTES = 256
MAX_HOST_FUNCTIONS = 4096

# The bindings whose async host function is running in this task: a call back into the
# same instance from there is refused (the channel checks it; see memory.py).
running_host_function: contextvars.ContextVar[Bindings | None] = contextvars.ContextVar(
    "spear_running_host_function", default=None)


@dataclass(frozen=True, slots=True)
class HostFunction:
    """A Python function a guest calls by name.

    `inline_safe=True` says the function is quick and has no side effects that matter if it
    runs twice: a `WasmRuntime` instance whose host functions are all inline-safe may run
    its handlers on the event loop (docs/wasm-abi.md, "The event loop budget"); otherwise
    every call of such an instance runs on the instance's thread. Async functions never run
    inline.
    """

    function: Callable[[bytes], Any]
    inline_safe: bool = False
    is_async: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if not callable(self.function):
            raise TypeError(f"a host function must be callable, not "
                            f"{type(self.function).__name__}")
        if type(self.inline_safe) is not bool:
            raise TypeError("inline_safe must be a bool")
        target = self.function
        is_async = inspect.iscoroutinefunction(target) or (
            not inspect.isroutine(target)
            and inspect.iscoroutinefunction(type(target).__call__))  # an async __call__
        object.__setattr__(self, "is_async", is_async)
        if is_async and self.inline_safe:
            raise InvalidConfiguration("an async host function cannot be inline_safe: "
                                       "it never runs on the event loop")

    @property
    def name(self) -> str:
        return getattr(self.function, "__name__", type(self.function).__name__)


def check_host_functions(functions: Any, name: str = "host_functions") -> dict[str, HostFunction]:
    """`{"name": callable or HostFunction}`, checked: names are non-empty UTF-8 strings of at
    most 256 bytes; values are callables."""
    if functions is None:
        return {}
    if not isinstance(functions, Mapping):
        raise TypeError(f"{name} must be a mapping of names to functions, "
                        f"not {type(functions).__name__}")
    if len(functions) > MAX_HOST_FUNCTIONS:
        raise InvalidConfiguration(f"{name}: at most {MAX_HOST_FUNCTIONS} functions, "
                                   f"got {len(functions)}")
    checked: dict[str, HostFunction] = {}
    for key, value in functions.items():
        if type(key) is not str:
            raise TypeError(f"{name}: names must be str, not {type(key).__name__}")
        try:
            size = len(key.encode())
        except UnicodeEncodeError:
            raise InvalidConfiguration(f"{name}: name {key!r:.60} is not valid UTF-8") from None
        if not 0 < size <= MAX_NAME_BYTES:
            raise InvalidConfiguration(
                f"{name}: a name must have 1 to {MAX_NAME_BYTES} bytes, got {key!r:.60}")
        try:
            checked[key] = value if isinstance(value, HostFunction) else HostFunction(value)
        except TypeError as exc:
            raise TypeError(f"{name}[{key!r}]: {exc}") from None
    return checked


# ------------------------------------------------------------------ running one


class DeadlinePassed(Exception):
    """The running call's deadline passed while an async host function ran."""


class HostFunctionFailed(Exception):
    """A host function ended without bytes; `message` is what the guest receives."""

    def __init__(self, message: str, cause: BaseException | None) -> None:
        super().__init__(message)
        self.cause = cause


def as_output(name: str, value: Any, limit: int) -> bytes:
    """A host function's return value as bytes, within `limit`."""
    if type(value) is bytes:
        output = value
    elif isinstance(value, bytearray | memoryview):
        output = bytes(value)
    else:
        raise HostFunctionFailed(
            f"host function {name!r} returned {type(value).__name__}, not bytes", None)
    if len(output) > limit:
        raise HostFunctionFailed(
            f"host function {name!r} returned {len(output)} bytes, more than the instance's "
            f"maximum message size of {limit}", None)
    return output


def describe_failure(name: str, exc: BaseException) -> str:
    text = str(exc)
    return text if text else f"host function {name!r} raised {type(exc).__name__}"


def run_async(bindings: Bindings, function: Callable[[bytes], Any], data: bytes,
              interrupt_at_ns: int) -> Any:
    """Run a coroutine function on the instance's loop, waiting at most until the
    interrupt deadline (0: none); raises DeadlinePassed when it passes."""
    loop = bindings.loop or private_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise RuntimeError("an async host function cannot run here: the guest runs on the "
                           "event loop the coroutine would need")
    if loop.is_closed() or not loop.is_running():
        raise RuntimeError("the event loop this instance was started from is not running")

    async def guarded() -> Any:
        running_host_function.set(bindings)
        return await function(data)

    # Set before the coroutine can start: a call it makes back into this instance must
    # already see that the instance waits on this loop.
    bindings.awaiting_loop = loop
    try:
        future = asyncio.run_coroutine_threadsafe(guarded(), loop)
        timeout = None
        if interrupt_at_ns:
            timeout = max(0.0, (interrupt_at_ns - time.monotonic_ns()) / 1e9)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DeadlinePassed from None
        except concurrent.futures.CancelledError:
            raise RuntimeError("the async host function was cancelled") from None
    finally:
        bindings.awaiting_loop = None


_private: asyncio.AbstractEventLoop | None = None
_private_lock = threading.Lock()


def private_loop() -> asyncio.AbstractEventLoop:
    """The event loop async host functions of synchronous-API instances run on: one daemon
    thread per process, started on first use."""
    global _private
    with _private_lock:
        if _private is None or _private.is_closed():
            loop = asyncio.new_event_loop()
            started = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(started.set)
                loop.run_forever()

            threading.Thread(target=serve, name="spear-host-functions", daemon=True).start()
            started.wait()
            _private = loop
        return _private
