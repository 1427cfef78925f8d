"""Process runtime: the Unix channel against the asyncio floor and ProcessPoolExecutor, same run.

Anchors, each measured in the same rounds as what is compared with it (the rows take turns
every round, so load from elsewhere on a shared machine hits them alike):

- *the asyncio floor*: an asyncio client against a blocking echo child, 64 B, over a
  socketpair, with no framing, codec, correlation or tasks: the least any asyncio host can
  pay for a round trip. Measured with a plain Protocol and with a BufferedProtocol, on the
  same event loop as the channel; the faster of the two is the anchor. Target: one
  `request_response` at a time on a Unix channel to a real worker (64 B, sync echo handler)
  at most 2x the floor, on asyncio's own loop and on uvloop.
- *ProcessPoolExecutor*, 64 submissions in flight (each completion submits the next, from
  the executor's own callback thread: its fastest form). Target: the channel with 64
  requests in flight at least 10x its throughput.

Also: kill -9 of a worker with 64 requests in flight must fail all of them within a second
(the time until the last one failed), 2,000 requests with 64 in flight must each get their
own reply, and informational rows (a raw blocking ping-pong, TCP, an async handler).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ProcessPoolExecutor

from spear.config import ChannelConfig
from spear.errors import ChannelClosed
from spear.messages import ExecutionRequest, ExecutionResponse
from spear.runtime.process import ProcessInstance, ProcessRuntime, worker_command

from bench.table import Row

SECTION = "process"
PAYLOAD = b"x" * 64
IN_FLIGHT = 64
SYNC_ECHO = "spear.worker.examples:echo"
ASYNC_ECHO = "spear.worker.examples:async_echo"
TAGGED = "spear.worker.examples:tagged_echo"
SLOW = "spear.worker.examples:route"

_ECHO_CHILD = """
import socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
while True:
    data = sock.recv(65536)
    if not data:
        break
    sock.sendall(data)
"""

Step = Callable[[], Awaitable[None]]


def _echo_child() -> tuple[socket.socket, subprocess.Popen[bytes]]:
    parent, child = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-c", _ECHO_CHILD, str(child.fileno())],
                            pass_fds=[child.fileno()])
    child.close()
    return parent, proc


class RawPingPong:
    """Blocking sockets at both ends, no event loop: the floor of any Python round trip."""

    def __init__(self) -> None:
        self.parent, self.proc = _echo_child()

    def run(self, n: int) -> None:
        parent = self.parent
        for _ in range(n):
            parent.sendall(PAYLOAD)
            received = 0
            while received < len(PAYLOAD):
                received += len(parent.recv(65536))

    def close(self) -> None:
        self.parent.close()
        self.proc.wait(timeout=10)


async def asyncio_floor(buffered: bool) -> tuple[Step, Callable[[], Awaitable[None]]]:
    """An asyncio client against the blocking echo child. Returns (one round trip, close)."""
    parent, proc = _echo_child()
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[None]] = []

    class Plain(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            waiter.pop().set_result(None)

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buffer = bytearray(65536)

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buffer

        def buffer_updated(self, nbytes: int) -> None:
            waiter.pop().set_result(None)

    factory: Callable[[], asyncio.BaseProtocol] = Buffered if buffered else Plain
    transport, _ = await loop.connect_accepted_socket(factory, parent)

    async def once() -> None:
        future = loop.create_future()
        waiter.append(future)
        transport.write(PAYLOAD)
        await future

    async def close() -> None:
        transport.close()
        await asyncio.sleep(0)
        await loop.run_in_executor(None, proc.wait, 10)

    return once, close


async def _rounds(steps: dict[str, tuple[Step | Callable[[int], None], int]],
                  rounds: int) -> dict[str, float]:
    """Median microseconds per call of each step, taking turns within every round."""
    names = list(steps)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for step, batch in steps.values():  # warm up
        await _run(step, max(1, batch // 10))
    for round_no in range(rounds):
        for name in names if round_no % 2 == 0 else reversed(names):
            step, batch = steps[name]
            started = time.perf_counter()
            await _run(step, batch)
            samples[name].append((time.perf_counter() - started) / batch * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


async def _run(step: Step | Callable[[int], None], n: int) -> None:
    if asyncio.iscoroutinefunction(step):
        for _ in range(n):
            await step()
    else:
        step(n)  # type: ignore[call-arg]


async def _instance(runtime: ProcessRuntime, name: str, handler: str,
                    channel_type: str = "unix") -> ProcessInstance:
    config = ChannelConfig(channel_type=channel_type, keepalive_interval_ms=0,
                           request_timeout_ms=60000)
    return await runtime.start_instance(name, command=worker_command(handler), config=config)


def _one(instance: ProcessInstance) -> Step:
    channel = instance.channel
    counter = iter(range(1 << 62))

    async def one() -> None:
        await channel.request_response(ExecutionRequest(f"b{next(counter)}", "echo", PAYLOAD))

    return one


def _burst(instance: ProcessInstance, total: int) -> Step:
    channel = instance.channel
    per_lane = total // IN_FLIGHT
    counter = iter(range(1 << 62))

    async def lane() -> None:
        for _ in range(per_lane):
            await channel.request_response(
                ExecutionRequest(f"p{next(counter)}", "echo", PAYLOAD))

    async def burst() -> None:
        await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))

    return burst


def _echo(data: bytes) -> bytes:
    return data


def _pool_burst(pool: ProcessPoolExecutor, total: int) -> None:
    """`total` calls through the pool with IN_FLIGHT in flight: each completion submits the
    next from the pool's own result thread."""
    done = threading.Event()
    lock = threading.Lock()
    state = {"issued": IN_FLIGHT, "left": total}

    def finished(future: Future[bytes]) -> None:
        future.result()
        with lock:
            state["left"] -= 1
            if state["left"] == 0:
                done.set()
                return
            more = state["issued"] < total
            if more:
                state["issued"] += 1
        if more:
            pool.submit(_echo, PAYLOAD).add_done_callback(finished)

    for _ in range(IN_FLIGHT):
        pool.submit(_echo, PAYLOAD).add_done_callback(finished)
    done.wait()


async def measure_loop(loop_name: str, raw: RawPingPong | None, quick: bool
                       ) -> dict[str, float]:
    """The round-trip rows on the running loop, interleaved with its floors."""
    batch, rounds = (300, 7) if quick else (1500, 15)
    runtime = ProcessRuntime()
    try:
        instance = await _instance(runtime, f"bench-{loop_name}", SYNC_ECHO)
        plain, close_plain = await asyncio_floor(buffered=False)
        buffered, close_buffered = await asyncio_floor(buffered=True)
        steps: dict[str, tuple[Step | Callable[[int], None], int]] = {
            "floor_plain": (plain, batch), "floor_buffered": (buffered, batch),
            "channel": (_one(instance), batch),
        }
        if raw is not None:
            steps["raw"] = (raw.run, batch)
        try:
            return await _rounds(steps, rounds)
        finally:
            await close_plain()
            await close_buffered()
    finally:
        await runtime.close()


async def measure_throughput(quick: bool) -> dict[str, float]:
    """64 in flight: the channel and ProcessPoolExecutor, taking turns."""
    rounds = 5 if quick else 9
    channel_total = IN_FLIGHT * (20 if quick else 60)
    pool_total = IN_FLIGHT * (5 if quick else 15)
    runtime = ProcessRuntime()
    pool = ProcessPoolExecutor()
    try:
        instance = await _instance(runtime, "bench-flight", SYNC_ECHO)
        steps: dict[str, tuple[Step | Callable[[int], None], int]] = {
            "channel_64": (_burst(instance, channel_total), 1),
            "pool_64": (lambda n: _pool_burst(pool, pool_total), 1),
        }
        times = await _rounds(steps, rounds)
        return {"channel_64": times["channel_64"] / channel_total,
                "pool_64": times["pool_64"] / pool_total}
    finally:
        pool.shutdown()
        await runtime.close()


async def measure_extras(quick: bool) -> dict[str, float]:
    batch, rounds = (300, 5) if quick else (1000, 9)
    runtime = ProcessRuntime()
    try:
        tcp = await _instance(runtime, "bench-tcp", SYNC_ECHO, "tcp")
        async_echo = await _instance(runtime, "bench-async", ASYNC_ECHO)
        times = await _rounds({"tcp": (_one(tcp), batch), "async": (_one(async_echo), batch)},
                              rounds)
        times["matched"] = float(await all_matched(runtime))
        times["kill_ms"] = await kill_9_ms(runtime)
        return times
    finally:
        await runtime.close()


async def all_matched(runtime: ProcessRuntime, total: int = 2000) -> bool:
    """2,000 requests, 64 in flight, each answered with its own id and input."""
    instance = await _instance(runtime, "bench-match", TAGGED)
    channel = instance.channel
    counter = iter(range(total))
    good = 0

    async def lane() -> None:
        nonlocal good
        for i in counter:
            rid = f"m{i}"
            reply = await channel.request_response(ExecutionRequest(rid, "tagged_echo",
                                                                    str(i).encode()))
            if (isinstance(reply, ExecutionResponse) and reply.request_id == rid
                    and reply.output_data == f"{rid}|{i}".encode()):
                good += 1

    await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    return good == total


async def kill_9_ms(runtime: ProcessRuntime) -> float:
    """Milliseconds from SIGKILL of a worker with 64 slow requests in flight until the last
    of them failed (with ChannelClosed, not a timeout)."""
    instance = await _instance(runtime, "bench-kill", SLOW)
    channel = instance.channel
    calls = [asyncio.ensure_future(channel.request_response(
        ExecutionRequest(f"k{i}", "async_slow", b"30"))) for i in range(IN_FLIGHT)]
    await asyncio.sleep(0.2)  # all of them are in the worker
    started = time.perf_counter()
    os.kill(instance.pid, signal.SIGKILL)
    results = await asyncio.gather(*calls, return_exceptions=True)
    elapsed = (time.perf_counter() - started) * 1000.0
    if not all(isinstance(r, ChannelClosed) for r in results):
        return float("inf")
    return elapsed


def _new_uvloop() -> asyncio.AbstractEventLoop:
    import uvloop

    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(args: argparse.Namespace) -> list[Row]:
    quick = bool(getattr(args, "quick", False))
    raw = RawPingPong()
    try:
        stdlib = asyncio.run(measure_loop("asyncio", raw, quick))
    finally:
        raw.close()
    with asyncio.Runner(loop_factory=_new_uvloop) as runner:
        uv = runner.run(measure_loop("uvloop", None, quick))
        flight = runner.run(measure_throughput(quick))
        extras = runner.run(measure_extras(quick))
    rows = [Row(SECTION, "raw blocking ping-pong, 64 B, 2 processes", stdlib["raw"],
                note="no event loop; informational")]
    for name, times in (("asyncio", stdlib), ("uvloop", uv)):
        floor = min(times["floor_plain"], times["floor_buffered"])
        anchor = f"asyncio floor on {name}"
        rows.append(Row(SECTION, anchor, floor, note=(
            f"asyncio client vs blocking echo child; Protocol {times['floor_plain']:.1f} us, "
            f"BufferedProtocol {times['floor_buffered']:.1f} us")))
        ratio = times["channel"] / floor
        rows.append(Row(SECTION, f"unix channel request_response on {name}, 64 B sync echo",
                        times["channel"], anchor=anchor, ratio=ratio, target="<= 2x",
                        met=ratio <= 2.0))
    pool_anchor = f"ProcessPoolExecutor, {IN_FLIGHT} in flight, per call"
    multiple = flight["pool_64"] / flight["channel_64"]
    rows += [
        Row(SECTION, pool_anchor, flight["pool_64"], note="anchor"),
        Row(SECTION, f"unix channel, {IN_FLIGHT} in flight, per request (uvloop)",
            flight["channel_64"], anchor=pool_anchor, ratio=multiple,
            target=">= 10x throughput", met=multiple >= 10,
            note="ratio = throughput multiple"),
        Row(SECTION, "kill -9 with 64 in flight: all failed with ChannelClosed after",
            extras["kill_ms"] * 1000.0, target="<= 1 s", met=extras["kill_ms"] <= 1000.0),
        Row(SECTION, "2,000 requests, 64 in flight, each matched to its reply",
            0.0, target="all", met=bool(extras["matched"])),
        Row(SECTION, "tcp channel request_response (uvloop), 64 B sync echo", extras["tcp"],
            anchor="asyncio floor on uvloop", ratio=extras["tcp"] / min(
                uv["floor_plain"], uv["floor_buffered"])),
        Row(SECTION, "unix channel, async handler (uvloop), 64 B echo", extras["async"],
            anchor="asyncio floor on uvloop", ratio=extras["async"] / min(
                uv["floor_plain"], uv["floor_buffered"])),
    ]
    return rows
