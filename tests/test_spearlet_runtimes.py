"""One Spearlet running WASM, process and Kubernetes (gRPC worker) functions side by side,
under load, with instances dying."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from spear import ChannelClosed, FunctionSpec, RuntimeType, Spearlet
from spear.invocation.function_spec import Limits
from spearlet_support import TESTS_DIR, Worker

PYTHONPATH = {"PYTHONPATH": os.pathsep.join(
    p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH")) if p)}


def process_spec(name: str, handler: str, **options: object) -> FunctionSpec:
    return FunctionSpec(name, RuntimeType.PROCESS,  # type: ignore[arg-type]
                        command=[sys.executable, "-m", "spear.worker", handler],
                        env=PYTHONPATH, **options)


@pytest.fixture(scope="module")
def pods() -> Iterator[list[Worker]]:
    workers = [Worker("spearlet_handlers:tagged_echo", tcp=False) for _ in range(2)]
    try:
        for worker in workers:
            worker.start()
        yield workers
    finally:
        for worker in workers:
            worker.stop()


async def test_three_runtimes_side_by_side_lose_and_mix_up_nothing(
    echo_wasm: Path, pods: list[Worker],
) -> None:
    async with Spearlet() as spearlet:
        await asyncio.gather(
            spearlet.deploy(FunctionSpec("wasm-echo", RuntimeType.WASM, artifact=echo_wasm,
                                         handler="echo", min_instances=2)),
            spearlet.deploy(process_spec("proc-echo", "spearlet_handlers:tagged_echo",
                                         min_instances=2, balancing="least_outstanding")),
            spearlet.deploy(FunctionSpec(
                "pod-echo", RuntimeType.KUBERNETES, min_instances=2,
                endpoints=[pod.addresses["grpc"] for pod in pods])),
        )
        names = ["wasm-echo", "proc-echo", "pod-echo"]
        total = 20_000
        gate = asyncio.Semaphore(256)
        served_by: dict[str, set[bytes]] = {name: set() for name in names}

        async def one(i: int) -> None:
            name = names[i % 3]
            payload = f"{name}/{i}/".encode() * (1 + i % 5)
            async with gate:
                reply = await spearlet.invoke(name, payload, timeout=30)
            assert reply.ok, reply
            if name == "wasm-echo":
                assert reply.output_data == payload
            else:
                tag, _, echoed = reply.output_data.partition(b":")
                assert echoed == payload, (name, i)
                served_by[name].add(tag)

        await asyncio.gather(*(one(i) for i in range(total)))
        # Work was spread over the instances of each socket-backed function.
        assert len(served_by["proc-echo"]) >= 2
        assert len(served_by["pod-echo"]) == 2
        text = spearlet.metrics_text().decode()
        counted = {line.split("{")[1].split(",")[0]: float(line.rsplit(" ", 1)[1])
                   for line in text.splitlines() if line.startswith("spear_invocations_total{")}
        assert sum(counted.values()) == total
        assert 'runtime="process",transport="unix"' in text
        assert 'runtime="kubernetes",transport="grpc"' in text
        assert 'runtime="wasm",transport="memory"' in text
        assert "spear_invocation_errors_total{" not in text


async def kill_one_under_load(spearlet: Spearlet, name: str, count: int) -> list[object]:
    """Start `count` slow requests, kill the instance serving some of them, collect results."""
    tasks = [asyncio.ensure_future(spearlet.invoke(name, b"400", timeout=20))
             for _ in range(count)]
    await asyncio.sleep(0.15)  # all are in flight now (400 ms each)
    victim = spearlet.instances(name)[0]
    os.kill(victim.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_an_idempotent_request_on_a_dying_instance_is_retried_elsewhere() -> None:
    async with Spearlet() as spearlet:
        await spearlet.deploy(process_spec("slow", "spearlet_handlers:slow", min_instances=2,
                                           max_instances=2, idempotent=True))
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await kill_one_under_load(spearlet, "slow", 10)
        assert all(not isinstance(r, BaseException) and r.ok for r in results), results
        assert loop.time() - started < 5
        text = spearlet.metrics_text().decode()
        retried = [line for line in text.splitlines()
                   if line.startswith("spear_invocation_retries_total{")]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in retried) == 5
        # The dead instance is replaced to keep min_instances.
        deadline = loop.time() + 10
        while len(spearlet.instances("slow")) < 2:
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        assert (await spearlet.invoke("slow", b"1")).ok


async def test_other_requests_on_a_dying_instance_fail_fast_with_channel_closed() -> None:
    async with Spearlet() as spearlet:
        await spearlet.deploy(process_spec("slow", "spearlet_handlers:slow", min_instances=2,
                                           max_instances=2, limits=Limits(timeout_s=20)))
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await kill_one_under_load(spearlet, "slow", 10)
        elapsed = loop.time() - started
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 5 and all(isinstance(r, ChannelClosed) for r in failed), results
        assert sum(1 for r in results if not isinstance(r, BaseException) and r.ok) == 5
        assert elapsed < 3  # nobody waited out the 20 s timeout
        assert 'kind="channel_closed"' in spearlet.metrics_text().decode()


async def test_a_killed_pod_fails_its_requests_fast_and_rejoins_when_back() -> None:
    with Worker("spearlet_handlers:slow", tcp=False) as a, \
            Worker("spearlet_handlers:slow", tcp=False) as b:
        async with Spearlet(scale_interval_s=0.05) as spearlet:
            await spearlet.deploy(FunctionSpec(
                "slow", RuntimeType.KUBERNETES, endpoints=[a.addresses["grpc"],
                                                           b.addresses["grpc"]],
                min_instances=2, idempotent=True))
            tasks = [asyncio.ensure_future(spearlet.invoke("slow", b"400", timeout=20))
                     for _ in range(6)]
            await asyncio.sleep(0.15)
            a.stop()  # SIGKILL the pod
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(not isinstance(r, BaseException) and r.ok for r in results), results
            # The instance of the dead pod is out of rotation; the other serves everything.
            deadline = asyncio.get_running_loop().time() + 5
            while len(spearlet.instances("slow")) != 1:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            for _ in range(4):
                assert (await spearlet.invoke("slow", b"1")).ok
            # The pod comes back at the same address: its instance reconnects and rejoins.
            with Worker("spearlet_handlers:slow", grpc=a.addresses["grpc"], tcp=False):
                while len(spearlet.instances("slow")) != 2:
                    assert asyncio.get_running_loop().time() < deadline + 15
                    await asyncio.sleep(0.05)
                assert (await spearlet.invoke("slow", b"1")).ok
