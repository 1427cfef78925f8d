"""The instances of one deployed function, their load, and their lifecycle.

A `Slot` is one running instance plus the load the spearlet put on it (`outstanding`
requests, at most `capacity`). `InstancePool` owns a function's slots: it starts them through
a launcher, hands capacity to queued requests, replaces dead instances, scales out when every
slot is full and requests queue, and scales back in when instances stay unneeded.

Only the pool mutates `slots`, and only on the event loop; the hot path in `Spearlet.invoke`
reads it through the balancer and bumps `outstanding` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from spear.errors import ChannelClosed, CommunicationError
from spear.invocation.balancer import make_balancer
from spear.invocation.errors import InstanceStartFailed
from spear.invocation.function_spec import FunctionSpec
from spear.invocation.metrics import TransportStats
from spear.invocation.queue import WaitQueue
from spear.protocol.messages import ExecutionRequest, ExecutionResponse, RuntimeMessage
from spear.runtime.base import RuntimeInstance

log = logging.getLogger("spear.invocation")

Launch = Callable[[FunctionSpec, int, str], Awaitable[RuntimeInstance]]
Stop = Callable[[RuntimeInstance], Awaitable[None]]
# request id, handler, input, timeout (s), metadata -> the response, or an awaitable of it
StartCall = Callable[[str, str, bytes, float | None, dict[str, str] | None],
                     ExecutionResponse | Awaitable[ExecutionResponse]]


def transport_of(instance: RuntimeInstance) -> str:
    """The transport name for metrics (unix, tcp, grpc or memory), as the channel declares
    it; a channel that redials reports the transport of its current connection."""
    return instance.channel.capabilities.transport


class Slot:
    """One instance and its load. `outstanding` counts reserved capacity (queued hand-offs too)."""

    __slots__ = (
        "_drained",
        "alive",
        "call",
        "capacity",
        "channel",
        "current_weight",
        "draining",
        "index",
        "instance",
        "outstanding",
        "pool",
        "start",
        "stats",
        "weight",
    )

    def __init__(
        self, pool: InstancePool, instance: RuntimeInstance, index: int, capacity: int,
        weight: int, stats: TransportStats,
    ) -> None:
        self.pool = pool
        self.instance = instance
        self.stats = stats
        self.channel = instance.channel
        self.call: Callable[[ExecutionRequest, float | None], Awaitable[RuntimeMessage]]
        self.start: StartCall | None
        self.bind_channel()
        self.index = index
        self.capacity = capacity
        self.weight = weight
        self.current_weight = 0
        self.outstanding = 0
        self.alive = True
        self.draining = False
        self._drained: asyncio.Event | None = None

    def bind_channel(self) -> None:
        """(Re)read the instance's channel: a restarted process instance has a new one."""
        self.channel = channel = self.instance.channel
        # The WASM channel starts a call without a request object and answers at once when
        # the call ran on the event loop (`MemoryChannel.start`, its hot path); its replies
        # carry the call's own timing (`execution_time_ms`, measured around the in-process
        # call), so `invoke` does not time the same call a second time.
        self.start = getattr(channel, "start", None) if self.stats.transport == "memory" \
            else None
        self.call = channel.request_response

    def release(self) -> None:
        """Give back one unit of capacity: to the oldest waiter if any, else to the slot."""
        self.pool.release(self)

    def __repr__(self) -> str:
        return (f"<Slot {self.instance.instance_id.full_id} {self.outstanding}/{self.capacity}"
                f"{'' if self.alive else ' dead'}{' draining' if self.draining else ''}>")


class InstancePool:
    def __init__(
        self, spec: FunctionSpec, launch: Launch, stop: Stop, *, namespace: str | None = None,
    ) -> None:
        self.spec = spec
        self._launch = launch
        self._stop = stop
        self.namespace = namespace
        self.slots: list[Slot] = []
        self.balancer = make_balancer(spec.balancing, self.slots)
        self.pick = self.balancer.pick
        self.sole: Slot | None = None
        self.queue = WaitQueue(spec.name, spec.queue_limit)
        self.waiting = self.queue.waiters
        self.stats: dict[str, TransportStats] = {}
        self.handler = spec.handler_name
        self.default_timeout = spec.limits.timeout_s
        self.default_timeout_ms = int(spec.limits.timeout_s * 1000) if spec.limits.timeout_s else 0
        self.max_input = spec.limits.max_input_bytes
        self.target = spec.min_instances  # the floor scale-in never goes below
        self._retiring: set[Slot] = set()  # out of service, finishing their requests
        self._suspended: set[Slot] = set()  # disconnected, redialling by themselves
        self._unstopped: set[Slot] = set()  # every started slot whose instance is not stopped
        self.starting = 0
        self.started_total = 0
        self.stopped_total = 0
        self.closed = False
        self.last_start_error: BaseException | None = None
        self._seq = 0
        self._low_since: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._starting_indexes: set[int] = set()

    # -- capacity -----------------------------------------------------------------------

    def slots_changed(self) -> None:
        """Call after every change to `slots`. A function with one instance (the default)
        needs no balancing decision, so `invoke` takes `sole` without asking the balancer."""
        self.sole = self.slots[0] if len(self.slots) == 1 else None

    def in_flight(self) -> int:
        """Requests holding capacity now (being executed, or just handed a slot)."""
        return sum(slot.outstanding for slot in self.slots) + sum(
            slot.outstanding for slot in self._retiring)

    def release(self, slot: Slot) -> None:
        if slot.alive and not slot.draining and self.queue.hand_off(slot):
            return  # capacity passed on, still reserved
        slot.outstanding -= 1
        if slot.draining and slot.outstanding <= 0 and slot._drained is not None:
            slot._drained.set()

    async def acquire(self, timeout: float | None) -> Slot:
        """A slot with capacity reserved: now if one is free, else after waiting in the queue."""
        slot = self.pick()
        if slot is not None:
            slot.outstanding += 1
            return slot
        if self.closed:
            raise ChannelClosed(f"function {self.spec.name!r} is being undeployed")
        self.scale_out_if_needed(extra=1)
        return await self.queue.wait(timeout)

    def _no_instances(self) -> CommunicationError:
        return InstanceStartFailed(
            f"function {self.spec.name!r} has no running instance: {self.last_start_error}"
        )

    # -- lifecycle ----------------------------------------------------------------------

    def _instance_name(self) -> tuple[int, str]:
        used = {slot.index for slot in (*self.slots, *self._suspended)}
        index = 0
        while index in used or index in self._starting_indexes:
            index += 1
        self._seq += 1
        return index, f"{self.spec.name}-{self._seq}"

    def start_one(self) -> Coroutine[Any, Any, Slot]:
        """Start one instance and put it in service (hand its capacity to waiters).

        The start is counted (and its index taken) at once, before the coroutine first runs,
        so several callers deciding to scale out in the same loop turn never overshoot.
        """
        index, name = self._instance_name()
        self._starting_indexes.add(index)
        self.starting += 1
        return self._start(index, name)

    async def _start(self, index: int, name: str) -> Slot:
        try:
            instance = await self._launch(self.spec, index, name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.last_start_error = exc
            log.error("instance of %s failed to start: %s", self.spec.name, exc,
                      extra={"function": self.spec.name, "event": "start_failed"})
            if not self.slots and self.starting == 1:
                self.queue.fail_all(self._no_instances())
            if isinstance(exc, CommunicationError):
                raise
            raise InstanceStartFailed(
                f"function {self.spec.name!r}: {type(exc).__name__}: {exc}") from exc
        finally:
            self.starting -= 1
            self._starting_indexes.discard(index)
        if self.closed:
            await self._stop_quietly(instance)
            raise ChannelClosed(f"function {self.spec.name!r} was undeployed while starting")
        self.last_start_error = None
        transport = transport_of(instance)
        stats = self.stats.get(transport)
        if stats is None:
            stats = self.stats[transport] = TransportStats(transport)
        slot = Slot(self, instance, index, self.spec.capacity, self.spec.weight(index), stats)
        self.slots.append(slot)
        self.slots_changed()
        self._unstopped.add(slot)
        self.started_total += 1
        log.info("instance started", extra={
            "function": self.spec.name, "instance_id": instance.instance_id.full_id,
            "transport": transport, "event": "instance_started", "instances": len(self.slots),
        })
        # Fill the new capacity from the queue, oldest first.
        while slot.outstanding < slot.capacity and self.queue.hand_off(slot):
            slot.outstanding += 1
        return slot

    async def start(self, count: int) -> None:
        results = await asyncio.gather(*(self.start_one() for _ in range(count)),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    def spawn(self, coro: Awaitable[object]) -> None:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except CommunicationError:
                pass  # logged where it happened
            except Exception:
                log.exception("background task of %s failed", self.spec.name)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def scale_out_if_needed(self, extra: int = 0) -> None:
        """Start instances for queued requests, up to `max_instances`, one per capacity's worth."""
        if self.closed:
            return
        total = self.instance_count
        room = self.spec.max_instances - total
        if room <= 0:
            return
        queued = len(self.waiting) + extra
        wanted = math.ceil(queued / self.spec.capacity) - self.starting
        for _ in range(min(room, max(wanted, 0))):
            log.info("scaling out", extra={"function": self.spec.name, "event": "scale_out",
                                           "queued": queued, "instances": total})
            self.spawn(self.start_one())

    def mark_dead(self, slot: Slot, reason: BaseException | str) -> None:
        """Take a slot out of service at once; stop it and restore `target` in the background.

        An instance that recovers by itself (`RuntimeInstance.recovers`: a Kubernetes
        channel redials a restarting pod, a process instance with a restart policy is
        restarted) is only suspended: it returns to service when it is ready again, and is
        not replaced meanwhile.
        """
        if not slot.alive or slot in self._suspended:
            return
        with contextlib.suppress(ValueError):
            self.slots.remove(slot)
        self.slots_changed()
        if slot.instance.recovers and not self.closed and not slot.draining:
            self._suspended.add(slot)
            log.warning("instance disconnected, waiting for it to reconnect: %s", reason,
                        extra={"function": self.spec.name, "event": "instance_suspended",
                               "instance_id": slot.instance.instance_id.full_id})
            self.spawn(self._resume_when_connected(slot, slot.instance.wait_ready))
            return
        slot.alive = False
        log.warning("instance died: %s", reason, extra={
            "function": self.spec.name, "instance_id": slot.instance.instance_id.full_id,
            "event": "instance_died",
        })
        self.spawn(self._stop_slot(slot))
        self.replenish()

    async def _resume_when_connected(
        self, slot: Slot, wait_connected: Callable[[], Awaitable[object]]
    ) -> None:
        try:
            await wait_connected()
        except CommunicationError:
            self._suspended.discard(slot)
            await self._stop_slot(slot)
            self.replenish()
            return
        self._suspended.discard(slot)
        if self.closed or not slot.alive:
            return
        slot.bind_channel()
        self.slots.append(slot)
        self.slots_changed()
        log.info("instance reconnected", extra={
            "function": self.spec.name, "event": "instance_resumed",
            "instance_id": slot.instance.instance_id.full_id})
        while slot.outstanding < slot.capacity and self.queue.hand_off(slot):
            slot.outstanding += 1

    @property
    def instance_count(self) -> int:
        """Instances in service, starting, or waiting to reconnect."""
        return len(self.slots) + self.starting + len(self._suspended)

    def replenish(self) -> None:
        if self.closed:
            return
        missing = self.target - self.instance_count
        for _ in range(max(missing, 0)):
            self.spawn(self.start_one())
        self.scale_out_if_needed()

    async def retire(self, slot: Slot, *, grace: float = 30.0) -> None:
        """Take `slot` out of service, let its requests finish (up to `grace` s), stop it."""
        if slot.draining or not slot.alive:
            return
        slot.draining = True
        with contextlib.suppress(ValueError):
            self.slots.remove(slot)
        self.slots_changed()
        self._retiring.add(slot)
        try:
            if slot.outstanding > 0:
                slot._drained = asyncio.Event()
                try:
                    await asyncio.wait_for(slot._drained.wait(), grace)
                except TimeoutError:
                    log.warning("instance did not drain in time", extra={
                        "function": self.spec.name,
                        "instance_id": slot.instance.instance_id.full_id})
        finally:
            self._retiring.discard(slot)
        self.stopped_total += 1
        log.info("instance stopped", extra={
            "function": self.spec.name, "instance_id": slot.instance.instance_id.full_id,
            "event": "instance_stopped", "instances": len(self.slots),
        })
        await self._stop_slot(slot)

    async def scale_to(self, count: int) -> None:
        """Make `count` the floor and run exactly that many instances now."""
        if count < 0 or count > self.spec.max_instances:
            raise InvalidScale(
                f"function {self.spec.name!r}: cannot scale to {count}; "
                f"allowed 0..{self.spec.max_instances} (max_instances)"
            )
        self.target = count
        self._low_since = None
        have = self.instance_count
        if count > have:
            await self.start(count - have)
        elif count < len(self.slots):
            victims = self._idlest(len(self.slots) - count)
            await asyncio.gather(*(self.retire(slot) for slot in victims))

    def _idlest(self, count: int) -> list[Slot]:
        """The `count` slots to retire first: least loaded, newest first among equals."""
        return sorted(self.slots, key=lambda s: (s.outstanding, -s.index))[:count]

    def tick(self, now: float) -> None:
        """Periodic upkeep: drop dead instances, scale in when instances stay unneeded."""
        for slot in list(self.slots):
            if not slot.channel.connected:
                self.mark_dead(slot, "channel disconnected")
        if self.instance_count < self.target:
            self.replenish()
        # Demand is sampled each tick (the hot path keeps no pool-wide counters); scale-in
        # needs it low at every tick for `scale_in_after_s`, so a sustained load is seen.
        demand = self.in_flight() + len(self.waiting)
        needed = max(self.target, math.ceil(demand / self.spec.capacity))
        if len(self.slots) <= needed or self.waiting:
            self._low_since = None
            return
        if self._low_since is None:
            self._low_since = now
            return
        if now - self._low_since >= self.spec.scale_in_after_s:
            self._low_since = None
            for slot in self._idlest(len(self.slots) - needed):
                log.info("scaling in", extra={"function": self.spec.name, "event": "scale_in",
                                              "instances": len(self.slots)})
                self.spawn(self.retire(slot))

    async def close(self, *, grace: float = 5.0) -> None:
        """Refuse new work, fail the queue, drain what runs (up to `grace` s), stop everything."""
        self.closed = True
        self.queue.fail_all(ChannelClosed(f"function {self.spec.name!r} was undeployed"))
        await asyncio.gather(*(self.retire(slot, grace=grace) for slot in list(self.slots)))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        # Whatever a cancelled background task left behind (suspended, half-retired).
        self._suspended.clear()
        for slot in list(self._unstopped):
            await self._stop_slot(slot)

    async def _stop_slot(self, slot: Slot) -> None:
        """Stop a slot's instance, once."""
        slot.alive = False
        if slot in self._unstopped:
            self._unstopped.discard(slot)
            await self._stop_quietly(slot.instance)

    async def _stop_quietly(self, instance: RuntimeInstance) -> None:
        try:
            await self._stop(instance)
        except Exception as exc:
            log.warning("stopping %s failed: %s", instance.instance_id.full_id, exc,
                        extra={"function": self.spec.name,
                               "instance_id": instance.instance_id.full_id})

    def stats_for(self, transport: str) -> TransportStats:
        stats = self.stats.get(transport)
        if stats is None:
            stats = self.stats[transport] = TransportStats(transport)
        return stats


class InvalidScale(CommunicationError, ValueError):
    """`scale(name, n)` outside `0..max_instances`."""
