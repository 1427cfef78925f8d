"""Loose inputs to every public call: a clear InvalidConfiguration or TypeError naming the
argument, nothing half-done, and the next call works (on the Python path too, whose ticker
must keep ticking after a refused timeout). Each test runs in a child process, on both paths.
"""

from __future__ import annotations

import array
import asyncio
import math
from typing import Any

import pytest
import spear
from hostile_guests import SPIN, guest
from spear import ExecutionRequest, wasm
from wasm_isolation import in_child

BAD_TIMEOUTS: list[tuple[Any, type[Exception]]] = [
    (math.inf, spear.InvalidConfiguration),
    (-math.inf, spear.InvalidConfiguration),
    (math.nan, spear.InvalidConfiguration),
    (1e11, spear.InvalidConfiguration),
    (10**30, spear.InvalidConfiguration),
    (0, spear.InvalidConfiguration),
    (0.0, spear.InvalidConfiguration),
    (-1, spear.InvalidConfiguration),
    (True, TypeError),
    ("1", TypeError),
    ([1], TypeError),
]
BAD_METADATA: list[tuple[Any, type[Exception]]] = [
    ("tenant=acme", TypeError),
    ([("tenant", "acme")], TypeError),
    ({1: "acme"}, TypeError),
    ({"tenant": 1}, TypeError),
    ({"tenant": None}, TypeError),
    ({"tenant": b"acme"}, TypeError),
    ({"\ud800": "acme"}, spear.InvalidConfiguration),
]
BAD_INPUTS: list[Any] = ["text", 5, None, [1, 2], object(), 1.5]
SPINNER = f'(func (export "spear.handler.spin") (result i32) {SPIN} (i32.const 0))'


def spinner() -> wasm.WasmModule:
    return wasm.load(guest(SPINNER))


def still_serves(instance: wasm.WasmInstance) -> None:
    assert instance.call("echo", b"still fine") == b"still fine"
    with pytest.raises(spear.Timeout):  # the ticker still ticks
        instance.call("spin", b"", timeout=0.1)
    assert instance.call("echo", b"again", timeout=5) == b"again"


@in_child
def test_call_refuses_bad_timeouts_metadata_inputs_and_names_naming_the_argument(
    call_path: str,
) -> None:
    with spinner().instantiate() as instance:
        for timeout, error in BAD_TIMEOUTS:
            with pytest.raises(error, match="timeout"):
                instance.call("echo", b"x", timeout=timeout)
        for metadata, error in BAD_METADATA:
            with pytest.raises(error, match="metadata"):
                instance.call("echo", b"x", metadata=metadata)
        for data in BAD_INPUTS:
            with pytest.raises(TypeError, match="input"):
                instance.call("echo", data)
        for function in (5, None, b"echo"):
            with pytest.raises(TypeError, match="function"):
                instance.call(function, b"x")  # type: ignore[arg-type]
        assert instance.call_count == 0  # nothing reached the guest
        still_serves(instance)


@in_child
def test_call_takes_any_bytes_like_input_and_large_finite_timeouts(call_path: str) -> None:
    with spinner().instantiate() as instance:
        for data in (bytearray(b"abc"), memoryview(b"abc"), memoryview(b"aXbXc")[::2],
                     array.array("B", b"abc")):
            assert instance.call("echo", data) == b"abc"
        assert instance.call("echo", b"x", timeout=wasm.MAX_TIMEOUT) == b"x"
        assert instance.call("echo", b"x", timeout=1) == b"x"  # an int is fine
        assert instance.call("echo", b"x", metadata={}) == b"x"


@in_child
def test_the_channel_refuses_loose_requests_naming_the_field(call_path: str) -> None:
    async def main() -> None:
        async with spear.WasmRuntime() as runtime:
            channel = (await runtime.start_instance("i", artifact=guest(SPINNER))).channel
            for timeout, error in BAD_TIMEOUTS:
                with pytest.raises(error, match="timeout"):
                    await channel.request_response(ExecutionRequest("r", "echo", b"x"),
                                                   timeout=timeout)
            for timeout_ms, error in ((-1, spear.InvalidConfiguration), (1.5, TypeError),
                                      ("10", TypeError), (True, TypeError)):
                with pytest.raises(error, match="timeout_ms"):
                    await channel.request_response(
                        ExecutionRequest("r", "echo", b"x", timeout_ms=timeout_ms))
            for data in BAD_INPUTS:
                with pytest.raises(TypeError, match="input_data"):
                    await channel.request_response(ExecutionRequest("r", "echo", data))
                with pytest.raises(TypeError, match="input_data"):
                    await channel.send(ExecutionRequest("m", "topic", data))
            for metadata, error in BAD_METADATA:
                with pytest.raises(error, match="metadata"):
                    await channel.request_response(
                        ExecutionRequest("r", "echo", b"x", metadata=metadata))
            with pytest.raises(TypeError, match="function_name"):
                await channel.request_response(ExecutionRequest("r", 7, b"x"))  # type: ignore[arg-type]
            # A huge timeout_ms from a remote caller is clamped, not an overflow.
            huge = ExecutionRequest("r", "echo", b"big", timeout_ms=10**20)
            assert (await channel.request_response(huge)).output_data == b"big"
            with pytest.raises(spear.Timeout):
                await channel.request_response(ExecutionRequest("r", "spin", b""), timeout=0.1)
            assert (await channel.request_response(
                ExecutionRequest("r", "echo", b"ok"))).output_data == b"ok"
            stats = await channel.get_stats()
            assert stats.timeout_errors == 1

    asyncio.run(main())


@in_child
def test_loading_refuses_bad_limits_naming_them(call_path: str) -> None:
    module = guest()
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"memory_limit": 0}, spear.InvalidConfiguration, "memory_limit"),
        ({"memory_limit": -1}, spear.InvalidConfiguration, "memory_limit"),
        ({"memory_limit": 1 << 40}, spear.InvalidConfiguration, "memory_limit"),
        ({"memory_limit": 1.5e6}, TypeError, "memory_limit"),
        ({"memory_limit": True}, TypeError, "memory_limit"),
        ({"fuel": 0}, spear.InvalidConfiguration, "fuel"),
        ({"fuel": -5}, spear.InvalidConfiguration, "fuel"),
        ({"fuel": 10.0}, TypeError, "fuel"),
        ({"setup_timeout": math.nan}, spear.InvalidConfiguration, "setup_timeout"),
        ({"setup_timeout": -1}, spear.InvalidConfiguration, "setup_timeout"),
    ]
    for kwargs, error, name in cases:
        with pytest.raises(error, match=name):
            wasm.load(module, **kwargs)
    with pytest.raises(TypeError, match="source"):
        wasm.load(12345)  # type: ignore[arg-type]
    loaded = wasm.load(module)
    with pytest.raises(spear.InvalidConfiguration, match="max_message_size"):
        loaded.instantiate(max_message_size=0)
    with pytest.raises(TypeError, match="limits"):
        loaded.instantiate(limits={"outbox_bytes": 1})  # type: ignore[arg-type]
    for field, value in (("outbox_bytes", 0), ("log_records_per_s", math.nan),
                         ("table_elements", -1), ("inbox_messages", 1.5)):
        with pytest.raises(spear.InvalidConfiguration, match=field):
            wasm.GuestLimits(**{field: value})

    async def runtime_options() -> None:
        for kwargs in ({"memory_limit": "64M"}, {"fuel": -1}, {"limits": 3}):
            with pytest.raises((TypeError, spear.InvalidConfiguration)):
                spear.WasmRuntime(**kwargs)
        async with spear.WasmRuntime() as runtime:
            with pytest.raises(spear.InvalidConfiguration, match="fuel"):
                await runtime.start_instance("x", artifact=module, fuel=-1)
            with pytest.raises(TypeError, match="artifact"):
                await runtime.start_instance("y", artifact=12345)  # type: ignore[arg-type]
            instance = await runtime.start_instance("z", artifact=module)
            assert (await instance.channel.request_response(
                ExecutionRequest("r", "echo", b"fine"))).output_data == b"fine"

    asyncio.run(runtime_options())
