"""Spearlet with real WASM instances: deploy, invoke, errors, balancing, scaling, queueing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from spear import (
    ChannelClosed,
    ExecutionFailed,
    ExecutionResponse,
    ExecutionStatus,
    FunctionSpec,
    InvalidConfiguration,
    RuntimeType,
    Spearlet,
    Timeout,
)
from spear.invocation.errors import FunctionNotFound, QueueFull
from spear.invocation.function_spec import Limits
from spear.invocation.pool import InvalidScale

WASM = RuntimeType.WASM


def wasm(name: str, artifact: Path, **options: object) -> FunctionSpec:
    return FunctionSpec(name, WASM, artifact=artifact, **options)  # type: ignore[arg-type]


async def test_deploy_and_invoke_a_wasm_function(echo_wasm: Path) -> None:
    async with Spearlet() as spearlet:
        await spearlet.deploy(wasm("echo", echo_wasm))
        response = await spearlet.invoke("echo", b"hello spear")
        assert response.ok and response.output_data == b"hello spear"
        assert [i.instance_id.instance_id for i in spearlet.instances("echo")] == ["echo-1"]
        assert spearlet.function("echo").runtime is WASM
        with pytest.raises(InvalidConfiguration, match="already deployed"):
            await spearlet.deploy(wasm("echo", echo_wasm))
        with pytest.raises(FunctionNotFound):
            await spearlet.invoke("nope", b"")


async def test_begin_answers_at_once_on_the_loop_and_otherwise_gives_an_awaitable(
    echo_wasm: Path,
) -> None:
    async with Spearlet() as spearlet:
        await spearlet.deploy(wasm("inline", echo_wasm, handler="echo", dispatch="inline"))
        await spearlet.deploy(wasm("threaded", echo_wasm, handler="echo", dispatch="thread"))
        now = spearlet.begin("inline", b"at once", request_id="r-1")
        assert isinstance(now, ExecutionResponse)
        assert (now.request_id, now.output_data) == ("r-1", b"at once")
        later = spearlet.begin("threaded", b"later")
        assert not isinstance(later, ExecutionResponse)
        assert (await later).output_data == b"later"
        assert set(spearlet.load("inline").values()) == {0}  # capacity given back
        assert set(spearlet.load("threaded").values()) == {0}
        with pytest.raises(FunctionNotFound):  # refused before anything runs: no awaitable
            spearlet.begin("nope", b"")


async def test_a_deployed_name_can_differ_from_the_guest_handler(
    wasm_fixture: Callable[[str], Path],
) -> None:
    multi = wasm_fixture("multi")
    async with Spearlet() as spearlet:
        await spearlet.deploy(wasm("shout", multi, handler="upper"))
        await spearlet.deploy(wasm("broken", multi, handler="fail"))
        assert (await spearlet.invoke("shout", b"quiet")).output_data == b"QUIET"
        failed = await spearlet.invoke("broken", b"x")
        assert failed.status is ExecutionStatus.ERROR
        assert "failed on purpose" in (failed.error_message or "")
        metrics = spearlet.metrics_text().decode()
        assert 'spear_invocation_errors_total{function="broken"' in metrics


async def test_metadata_reaches_the_guest(wasm_fixture: Callable[[str], Path]) -> None:
    async with Spearlet() as spearlet:
        await spearlet.deploy(wasm("get", wasm_fixture("metadata")))
        reply = await spearlet.invoke("get", b"tenant", metadata={"tenant": "acme"})
        assert reply.output_data == b"acme"


async def test_a_stuck_guest_times_out_and_the_function_keeps_working(
    wasm_fixture: Callable[[str], Path],
) -> None:
    spin = wasm_fixture("spin")
    async with Spearlet() as spearlet:
        await spearlet.deploy(wasm("spin", spin))
        await spearlet.deploy(wasm("spin-echo", spin, handler="echo"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Timeout):
            await spearlet.invoke("spin", b"", timeout=0.2)
        assert loop.time() - started < 2.0
        assert (await spearlet.invoke("spin-echo", b"alive")).output_data == b"alive"
        text = spearlet.metrics_text().decode()
        assert 'kind="timeout"' in text


async def test_input_over_the_limit_is_refused_before_any_instance(echo_wasm: Path) -> None:
    async with Spearlet() as spearlet:
        await spearlet.deploy(wasm("small", echo_wasm, handler="echo",
                                   limits=Limits(max_input_bytes=8)))
        assert (await spearlet.invoke("small", b"12345678")).ok
        with pytest.raises(ExecutionFailed, match="exceeds the limit"):
            await spearlet.invoke("small", b"123456789")


def test_specs_are_checked_when_built(echo_wasm: Path) -> None:
    with pytest.raises(InvalidConfiguration, match="needs artifact"):
        FunctionSpec("f", WASM)
    with pytest.raises(InvalidConfiguration, match="needs command"):
        FunctionSpec("f", RuntimeType.PROCESS)
    with pytest.raises(InvalidConfiguration, match="exceeds"):
        wasm("f", echo_wasm, min_instances=3, max_instances=2)
    with pytest.raises(InvalidConfiguration, match="balancing"):
        wasm("f", echo_wasm, balancing="random")
    assert FunctionSpec("f", "wasm", artifact=echo_wasm).runtime is WASM  # type: ignore[arg-type]
    k8s = FunctionSpec("k", RuntimeType.KUBERNETES, endpoints=["a:1", "b:2"], max_instances=9)
    assert k8s.max_instances == 2  # one instance per endpoint
    assert "secret" not in repr(FunctionSpec("k", RuntimeType.KUBERNETES, endpoints=["a:1"],
                                             token="secret"))


async def test_round_robin_spreads_calls_evenly_over_instances(echo_wasm: Path) -> None:
    async with Spearlet() as spearlet:
        await spearlet.deploy(wasm("echo", echo_wasm, min_instances=3, max_instances=3))
        for _ in range(300):
            await spearlet.invoke("echo", b"x")
        counts = [(await i.channel.get_stats()).requests_completed
                  for i in spearlet.instances("echo")]
        assert counts == [100, 100, 100]


async def test_weighted_balancing_follows_the_weights(echo_wasm: Path) -> None:
    async with Spearlet() as spearlet:
        await spearlet.deploy(wasm("echo", echo_wasm, min_instances=2, max_instances=2,
                                   balancing="weighted", weights=(3, 1)))
        for _ in range(400):
            await spearlet.invoke("echo", b"x")
        counts = [(await i.channel.get_stats()).requests_completed
                  for i in spearlet.instances("echo")]
        assert sorted(counts) == [100, 300]


async def test_manual_scale_and_its_bounds(echo_wasm: Path) -> None:
    async with Spearlet() as spearlet:
        await spearlet.deploy(wasm("echo", echo_wasm, max_instances=4))
        await spearlet.scale("echo", 4)
        assert len(spearlet.instances("echo")) == 4
        await spearlet.scale("echo", 2)
        assert len(spearlet.instances("echo")) == 2
        with pytest.raises(InvalidScale):
            await spearlet.scale("echo", 5)
        await spearlet.scale("echo", 0)
        assert spearlet.instances("echo") == []
        # Scaled to zero, the next request starts an instance (a cold start) and is served.
        assert (await spearlet.invoke("echo", b"cold")).output_data == b"cold"
        assert len(spearlet.instances("echo")) == 1


async def test_busy_instances_scale_out_then_back_in_when_idle(
    wasm_fixture: Callable[[str], Path],
) -> None:
    """A spinning guest occupies its instance until preempted, so concurrent calls queue and
    the pool grows to max_instances; once idle it shrinks back to min_instances."""
    spin = wasm_fixture("spin")
    async with Spearlet(scale_interval_s=0.05) as spearlet:
        await spearlet.deploy(wasm("spin", spin, min_instances=1, max_instances=3,
                                   scale_in_after_s=0.3))
        results = await asyncio.gather(
            *(spearlet.invoke("spin", b"", timeout=0.5) for _ in range(3)),
            return_exceptions=True)
        assert all(isinstance(r, Timeout) for r in results), results
        assert len(spearlet.instances("spin")) == 3
        text = spearlet.metrics_text().decode()
        assert 'spear_scale_events_total{direction="out",function="spin",runtime="wasm"} 3.0' \
            in text
        deadline = asyncio.get_running_loop().time() + 5
        while len(spearlet.instances("spin")) > 1:
            assert asyncio.get_running_loop().time() < deadline, "did not scale in"
            await asyncio.sleep(0.05)


async def test_a_full_queue_refuses_at_once(wasm_fixture: Callable[[str], Path]) -> None:
    spin = wasm_fixture("spin")
    async with Spearlet() as spearlet:
        await spearlet.deploy(wasm("spin", spin, max_instances=1, queue_limit=2))
        running = [asyncio.ensure_future(spearlet.invoke("spin", b"", timeout=0.6))
                   for _ in range(3)]  # one runs, two wait
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull, match="queue_limit=2"):
            await spearlet.invoke("spin", b"", timeout=5)
        results = await asyncio.gather(*running, return_exceptions=True)
        assert all(isinstance(r, Timeout) for r in results)
        assert 'kind="queue_full"' in spearlet.metrics_text().decode()


async def test_undeploy_fails_queued_requests_and_stops_instances(
    wasm_fixture: Callable[[str], Path],
) -> None:
    spin = wasm_fixture("spin")
    async with Spearlet() as spearlet:
        await spearlet.deploy(wasm("spin", spin, max_instances=1))
        running = asyncio.ensure_future(spearlet.invoke("spin", b"", timeout=0.5))
        queued = asyncio.ensure_future(spearlet.invoke("spin", b"", timeout=5))
        await asyncio.sleep(0.05)
        instance = spearlet.instances("spin")[0]
        await spearlet.undeploy("spin", grace=2)
        with pytest.raises(ChannelClosed, match="undeployed"):
            await queued
        with pytest.raises(Timeout):
            await running
        assert not instance.channel.connected
        with pytest.raises(FunctionNotFound):
            await spearlet.invoke("spin", b"")


async def test_lifecycle_logs_are_structured(
    echo_wasm: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="spear.invocation")
    async with Spearlet() as spearlet:
        await spearlet.deploy(wasm("echo", echo_wasm))
    started = [r for r in caplog.records if getattr(r, "event", None) == "instance_started"]
    assert started and started[0].function == "echo"  # type: ignore[attr-defined]
    assert started[0].instance_id == "wasm:echo-1"  # type: ignore[attr-defined]


async def test_each_spearlet_has_its_own_metrics_registry(echo_wasm: Path) -> None:
    async with Spearlet() as a, Spearlet() as b:
        await a.deploy(wasm("echo", echo_wasm))
        await b.deploy(wasm("echo", echo_wasm))
        for _ in range(3):
            await a.invoke("echo", b"x")
        assert a.registry is not b.registry
        line_a = [x for x in a.metrics_text().decode().splitlines()
                  if x.startswith("spear_invocations_total{")]
        line_b = [x for x in b.metrics_text().decode().splitlines()
                  if x.startswith("spear_invocations_total{")]
        assert line_a == ['spear_invocations_total{function="echo",runtime="wasm",'
                          'transport="memory"} 3.0']
        assert line_b[0].endswith(" 0.0")
