"""Any WASI command is a function: `call("_start", input)` runs it with input as stdin.

Commands here are hand-written WAT (tests/wasi_commands.py) using only `_start` and WASI
preview 1, as a compiler's WASI target would emit them; tests/test_wasi_commands_compiled.py
runs commands compiled from plain C and Rust.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import spear
import wasi_commands as cmd
from spear import wasm
from spear.instance_id import RuntimeType
from spear.invocation.function_spec import FunctionSpec
from spear.invocation.spearlet import Spearlet
from spear.messages import ExecutionRequest, ExecutionStatus
from spear.runtime.wasm import WasmRuntime


def test_a_command_returns_its_environment_and_stdin_as_output() -> None:
    module = wasm.load(cmd.ENV_AND_STDIN, wasi=wasm.WasiConfig(env={"GREETING": "hi",
                                                                     "EMPTY": ""}))
    assert module.kind == "wasi_command"
    assert module.handlers == ["_start"] and module.abi_version is None
    with module.instantiate() as instance:
        assert instance.call("_start", b"from stdin") == b"GREETING=hi\nEMPTY=\nfrom stdin"
        assert instance.call("_start", b"") == b"GREETING=hi\nEMPTY=\n"


def test_a_command_sees_no_environment_unless_granted() -> None:
    with wasm.load(cmd.ENV_AND_STDIN).instantiate() as instance:
        assert instance.call("_start", b"only stdin") == b"only stdin"


def test_a_non_zero_exit_raises_execution_failed_naming_the_code_and_stderr() -> None:
    module = wasm.load(cmd.ENV_AND_STDIN, wasi=wasm.WasiConfig(args=["a", "b", "c"]))
    with module.instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed) as info:
            instance.call("_start", b"x")
        assert "exited with code 3" in str(info.value)
        assert "failing" in str(info.value)  # the end of its stderr
        assert info.value.code == "exit:3" and info.value.error_code == 3
        # the instance is as good as new: every call is a fresh run
        with pytest.raises(spear.ExecutionFailed, match="code 3"):
            instance.call("_start", b"y")


def test_proc_exit_zero_is_success_with_what_was_written_before_it() -> None:
    with wasm.load(cmd.EXIT_ZERO).instantiate() as instance:
        assert instance.call("_start", b"") == b"before"


def test_every_call_runs_in_a_fresh_instance() -> None:
    with wasm.load(cmd.RUNS).instantiate() as instance:
        assert [instance.call("_start", b"") for _ in range(3)] == [b"1", b"1", b"1"]
        assert instance.call_count == 3 and instance.memory_size == 0


def test_arguments_follow_the_module_name() -> None:
    module = wasm.load(cmd.ARGS, wasi=wasm.WasiConfig(args=["--flag", "two words"]))
    with module.instantiate() as instance:
        assert instance.call("_start", b"") == b"module\n--flag\ntwo words\n"
    named = wasm.WasmHost().load(cmd.ARGS, name="tool")
    with named.instantiate() as instance:
        assert instance.call("_start", b"") == b"tool\n"
    named.host.close()


def test_a_spinning_command_is_interrupted_at_the_deadline_and_the_next_call_works() -> None:
    with wasm.load(cmd.SPIN).instantiate() as instance, pytest.raises(spear.Timeout):
        instance.call("_start", b"", timeout=0.2)
    with wasm.load(cmd.RUNS).instantiate() as instance:
        assert instance.call("_start", b"", timeout=5.0) == b"1"


def test_a_trapping_command_fails_with_the_trap_and_the_end_of_stderr() -> None:
    with wasm.load(cmd.TRAP).instantiate() as instance:
        for _ in range(2):
            with pytest.raises(spear.ExecutionFailed) as info:
                instance.call("_start", b"")
            assert info.value.code == "trap:unreachable"
            assert "about to trap" in str(info.value)


def test_stdout_is_bounded_by_the_maximum_message_size() -> None:
    with wasm.load(cmd.FLOOD).instantiate(max_message_size=1 << 20) as instance:
        with pytest.raises(spear.ExecutionFailed) as info:
            instance.call("_start", b"")
        assert info.value.code == "too_large" and "stdout" in str(info.value)


def test_stdin_larger_than_the_maximum_message_size_is_refused_before_running() -> None:
    with wasm.load(cmd.RUNS).instantiate(max_message_size=1024) as instance:
        with pytest.raises(spear.ExecutionFailed) as info:
            instance.call("_start", b"x" * 1025)
        assert info.value.code == "too_large"
        assert instance.call("_start", b"x" * 1000) == b"1"


def test_a_command_runs_within_its_memory_limit_and_fuel() -> None:
    with wasm.load(cmd.GROW, memory_limit=1 << 20).instantiate() as instance:
        assert instance.call("_start", b"") == b"refused"
    with wasm.load(cmd.SPIN, fuel=100_000).instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed) as info:
            instance.call("_start", b"")
        assert info.value.code == "trap:out_of_fuel"


def test_a_command_has_one_function() -> None:
    with wasm.load(cmd.RUNS).instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed) as info:
            instance.call("main", b"")
        assert info.value.code == "no_such_handler" and "_start" in str(info.value)


def test_wasi_stdin_does_not_apply_to_a_command() -> None:
    module = wasm.load(cmd.RUNS)
    with pytest.raises(spear.InvalidConfiguration, match="stdin"):
        module.instantiate(wasi=wasm.WasiConfig(stdin=b"x"))


def test_a_command_can_call_python_host_functions() -> None:
    module = wasm.load(cmd.HOST_CALL, host_functions={"transform": bytes.upper})
    with module.instantiate() as instance:
        assert instance.call("_start", b"shout") == b"SHOUT"


def test_a_command_stderr_is_logged_under_the_function_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    module = wasm.load(cmd.ENV_AND_STDIN, wasi=wasm.WasiConfig(args=["x"]))
    with (caplog.at_level(logging.WARNING, logger="spear.guest"),
          module.instantiate(label="tool-1") as instance,
          pytest.raises(spear.ExecutionFailed)):
        instance.call("_start", b"")
    (record,) = [r for r in caplog.records if r.getMessage() == "failing"]
    assert record.handler == "_start" and record.instance == "tool-1"  # type: ignore[attr-defined]
    assert record.stream == "stderr"  # type: ignore[attr-defined]
    discarded = wasm.load(cmd.ENV_AND_STDIN, wasi=wasm.WasiConfig(args=["x"], stderr="discard"))
    caplog.clear()
    with (caplog.at_level(logging.WARNING, logger="spear.guest"),
          discarded.instantiate() as instance,
          pytest.raises(spear.ExecutionFailed) as info):
        instance.call("_start", b"")
    assert "failing" in str(info.value)  # still in the error
    assert not [r for r in caplog.records if r.getMessage() == "failing"]


# ------------------------------------------------------------------ kinds


def test_describe_tells_every_kind_apart(echo_wasm: Path) -> None:
    assert wasm.describe(echo_wasm).kind == "spear"
    assert wasm.describe(cmd.RUNS).kind == "wasi_command"
    assert wasm.describe(cmd.REACTOR).kind == "wasi_reactor"
    plain = wasm.describe(cmd.PLAIN)
    assert plain.kind == "plain" and plain.imports == ()
    assert [(e.name, e.kind, e.type) for e in plain.exports] == [
        ("memory", "memory", "1..4 pages"), ("add", "func", "(i32 i32) -> (i32)")]
    (memory,) = plain.memories
    assert (memory.min_bytes, memory.max_bytes) == (65536, 4 * 65536)
    assert wasm.describe(cmd.RUNS).uses_wasi


@pytest.mark.parametrize("source, kind", [(cmd.REACTOR, "WASI reactor"),
                                          (cmd.PLAIN, "plain module")])
def test_modules_spear_cannot_call_are_refused_saying_what_they_are(source: bytes,
                                                                    kind: str) -> None:
    with pytest.raises(spear.ExecutionFailed) as info:
        wasm.load(source)
    assert kind in str(info.value) and info.value.code == "invalid_module"


def test_a_command_whose_start_has_the_wrong_type_is_refused() -> None:
    with pytest.raises(spear.ExecutionFailed, match="_start") as info:
        wasm.load(cmd.BAD_START)
    assert info.value.code == "abi"


# ------------------------------------------------------------------ every runtime path


async def test_wasm_runtime_runs_a_command_through_its_channel() -> None:
    runtime = WasmRuntime()
    instance = await runtime.start_instance(
        "cmd", artifact=cmd.ENV_AND_STDIN, wasi=wasm.WasiConfig(env={"A": "1"}))
    try:
        response = await instance.channel.request_response(
            ExecutionRequest("r1", "_start", b"in"))
        assert response.status is ExecutionStatus.SUCCESS  # type: ignore[attr-defined]
        assert response.output_data == b"A=1\nin"  # type: ignore[attr-defined]
        assert instance.channel.dispatch == "auto"
        many = await asyncio.gather(*(instance.channel.request_response(
            ExecutionRequest(f"r{i}", "_start", b"%d" % i)) for i in range(5)))
        assert [m.output_data for m in many] == [b"A=1\n%d" % i  # type: ignore[attr-defined]
                                                 for i in range(5)]
    finally:
        await runtime.close()


async def test_a_spearlet_deploys_a_command_under_the_function_name(tmp_path: Path) -> None:
    path = tmp_path / "hello.wasm"
    path.write_bytes(cmd.ENV_AND_STDIN)
    async with Spearlet() as spearlet:
        await spearlet.deploy(FunctionSpec("hello", RuntimeType.WASM, artifact=str(path),
                                           wasi=wasm.WasiConfig(env={"WHO": "spearlet"})))
        response = await spearlet.invoke("hello", b"stdin")
        assert response.output_data == b"WHO=spearlet\nstdin"
        failing = FunctionSpec("failing", RuntimeType.WASM, artifact=str(path),
                               wasi=wasm.WasiConfig(args=["1", "2", "3"]))
        await spearlet.deploy(failing)
        failed = await spearlet.invoke("failing", b"")
        assert failed.status is ExecutionStatus.ERROR and failed.error_code == "exit:3"
        assert "exited with code 3" in (failed.error_message or "")
