"""Python host functions and configuration, through the synchronous embedding API.

The guest is wasm_fixtures/host_call.c (handlers relay, config, call, shout, tiny, twice)
built with the C SDK, plus WAT guests for what the SDK never does (host calls from the start
function, bad pointers, imports this host lacks).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import spear
import wasmtime
from hostile_guests import CONTROL_BLOCK
from spear import wasm
from wasm_isolation import in_child


@pytest.fixture(scope="module")
def host_call_wasm(wasm_fixture: Callable[[str], Path]) -> str:
    return str(wasm_fixture("host_call"))


def upper(data: bytes) -> bytes:
    return data.upper()


def test_relay_returns_what_the_host_function_returns(host_call_wasm: str) -> None:
    module = wasm.load(host_call_wasm, host_functions={"transform": upper})
    with module.instantiate() as instance:
        assert instance.call("relay", b"abc") == b"ABC"
        assert instance.call("relay", b"") == b""
        big = bytes(range(256)) * 4096  # 1 MiB: larger than any first buffer
        assert instance.call("relay", big) == big.upper()


def test_config_returns_the_value_and_tells_absent_from_empty(host_call_wasm: str) -> None:
    module = wasm.load(host_call_wasm, config={"greeting": "hello", "empty": "",
                                               "long": "v" * 5000})
    with module.instantiate() as instance:
        assert instance.call("config", b"greeting") == b"hello"
        assert instance.call("config", b"empty") == b""
        assert instance.call("config", b"long") == b"v" * 5000
        with pytest.raises(spear.ExecutionFailed) as info:
            instance.call("config", b"absent")
        assert info.value.error_code == 404
        assert instance.config == {"greeting": "hello", "empty": "", "long": "v" * 5000}


def test_instance_bindings_merge_over_the_module_defaults(host_call_wasm: str) -> None:
    module = wasm.load(host_call_wasm, host_functions={"transform": upper},
                       config={"a": "module", "b": "module"})
    with module.instantiate(host_functions={"transform": lambda d: d[::-1]},
                            config={"b": "instance"}) as instance:
        assert instance.call("relay", b"abc") == b"cba"
        assert instance.call("config", b"a") == b"module"
        assert instance.call("config", b"b") == b"instance"
    with module.instantiate() as instance:
        assert instance.call("relay", b"abc") == b"ABC"


def test_a_raising_host_function_fails_the_call_with_its_message(host_call_wasm: str) -> None:
    def transform(data: bytes) -> bytes:
        if data == b"boom":
            raise ValueError("transform refused boom")
        return data.upper()

    with wasm.load(host_call_wasm).instantiate(host_functions={"transform": transform}) as inst:
        with pytest.raises(spear.ExecutionFailed, match="transform refused boom") as info:
            inst.call("relay", b"boom")
        assert info.value.code == "host_function" and info.value.error_code is None
        assert isinstance(info.value.__cause__, ValueError)
        assert inst.call("relay", b"next") == b"NEXT"  # the instance goes on
        assert inst.replacements == 0


def test_a_guest_that_handles_the_failure_succeeds(host_call_wasm: str) -> None:
    def transform(data: bytes) -> bytes:
        raise RuntimeError("nope")

    with wasm.load(host_call_wasm, host_functions={"transform": transform}).instantiate() as i:
        assert i.call("shout", b"x") == b"handled: nope"


@pytest.mark.parametrize("value, kind", [("text", "str"), (None, "NoneType"), (42, "int")])
def test_a_host_function_returning_a_non_bytes_value_fails_the_call(
    host_call_wasm: str, value: object, kind: str
) -> None:
    module = wasm.load(host_call_wasm, host_functions={"transform": lambda data: value})
    with module.instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed, match=f"returned {kind}, not bytes") as info:
            instance.call("relay", b"x")
        assert info.value.code == "host_function"


def test_bytes_like_results_are_accepted(host_call_wasm: str) -> None:
    module = wasm.load(host_call_wasm, host_functions={
        "transform": lambda data: memoryview(bytearray(data + b"!"))})
    with module.instantiate() as instance:
        assert instance.call("relay", b"x") == b"x!"


def test_a_huge_output_is_refused_at_the_instance_maximum(host_call_wasm: str) -> None:
    calls = []

    def transform(data: bytes) -> bytes:
        calls.append(data)
        return b"x" * (64 * 1024 + 1)

    module = wasm.load(host_call_wasm, host_functions={"transform": transform})
    with module.instantiate(max_message_size=64 * 1024) as instance:
        with pytest.raises(spear.ExecutionFailed, match="maximum message size") as info:
            instance.call("relay", b"x")
        assert info.value.code == "host_function"
        assert instance.memory_size < 4 << 20  # nothing of it reached the guest
    assert len(calls) == 1


def test_an_output_too_large_for_the_buffer_is_held_not_computed_again(
    host_call_wasm: str,
) -> None:
    calls = []

    def transform(data: bytes) -> bytes:
        calls.append(data)
        return data.upper()

    module = wasm.load(host_call_wasm, host_functions={"transform": transform})
    with module.instantiate() as instance:
        # rc -4 and the length; a second take with 2 bytes is still too small (-4), then the
        # whole result (8 bytes)
        assert instance.call("tiny", b"abcdefgh") == b"-4 8 -4 8 ABCDEFGH"
        assert len(calls) == 1
        # a result that fits is written at once; nothing is held after it
        assert instance.call("tiny", b"ab") == b"0 2 -8 AB"
        assert instance.call("twice", b"q") == b"Q|Q"
    assert len(calls) == 4


def test_unknown_host_function_names_are_a_defined_result(host_call_wasm: str) -> None:
    with wasm.load(host_call_wasm).instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed, match="no host function named transform") \
                as info:
            instance.call("relay", b"x")
        assert info.value.error_code == 404
        with pytest.raises(spear.ExecutionFailed) as info:
            instance.call("call", b"x", metadata={"function": "transformer"})
        assert info.value.error_code == 404


def test_names_are_looked_up_exactly(host_call_wasm: str) -> None:
    module = wasm.load(host_call_wasm, host_functions={"é": lambda d: b"accent",
                                                       "transform": upper})
    with module.instantiate() as instance:
        assert instance.call("call", b"x", metadata={"function": "é"}) == b"accent"
        with pytest.raises(spear.ExecutionFailed):
            instance.call("call", b"x", metadata={"function": "Transform"})


def test_a_host_function_calling_back_into_its_instance_is_refused_not_deadlocked(
    host_call_wasm: str,
) -> None:
    holder: list[wasm.WasmInstance] = []

    def transform(data: bytes) -> bytes:
        return holder[0].call("relay", data)

    module = wasm.load(host_call_wasm, host_functions={"transform": transform})
    with module.instantiate() as instance:
        holder.append(instance)
        with pytest.raises(spear.ExecutionFailed, match="re-entrant") as info:
            instance.call("relay", b"x", timeout=10.0)
        assert info.value.code == "host_function"
        cause = info.value.__cause__
        assert isinstance(cause, spear.ExecutionFailed) and cause.code == "reentrant"
        holder[0] = module.instantiate(host_functions={"transform": upper})
        assert instance.call("relay", b"other instance") == b"OTHER INSTANCE"
        holder[0].close()


def test_a_host_function_closing_its_own_instance_is_refused(host_call_wasm: str) -> None:
    holder: list[wasm.WasmInstance] = []

    def transform(data: bytes) -> bytes:
        holder[0].close()
        return data

    module = wasm.load(host_call_wasm, host_functions={"transform": transform})
    with module.instantiate() as instance:
        holder.append(instance)
        with pytest.raises(spear.ExecutionFailed, match="cannot be closed"):
            instance.call("relay", b"x")
        assert not instance.closed


def test_a_keyboard_interrupt_in_a_host_function_reaches_the_caller(host_call_wasm: str) -> None:
    def transform(data: bytes) -> bytes:
        if data == b"stop":
            raise KeyboardInterrupt
        return data

    module = wasm.load(host_call_wasm, host_functions={"transform": transform})
    with module.instantiate() as instance:
        with pytest.raises(KeyboardInterrupt):
            instance.call("relay", b"stop")
        assert instance.call("relay", b"on") == b"on"
        assert instance.replacements == 1


def test_host_functions_run_on_the_calling_thread(host_call_wasm: str) -> None:
    seen: list[int] = []

    def transform(data: bytes) -> bytes:
        seen.append(threading.get_ident())
        return data

    module = wasm.load(host_call_wasm, host_functions={"transform": transform})
    with module.instantiate() as instance:
        worker = threading.Thread(target=instance.call, args=("relay", b"x"))
        worker.start()
        worker.join()
        instance.call("relay", b"y")
    assert seen == [worker.ident, threading.get_ident()]


def test_an_async_host_function_works_through_the_synchronous_api(host_call_wasm: str) -> None:
    async def transform(data: bytes) -> bytes:
        await asyncio.sleep(0)
        return data[::-1]

    with wasm.load(host_call_wasm, host_functions={"transform": transform}).instantiate() as i:
        assert i.call("relay", b"abc") == b"cba"


def test_an_async_host_function_past_the_deadline_interrupts_the_call(
    host_call_wasm: str,
) -> None:
    cancelled = threading.Event()

    async def transform(data: bytes) -> bytes:
        if data == b"slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return data

    module = wasm.load(host_call_wasm, host_functions={"transform": transform})
    with module.instantiate() as instance:
        with pytest.raises(spear.Timeout):
            instance.call("relay", b"slow", timeout=0.2)
        assert cancelled.wait(10)
        assert instance.call("relay", b"fast", timeout=5.0) == b"fast"


def test_host_function_arguments_are_checked(host_call_wasm: str) -> None:
    with pytest.raises(TypeError, match="callable"):
        wasm.load(host_call_wasm, host_functions={"transform": b"not a function"})
    with pytest.raises(TypeError, match="mapping"):
        wasm.load(host_call_wasm, host_functions=[upper])
    with pytest.raises(spear.InvalidConfiguration, match="1 to 256 bytes"):
        wasm.load(host_call_wasm, host_functions={"": upper})
    with pytest.raises(spear.InvalidConfiguration, match="1 to 256 bytes"):
        wasm.load(host_call_wasm, host_functions={"x" * 257: upper})
    with pytest.raises(TypeError, match="str"):
        wasm.load(host_call_wasm, host_functions={b"transform": upper})

    async def coroutine(data: bytes) -> bytes:
        return data

    with pytest.raises(spear.InvalidConfiguration, match="inline_safe"):
        wasm.HostFunction(coroutine, inline_safe=True)


def test_config_is_bounded_and_checked(host_call_wasm: str) -> None:
    with pytest.raises(TypeError, match="str to str"):
        wasm.load(host_call_wasm, config={"a": 1})
    with pytest.raises(spear.InvalidConfiguration, match="1 to 1024 bytes"):
        wasm.load(host_call_wasm, config={"": "x"})
    with pytest.raises(spear.InvalidConfiguration, match="1 to 1024 bytes"):
        wasm.load(host_call_wasm, config={"k" * 1025: "x"})
    with pytest.raises(spear.InvalidConfiguration, match="more than 1048576"):
        wasm.load(host_call_wasm, config={"big": "v" * (1 << 20)})
    module = wasm.load(host_call_wasm, config={"a": "v" * (600 * 1024)})
    with pytest.raises(spear.InvalidConfiguration, match="more than 1048576"):
        module.instantiate(config={"b": "v" * (600 * 1024)})  # the merged whole is bounded


# ------------------------------------------------------------------ WAT guests


def guest(body: str, start: str = "") -> bytes:
    return bytes(wasmtime.wat2wasm(f"""
(module
  (import "spear" "host_call" (func $call (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "spear" "config_get" (func $config (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) {CONTROL_BLOCK})
  (data (i32.const 100) "transform")
  (func (export "spear_abi_version") (result i32) (i32.const 1))
  (func (export "spear_init") (param i32) (result i32) (i32.const 1024))
  (func (export "spear_reserve") (param i32) (result i32) (i32.const 1))
  (func $output (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 1088) (local.get $ptr))
    (i32.store (i32.const 1092) (local.get $len))
    (i32.const 0))
  {start}
  {body})
"""))


# Calls host function "transform" from its start function; handler `get` returns the result.
START_CALLS_TRANSFORM = guest(
    start="""
  (func $init
    (drop (call $call (i32.const 100) (i32.const 9) (i32.const 0) (i32.const 0)
                      (i32.const 300) (i32.const 64) (i32.const 296))))
  (start $init)""",
    body="""
  (func (export "spear.handler.get") (result i32)
    (call $output (i32.const 300) (i32.load (i32.const 296))))""")


def test_a_host_function_works_from_the_start_function_before_any_handler() -> None:
    seen = []

    def transform(data: bytes) -> bytes:
        seen.append(data)
        return b"from start"

    module = wasm.load(START_CALLS_TRANSFORM, host_functions={"transform": transform})
    with module.instantiate() as instance:
        assert instance.call("get", b"") == b"from start"
    assert len(seen) == 2  # the load's probe instance, then this one


def test_pointers_outside_memory_trap_the_guest_with_a_clear_message() -> None:
    source = guest(body="""
  (func (export "spear.handler.bad") (result i32)
    (drop (call $call (i32.const 100) (i32.const 9) (i32.const 0) (i32.const 0)
                      (i32.const 65000) (i32.const 4096) (i32.const 296)))
    (i32.const 0))
  (func (export "spear.handler.badkey") (result i32)
    (drop (call $config (i32.const -16) (i32.const 32) (i32.const 0) (i32.const 0)
                        (i32.const 296)))
    (i32.const 0))""")
    module = wasm.load(source, host_functions={"transform": upper})
    with module.instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed, match=r"spear\.host_call output: pointer out"):
            instance.call("bad", b"")
        with pytest.raises(spear.ExecutionFailed, match=r"spear\.config_get key: pointer out"):
            instance.call("badkey", b"")


def test_a_guest_built_for_a_newer_host_fails_to_load_naming_the_import() -> None:
    source = bytes(wasmtime.wat2wasm(f"""
(module
  (import "spear" "future_call" (func (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) {CONTROL_BLOCK})
  (func (export "spear_abi_version") (result i32) (i32.const 1))
  (func (export "spear_init") (param i32) (result i32) (i32.const 1024))
  (func (export "spear_reserve") (param i32) (result i32) (i32.const 1)))"""))
    with pytest.raises(spear.ExecutionFailed) as info:
        wasm.load(source)
    message = str(info.value)
    assert "spear.future_call" in message and "revision 2" in message
    assert "host_call" in message and info.value.code == "link_error"


def test_a_host_import_of_the_wrong_type_fails_to_load_saying_which() -> None:
    source = bytes(wasmtime.wat2wasm(f"""
(module
  (import "spear" "host_call" (func (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) {CONTROL_BLOCK})
  (func (export "spear_abi_version") (result i32) (i32.const 1))
  (func (export "spear_init") (param i32) (result i32) (i32.const 1024))
  (func (export "spear_reserve") (param i32) (result i32) (i32.const 1)))"""))
    with pytest.raises(spear.ExecutionFailed, match=r"spear.host_call must be imported as a "
                       r"function \(i32 i32 i32 i32 i32 i32 i32\) -> \(i32\)"):
        wasm.load(source)


@in_child
def test_both_call_paths_answer_host_calls_alike(call_path: str, host_call_wasm: str) -> None:
    def transform(data: bytes) -> bytes:
        if data == b"boom":
            raise ValueError("boom from python")
        return data.upper()

    module = wasm.load(host_call_wasm, host_functions={"transform": transform},
                       config={"k": "v"})
    with module.instantiate() as instance:
        assert instance.call("relay", b"abc") == b"ABC"
        with pytest.raises(spear.ExecutionFailed, match="boom from python") as info:
            instance.call("relay", b"boom")
        assert info.value.code == "host_function"
        assert isinstance(info.value.__cause__, ValueError)
        assert instance.call("tiny", b"abcdefgh") == b"-4 8 -4 8 ABCDEFGH"
        assert instance.call("config", b"k") == b"v"
        assert instance.call("relay", b"x" * 100_000) == b"X" * 100_000


# A guest whose spear_init grows memory and puts the control block and the request buffer in
# the new page: the host must look at memory as it is after spear_init.
GROWING_INIT = """
(module
  (memory (export "memory") 1)
  (func (export "spear_abi_version") (result i32) (i32.const 1))
  (func (export "spear_init") (param i32) (result i32)
    (drop (memory.grow (i32.const 2)))
    (i32.store (i32.const 65536) (i32.const 0x52455053))
    (i32.store (i32.const 65540) (i32.const 1))
    (i32.store (i32.const 65544) (i32.const 131072))
    (i32.store (i32.const 65548) (i32.const 65536))
    (i32.const 65536))
  (func (export "spear_reserve") (param i32) (result i32) (i32.const 1))
  (func (export "spear.handler.echo") (result i32)
    (i32.store (i32.const 65600) (i32.load (i32.const 65568)))
    (i32.store (i32.const 65604) (i32.load (i32.const 65572)))
    (i32.const 0)))
"""


@in_child
def test_a_guest_whose_init_grows_memory_loads_and_answers(call_path: str) -> None:
    module = wasm.load(bytes(wasmtime.wat2wasm(GROWING_INIT)))
    with module.instantiate() as instance:
        assert instance.memory_size == 3 * 65536
        assert instance.call("echo", b"in the grown page") == b"in the grown page"
        assert instance.call("echo", b"x" * 60000) == b"x" * 60000
