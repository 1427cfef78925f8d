"""`Spearlet`: deploy functions on any runtime, invoke them, scale them.

    async with Spearlet() as spearlet:
        await spearlet.deploy(FunctionSpec("echo", RuntimeType.WASM, artifact="echo.wasm"))
        response = await spearlet.invoke("echo", b"hi")

`invoke` is the hot path, and an in-process WASM call costs only a few microseconds, so it is
written flat: one dict lookup, a balancer pick over a short list, the channel call, and a few
integer bumps for metrics. No task, lock, future or dict is created per call unless a request
has to wait for capacity, fails, or is retried; those paths live in separate methods.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from bisect import bisect_left
from collections.abc import Awaitable, Iterable, Mapping

from prometheus_client import CollectorRegistry, generate_latest

from spear.errors import ChannelClosed, CommunicationError, ExecutionFailed, InvalidConfiguration
from spear.errors import Timeout as SpearTimeout
from spear.instance_id import RuntimeType
from spear.invocation.errors import FunctionNotFound, InvalidRequest, QueueFull
from spear.invocation.executions import AsyncExecutions, ExecutionState
from spear.invocation.function_spec import FunctionSpec
from spear.invocation.launcher import Launcher
from spear.invocation.metrics import LATENCY_BOUNDS_MS, InvocationCollector
from spear.invocation.pod_follower import PodFollower
from spear.invocation.pool import InstancePool, Slot
from spear.invocation.request_limits import MAX_TIMEOUT_S, describe_bad_timeout
from spear.messages import Error, ExecutionRequest, ExecutionResponse, ExecutionStatus
from spear.runtime.base import Runtime, RuntimeInstance

log = logging.getLogger("spear.invocation")

_SUCCESS = ExecutionStatus.SUCCESS
_perf_counter = time.perf_counter
_FIRST_BOUND_MS = LATENCY_BOUNDS_MS[0]


class Spearlet:
    """The node agent: functions, their instance pools, scheduling and metrics.

    `runtimes` lets a caller supply configured runtimes (by type); any other runtime is
    created on first use and closed with the spearlet. Each spearlet has its own Prometheus
    `registry`. `scale_interval_s` is how often pools are checked for dead instances and
    scale-in; asynchronous results are kept `result_ttl_s` seconds, at most `max_results`.
    """

    def __init__(
        self,
        *,
        runtimes: Mapping[RuntimeType, Runtime] | None = None,
        namespace: str | None = None,
        registry: CollectorRegistry | None = None,
        scale_interval_s: float = 0.5,
        result_ttl_s: float = 300.0,
        max_results: int = 10_000,
    ) -> None:
        self._launcher = Launcher(runtimes, namespace=namespace)
        self._pools: dict[str, InstancePool] = {}
        self._followers: dict[str, PodFollower] = {}  # Kubernetes functions by Service name
        self._ids = itertools.count(1)
        self._executions = AsyncExecutions(ttl_s=result_ttl_s, max_kept=max_results)
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry.register(InvocationCollector(lambda: self._pools.values()))
        self._scale_interval = scale_interval_s
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Spearlet:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Undeploy everything (letting running requests finish briefly), stop the runtimes."""
        if self._closed:
            return
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        await self._executions.close()
        for name in list(self._followers):
            await self._stop_following(name)
        pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*(pool.close() for pool in pools), return_exceptions=True)
        await self._launcher.close()

    def runtime(self, runtime_type: RuntimeType) -> Runtime:
        """The runtime the spearlet uses for `runtime_type` (created on first use)."""
        return self._launcher.runtime(runtime_type)

    # -- deployment ---------------------------------------------------------------------

    async def deploy(self, spec: FunctionSpec) -> None:
        """Deploy `spec` and start its `min_instances`; on any start failure undo and raise."""
        if self._closed:
            raise ChannelClosed("spearlet is closed")
        if spec.name in self._pools:
            raise InvalidConfiguration(f"function {spec.name!r} is already deployed")
        pool = InstancePool(spec, self._launcher.launch, self._launcher.stop,
                            namespace=self._launcher.namespace)
        self._pools[spec.name] = pool
        try:
            if spec.service is not None:
                follower = PodFollower(pool, spec.service)
                self._launcher.follow_endpoints(spec.name, follower.take_endpoint)
                self._followers[spec.name] = follower
                await follower.start()
            else:
                await pool.start(spec.min_instances)
        except BaseException:
            self._pools.pop(spec.name, None)
            await self._stop_following(spec.name)
            await pool.close(grace=0)
            raise
        log.info("deployed", extra={"function": spec.name, "runtime": spec.runtime.value,
                                    "event": "deployed", "instances": len(pool.slots)})
        self._ensure_ticker()

    async def undeploy(self, name: str, *, grace: float = 5.0) -> None:
        """Stop taking requests for `name`, let running ones finish (up to `grace` s), stop it.

        Requests still queued fail with `ChannelClosed`.
        """
        pool = self._pools.pop(name, None)
        if pool is None:
            raise FunctionNotFound(f"no function {name!r} is deployed")
        await self._stop_following(name)
        await pool.close(grace=grace)
        log.info("undeployed", extra={"function": name, "event": "undeployed"})

    async def _stop_following(self, name: str) -> None:
        follower = self._followers.pop(name, None)
        if follower is not None:
            await follower.close()
        self._launcher.follow_endpoints(name, None)

    async def scale(self, name: str, instances: int) -> None:
        """Run exactly `instances` instances now; scale-in will not go below it."""
        await self._pool(name).scale_to(instances)

    def instances(self, name: str) -> list[RuntimeInstance]:
        """The live instances of `name`, in service now."""
        return [slot.instance for slot in self._pool(name).slots]

    def load(self, name: str) -> dict[str, int]:
        """Requests outstanding per instance (by full instance id)."""
        return {slot.instance.instance_id.full_id: slot.outstanding
                for slot in self._pool(name).slots}

    def functions(self) -> list[FunctionSpec]:
        return [pool.spec for pool in self._pools.values()]

    def function(self, name: str) -> FunctionSpec:
        return self._pool(name).spec

    def _pool(self, name: str) -> InstancePool:
        pool = self._pools.get(name)
        if pool is None:
            raise FunctionNotFound(f"no function {name!r} is deployed")
        return pool

    # -- invocation (hot path) ----------------------------------------------------------

    async def invoke(
        self,
        name: str,
        input: bytes,
        *,
        timeout: float | None = None,
        metadata: dict[str, str] | None = None,
        request_id: str | None = None,
    ) -> ExecutionResponse:
        """Run `name` on `input` and return its response.

        A function's own failure comes back as a response with `status` error (its
        `error_message` and `error_code` set). The call raises for what kept the function
        from answering: `Timeout`, `ChannelClosed` (its instance died), `QueueFull`,
        `FunctionNotFound`, `ExecutionFailed`, and `InvalidRequest` for a `timeout` that is
        not a finite number of seconds in (0, MAX_TIMEOUT_S] (checked before any capacity is
        taken). `request_id` (unique per spearlet; the front doors make one per request) names
        the request on its channel and in logs; by default the spearlet numbers requests.
        """
        result = self.begin(name, input, timeout=timeout, metadata=metadata,
                            request_id=request_id)
        return result if isinstance(result, ExecutionResponse) else await result

    def begin(
        self,
        name: str,
        input: bytes,
        *,
        timeout: float | None = None,
        metadata: dict[str, str] | None = None,
        request_id: str | None = None,
    ) -> ExecutionResponse | Awaitable[ExecutionResponse]:
        """`invoke` for callers on the event loop that count microseconds (the front doors):
        the response itself when the call ran at once (in-process WASM on the loop), else an
        awaitable of it, which the caller must await. Raises what `invoke` raises, either
        here or from the awaitable."""
        try:
            pool = self._pools[name]
        except KeyError:
            raise FunctionNotFound(f"no function {name!r} is deployed") from None
        if timeout is not None and not 0.0 < timeout <= MAX_TIMEOUT_S:  # NaN fails too
            raise InvalidRequest(describe_bad_timeout(timeout))
        if pool.max_input is not None and len(input) > pool.max_input:
            raise ExecutionFailed(
                f"input of {len(input)} bytes exceeds the limit of {pool.max_input} bytes "
                f"for {name!r}", "input_too_large")
        slot = pool.sole
        if slot is None or slot.outstanding >= slot.capacity:
            slot = pool.pick()
            if slot is None:
                return self._invoke_queued(pool, input, timeout, metadata, request_id)
        explicit = timeout
        if timeout is None:
            timeout = pool.default_timeout
        slot.outstanding += 1
        if request_id is None:
            request_id = str(next(self._ids))
        start = slot.start
        if start is None:
            # A socket round trip costs tens of microseconds or more: the generic path.
            return self._dispatch(pool, slot, _request(pool, request_id, input, explicit,
                                                       metadata), timeout, False)
        # In-process WASM: a call costs a few microseconds, so every step here counts. The
        # channel answers at once when the call ran on the event loop.
        try:
            started = start(request_id, pool.handler, input, timeout, metadata)
        except Exception as exc:
            pool.release(slot)
            return self._recover(pool, slot, _request(pool, request_id, input, explicit,
                                                      metadata), timeout, exc, None, False)
        except BaseException:
            pool.release(slot)
            raise
        if isinstance(started, ExecutionResponse):
            return self._answered(pool, slot, request_id, started)
        return self._answer_later(pool, slot, request_id, started,
                                  _request(pool, request_id, input, explicit, metadata), timeout)

    def _answered(self, pool: InstancePool, slot: Slot, request_id: str,
                  response: ExecutionResponse) -> ExecutionResponse:
        """An in-process call answered: give its capacity back and count it."""
        if pool.waiting or slot.draining:
            pool.release(slot)
        else:
            slot.outstanding -= 1
        elapsed_ms = response.execution_time_ms  # measured around the call by the channel
        stats = slot.stats
        stats.latency_sum_ms += elapsed_ms
        if elapsed_ms <= _FIRST_BOUND_MS:  # most in-process calls: skip the search
            stats.buckets[0] += 1
        else:
            stats.buckets[bisect_left(LATENCY_BOUNDS_MS, elapsed_ms)] += 1
        if response.status is not _SUCCESS:
            return self._unusual(pool, slot, request_id, response)
        return response

    async def _answer_later(
        self, pool: InstancePool, slot: Slot, request_id: str,
        started: Awaitable[ExecutionResponse], request: ExecutionRequest,
        timeout: float | None,
    ) -> ExecutionResponse:
        """An in-process call that left the event loop (the instance's thread)."""
        try:
            response = await started
        except Exception as exc:
            pool.release(slot)
            return await self._recover(pool, slot, request, timeout, exc, None, False)
        except BaseException:
            pool.release(slot)
            raise
        return self._answered(pool, slot, request_id, response)

    # -- invocation (slow paths) --------------------------------------------------------

    async def _invoke_queued(
        self, pool: InstancePool, input: bytes, timeout: float | None,
        metadata: dict[str, str] | None, request_id: str | None,
    ) -> ExecutionResponse:
        """Every instance is busy: wait in the function's queue (scaling out meanwhile)."""
        if timeout is None:
            timeout = pool.default_timeout
        deadline = None if timeout is None else _perf_counter() + timeout
        try:
            slot = await pool.acquire(timeout)
        except QueueFull:
            pool.stats_for("none").error("queue_full")
            raise
        except SpearTimeout:
            pool.stats_for("none").error("queue_timeout")
            raise
        remaining = None if deadline is None else max(deadline - _perf_counter(), 0.001)
        request = ExecutionRequest(
            str(next(self._ids)) if request_id is None else request_id, pool.handler, input,
            0 if remaining is None else max(int(remaining * 1000), 1),
            {} if metadata is None else metadata)
        return await self._dispatch(pool, slot, request, remaining, False)

    async def _dispatch(
        self, pool: InstancePool, slot: Slot, request: ExecutionRequest,
        timeout: float | None, retried: bool,
    ) -> ExecutionResponse:
        """`invoke`'s hot path for a slot already reserved, as a reusable slow path."""
        started = _perf_counter()
        try:
            response = await slot.call(request, timeout)
        except Exception as exc:
            pool.release(slot)
            return await self._recover(pool, slot, request, timeout, exc, started, retried)
        except BaseException:
            pool.release(slot)
            raise
        pool.release(slot)
        slot.stats.observe_ms((_perf_counter() - started) * 1000.0)
        if response.__class__ is not ExecutionResponse or response.status is not _SUCCESS:
            return self._unusual(pool, slot, request.request_id, response)
        return response

    def _unusual(
        self, pool: InstancePool, slot: Slot, request_id: str, response: object,
    ) -> ExecutionResponse:
        """A reply that is not a success: count it by kind; make it an `ExecutionResponse`
        (or raise `Timeout` for an instance's own timeout reply)."""
        if isinstance(response, ExecutionResponse):
            if response.status is ExecutionStatus.TIMEOUT:
                # The instance timed the request out before our own deadline fired: the
                # same `Timeout` either way, whichever side was first.
                slot.stats.error("timeout")
                raise SpearTimeout(f"{pool.spec.name!r}: "
                                   f"{response.error_message or 'timed out'}")
            else:
                slot.stats.error(response.error_code or "error")
            return response
        if isinstance(response, Error):
            slot.stats.error(response.code or "error")
            return ExecutionResponse(request_id, b"", ExecutionStatus.ERROR,
                                     response.message, response.code)
        slot.stats.error("invalid_reply")
        raise ExecutionFailed(
            f"{slot.instance.instance_id.full_id} answered {type(response).__name__} "
            f"to an execution request", "invalid_reply")

    async def _recover(
        self, pool: InstancePool, slot: Slot, request: ExecutionRequest,
        timeout: float | None, exc: Exception, started: float | None, retried: bool,
    ) -> ExecutionResponse:
        """The channel call raised. Count it; retry an idempotent request whose instance died.

        `started` is None for calls the hot path did not time (in-process WASM): a timed-out
        one is counted at its timeout, any other failure at zero.
        """
        stats = slot.stats
        if started is not None:
            elapsed = _perf_counter() - started
        elif isinstance(exc, TimeoutError) and timeout:
            elapsed = timeout
        else:
            elapsed = 0.0
        extra = {"function": pool.spec.name, "request_id": request.request_id,
                 "instance_id": slot.instance.instance_id.full_id}
        if isinstance(exc, ChannelClosed):
            pool.mark_dead(slot, exc)
            if pool.spec.idempotent and not retried and not pool.closed:
                stats.retries += 1
                log.warning("instance died under a request; retrying it on another instance",
                            extra={**extra, "event": "retry"})
                remaining = None if timeout is None else max(timeout - elapsed, 0.001)
                try:
                    other = await pool.acquire(remaining)
                except CommunicationError:
                    stats.observe_ms(elapsed * 1000.0)
                    stats.error("channel_closed")
                    raise exc from None
                return await self._dispatch(pool, other, request, remaining, True)
            kind = "channel_closed"
        elif isinstance(exc, SpearTimeout | TimeoutError):
            kind = "timeout"
        elif isinstance(exc, ExecutionFailed):
            kind = "execution_failed"
        elif isinstance(exc, CommunicationError):
            kind = _snake(type(exc).__name__)
        else:
            kind = "internal"
        stats.observe_ms(elapsed * 1000.0)
        stats.error(kind)
        log.info("invocation failed: %s: %s", kind, exc, extra={**extra, "event": "failed"})
        if isinstance(exc, TimeoutError) and not isinstance(exc, SpearTimeout):
            raise SpearTimeout(f"{pool.spec.name!r}: {exc or 'timed out'}") from exc
        raise exc

    # -- asynchronous invocation --------------------------------------------------------

    def submit(
        self, name: str, input: bytes, *, timeout: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Start `invoke(name, input)` in the background; returns its execution id."""
        self._pool(name)  # fail now, not later, for an unknown function
        if timeout is not None and not 0.0 < timeout <= MAX_TIMEOUT_S:
            raise InvalidRequest(describe_bad_timeout(timeout))
        return self._executions.submit(
            name, self.invoke(name, input, timeout=timeout, metadata=metadata))

    async def result(self, execution_id: str, timeout: float | None = None) -> ExecutionResponse:
        """The response of a submitted execution (or its error), waiting up to `timeout` s."""
        return await self._executions.result(execution_id, timeout)

    def cancel(self, execution_id: str) -> bool:
        """Cancel a submitted execution; False if it had already finished."""
        return self._executions.cancel(execution_id)

    def execution_state(self, execution_id: str) -> ExecutionState:
        return self._executions.state(execution_id)

    # -- observability ------------------------------------------------------------------

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition of this spearlet's registry."""
        return bytes(generate_latest(self.registry))

    # -- upkeep -------------------------------------------------------------------------

    def _ensure_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self._scale_interval)
            now = _perf_counter()
            for pool in list(self._pools.values()):
                try:
                    pool.tick(now)
                except Exception:
                    log.exception("upkeep of %s failed", pool.spec.name)
            self._executions.expire()

    def pools(self) -> Iterable[InstancePool]:
        return self._pools.values()


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower()
                   for i, c in enumerate(name))


def _request(pool: InstancePool, request_id: str, input: bytes, timeout: float | None,
             metadata: dict[str, str] | None) -> ExecutionRequest:
    """The request as a channel's `request_response` takes it; `timeout` as the caller gave
    it (None: the function's default)."""
    # 0 would mean "no deadline" to the worker: a timeout under a millisecond is one.
    timeout_ms = pool.default_timeout_ms if timeout is None else int(timeout * 1000) or 1
    return ExecutionRequest(request_id, pool.handler, input, timeout_ms,
                            {} if metadata is None else metadata)
