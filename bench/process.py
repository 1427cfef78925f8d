"""Process runtime: the Unix channel against a raw blocking-socket ping-pong, same run.

Anchor: two Python processes bouncing 64 bytes over a Unix socketpair with blocking
`sendall`/`recv` — no framing, no codec, no event loop: the floor for any cross-process round
trip in Python on this machine. Measured against it:

- one `request_response` at a time on a Unix channel to a real worker (64 B async echo):
  target at most 1.5x the anchor;
- 64 requests in flight on the same channel, per request: target at least 10x the
  throughput of sequential round trips (reported as the multiple).

Informational rows: the floor any asyncio channel stands on (an asyncio Protocol echo on both
ends with no framing, codec, correlation or tasks), the same round trip over TCP, and through
a synchronous handler (which the worker runs on a thread).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from spear.config import ChannelConfig
from spear.messages import ExecutionRequest
from spear.runtime.process import ProcessRuntime, worker_command

from bench.table import Row, amedian_us

SECTION = "process"
PAYLOAD = b"x" * 64
IN_FLIGHT = 64

_ECHO_CHILD = """
import socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
while True:
    data = sock.recv(65536)
    if not data:
        break
    sock.sendall(data)
"""


class RawPingPong:
    """A blocking Python echo child on a socket pair: the anchor."""

    def __init__(self) -> None:
        self.parent, child = socket.socketpair()
        self.proc = subprocess.Popen([sys.executable, "-c", _ECHO_CHILD, str(child.fileno())],
                                     pass_fds=[child.fileno()])
        child.close()

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


_ASYNCIO_ECHO_CHILD = """
import asyncio, socket, sys

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)
    def connection_lost(self, exc):
        done.set_result(None)

async def main():
    global done
    done = asyncio.get_running_loop().create_future()
    sock = socket.socket(fileno=int(sys.argv[1]))
    await asyncio.get_running_loop().connect_accepted_socket(Echo, sock)
    await done

asyncio.run(main())
"""


async def asyncio_floor() -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """The same ping-pong with an asyncio Protocol on both ends and nothing else: no
    framing, codec, correlation or tasks. No asyncio channel can beat this.
    Returns (one round trip, close)."""
    parent, child = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-c", _ASYNCIO_ECHO_CHILD, str(child.fileno())],
                            pass_fds=[child.fileno()])
    child.close()
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[None]] = []

    class Client(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            waiter.pop().set_result(None)

    transport, _ = await loop.connect_accepted_socket(Client, parent)

    async def once() -> None:
        future = loop.create_future()
        waiter.append(future)
        transport.write(PAYLOAD)
        await future

    async def close() -> None:
        transport.close()
        await loop.run_in_executor(None, proc.wait, 10)

    return once, close


async def interleaved(raw: RawPingPong, floor: Callable[[], Awaitable[None]],
                      channel: Callable[[], Awaitable[None]], *, batch: int,
                      rounds: int) -> tuple[float, float, float]:
    """Medians for the anchor, the asyncio floor and the channel, taking turns every round
    so that load from elsewhere on a shared machine hits all three alike."""
    raw.run(batch // 10)
    for _ in range(batch // 10):
        await floor()
        await channel()
    samples: list[list[float]] = [[], [], []]
    for _ in range(rounds):
        start = time.perf_counter()
        raw.run(batch)
        samples[0].append((time.perf_counter() - start) / batch * 1e6)
        for index, fn in ((1, floor), (2, channel)):
            start = time.perf_counter()
            for _ in range(batch):
                await fn()
            samples[index].append((time.perf_counter() - start) / batch * 1e6)
    raw_us, floor_us, channel_us = (statistics.median(values) for values in samples)
    return raw_us, floor_us, channel_us


async def measure_channel(handler: str, channel_type: str, *, batch: int, rounds: int,
                          pipelined: bool, raw: RawPingPong | None = None
                          ) -> tuple[float, float | None, tuple[float, float] | None]:
    """(sequential us, pipelined us per request or None, (anchor us, floor us) or None)."""
    config = ChannelConfig(channel_type=channel_type, keepalive_interval_ms=0)
    runtime = ProcessRuntime(config=config)
    try:
        instance = await runtime.start_instance(f"bench-{channel_type}",
                                                command=worker_command(handler))
        channel = instance.channel
        counter = iter(range(1 << 62))

        async def one() -> None:
            request = ExecutionRequest(f"b{next(counter)}", "echo", PAYLOAD)
            await channel.request_response(request)

        anchors = None
        if raw is not None:
            floor, close_floor = await asyncio_floor()
            try:
                raw_us, floor_us, sequential = await interleaved(raw, floor, one, batch=batch,
                                                                 rounds=rounds)
            finally:
                await close_floor()
            anchors = (raw_us, floor_us)
        else:
            sequential = await amedian_us(one, batch=batch, rounds=rounds)
        if not pipelined:
            return sequential, None, anchors
        per_lane = max(1, batch * 8 // IN_FLIGHT)

        async def lane() -> None:
            for _ in range(per_lane):
                await one()

        async def burst() -> None:
            await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))

        burst_us = await amedian_us(burst, batch=1, rounds=rounds)
        return sequential, burst_us / (per_lane * IN_FLIGHT), anchors
    finally:
        await runtime.close()


def run(args: argparse.Namespace) -> list[Row]:
    quick = bool(getattr(args, "quick", False))
    batch, rounds = (500, 7) if quick else (2000, 15)
    ping_pong = RawPingPong()
    try:
        unix_seq, unix_par, anchors = asyncio.run(measure_channel(
            "spear.worker.examples:async_echo", "unix", batch=batch, rounds=rounds,
            pipelined=True, raw=ping_pong))
    finally:
        ping_pong.close()
    tcp_seq, _, _ = asyncio.run(measure_channel(
        "spear.worker.examples:async_echo", "tcp", batch=batch, rounds=rounds, pipelined=False))
    sync_seq, _, _ = asyncio.run(measure_channel(
        "spear.worker.examples:echo", "unix", batch=batch // 2, rounds=rounds, pipelined=False))
    assert unix_par is not None and anchors is not None
    raw, floor = anchors
    anchor = "raw blocking ping-pong, 64 B, 2 processes"
    seq_name = "unix channel request_response, 64 B echo"
    ratio = unix_seq / raw
    multiple = unix_seq / unix_par
    return [
        Row(SECTION, anchor, raw, note="anchor"),
        Row(SECTION, "bare asyncio Protocol ping-pong, 64 B (the asyncio floor)", floor,
            anchor=anchor, ratio=floor / raw, note="no framing, codec or tasks"),
        Row(SECTION, seq_name, unix_seq, anchor=anchor, ratio=ratio, target="<= 1.5x",
            met=ratio <= 1.5),
        Row(SECTION, f"unix channel, {IN_FLIGHT} in flight, per request", unix_par,
            anchor=seq_name, ratio=multiple, target=">= 10x throughput", met=multiple >= 10,
            note="ratio = throughput multiple"),
        Row(SECTION, "tcp channel request_response, 64 B echo", tcp_seq, anchor=anchor,
            ratio=tcp_seq / raw),
        Row(SECTION, "unix channel, sync handler on a thread, 64 B echo", sync_seq,
            anchor=anchor, ratio=sync_seq / raw),
    ]
