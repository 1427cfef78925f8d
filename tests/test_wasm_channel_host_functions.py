"""Host functions, configuration and WASI options on the async paths: `WasmRuntime`, its
memory channel, `FunctionSpec` in a `Spearlet`, and `spear serve` configuration."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import spear
from spear import ChannelConfig, ExecutionRequest, ExecutionResponse, ExecutionStatus, wasm
from spear.channel.memory import MemoryChannel
from spear.instance_id import RuntimeType
from spear.invocation.function_spec import FunctionSpec
from spear.invocation.serve_config import parse_config


@pytest.fixture(scope="module")
def host_call_wasm(wasm_fixture: Callable[[str], Path]) -> Path:
    return wasm_fixture("host_call")


@pytest.fixture
async def runtime() -> AsyncIterator[Any]:
    rt = spear.WasmRuntime()
    yield rt
    await rt.close()


async def start(runtime: Any, path: Path, name: str = "hc", **kw: Any) -> MemoryChannel:
    instance = await runtime.start_instance(name, artifact=path, **kw)
    channel: MemoryChannel = instance.channel
    return channel


async def call(channel: MemoryChannel, function: str, data: bytes, **kw: Any) -> ExecutionResponse:
    response = await channel.request_response(ExecutionRequest("r", function, data, **kw))
    assert isinstance(response, ExecutionResponse)
    return response


async def test_an_async_host_function_runs_on_the_loop_while_the_guest_waits_on_its_thread(
    runtime: Any, host_call_wasm: Path,
) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    async def transform(data: bytes) -> bytes:
        seen.append(threading.get_ident())
        await asyncio.sleep(0.01)  # other coroutines run meanwhile
        return data.upper()

    channel = await start(runtime, host_call_wasm, host_functions={"transform": transform})
    assert channel.dispatch == "thread"
    outcomes = await asyncio.gather(call(channel, "relay", b"abc"), asyncio.sleep(0.001))
    assert outcomes[0].output_data == b"ABC"
    assert seen == [loop_thread]


async def test_an_async_host_function_past_the_call_deadline_times_out_the_call(
    runtime: Any, host_call_wasm: Path,
) -> None:
    async def transform(data: bytes) -> bytes:
        if data == b"slow":
            await asyncio.sleep(30)
        return data

    channel = await start(runtime, host_call_wasm, host_functions={"transform": transform})
    with pytest.raises(spear.Timeout):
        await call(channel, "relay", b"slow", timeout_ms=200)
    assert (await call(channel, "relay", b"fast", timeout_ms=5000)).output_data == b"fast"


async def test_an_async_host_function_calling_back_into_its_channel_is_refused(
    runtime: Any, host_call_wasm: Path,
) -> None:
    holder: list[MemoryChannel] = []

    async def transform(data: bytes) -> bytes:
        inner = await call(holder[0], "relay", data)
        if inner.status is not ExecutionStatus.SUCCESS:
            raise RuntimeError(f"{inner.error_code}: {inner.error_message}")
        return inner.output_data

    channel = await start(runtime, host_call_wasm, host_functions={"transform": transform})
    holder.append(channel)
    response = await asyncio.wait_for(call(channel, "relay", b"x", timeout_ms=10_000), 20)
    assert response.status is ExecutionStatus.ERROR
    assert response.error_code == "host_function"
    assert "reentrant" in (response.error_message or "")


async def test_an_async_host_function_calling_the_synchronous_api_of_its_instance_is_refused(
    runtime: Any, host_call_wasm: Path,
) -> None:
    holder: list[MemoryChannel] = []

    async def transform(data: bytes) -> bytes:
        return holder[0].wasm_instance.call("relay", data)  # would block the loop forever

    channel = await start(runtime, host_call_wasm, host_functions={"transform": transform})
    holder.append(channel)
    response = await asyncio.wait_for(call(channel, "relay", b"x"), 20)
    assert response.error_code == "host_function"
    assert "re-entrant" in (response.error_message or "")


async def test_sync_host_functions_run_off_the_loop_unless_declared_inline_safe(
    runtime: Any, host_call_wasm: Path,
) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def transform(data: bytes) -> bytes:
        seen.append(threading.get_ident())
        return data

    channel = await start(runtime, host_call_wasm, "blocking",
                          host_functions={"transform": transform})
    assert channel.dispatch == "thread"
    for _ in range(10):
        assert (await call(channel, "relay", b"x")).output_data == b"x"
    assert seen and loop_thread not in seen

    seen.clear()
    quick = await start(runtime, host_call_wasm, "quick",
                        host_functions={"transform": wasm.HostFunction(transform,
                                                                       inline_safe=True)})
    assert quick.dispatch == "auto"
    for _ in range(50):
        assert (await call(quick, "relay", b"x")).output_data == b"x"
        if loop_thread in seen:
            break
    assert loop_thread in seen  # proved fast on the thread, then let onto the loop


async def test_forcing_inline_dispatch_with_blocking_host_functions_is_refused(
    runtime: Any, host_call_wasm: Path,
) -> None:
    with pytest.raises(spear.InvalidConfiguration, match="transform"):
        await start(runtime, host_call_wasm, config=ChannelConfig(extra={"dispatch": "inline"}),
                    host_functions={"transform": bytes.upper})
    assert runtime.instances() == []


async def test_runtime_instances_read_their_configuration(runtime: Any,
                                                          host_call_wasm: Path) -> None:
    channel = await start(runtime, host_call_wasm, "one", guest_config={"k": "one"})
    other = await start(runtime, host_call_wasm, "two", config={"k": "two"})
    assert (await call(channel, "config", b"k")).output_data == b"one"
    assert (await call(other, "config", b"k")).output_data == b"two"
    missing = await call(other, "config", b"absent")
    assert missing.status is ExecutionStatus.ERROR and missing.error_code == "404"


async def test_a_function_spec_carries_host_functions_config_and_wasi(
    host_call_wasm: Path,
) -> None:
    async def transform(data: bytes) -> bytes:
        return data[::-1]

    spec = FunctionSpec("relay", RuntimeType.WASM, artifact=str(host_call_wasm),
                        host_functions={"transform": transform}, config={"k": "spec"},
                        wasi=wasm.WasiConfig(env={"A": "1"}))
    reader = FunctionSpec("config", RuntimeType.WASM, artifact=str(host_call_wasm),
                          config={"k": "spec"})
    async with spear.Spearlet() as spearlet:
        await spearlet.deploy(spec)
        await spearlet.deploy(reader)
        assert (await spearlet.invoke("relay", b"abc")).output_data == b"cba"
        assert (await spearlet.invoke("config", b"k")).output_data == b"spec"


def test_function_spec_refuses_bindings_that_do_not_apply() -> None:
    with pytest.raises(spear.InvalidConfiguration, match="WASM functions only"):
        FunctionSpec("p", RuntimeType.PROCESS, command=["x"], config={"a": "b"})
    with pytest.raises(spear.InvalidConfiguration, match="WasiConfig"):
        FunctionSpec("w", RuntimeType.WASM, artifact="x.wasm", wasi={"env": {}})
    with pytest.raises(spear.InvalidConfiguration, match="str to str"):
        FunctionSpec("w", RuntimeType.WASM, artifact="x.wasm", config={"a": 1})
    with pytest.raises(spear.InvalidConfiguration, match="callable"):
        FunctionSpec("w", RuntimeType.WASM, artifact="x.wasm", host_functions={"f": 1})


def test_serve_config_reads_config_wasi_and_loop_budget(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    config = parse_config({"functions": [{
        "name": "f", "runtime": "wasm", "artifact": "f.wasm",
        "config": {"greeting": "hi", "empty": ""},
        "wasi": {"env": {"A": "1"}, "args": ["-v"], "preopens": {"/data": "data"},
                 "read_only": False, "stdout": "log"},
        "limits": {"loop_budget_ms": 2.5},
    }]}, base_dir=tmp_path, source="test")
    (spec,) = config.functions
    assert spec.config == {"greeting": "hi", "empty": ""}
    assert spec.wasi == wasm.WasiConfig(env={"A": "1"}, args=["-v"],
                                        preopens={"/data": str(tmp_path / "data")},
                                        read_only=False, stdout="log")
    assert spec.limits.loop_budget_ms == 2.5


def test_serve_config_names_bad_wasm_keys(tmp_path: Path) -> None:
    with pytest.raises(spear.InvalidConfiguration, match=r"functions\[0\] \(f\): .*does not "
                       "exist"):
        parse_config({"functions": [{"name": "f", "runtime": "wasm", "artifact": "f.wasm",
                                     "wasi": {"preopens": {"/d": "missing"}}}]},
                     base_dir=tmp_path, source="test")
    with pytest.raises(spear.InvalidConfiguration, match="preopen"):
        parse_config({"functions": [{"name": "f", "runtime": "wasm", "artifact": "f.wasm",
                                     "wasi": {"preopen": {}}}]}, base_dir=tmp_path,
                     source="test")
    with pytest.raises(spear.InvalidConfiguration, match="config"):
        parse_config({"functions": [{"name": "f", "runtime": "wasm", "artifact": "f.wasm",
                                     "config": {"a": 1}}]}, base_dir=tmp_path, source="test")
    with pytest.raises(spear.InvalidConfiguration, match="loop_budget_ms"):
        parse_config({"functions": [{"name": "f", "runtime": "wasm", "artifact": "f.wasm",
                                     "limits": {"loop_budget_ms": 0}}]}, base_dir=tmp_path,
                     source="test")


async def test_auto_dispatch_learns_how_long_the_guest_took_not_how_late_the_loop_noticed(
    runtime: Any, host_call_wasm: Path,
) -> None:
    # After every call handed to the instance's thread, the loop is kept busy for 200 ms: a
    # handler timed from the loop would look slow (200 ms > the 50 ms threshold) and never
    # come back inline; timed on the thread it takes microseconds and does.
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def transform(data: bytes) -> bytes:
        seen.append(threading.get_ident())
        return data

    channel = await start(runtime, host_call_wasm,
                          config=ChannelConfig(extra={"inline_threshold_us": "50000"}),
                          host_functions={"transform": wasm.HostFunction(transform,
                                                                         inline_safe=True)})
    loop = asyncio.get_running_loop()
    for _ in range(3):
        loop.call_soon(time.sleep, 0.2)  # runs while the call is on the thread
        assert (await call(channel, "relay", b"x")).output_data == b"x"
    assert loop_thread not in seen
    assert (await call(channel, "relay", b"y")).output_data == b"y"
    assert seen[-1] == loop_thread  # the fourth call ran inline


async def test_an_async_host_function_works_from_the_start_function_of_a_runtime_instance(
    runtime: Any,
) -> None:
    from test_wasm_host_functions import START_CALLS_TRANSFORM

    async def transform(data: bytes) -> bytes:
        await asyncio.sleep(0)
        return b"awaited at start"

    channel = await start(runtime, START_CALLS_TRANSFORM, "starter",
                          host_functions={"transform": transform})
    assert (await call(channel, "get", b"")).output_data == b"awaited at start"
