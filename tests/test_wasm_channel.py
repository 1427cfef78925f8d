"""The WASM runtime and its in-memory channel (`spear.WasmRuntime`, `MemoryChannel`), driven
through the async `CommunicationChannel` API with real guests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import spear
from spear import (
    ChannelConfig,
    ExecutionRequest,
    ExecutionResponse,
    ExecutionStatus,
    HealthCheck,
    HealthResponse,
    Shutdown,
)
from spear.channel.memory import MemoryChannel

Fixture = Callable[[str], Path]
DISPATCH_MODES = ["auto", "thread", "inline"]


@pytest.fixture
async def runtime() -> AsyncIterator[Any]:
    rt = spear.WasmRuntime()
    yield rt
    await rt.close()


async def channel_for(
    runtime: Any, name: str, path: Path, config: ChannelConfig | None = None, **kw: Any
) -> MemoryChannel:
    instance = await runtime.start_instance(name, artifact=path, config=config, **kw)
    channel: MemoryChannel = instance.channel
    return channel


def request(function: str, data: bytes = b"", rid: str = "r", **kw: Any) -> ExecutionRequest:
    return ExecutionRequest(rid, function, data, **kw)


async def run_while_ticking(awaitable: Awaitable[Any]) -> tuple[Any, int, float]:
    """Await `awaitable` while another coroutine sleeps 5 ms at a time: (outcome, ticks, the
    longest gap between ticks). A blocked event loop shows up as a long gap."""
    ticks = 0
    longest = 0.0
    done = False

    async def tick() -> None:
        nonlocal ticks, longest
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now
            ticks += 1

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)  # let the ticker start before the work
    try:
        outcome: Any = await awaitable
    except Exception as exc:
        outcome = exc
    finally:
        done = True
        await ticker
    return outcome, ticks, longest


# ------------------------------------------------------------------ request/response


async def test_request_response_returns_success_with_the_output(
    runtime: Any, echo_wasm: Path
) -> None:
    channel = await channel_for(runtime, "echo", echo_wasm)
    response = await channel.request_response(request("echo", b"hello", rid="req-1"))
    assert isinstance(response, ExecutionResponse)
    assert response.request_id == "req-1"
    assert response.status is ExecutionStatus.SUCCESS and response.ok
    assert response.output_data == b"hello"
    assert response.error_message is None and response.error_code is None
    assert response.execution_time_ms > 0


async def test_large_requests_and_responses_cross_the_channel(
    runtime: Any, wasm_fixture: Fixture
) -> None:
    channel = await channel_for(runtime, "large", wasm_fixture("large_output"))
    response = await channel.request_response(request("large", b"%d" % (3 << 20)))
    assert response.ok
    expected = bytes(i % 251 for i in range(251)) * ((3 << 20) // 251 + 1)
    assert response.output_data == expected[: 3 << 20]
    big = bytes(range(256)) * 8192  # 2 MiB
    assert (await channel.request_response(request("echo", big))).output_data == big


async def test_application_error_is_an_error_response_not_an_exception(
    runtime: Any, wasm_fixture: Fixture
) -> None:
    channel = await channel_for(runtime, "multi", wasm_fixture("multi"))
    response = await channel.request_response(request("fail", b"why", rid="f"))
    assert isinstance(response, ExecutionResponse)
    assert response.request_id == "f"
    assert response.status is ExecutionStatus.ERROR and not response.ok
    assert response.error_message == "failed on purpose: why"
    assert response.error_code == "42"
    assert response.output_data == b""
    assert (await channel.request_response(request("upper", b"ok"))).output_data == b"OK"


async def test_missing_handler_and_trap_are_error_responses(
    runtime: Any, wasm_fixture: Fixture
) -> None:
    channel = await channel_for(runtime, "trap", wasm_fixture("trap"))
    missing = await channel.request_response(request("nope"))
    assert missing.status is ExecutionStatus.ERROR
    assert missing.error_code == "no_such_handler"
    assert "echo" in (missing.error_message or "")
    trapped = await channel.request_response(request("unreachable"))
    assert trapped.status is ExecutionStatus.ERROR
    assert trapped.error_code == "trap:unreachable"
    assert (await channel.request_response(request("echo", b"x"))).output_data == b"x"


async def test_metadata_travels_with_the_request(runtime: Any, wasm_fixture: Fixture) -> None:
    channel = await channel_for(runtime, "meta", wasm_fixture("metadata"))
    response = await channel.request_response(
        request("dump", metadata={"tenant": "acme", "ключ": "值"}))
    assert response.output_data == "tenant=acme\nключ=值\n".encode()


async def test_spinning_guest_with_timeout_raises_timeout_and_the_channel_still_serves(
    runtime: Any, wasm_fixture: Fixture
) -> None:
    channel = await channel_for(runtime, "spin", wasm_fixture("spin"))
    started = time.monotonic()
    with pytest.raises(spear.Timeout) as info:
        await channel.request_response(request("spin"), timeout=0.2)
    assert time.monotonic() - started < 0.3 + 0.2
    assert isinstance(info.value, TimeoutError)
    assert (await channel.get_stats()).timeout_errors == 1
    response = await channel.request_response(request("echo", b"still serving"))
    assert response.output_data == b"still serving"
    assert channel.wasm_instance.replacements == 1


async def test_request_timeout_ms_bounds_the_call(runtime: Any, wasm_fixture: Fixture) -> None:
    channel = await channel_for(runtime, "spin", wasm_fixture("spin"))
    started = time.monotonic()
    with pytest.raises(spear.Timeout):
        await channel.request_response(request("spin", timeout_ms=100))
    assert time.monotonic() - started < 0.4


async def test_config_request_timeout_applies_when_the_request_has_none(
    runtime: Any, wasm_fixture: Fixture
) -> None:
    config = ChannelConfig(request_timeout_ms=100)
    channel = await channel_for(runtime, "spin", wasm_fixture("spin"), config)
    started = time.monotonic()
    with pytest.raises(spear.Timeout):
        await channel.request_response(request("spin"))
    assert time.monotonic() - started < 0.4


async def test_a_request_queued_behind_a_slow_call_times_out_waiting(
    runtime: Any, wasm_fixture: Fixture
) -> None:
    config = ChannelConfig(extra={"dispatch": "thread"})
    channel = await channel_for(runtime, "spin", wasm_fixture("spin"), config)
    slow = asyncio.create_task(channel.request_response(request("spin"), timeout=0.3))
    await asyncio.sleep(0.02)
    started = time.monotonic()
    with pytest.raises(spear.Timeout):
        await channel.request_response(request("echo", b"x"), timeout=0.05)
    assert time.monotonic() - started < 0.2
    with pytest.raises(spear.Timeout):
        await slow
    assert (await channel.get_stats()).timeout_errors == 2
    assert (await channel.request_response(request("echo", b"y"))).output_data == b"y"


async def test_health_check_answers_with_a_health_response(
    runtime: Any, echo_wasm: Path
) -> None:
    channel = await channel_for(runtime, "echo", echo_wasm)
    await channel.request_response(request("echo", b"x"))
    health = await channel.request_response(HealthCheck("h1"))
    assert isinstance(health, HealthResponse)
    assert health.request_id == "h1"
    assert health.status == "serving"
    assert health.metrics["memory_bytes"] > 0
    assert health.metrics["replacements"] == 0


async def test_health_check_answers_promptly_while_a_guest_call_is_running(
    runtime: Any, wasm_fixture: Fixture
) -> None:
    channel = await channel_for(runtime, "spin", wasm_fixture("spin"))
    slow = asyncio.create_task(channel.request_response(request("spin"), timeout=0.5))
    await asyncio.sleep(0.05)  # the spin is now running on the instance's thread
    started = time.perf_counter()
    health, _, longest_gap = await run_while_ticking(channel.request_response(HealthCheck("h")))
    took = time.perf_counter() - started
    assert isinstance(health, HealthResponse)
    with pytest.raises(spear.Timeout):
        await slow
    assert took < 0.1, f"health check waited {took:.3f} s for the running guest call"
    assert longest_gap < 0.1, f"the event loop stalled for {longest_gap:.3f} s"


async def test_non_execution_requests_are_invalid(runtime: Any, echo_wasm: Path) -> None:
    channel = await channel_for(runtime, "echo", echo_wasm)
    with pytest.raises(spear.InvalidMessage):
        await channel.request_response(spear.Ack("a"))


# ------------------------------------------------------------------ messages both ways


async def test_send_queues_a_message_the_guest_pulls(runtime: Any, wasm_fixture: Fixture) -> None:
    channel = await channel_for(runtime, "sender", wasm_fixture("sender"))
    await channel.send(ExecutionRequest("m1", "greeting", b"hello"))
    await channel.send(ExecutionRequest("m2", "big", b"z" * 5000))
    response = await channel.request_response(request("pull"))
    assert response.output_data == b"greeting=hello;big=" + b"z" * 5000 + b";"
    assert (await channel.request_response(request("pull"))).output_data == b""


async def test_messages_the_guest_sends_come_out_of_receive(
    runtime: Any, wasm_fixture: Fixture
) -> None:
    channel = await channel_for(runtime, "sender", wasm_fixture("sender"))
    response = await channel.request_response(request("emit", b"3"))
    assert response.output_data == b"sent 3"
    received = [await asyncio.wait_for(channel.receive(), 1) for _ in range(3)]
    for i, message in enumerate(received):
        assert isinstance(message, ExecutionRequest)
        assert message.function_name == "tick"
        assert message.input_data == b"%d" % i
    assert len({m.request_id for m in received}) == 3  # type: ignore[union-attr]


async def test_receive_waits_for_the_guest_to_send(runtime: Any, wasm_fixture: Fixture) -> None:
    channel = await channel_for(runtime, "sender", wasm_fixture("sender"))
    waiting = asyncio.create_task(channel.receive())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await channel.request_response(request("emit", b"1"))
    message = await asyncio.wait_for(waiting, 1)
    assert isinstance(message, ExecutionRequest) and message.function_name == "tick"


async def test_health_check_sent_is_answered_on_receive(runtime: Any, echo_wasm: Path) -> None:
    channel = await channel_for(runtime, "echo", echo_wasm)
    await channel.send(HealthCheck("hc"))
    answer = await asyncio.wait_for(channel.receive(), 1)
    assert isinstance(answer, HealthResponse) and answer.request_id == "hc"


# ------------------------------------------------------------------ concurrency and stats


@pytest.mark.parametrize("dispatch", DISPATCH_MODES)
async def test_many_concurrent_requests_each_get_their_own_output(
    runtime: Any, echo_wasm: Path, dispatch: str
) -> None:
    config = ChannelConfig(extra={"dispatch": dispatch})
    channel = await channel_for(runtime, "echo", echo_wasm, config)
    requests = [request("echo", b"payload-%d-" % i * (i % 7 + 1), rid=f"id-{i}")
                for i in range(500)]
    responses = await asyncio.gather(*(channel.request_response(r) for r in requests))
    for sent, got in zip(requests, responses, strict=True):
        assert isinstance(got, ExecutionResponse)
        assert got.request_id == sent.request_id
        assert got.output_data == sent.input_data


async def test_stats_count_real_messages_bytes_and_latency(
    runtime: Any, wasm_fixture: Fixture
) -> None:
    channel = await channel_for(runtime, "multi", wasm_fixture("multi"))
    inputs = [b"a" * n for n in (1, 10, 100, 1000, 10_000)]
    started = time.perf_counter()
    for data in inputs:
        assert (await channel.request_response(request("upper", data))).ok
    failed = await channel.request_response(request("fail", b"x"))
    wall_ms = (time.perf_counter() - started) * 1000
    assert not failed.ok
    stats = await channel.get_stats()
    assert stats.messages_sent == 6
    assert stats.bytes_sent == sum(map(len, inputs)) + 1
    assert stats.bytes_received == sum(map(len, inputs))
    assert stats.requests_completed == 6
    assert stats.messages_received == 6
    assert stats.timeout_errors == 0 and stats.connection_errors == 0
    assert 0 < stats.mean_latency_ms <= wall_ms / 6 * 1.5 + 1
    assert stats.uptime_s > 0


# ------------------------------------------------------------------ lifecycle


async def test_close_fails_further_calls_and_wakes_a_pending_receive(
    runtime: Any, echo_wasm: Path
) -> None:
    channel = await channel_for(runtime, "echo", echo_wasm)
    waiting = [asyncio.create_task(channel.receive()) for _ in range(2)]
    await asyncio.sleep(0.01)
    await channel.close()
    for task in waiting:
        with pytest.raises(spear.ChannelClosed):
            await asyncio.wait_for(task, 1)
    assert not channel.connected and not await channel.is_connected()
    with pytest.raises(spear.ChannelClosed):
        await channel.request_response(request("echo", b"x"))
    with pytest.raises(spear.ChannelClosed):
        await channel.send(ExecutionRequest("m", "t", b"x"))
    with pytest.raises(spear.ChannelClosed):
        await channel.receive()
    assert channel.wasm_instance.closed
    await channel.close()  # idempotent


async def test_close_lets_a_running_call_finish_then_fails_queued_ones(
    runtime: Any, wasm_fixture: Fixture
) -> None:
    config = ChannelConfig(extra={"dispatch": "thread"})
    channel = await channel_for(runtime, "large", wasm_fixture("large_output"), config)
    running = asyncio.create_task(channel.request_response(request("large", b"%d" % (8 << 20))))
    await asyncio.sleep(0.005)
    queued = asyncio.create_task(channel.request_response(request("echo", b"late")))
    await asyncio.sleep(0)
    await channel.close()
    first = await running
    assert isinstance(first, ExecutionResponse) and first.ok
    assert len(first.output_data) == 8 << 20
    with pytest.raises(spear.ChannelClosed):
        await queued


async def test_shutdown_message_closes_the_channel(runtime: Any, echo_wasm: Path) -> None:
    channel = await channel_for(runtime, "echo", echo_wasm)
    await channel.send(Shutdown())
    assert not channel.connected


async def test_stop_instance_closes_its_channel_and_forgets_it(
    runtime: Any, echo_wasm: Path
) -> None:
    instance = await runtime.start_instance("one", artifact=echo_wasm)
    other = await runtime.start_instance("two", artifact=echo_wasm)
    assert instance.alive
    await runtime.stop_instance(instance)
    assert not instance.alive
    assert runtime.instances() == [other]
    with pytest.raises(spear.ChannelClosed):
        await instance.channel.request_response(request("echo", b"x"))
    # The id is free again.
    again = await runtime.start_instance("one", artifact=echo_wasm)
    assert (await again.channel.request_response(request("echo", b"z"))).output_data == b"z"


async def test_duplicate_instance_id_is_refused(runtime: Any, echo_wasm: Path) -> None:
    await runtime.start_instance("dup", artifact=echo_wasm)
    with pytest.raises(spear.InvalidConfiguration, match="already running"):
        await runtime.start_instance("dup", artifact=echo_wasm)


async def test_instances_of_one_artifact_share_the_module_but_not_state(
    runtime: Any, wasm_fixture: Fixture
) -> None:
    a = await runtime.start_instance("a", artifact=wasm_fixture("sender"))
    b = await runtime.start_instance("b", artifact=wasm_fixture("sender"))
    assert a.module is b.module
    await a.channel.send(ExecutionRequest("m", "only-a", b"1"))
    assert (await b.channel.request_response(request("pull"))).output_data == b""
    assert (await a.channel.request_response(request("pull"))).output_data == b"only-a=1;"


async def test_start_instance_refuses_bad_options(runtime: Any, echo_wasm: Path) -> None:
    with pytest.raises(spear.InvalidConfiguration):
        await runtime.start_instance("x")  # no artifact
    with pytest.raises(spear.UnsupportedChannel):
        await runtime.start_instance("y", artifact=echo_wasm,
                                     config=ChannelConfig(channel_type="grpc"))
    with pytest.raises(spear.InvalidConfiguration):
        await runtime.start_instance("z", artifact=echo_wasm, colour="blue")
    with pytest.raises(spear.InvalidConfiguration, match="dispatch"):
        await runtime.start_instance("w", artifact=echo_wasm,
                                     config=ChannelConfig(extra={"dispatch": "sometimes"}))
    with pytest.raises(spear.ExecutionFailed):
        await runtime.start_instance("v", artifact=b"not wasm")


async def test_request_over_the_configured_max_message_size_is_an_error_response(
    runtime: Any, echo_wasm: Path
) -> None:
    config = ChannelConfig(max_message_size=32 * 1024)
    channel = await channel_for(runtime, "echo", echo_wasm, config)
    response = await channel.request_response(request("echo", bytes(64 * 1024)))
    assert response.status is ExecutionStatus.ERROR
    assert response.error_code == "too_large"
    assert (await channel.request_response(request("echo", b"ok"))).output_data == b"ok"


async def test_runtime_close_stops_every_instance(echo_wasm: Path) -> None:
    async with spear.WasmRuntime() as rt:
        instances = [await rt.start_instance(f"i{n}", artifact=echo_wasm) for n in range(3)]
    assert all(not i.alive for i in instances)


# ------------------------------------------------------------------ dispatch modes


@pytest.mark.parametrize("dispatch", DISPATCH_MODES)
async def test_every_dispatch_mode_gives_the_same_answers(
    runtime: Any, wasm_fixture: Fixture, dispatch: str
) -> None:
    config = ChannelConfig(extra={"dispatch": dispatch})
    channel = await channel_for(runtime, "multi", wasm_fixture("multi"), config)
    for _ in range(5):  # enough for auto mode to move handlers inline
        assert (await channel.request_response(request("upper", b"abc"))).output_data == b"ABC"
        assert (await channel.request_response(request("reverse", b"abc"))).output_data == b"cba"
        assert (await channel.request_response(request("length", b"abcd"))).output_data == b"4"
        failed = await channel.request_response(request("fail", b"x"))
        assert (failed.status, failed.error_code) == (ExecutionStatus.ERROR, "42")
        missing = await channel.request_response(request("absent"))
        assert missing.error_code == "no_such_handler"


@pytest.mark.parametrize("dispatch", DISPATCH_MODES)
async def test_every_dispatch_mode_times_out_a_spinning_guest(
    runtime: Any, wasm_fixture: Fixture, dispatch: str
) -> None:
    config = ChannelConfig(extra={"dispatch": dispatch})
    channel = await channel_for(runtime, "spin", wasm_fixture("spin"), config)
    for _ in range(4):
        assert (await channel.request_response(request("echo", b"e"))).output_data == b"e"
    with pytest.raises(spear.Timeout):
        await channel.request_response(request("spin"), timeout=0.05)
    assert (await channel.request_response(request("echo", b"after"))).output_data == b"after"


async def test_auto_dispatch_keeps_the_loop_responsive_during_a_spinning_guest(
    runtime: Any, wasm_fixture: Fixture
) -> None:
    channel = await channel_for(runtime, "spin", wasm_fixture("spin"))
    outcome, ticks, longest = await run_while_ticking(
        channel.request_response(request("spin"), timeout=0.3))
    assert isinstance(outcome, spear.Timeout)
    assert ticks >= 20, ticks
    assert longest < 0.1, longest


async def test_auto_dispatch_keeps_the_loop_responsive_during_a_large_output(
    runtime: Any, wasm_fixture: Fixture
) -> None:
    channel = await channel_for(runtime, "large", wasm_fixture("large_output"))
    n = 40 << 20
    started = time.perf_counter()
    outcome, ticks, longest = await run_while_ticking(
        channel.request_response(request("large", b"%d" % n)))
    took = time.perf_counter() - started
    assert isinstance(outcome, ExecutionResponse) and outcome.ok
    assert len(outcome.output_data) == n
    # Run inline, the call would hold the loop for all of `took` (no ticks at all). Copying a
    # 40 MiB output into a Python bytes object holds the GIL for a moment, so only ask that the
    # loop kept running during the call, not that it never paused.
    assert ticks >= 5, (ticks, took)
    assert longest < took, (longest, took)


async def test_auto_dispatch_moves_fast_handlers_inline_and_stays_correct(
    runtime: Any, echo_wasm: Path
) -> None:
    channel = await channel_for(runtime, "echo", echo_wasm)
    for i in range(20):
        data = b"%d" % i
        assert (await channel.request_response(request("echo", data))).output_data == data
    # Inline calls answer without leaving the loop: no extra thread hop needed to be correct,
    # and a burst of them interleaved with other coroutines still matches ids to outputs.
    results = await asyncio.gather(
        *(channel.request_response(request("echo", b"%d" % i, rid=str(i))) for i in range(50)))
    assert [r.output_data for r in results] == [b"%d" % i for i in range(50)]  # type: ignore[union-attr]
