"""The in-memory channel: a `CommunicationChannel` whose transport is a guest's linear memory.

A request is written straight into the guest's memory and its handler runs in this process.
Where the call runs is chosen per handler ("auto" dispatch): a handler whose recent calls on
the instance's thread all finished within `inline_threshold_us` runs inline on the event loop
(a couple of microseconds), every other call on the instance's own worker thread (wasm
releases the GIL).

Guest code never holds the event loop longer than the loop budget (`loop_budget_ms`, 5 ms by
default): an inline call is interrupted when the budget runs out, its instance is replaced,
what it did to the mailbox is undone, and the call runs again on the thread with what is left
of its timeout; the handler then has to prove itself fast on the thread again (twice as many
calls each time it is caught) before it is let back on the loop. Anything that has to run
guest code besides the handler (a replacement instance's start function and handshake) runs
on the thread too. docs/wasm-abi.md ("The event loop budget") has the trade-offs.

`ChannelConfig.extra["dispatch"]` = "thread" or "inline" forces one mode ("inline" still
honours the budget).

Python host functions decide too: an instance with any host function that is not declared
`inline_safe` runs every call on its thread (a Python function cannot be interrupted at the
loop budget), and one with an async host function never runs inline at all (the guest waits
on its thread while the coroutine runs on this loop). A WASI command starts an instance per
call, so its calls always run on the thread.

The "auto" mode learns from how long a handler takes on the thread, measured inside the
worker thread: the loop's own delay in noticing that a call finished is not the handler's.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from spear.channel.base import CommunicationChannel
from spear.config import ChannelConfig
from spear.errors import ChannelClosed, InvalidConfiguration, InvalidMessage, Timeout
from spear.instance_id import RuntimeInstanceId
from spear.messages import (
    ExecutionRequest,
    ExecutionResponse,
    ExecutionStatus,
    HealthCheck,
    HealthResponse,
    RuntimeMessage,
    Shutdown,
)
from spear.stats import ChannelStats, StatsRecorder
from spear.transport.wasm.arguments import as_input, check_function, check_timeout, encode_metadata
from spear.transport.wasm.bindings import make_bindings
from spear.transport.wasm.command_session import CommandSession
from spear.transport.wasm.host_functions import running_host_function
from spear.transport.wasm.instance import WasmInstance
from spear.transport.wasm.limits import DEFAULT_LOOP_BUDGET, MAX_TIMEOUT, GuestLimits
from spear.transport.wasm.module import WasmModule
from spear.transport.wasm.session import GuestSession, open_session
from spear.transport.wasm.traps import CallFailure, CallResult, reentrant_call

DEFAULT_INLINE_THRESHOLD_US = 500
# Inputs above this always leave the loop: copying them alone takes tens of microseconds.
INLINE_MAX_INPUT = 1 << 20
FAST_CALLS_BEFORE_INLINE = 3
MAX_FAST_CALLS_BEFORE_INLINE = 3 << 10
MAX_LEARNED_HANDLERS = 1024  # handler names whose speed the channel remembers
MAX_HEALTH_ANSWERS = 16  # unreceived answers to `send(HealthCheck())`; older ones are dropped
MAX_LOOP_BUDGET = 1.0
_perf_counter = time.perf_counter
_SUCCESS = ExecutionStatus.SUCCESS
_ERROR = ExecutionStatus.ERROR


def check_loop_budget(value: Any, name: str = "loop_budget_ms") -> float:
    """A loop budget in milliseconds, as seconds."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InvalidConfiguration(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of milliseconds, not {type(value).__name__}")
    if not 0 < value <= MAX_LOOP_BUDGET * 1000:
        raise InvalidConfiguration(
            f"{name} must be more than 0 and at most {MAX_LOOP_BUDGET * 1000:g}, got {value!r}")
    return float(value) / 1000.0


class MemoryChannel(CommunicationChannel):
    def __init__(
        self, instance_id: RuntimeInstanceId, session: GuestSession | CommandSession,
        config: ChannelConfig, *, loop_budget: float = DEFAULT_LOOP_BUDGET,
    ) -> None:
        self._id = instance_id
        self._session = session
        self._execute = session.execute
        self._mailbox = session.mailbox
        self._config = config
        self._default_timeout = (min(config.request_timeout, MAX_TIMEOUT)
                                 if config.request_timeout_ms else None)
        dispatch = config.extra.get("dispatch", "auto")
        if dispatch not in ("auto", "thread", "inline"):
            raise InvalidConfiguration(f"dispatch must be auto, thread or inline, not {dispatch!r}")
        bindings = session.bindings
        if not bindings.inline_safe:
            if dispatch == "inline":
                blocking = sorted(name for name, f in bindings.host_functions.items()
                                  if not f.inline_safe)
                raise InvalidConfiguration(
                    f"dispatch 'inline' needs host functions that may run on the event loop; "
                    f"{', '.join(blocking[:10])} {'is' if len(blocking) == 1 else 'are'} async "
                    "or not declared inline_safe")
            dispatch = "thread"  # a Python host function could hold the loop unbounded
        self._dispatch = dispatch
        self._bindings = bindings
        threshold = config.extra.get("inline_threshold_us", DEFAULT_INLINE_THRESHOLD_US)
        try:
            self._inline_threshold = int(threshold) / 1e6
        except ValueError:
            raise InvalidConfiguration(
                f"inline_threshold_us must be an int, got {threshold!r}") from None
        self._budget = loop_budget
        self._fast_streak: dict[str, int] = {}  # handler -> consecutive fast threaded calls
        self._needed: dict[str, int] = {}  # handler -> fast calls it needs to go inline
        # Handlers allowed to run on the loop (auto mode learns them; "inline" never asks).
        self._inline: set[str] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()  # serialises calls that leave the loop
        self._threaded = 0  # threaded calls queued or running; inline must wait for them
        self._arrived = asyncio.Event()  # the guest sent something, or a health answer
        self._room = asyncio.Event()  # a call ended: the guest's inbox may have room
        self._health_answers: collections.deque[HealthResponse] = collections.deque(
            maxlen=MAX_HEALTH_ANSWERS)
        self._sent_seen = 0
        self._pushers = 0  # senders waiting for room in the guest's inbox
        self._stats = StatsRecorder()
        self._closed = False
        self._wrapper: WasmInstance | None = None

    @property
    def instance_id(self) -> RuntimeInstanceId:
        return self._id

    @property
    def connected(self) -> bool:
        return not self._closed

    @property
    def session(self) -> GuestSession | CommandSession:
        return self._session

    @property
    def dispatch(self) -> str:
        """Where calls run: "auto" (learned per handler), "thread" or "inline"."""
        return self._dispatch

    @property
    def wasm_instance(self) -> WasmInstance:
        """The embedding view of this channel's instance (same guest, same calls)."""
        if self._wrapper is None:
            self._wrapper = WasmInstance._wrap(self._session)
        return self._wrapper

    @property
    def loop_budget(self) -> float:
        return self._budget

    async def execute(
        self, request: ExecutionRequest, timeout: float | None = None
    ) -> ExecutionResponse:
        """`request_response` for an `ExecutionRequest`, typed."""
        response = await self.request_response(request, timeout)
        assert type(response) is ExecutionResponse
        return response

    async def request_response(
        self, request: RuntimeMessage, timeout: float | None = None
    ) -> RuntimeMessage:
        """Run an `ExecutionRequest` (the hot path) or answer a `HealthCheck`."""
        if type(request) is not ExecutionRequest:
            if type(request) is HealthCheck:
                return self._health(request.request_id)
            raise InvalidMessage(
                "a WASM channel answers ExecutionRequest and HealthCheck, "
                f"not {type(request).__name__}"
            )
        if timeout is None:
            timeout_ms = request.timeout_ms
            if timeout_ms == 0:
                timeout = self._default_timeout
            else:
                if type(timeout_ms) is not int or timeout_ms < 0:
                    timeout_ms = _check_timeout_ms(timeout_ms)
                timeout = min(timeout_ms / 1000.0, MAX_TIMEOUT)
        elif type(timeout) is not float or not 0.0 < timeout <= MAX_TIMEOUT:
            timeout = check_timeout(timeout)
        function = request.function_name
        if type(function) is not str:
            check_function(function, "request.function_name")
        data = request.input_data
        if type(data) is not bytes:
            data = as_input(data, "request.input_data")
        metadata = request.metadata or None
        if metadata is not None and type(metadata) is not dict:
            encode_metadata(metadata, "request.metadata")
        result = self.start(request.request_id, function, data, timeout, metadata)
        if isinstance(result, ExecutionResponse):
            return result
        return await result

    def start(
        self, request_id: str, function: str, data: bytes, timeout: float | None,
        metadata: dict[str, str] | None,
    ) -> ExecutionResponse | Awaitable[ExecutionResponse]:
        """`request_response` without the request object, for callers that have checked the
        timeout (seconds in (0, MAX_TIMEOUT], or None for the channel's default): the
        response itself when the call ran on the event loop, else an awaitable of it (the
        caller must await it). Raises what `request_response` raises. The session checks
        the other arguments' types."""
        if self._closed:
            raise ChannelClosed(f"channel to {self._id.full_id} is closed")
        if type(data) is not bytes:
            data = as_input(data)
        if timeout is None:
            timeout = self._default_timeout
        if not self._threaded and self._session.live and (
            (function in self._inline and len(data) <= INLINE_MAX_INPUT)
            or self._dispatch == "inline"
        ):
            started = _perf_counter()
            result = self._execute(function, data, timeout, metadata, self._budget)
            elapsed = _perf_counter() - started
            if type(result) is bytes or not result.needs_thread:  # type: ignore[union-attr]
                if elapsed > self._inline_threshold:
                    self._learn(function, elapsed)  # demote it to the thread
                return self._response(request_id, data, result, elapsed)
            # Caught at the loop budget (what it did was undone): again on the thread.
            self._caught_slow(function)
            remaining = None if timeout is None else timeout - elapsed
            if remaining is not None and remaining <= 0:
                self._stats.timeout_errors += 1
                raise Timeout(f"{self._id.full_id}: {function!r} did not finish within "
                              f"{timeout} s")
            return self._threaded_response(request_id, function, data, metadata, remaining,
                                           started)
        return self._threaded_response(request_id, function, data, metadata, timeout,
                                       _perf_counter())

    async def _threaded_response(
        self, request_id: str, function: str, data: bytes, metadata: dict[str, str] | None,
        timeout: float | None, started: float,
    ) -> ExecutionResponse:
        result = await self._run_threaded(function, data, metadata, timeout)
        return self._response(request_id, data, result, _perf_counter() - started)

    def _response(self, request_id: str, data: bytes, result: CallResult,
                  elapsed: float) -> ExecutionResponse:
        # StatsRecorder's counters, bumped inline: this runs for every request.
        stats = self._stats
        stats.messages_sent += 1
        stats.bytes_sent += len(data)
        if self._mailbox.sent_count != self._sent_seen or self._pushers:
            self._after_mail()
        if type(result) is bytes:
            stats.messages_received += 1
            stats.bytes_received += len(result)
            stats.requests_completed += 1
            stats.latency_total += elapsed
            return ExecutionResponse(request_id, result, _SUCCESS, None, None, elapsed * 1000.0)
        assert isinstance(result, CallFailure)
        if result.timed_out:
            stats.timeout_errors += 1
            raise Timeout(f"{self._id.full_id}: {result.message}")
        stats.received(0)
        stats.completed(elapsed)
        return ExecutionResponse(request_id, b"", _ERROR, result.message, result.code,
                                 elapsed * 1000.0)

    def _timed(self, function: str, data: bytes, timeout: float | None,
               metadata: dict[str, str] | None) -> tuple[CallResult, float]:
        """Run on the instance's thread: the result and how long the guest call took there."""
        started = _perf_counter()
        result = self._execute(function, data, timeout, metadata)
        return result, _perf_counter() - started

    async def _run_threaded(self, function: str, data: bytes, metadata: dict[str, str] | None,
                            timeout: float | None) -> CallResult:
        if running_host_function.get() is self._bindings:
            # An async host function of this instance calling back into it: the call that
            # awaits the host function holds the instance.
            return reentrant_call(self._id.full_id)
        self._threaded += 1
        try:
            waited = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    await self._lock.acquire()
            except TimeoutError:
                self._stats.timeout_errors += 1
                raise Timeout(
                    f"{self._id.full_id}: request waited {timeout} s for the instance"
                ) from None
            try:
                if self._closed:
                    raise ChannelClosed(f"channel to {self._id.full_id} is closed")
                remaining = None if timeout is None else max(
                    0.001, timeout - (time.perf_counter() - waited))
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="spear-wasm")
                loop = asyncio.get_running_loop()
                result, took = await loop.run_in_executor(
                    self._executor, self._timed, function, data, remaining, metadata)
                self._learn(function, took)
                return result
            finally:
                self._lock.release()
        finally:
            self._threaded -= 1

    def _learn(self, function: str, elapsed: float) -> None:
        if self._dispatch != "auto":
            return
        if function not in self._fast_streak and len(self._fast_streak) >= MAX_LEARNED_HANDLERS:
            return  # names callers make up must not grow this without end: they stay threaded
        if elapsed <= self._inline_threshold:
            streak = self._fast_streak.get(function, 0) + 1
            self._fast_streak[function] = streak
            if streak >= self._needed.get(function, FAST_CALLS_BEFORE_INLINE):
                self._inline.add(function)
        else:
            self._fast_streak[function] = 0
            self._inline.discard(function)

    def _caught_slow(self, function: str) -> None:
        """An inline call ran past the loop budget: off the loop, and longer to come back."""
        self._inline.discard(function)
        if function in self._needed or len(self._needed) < MAX_LEARNED_HANDLERS:
            self._fast_streak[function] = 0
            self._needed[function] = min(
                MAX_FAST_CALLS_BEFORE_INLINE,
                2 * self._needed.get(function, FAST_CALLS_BEFORE_INLINE))

    def _after_mail(self) -> None:
        self._sent_seen = self._mailbox.sent_count
        if self._sent_seen:
            self._arrived.set()
        self._room.set()

    def _health(self, request_id: str) -> HealthResponse:
        session = self._session
        return HealthResponse(
            request_id,
            "not_serving" if self._closed else "serving",
            {
                "calls": float(session.calls),
                "replacements": float(session.replacements),
                "memory_bytes": float(session.memory_size()),
                "queued_for_guest": float(self._mailbox.queued_count),
                "queued_for_host": float(self._mailbox.sent_count),
                "log_dropped": float(session.log.dropped_records),
            },
        )

    async def send(self, message: RuntimeMessage) -> None:
        """Queue a message for the guest (`spear.recv`), or answer a health check.

        When the guest's inbox is full this waits (up to the channel's request timeout) for
        the guest to pull messages, then raises `Timeout`.
        """
        if self._closed:
            raise ChannelClosed(f"channel to {self._id.full_id} is closed")
        if type(message) is ExecutionRequest:
            topic = check_function(message.function_name, "message.function_name")
            data = as_input(message.input_data, "message.input_data")
            if len(topic.encode()) + len(data) > self._session.max_message_size:
                raise InvalidMessage(
                    f"message of {len(topic.encode()) + len(data)} bytes exceeds the maximum "
                    f"of {self._session.max_message_size}")
            await self._push(topic, data)
            self._stats.sent(len(data))
        elif type(message) is HealthCheck:
            self._health_answers.append(self._health(message.request_id))
            self._arrived.set()
        elif type(message) is Shutdown:
            await self.close()
        else:
            raise InvalidMessage(f"cannot send {type(message).__name__} to a WASM guest")

    async def _push(self, topic: str, data: bytes) -> None:
        if self._mailbox.push(topic, data):
            return
        self._pushers += 1
        try:
            async with asyncio.timeout(self._default_timeout):
                while not self._mailbox.push(topic, data):
                    if self._closed:
                        raise ChannelClosed(f"channel to {self._id.full_id} is closed")
                    self._room.clear()
                    await self._room.wait()
        except TimeoutError:
            raise Timeout(f"{self._id.full_id}: the guest's inbox stayed full for "
                          f"{self._default_timeout} s") from None
        finally:
            self._pushers -= 1

    async def receive(self) -> RuntimeMessage:
        """The next message the guest sent with `spear.send` (or a health answer)."""
        while True:
            if self._health_answers:
                return self._health_answers.popleft()
            sent = self._mailbox.pop_sent()
            if sent is not None:
                self._sent_seen = self._mailbox.sent_count
                topic, data = sent
                self._stats.received(len(data))
                return ExecutionRequest(
                    f"{self._id.instance_id}:out:{self._stats.messages_received}", topic, data,
                    0, {"origin": "guest"})
            if self._closed:
                raise ChannelClosed(f"channel to {self._id.full_id} is closed")
            self._arrived.clear()
            await self._arrived.wait()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._arrived.set()
        self._room.set()
        async with self._lock:  # let a running threaded call finish first
            self._session.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def get_stats(self) -> ChannelStats:
        return self._stats.snapshot()


def _check_timeout_ms(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"request.timeout_ms must be an int, not {type(value).__name__}")
    if value < 0:
        raise InvalidConfiguration(f"request.timeout_ms must be >= 0, got {value}")
    return value


async def open_memory_channel(
    instance_id: RuntimeInstanceId,
    artifact: str | Path | bytes | WasmModule,
    config: ChannelConfig | None = None,
    *,
    memory_limit: int | None = None,
    fuel: int | None = None,
    loop_budget_ms: float | str | None = None,
    limits: GuestLimits | None = None,
    host_functions: Any = None,
    guest_config: Any = None,
    wasi: Any = None,
) -> MemoryChannel:
    """Load (or reuse) a module, start an instance and return the channel to it.

    Both steps run guest code or compile, so both run off the event loop; the instance's
    start gets `config.connect_timeout_ms`. `host_functions`, `guest_config` (the
    configuration the guest reads) and `wasi` are the instance's bindings, over the
    module's; async host functions run on this event loop.
    """
    config = config or ChannelConfig()
    budget = check_loop_budget(
        config.extra.get("loop_budget_ms", DEFAULT_LOOP_BUDGET * 1000)
        if loop_budget_ms is None else loop_budget_ms)
    if limits is not None and not isinstance(limits, GuestLimits):
        raise TypeError(f"limits must be a GuestLimits, not {type(limits).__name__}")
    if isinstance(artifact, WasmModule):
        module = artifact
    else:
        from spear.transport.wasm.wasm_host import default_host

        module = await asyncio.to_thread(
            default_host().load, artifact, memory_limit=memory_limit, fuel=fuel)
    setup = min(config.connect_timeout, MAX_TIMEOUT) if config.connect_timeout_ms else None
    bindings = make_bindings(module.bindings, host_functions=host_functions,
                             config=guest_config, wasi=wasi,
                             max_output=config.max_message_size,
                             loop=asyncio.get_running_loop())
    session = await asyncio.to_thread(
        open_session, module, label=instance_id.full_id,
        max_message_size=config.max_message_size, limits=limits or GuestLimits(),
        setup_timeout=setup or module.setup_timeout, bindings=bindings)
    try:
        return MemoryChannel(instance_id, session, config, loop_budget=budget)
    except BaseException:
        session.close()
        raise
