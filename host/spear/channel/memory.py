"""The in-memory channel: a `CommunicationChannel` whose transport is a guest's linear memory.

A request is written straight into the guest's memory and its handler runs in this process.
Where the call runs is chosen per handler ("auto" dispatch): a handler whose recent calls all
finished within `inline_threshold_us` runs inline on the event loop, which costs a couple of
microseconds; any other call runs on the instance's own worker thread (wasm releases the
GIL), so a long guest call never stalls the loop. A handler that turns slow inline is moved
back to the thread at once. `ChannelConfig.extra["dispatch"]` = "thread" or "inline" forces
one mode.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
from spear.transport.wasm.instance import CallFailure, CallResult, WasmInstance
from spear.transport.wasm.module import WasmModule

DEFAULT_INLINE_THRESHOLD_US = 500
# Inputs above this always leave the loop: copying them alone takes tens of microseconds.
INLINE_MAX_INPUT = 1 << 20
_perf_counter = time.perf_counter
FAST_CALLS_BEFORE_INLINE = 3
_SUCCESS = ExecutionStatus.SUCCESS
_ERROR = ExecutionStatus.ERROR


class MemoryChannel(CommunicationChannel):
    def __init__(
        self, instance_id: RuntimeInstanceId, instance: WasmInstance, config: ChannelConfig
    ) -> None:
        self._id = instance_id
        self._instance = instance
        self._config = config
        self._default_timeout = config.request_timeout if config.request_timeout_ms else None
        dispatch = config.extra.get("dispatch", "auto")
        if dispatch not in ("auto", "thread", "inline"):
            raise InvalidConfiguration(f"dispatch must be auto, thread or inline, not {dispatch!r}")
        self._dispatch = dispatch
        self._inline_threshold = (
            int(config.extra.get("inline_threshold_us", DEFAULT_INLINE_THRESHOLD_US)) / 1e6
        )
        self._fast_streak: dict[str, int] = {}  # handler -> consecutive fast threaded calls
        # Handlers allowed to run on the loop (auto mode learns them; "inline" never asks).
        self._inline: set[str] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()  # serialises calls that leave the loop
        self._threaded = 0  # threaded calls queued or running; inline must wait for them
        self._inbound: asyncio.Queue[RuntimeMessage | None] = asyncio.Queue()
        self._stats = StatsRecorder()
        self._closed = False

    @property
    def instance_id(self) -> RuntimeInstanceId:
        return self._id

    @property
    def connected(self) -> bool:
        return not self._closed

    @property
    def wasm_instance(self) -> WasmInstance:
        return self._instance

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
        if self._closed:
            raise ChannelClosed(f"channel to {self._id.full_id} is closed")
        if timeout is None:
            timeout = (request.timeout_ms / 1000.0 if request.timeout_ms > 0
                       else self._default_timeout)
        function = request.function_name
        data = request.input_data
        started = _perf_counter()
        if not self._threaded and (
            (function in self._inline and len(data) <= INLINE_MAX_INPUT)
            or self._dispatch == "inline"
        ):
            result = self._instance.execute(function, data, timeout, request.metadata or None)
            elapsed = _perf_counter() - started
            if elapsed > self._inline_threshold:
                self._learn(function, elapsed)  # demote it to the thread
        else:
            result = await self._run_threaded(request, timeout)
            elapsed = _perf_counter() - started
        # StatsRecorder's counters, bumped inline: this runs for every request.
        stats = self._stats
        stats.messages_sent += 1
        stats.bytes_sent += len(data)
        if self._instance.outbox:
            self._deliver_sent()
        if type(result) is bytes:
            stats.messages_received += 1
            stats.bytes_received += len(result)
            stats.requests_completed += 1
            stats.latency_total += elapsed
            return ExecutionResponse(request.request_id, result, _SUCCESS, None, None,
                                     elapsed * 1000.0)
        assert isinstance(result, CallFailure)
        if result.timed_out:
            stats.timeout_errors += 1
            raise Timeout(f"{self._id.full_id}: {result.message}")
        stats.received(0)
        stats.completed(elapsed)
        return ExecutionResponse(request.request_id, b"", _ERROR, result.message, result.code,
                                 elapsed * 1000.0)

    async def _run_threaded(
        self, request: ExecutionRequest, timeout: float | None
    ) -> CallResult:
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
                started = time.perf_counter()
                result = await loop.run_in_executor(
                    self._executor, self._instance.execute, request.function_name,
                    request.input_data, remaining, request.metadata or None,
                )
                self._learn(request.function_name, time.perf_counter() - started)
                return result
            finally:
                self._lock.release()
        finally:
            self._threaded -= 1

    def _learn(self, function: str, elapsed: float) -> None:
        if self._dispatch != "auto":
            return
        if elapsed <= self._inline_threshold:
            streak = self._fast_streak.get(function, 0) + 1
            self._fast_streak[function] = streak
            if streak >= FAST_CALLS_BEFORE_INLINE:
                self._inline.add(function)
        else:
            self._fast_streak[function] = 0
            self._inline.discard(function)

    def _deliver_sent(self) -> None:
        for topic, data in self._instance.take_sent():
            self._stats.received(len(data))
            self._inbound.put_nowait(ExecutionRequest(
                f"{self._id.instance_id}:out:{self._stats.messages_received}", topic, data, 0,
                {"origin": "guest"},
            ))

    def _health(self, request_id: str) -> HealthResponse:
        instance = self._instance
        return HealthResponse(
            request_id,
            "not_serving" if self._closed else "serving",
            {
                "calls": float(instance.call_count),
                "replacements": float(instance.replacements),
                "memory_bytes": float(instance.memory_size),
                "queued_for_guest": float(len(instance.inbox)),
            },
        )

    async def send(self, message: RuntimeMessage) -> None:
        """Queue a message for the guest (`spear.recv`), or answer a health check."""
        if self._closed:
            raise ChannelClosed(f"channel to {self._id.full_id} is closed")
        if type(message) is ExecutionRequest:
            self._instance.push(message.function_name, message.input_data)
            self._stats.sent(len(message.input_data))
        elif type(message) is HealthCheck:
            self._inbound.put_nowait(self._health(message.request_id))
        elif type(message) is Shutdown:
            await self.close()
        else:
            raise InvalidMessage(f"cannot send {type(message).__name__} to a WASM guest")

    async def receive(self) -> RuntimeMessage:
        """The next message the guest sent with `spear.send` (or a health answer)."""
        if self._closed and self._inbound.empty():
            raise ChannelClosed(f"channel to {self._id.full_id} is closed")
        message = await self._inbound.get()
        if message is None:
            self._inbound.put_nowait(None)  # wake the next waiter too
            raise ChannelClosed(f"channel to {self._id.full_id} is closed")
        return message

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbound.put_nowait(None)
        async with self._lock:  # let a running threaded call finish first
            self._instance.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def get_stats(self) -> ChannelStats:
        return self._stats.snapshot()


async def open_memory_channel(
    instance_id: RuntimeInstanceId,
    artifact: str | Path | bytes | WasmModule,
    config: ChannelConfig | None = None,
    *,
    memory_limit: int | None = None,
    fuel: int | None = None,
) -> MemoryChannel:
    """Load (or reuse) a module, start an instance and return the channel to it."""
    config = config or ChannelConfig()
    if isinstance(artifact, WasmModule):
        module = artifact
    else:
        # Compiling can take a while the first time; keep the loop free.
        module = await asyncio.to_thread(
            WasmModule.load, artifact, memory_limit=memory_limit, fuel=fuel)
    instance = WasmInstance(module, label=instance_id.full_id,
                            max_message_size=config.max_message_size)
    return MemoryChannel(instance_id, instance, config)
