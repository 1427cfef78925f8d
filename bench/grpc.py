"""gRPC channel benchmarks against a plain grpcio unary call to the same worker.

One worker subprocess (standing in for a pod) serves an async echo; the host side measures,
in one run:

- plain grpcio unary `Execute` (blocking stub: the anchor) and the same through grpc.aio,
- `GrpcChannel.request_response`, one at a time (round trip; target: no slower than unary),
- `GrpcChannel` with 64 requests in flight (throughput; target: several times unary's).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

from spear.messages import ExecutionRequest

from bench.table import Row, amedian_us, median_us

SECTION = "grpc"
PAYLOAD = b"x" * 64
IN_FLIGHT = 64
ROOT = Path(__file__).resolve().parent.parent


async def echo(request: ExecutionRequest) -> bytes:
    """The handler the benchmark worker serves (imported by the worker as bench.grpc:echo)."""
    return request.input_data


def start_worker() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "spear.cli.main", "worker", "--grpc", "127.0.0.1:0",
         "bench.grpc:echo"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert proc.stdout is not None
    address = ""
    for line in proc.stdout:
        if line.startswith("spear-worker listening grpc="):
            address = line.strip().partition("=")[2]
        if line.strip() == "spear-worker ready":
            return proc, address
    raise RuntimeError("benchmark worker did not start")


async def in_flight_us(channel: object, *, total: int, rounds: int) -> float:
    """Mean time per request with IN_FLIGHT requests outstanding, median over rounds."""
    from spear.channel.grpc import GrpcChannel

    assert isinstance(channel, GrpcChannel)
    counter = 0

    async def lane(n: int) -> None:
        nonlocal counter
        for _ in range(n):
            counter += 1
            await channel.request_response(ExecutionRequest(f"f{counter}", "echo", PAYLOAD))

    samples = []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        await asyncio.gather(*(lane(total // IN_FLIGHT) for _ in range(IN_FLIGHT)))
        samples.append((time.perf_counter() - start) / total * 1e6)
    return statistics.median(samples[1:])  # the first round warms up


async def measure(address: str, quick: bool) -> dict[str, float]:
    import grpc
    from spear.channel.grpc import open_grpc_channel
    from spear.config import ChannelConfig
    from spear.instance_id import RuntimeInstanceId, RuntimeType
    from spear.transport.grpc.generated import spear_runtime_pb2 as pb
    from spear.transport.grpc.generated import spear_runtime_pb2_grpc as pb_grpc

    batch, rounds = (200, 5) if quick else (1000, 11)
    results: dict[str, float] = {}

    request = pb.ExecuteRequest(function_name="echo", input=PAYLOAD)
    with grpc.insecure_channel(address) as sync_channel:
        sync_stub = pb_grpc.SpearRuntimeStub(sync_channel)
        results["unary"] = await asyncio.to_thread(
            median_us, lambda: sync_stub.Execute(request), batch=batch, rounds=rounds)

    async with grpc.aio.insecure_channel(address) as aio_channel:
        aio_stub = pb_grpc.SpearRuntimeStub(aio_channel)
        results["aio_unary"] = await amedian_us(
            lambda: aio_stub.Execute(request), batch=batch, rounds=rounds)

    instance = RuntimeInstanceId(RuntimeType.KUBERNETES, "bench")
    channel = await open_grpc_channel(instance, address, ChannelConfig())
    try:
        seq = 0

        async def one() -> object:
            nonlocal seq
            seq += 1
            return await channel.request_response(ExecutionRequest(f"s{seq}", "echo", PAYLOAD))

        results["round_trip"] = await amedian_us(one, batch=batch, rounds=rounds)
        results["in_flight"] = await in_flight_us(
            channel, total=IN_FLIGHT * (20 if quick else 80), rounds=rounds)
    finally:
        await channel.close()
    return results


def run(args: argparse.Namespace) -> list[Row]:
    proc, address = start_worker()
    try:
        r = asyncio.run(measure(address, bool(getattr(args, "quick", False))))
    finally:
        proc.terminate()
        proc.wait(10)
    unary = r["unary"]
    rt_ratio = r["round_trip"] / unary
    throughput = unary / r["in_flight"]
    return [
        Row(SECTION, "grpcio unary Execute, 64 B (blocking stub)", unary,
            note="anchor"),
        Row(SECTION, "grpcio unary Execute, 64 B (grpc.aio)", r["aio_unary"],
            anchor="unary", ratio=r["aio_unary"] / unary),
        Row(SECTION, "GrpcChannel round trip, 64 B", r["round_trip"], anchor="unary",
            ratio=rt_ratio, target="<= 1x unary", met=rt_ratio <= 1.0),
        Row(SECTION, f"GrpcChannel {IN_FLIGHT} in flight, per request", r["in_flight"],
            anchor="unary", ratio=throughput, target=">= 3x unary throughput",
            met=throughput >= 3.0, note=f"{throughput:.1f}x throughput"),
    ]
