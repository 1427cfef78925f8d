"""Invocation rows: what `Spearlet.invoke` adds over a bare channel `request_response`.

For each runtime, the same instance is called both ways in the same run, in interleaved
rounds (so drift on a shared machine hits both alike), and the ratio of the medians is the
overhead: scheduling, request ids, capacity accounting and metrics.

- wasm: in-process echo (wasm_fixtures/echo.c), 64 B; a call costs a few microseconds, so
  the target is under 20 % overhead.
- process: a `spear.worker` child over its Unix socket, 64 B echo; under 10 %.
- kubernetes: a `spear worker --grpc` pod stand-in over gRPC, 64 B echo; under 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import spear_guest

from bench.table import Row

ROOT = Path(__file__).resolve().parent.parent
SECTION = "invocation"
PAYLOAD = b"x" * 64


def _echo_wasm() -> Path:
    return spear_guest.build_cached(ROOT / "wasm_fixtures" / "echo.c",
                                    ROOT / "wasm_fixtures" / "build")


async def _interleaved(
    bare: Callable[[], Awaitable[object]], invoke: Callable[[], Awaitable[object]],
    *, batch: int, rounds: int,
) -> tuple[float, float]:
    """Median microseconds per call of `bare` and of `invoke`, in many short alternating
    batches (so load from other processes hits both alike), with the collector paused."""
    for _ in range(max(1, batch // 5)):
        await bare()
        await invoke()
    bare_samples: list[float] = []
    invoke_samples: list[float] = []
    gc.collect()
    gc.disable()
    try:
        for round_no in range(rounds):
            order = [(bare, bare_samples), (invoke, invoke_samples)]
            if round_no % 2:
                order.reverse()
            for fn, samples in order:
                start = time.perf_counter()
                for _ in range(batch):
                    await fn()
                samples.append((time.perf_counter() - start) / batch * 1e6)
    finally:
        gc.enable()
    return statistics.median(bare_samples), statistics.median(invoke_samples)


def _rows(name: str, bare_us: float, invoke_us: float, limit: float, note: str) -> list[Row]:
    ratio = invoke_us / bare_us
    bare_name = f"{name}: bare channel request_response"
    return [
        Row(SECTION, bare_name, bare_us, note=note),
        Row(SECTION, f"{name}: Spearlet.invoke", invoke_us, anchor=bare_name, ratio=ratio,
            target=f"< {1 + limit:.2f}x (overhead < {limit:.0%})", met=ratio < 1 + limit,
            note=f"+{(ratio - 1) * 100:.1f} %"),
    ]


async def _measure(args: argparse.Namespace) -> list[Row]:
    from spear import ExecutionRequest, FunctionSpec, RuntimeType, Spearlet

    quick = bool(getattr(args, "quick", False))
    rows: list[Row] = []
    counter = iter(range(1 << 62))

    async with Spearlet() as spearlet:
        # -- WASM ------------------------------------------------------------------------------
        await spearlet.deploy(FunctionSpec("echo", RuntimeType.WASM, artifact=_echo_wasm()))
        channel = spearlet.instances("echo")[0].channel

        async def bare_wasm() -> object:
            return await channel.request_response(
                ExecutionRequest(str(next(counter)), "echo", PAYLOAD, 30000, {}), 30.0)

        async def invoke_wasm() -> object:
            return await spearlet.invoke("echo", PAYLOAD)

        bare_us, invoke_us = await _interleaved(
            bare_wasm, invoke_wasm, batch=200 if quick else 500, rounds=31 if quick else 101)
        rows += _rows("wasm", bare_us, invoke_us, 0.20, "64 B echo, in-process")

        # -- process ---------------------------------------------------------------------------
        await spearlet.deploy(FunctionSpec(
            "proc", RuntimeType.PROCESS,
            command=[sys.executable, "-m", "spear.worker", "spear.worker.examples:echo"]))
        proc_channel = spearlet.instances("proc")[0].channel

        async def bare_proc() -> object:
            return await proc_channel.request_response(
                ExecutionRequest(str(next(counter)), "proc", PAYLOAD, 30000, {}), 30.0)

        async def invoke_proc() -> object:
            return await spearlet.invoke("proc", PAYLOAD)

        bare_us, invoke_us = await _interleaved(
            bare_proc, invoke_proc, batch=100 if quick else 300, rounds=9 if quick else 21)
        rows += _rows("process", bare_us, invoke_us, 0.10, "64 B echo, unix socket")

        # -- Kubernetes (a pod worker subprocess) ----------------------------------------------
        pod = subprocess.Popen(
            [sys.executable, "-m", "spear.cli.main", "worker", "--grpc", "127.0.0.1:0",
             "spear.worker.examples:echo"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            address = _wait_for_grpc(pod)
            await spearlet.deploy(FunctionSpec("pod", RuntimeType.KUBERNETES,
                                               endpoints=[address]))
            pod_channel = spearlet.instances("pod")[0].channel

            async def bare_pod() -> object:
                return await pod_channel.request_response(
                    ExecutionRequest(str(next(counter)), "pod", PAYLOAD, 30000, {}), 30.0)

            async def invoke_pod() -> object:
                return await spearlet.invoke("pod", PAYLOAD)

            bare_us, invoke_us = await _interleaved(
                bare_pod, invoke_pod, batch=100 if quick else 300, rounds=9 if quick else 21)
            rows += _rows("kubernetes", bare_us, invoke_us, 0.10, "64 B echo, gRPC")
        finally:
            await spearlet.close()
            pod.kill()
            pod.wait(10)
    return rows


def _wait_for_grpc(pod: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert pod.stdout is not None
    deadline = time.monotonic() + timeout
    address = None
    for line in pod.stdout:
        if line.startswith("spear-worker listening grpc="):
            address = line.strip().split("=", 1)[1]
        if line.strip() == "spear-worker ready" and address:
            return address
        if time.monotonic() > deadline:
            break
    raise RuntimeError("the pod worker did not start")


def run(args: argparse.Namespace) -> list[Row]:
    return asyncio.run(_measure(args))
