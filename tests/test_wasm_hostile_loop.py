"""Guest code never holds the event loop past its budget (5 ms by default).

A handler that was fast enough to run inline and then turns slow is interrupted at the budget,
its instance replaced, its effects on the mailbox undone, and it runs again on the instance's
thread: the caller gets the result of exactly one run. The budget is configurable per runtime
and per function. Each test runs in a child process, on both call paths.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable
from typing import Any

import pytest
import spear
from hostile_guests import BUSY, POLL_IMPORT, PULL_BUSY, SLEEP, SPEAR_IMPORTS, SPIN, guest
from spear import ChannelConfig, ExecutionRequest, ExecutionResponse
from wasm_isolation import in_child

HANDLERS = BUSY + PULL_BUSY + SLEEP + f"""
  (func (export "spear.handler.spin") (result i32) {SPIN} (i32.const 0))
  (func (export "spear.handler.ok") (result i32) (i32.const 0))
"""


INLINE = ChannelConfig(extra={"dispatch": "inline"})


def module_bytes() -> bytes:
    return guest(handlers=HANDLERS, imports=SPEAR_IMPORTS + POLL_IMPORT)


def ns(value: float) -> bytes:
    return struct.pack("<Q", int(value * 1e9))


def request(function: str, data: bytes = b"") -> ExecutionRequest:
    return ExecutionRequest("r", function, data)


async def warm_up(channel: Any, function: str, data: bytes) -> None:
    """Enough fast calls for auto dispatch to move `function` inline."""
    for _ in range(6):
        assert (await channel.request_response(request(function, data))).ok


async def while_ticking(awaitable: Awaitable[Any]) -> tuple[Any, int, float]:
    """(outcome, ticks, longest gap between ticks) of a 2 ms ticker running meanwhile."""
    ticks, longest, done = 0, 0.0, False

    async def tick() -> None:
        nonlocal ticks, longest
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            longest, last, ticks = max(longest, now - last), now, ticks + 1

    task = asyncio.create_task(tick())
    await asyncio.sleep(0)
    try:
        outcome: Any = await awaitable
    except Exception as exc:
        outcome = exc
    done = True
    await task
    return outcome, ticks, longest


@in_child
def test_a_handler_turning_slow_inline_is_rerun_on_the_thread_exactly_once(
    call_path: str,
) -> None:
    async def main() -> None:
        async with spear.WasmRuntime() as runtime:
            # "inline": every call starts on the loop, however busy this machine is.
            channel = (await runtime.start_instance("b", artifact=module_bytes(),
                                                    config=INLINE)).channel
            await warm_up(channel, "busy", ns(0))
            for _ in range(6):
                await channel.receive()  # the warm-up's messages
            outcome, ticks, longest = await while_ticking(
                channel.request_response(request("busy", ns(0.3)), timeout=10))
            assert isinstance(outcome, ExecutionResponse) and outcome.ok, outcome
            # The loop kept running while the guest spun for 0.3 s.
            assert ticks >= 10 and longest < 0.2, (ticks, longest)
            # One run's message only: the interrupted inline attempt's was dropped.
            assert (await channel.receive()).input_data == b"tick"
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(channel.receive(), 0.05)
            health = await channel.request_response(spear.HealthCheck("h"))
            assert health.metrics["replacements"] == 1  # the interrupted attempt's instance
            assert (await channel.request_response(request("busy", ns(0)))).ok

    asyncio.run(main())


@in_child
def test_a_message_pulled_by_an_interrupted_attempt_is_seen_again_by_the_rerun(
    call_path: str,
) -> None:
    async def main() -> None:
        async with spear.WasmRuntime() as runtime:
            channel = (await runtime.start_instance("p", artifact=module_bytes(),
                                                    config=INLINE)).channel
            await warm_up(channel, "pull_busy", ns(0))
            await channel.send(ExecutionRequest("m", "topic", b"the-message"))
            response = await channel.request_response(request("pull_busy", ns(0.1)), timeout=10)
            assert response.ok and response.output_data == b"the-message"
            health = await channel.request_response(spear.HealthCheck("h"))
            assert health.metrics["queued_for_guest"] == 0
            assert health.metrics["replacements"] == 1

    asyncio.run(main())


@in_child
@pytest.mark.parametrize("dispatch", ["auto", "inline"])
def test_a_guest_spinning_inline_never_blocks_the_loop_and_still_times_out(
    call_path: str, dispatch: str,
) -> None:
    async def main() -> None:
        async with spear.WasmRuntime() as runtime:
            config = ChannelConfig(extra={"dispatch": dispatch})
            channel = (await runtime.start_instance("s", artifact=module_bytes(),
                                                    config=config)).channel
            await warm_up(channel, "ok", b"")
            outcome, ticks, longest = await while_ticking(
                channel.request_response(request("spin"), timeout=0.5))
            assert isinstance(outcome, spear.Timeout), outcome
            assert ticks >= 10 and longest < 0.2, (ticks, longest)
            assert (await channel.request_response(request("ok"))).ok

    asyncio.run(main())


@in_child
def test_a_wasi_sleep_inline_never_blocks_the_loop(call_path: str) -> None:
    async def main() -> None:
        async with spear.WasmRuntime() as runtime:
            channel = (await runtime.start_instance("w", artifact=module_bytes())).channel
            await warm_up(channel, "sleep", ns(0))
            outcome, ticks, longest = await while_ticking(
                channel.request_response(request("sleep", ns(3600)), timeout=0.5))
            assert isinstance(outcome, spear.Timeout), outcome
            assert ticks >= 10 and longest < 0.2, (ticks, longest)
            response = await channel.request_response(request("sleep", ns(0.2)), timeout=5)
            assert response.ok and struct.unpack_from("<II", response.output_data) == (0, 1)

    asyncio.run(main())


@in_child
def test_the_loop_budget_is_configurable_per_runtime_and_per_instance(call_path: str) -> None:
    async def main() -> None:
        async with spear.WasmRuntime(loop_budget_ms=500) as runtime:
            wasm = module_bytes()
            default = (await runtime.start_instance("a", artifact=wasm, config=INLINE)).channel
            assert default.loop_budget == 0.5
            own = (await runtime.start_instance("b", artifact=wasm, loop_budget_ms=1,
                                                config=INLINE)).channel
            assert own.loop_budget == 0.001
            config = ChannelConfig(extra={"loop_budget_ms": "2.5"})
            by_config = (await runtime.start_instance("c", artifact=wasm, config=config)).channel
            assert by_config.loop_budget == 0.0025
            # A 20 ms busy call fits a 500 ms budget inline (no replacement), not a 1 ms one.
            for channel, replaced in ((default, 0), (own, 1)):
                await warm_up(channel, "busy", ns(0))
                health = await channel.request_response(spear.HealthCheck("h"))
                before = health.metrics["replacements"]  # a loaded machine may take 1 ms
                assert (await channel.request_response(request("busy", ns(0.02)),
                                                       timeout=5)).ok
                health = await channel.request_response(spear.HealthCheck("h"))
                assert health.metrics["replacements"] - before == replaced
            for bad in (0, -1, float("nan"), float("inf"), 5000, "soon"):
                with pytest.raises((spear.InvalidConfiguration, TypeError)):
                    await runtime.start_instance("x", artifact=wasm, loop_budget_ms=bad)
                with pytest.raises((spear.InvalidConfiguration, TypeError)):
                    spear.WasmRuntime(loop_budget_ms=bad)  # type: ignore[arg-type]

    asyncio.run(main())


@in_child
def test_a_function_spec_sets_the_loop_budget_of_its_instances(call_path: str) -> None:
    from spear import FunctionSpec, RuntimeType, Spearlet
    from spear.invocation.function_spec import Limits

    async def main() -> None:
        async with Spearlet() as spearlet:
            await spearlet.deploy(FunctionSpec(
                "budgeted", RuntimeType.WASM, artifact=module_bytes(), handler="ok",
                limits=Limits(loop_budget_ms=12.5)))
            [instance] = spearlet.instances("budgeted")
            assert instance.channel.loop_budget == 0.0125  # type: ignore[attr-defined]
            assert (await spearlet.invoke("budgeted", b"")).ok
        for bad in (0, -5, float("nan"), 2000, True):
            with pytest.raises(spear.InvalidConfiguration, match="loop_budget_ms"):
                Limits(loop_budget_ms=bad)

    asyncio.run(main())
