"""`spear run` and `spear inspect`, run as real subprocesses on real guest modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

Fixture = Callable[[str], Path]


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = dict(os.environ)
    env["SPEAR_CACHE_DIR"] = str(tmp_path_factory.mktemp("cli-cache") / "modules")
    env.pop("SPEAR_NO_MODULE_CACHE", None)
    env["PYTHONIOENCODING"] = "utf-8"
    return env


@pytest.fixture(scope="module")
def spear_cli(cli_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[bytes]]:
    def run(*args: str | Path, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "spear.cli.main", *map(str, args)],
            capture_output=True, env=cli_env, timeout=timeout, check=False,
        )

    return run


Cli = Callable[..., subprocess.CompletedProcess[bytes]]


def assert_one_error_line(done: subprocess.CompletedProcess[bytes], *fragments: str) -> str:
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 1, (done.returncode, stderr)
    assert done.stdout == b""
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one error line, got: {stderr!r}"
    assert lines[0].startswith("spear: error:"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


# ------------------------------------------------------------------ spear run


def test_run_prints_the_output_and_exits_0(spear_cli: Cli, echo_wasm: Path) -> None:
    done = spear_cli("run", echo_wasm, "--function", "echo", "--input", "hello, wörld")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello, wörld".encode()
    assert done.stderr == b""


def test_run_short_options_and_other_handlers(spear_cli: Cli, wasm_fixture: Fixture) -> None:
    done = spear_cli("run", wasm_fixture("multi"), "-f", "upper", "-i", "shout")
    assert (done.returncode, done.stdout) == (0, b"SHOUT")


def test_run_reads_binary_input_from_a_file(
    spear_cli: Cli, echo_wasm: Path, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 1024  # 256 KiB, every byte value
    source = tmp_path / "input.bin"
    source.write_bytes(data)
    done = spear_cli("run", echo_wasm, "--function", "echo", "--input-file", source)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data


def test_run_passes_metadata_pairs(spear_cli: Cli, wasm_fixture: Fixture) -> None:
    done = spear_cli("run", wasm_fixture("metadata"), "-f", "dump",
                     "--meta", "user=alice", "--meta", "expr=a=b", "--meta", "ключ=值")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "user=alice\nexpr=a=b\nключ=值\n".encode()
    done = spear_cli("run", wasm_fixture("metadata"), "-f", "get", "-i", "user",
                     "--meta", "user=alice")
    assert done.stdout == b"alice"


def test_run_with_malformed_metadata_is_one_error_line(
    spear_cli: Cli, wasm_fixture: Fixture
) -> None:
    done = spear_cli("run", wasm_fixture("metadata"), "-f", "dump", "--meta", "novalue")
    assert_one_error_line(done, "KEY=VALUE")


def test_run_a_missing_module_file_is_one_error_line(spear_cli: Cli, tmp_path: Path) -> None:
    done = spear_cli("run", tmp_path / "absent.wasm", "-f", "echo", "-i", "x")
    assert_one_error_line(done, "absent.wasm")


def test_run_a_missing_input_file_is_one_error_line(
    spear_cli: Cli, echo_wasm: Path, tmp_path: Path
) -> None:
    done = spear_cli("run", echo_wasm, "-f", "echo", "--input-file", tmp_path / "nope.bin")
    assert_one_error_line(done, "nope.bin")


def test_run_a_missing_handler_is_one_error_line(spear_cli: Cli, echo_wasm: Path) -> None:
    done = spear_cli("run", echo_wasm, "-f", "nope", "-i", "x")
    assert_one_error_line(done, "nope", "echo")


def test_run_a_trapping_handler_is_one_error_line(spear_cli: Cli, wasm_fixture: Fixture) -> None:
    done = spear_cli("run", wasm_fixture("trap"), "-f", "oob")
    assert_one_error_line(done, "out of bounds")


def test_run_an_application_error_is_one_error_line(
    spear_cli: Cli, wasm_fixture: Fixture
) -> None:
    done = spear_cli("run", wasm_fixture("multi"), "-f", "fail", "-i", "boom")
    assert_one_error_line(done, "failed on purpose: boom")


def test_run_a_spinning_handler_times_out_as_one_error_line(
    spear_cli: Cli, wasm_fixture: Fixture
) -> None:
    started = time.monotonic()
    done = spear_cli("run", wasm_fixture("spin"), "-f", "spin", "--timeout", "0.2")
    assert time.monotonic() - started < 10
    assert_one_error_line(done, "spin", "0.2")


def test_run_with_fuel_and_memory_limits(spear_cli: Cli, wasm_fixture: Fixture) -> None:
    done = spear_cli("run", wasm_fixture("spin"), "-f", "spin", "--fuel", "100000")
    assert_one_error_line(done, "fuel")
    done = spear_cli("run", wasm_fixture("memory_hog"), "-f", "grow",
                     "--memory-limit", str(8 << 20))
    line = assert_one_error_line(done, "out of memory after")
    pages = int(line.split("after ")[1].split()[0])
    assert pages * 65536 <= 8 << 20


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"just text, not wasm", "not a WebAssembly module"),
        (b"\0asm\x01\0\0\0\xff\xff garbage", "invalid WebAssembly module"),
    ],
    ids=["not-wasm", "corrupt-wasm"],
)
def test_run_an_invalid_module_is_one_error_line(
    spear_cli: Cli, tmp_path: Path, content: bytes, fragment: str
) -> None:
    module = tmp_path / "bad.wasm"
    module.write_bytes(content)
    done = spear_cli("run", module, "-f", "echo", "-i", "x")
    assert_one_error_line(done, fragment)


def test_run_a_module_with_another_abi_is_one_error_line(
    spear_cli: Cli, wasm_fixture: Fixture
) -> None:
    done = spear_cli("run", wasm_fixture("bad_abi"), "-f", "echo", "-i", "x")
    assert_one_error_line(done, "ABI v99")


# ------------------------------------------------------------------ spear inspect


def test_inspect_lists_handlers_and_abi_version(spear_cli: Cli, wasm_fixture: Fixture) -> None:
    done = spear_cli("inspect", wasm_fixture("multi"))
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert "abi version: 1" in text
    handlers_line = next(line for line in text.splitlines() if line.startswith("handlers:"))
    assert handlers_line.split(":", 1)[1].strip() == "fail, length, reverse, upper"


def test_inspect_json_is_machine_readable(spear_cli: Cli, wasm_fixture: Fixture) -> None:
    path = wasm_fixture("trap")
    done = spear_cli("inspect", "--json", path)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["abi_version"] == 1
    assert info["handlers"] == ["divide", "echo", "oob", "unreachable"]
    assert info["dispatch"] is False
    assert len(info["sha256"]) == 64


def test_inspect_describes_a_plain_module_too(spear_cli: Cli, tmp_path: Path) -> None:
    import wasmtime

    module = tmp_path / "plain.wasm"
    module.write_bytes(wasmtime.wat2wasm(
        '(module (import "env" "f" (func (param i32) (result i64)))'
        ' (memory (export "memory") 1 3))'))
    done = spear_cli("inspect", module)
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert "kind:        plain module" in text
    assert "env.f" in text and "(i32) -> (i64)" in text
    assert "at least 1 pages (64 KiB), at most 3 pages (192 KiB)" in text
    info = json.loads(spear_cli("inspect", module, "--json").stdout)
    assert info["kind"] == "plain" and info["abi_version"] is None and info["handlers"] == []
    assert info["memories"][0]["max_bytes"] == 3 * 65536
    assert info["imports"] == [{"module": "env", "name": "f", "kind": "func",
                                "type": "(i32) -> (i64)"}]


def test_inspect_of_a_spear_guest_that_fails_to_load_describes_it_and_says_why(
    spear_cli: Cli, tmp_path: Path
) -> None:
    import wasmtime

    module = tmp_path / "half.wasm"
    module.write_bytes(wasmtime.wat2wasm(
        '(module (memory (export "memory") 1)'
        ' (func (export "spear_abi_version") (result i32) (i32.const 1)))'))
    done = spear_cli("inspect", module)
    assert done.returncode == 1
    assert "kind:        spear ABI" in done.stdout.decode()
    (line,) = done.stderr.decode().splitlines()
    assert line.startswith("spear: error:") and "not a spear guest" in line
    assert "spear_init" in line


# ------------------------------------------------------------------ WASI commands, config


@pytest.fixture(scope="module")
def command_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import wasi_commands

    path = tmp_path_factory.mktemp("commands") / "tool.wasm"
    path.write_bytes(wasi_commands.ENV_AND_STDIN)
    return path


def test_run_calls_a_wasi_command_with_its_input_as_stdin(spear_cli: Cli,
                                                          command_file: Path) -> None:
    done = spear_cli("run", command_file, "--env", "A=1", "--env", "B=two=2", "-i", "in")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"A=1\nB=two=2\nin"


def test_run_exits_with_the_command_exit_status(spear_cli: Cli, command_file: Path) -> None:
    done = spear_cli("run", command_file, "--arg", "x", "--arg", "y", "--arg", "z")
    assert done.returncode == 3
    assert done.stdout == b""
    assert b"exited with code 3" in done.stderr and b"failing" in done.stderr


def test_run_needs_a_function_for_a_spear_guest(spear_cli: Cli, echo_wasm: Path) -> None:
    done = spear_cli("run", echo_wasm, "-i", "x")
    assert_one_error_line(done, "--function is required", "echo")


def test_run_passes_configuration(spear_cli: Cli, wasm_fixture: Fixture) -> None:
    done = spear_cli("run", wasm_fixture("host_call"), "-f", "config", "-i", "who",
                     "--config", "who=the cli")
    assert (done.returncode, done.stdout) == (0, b"the cli")


def test_run_preopens_directories(spear_cli: Cli, tmp_path: Path) -> None:
    import wasi_commands

    path = tmp_path / "preopens.wasm"
    path.write_bytes(wasi_commands.PREOPENS)
    done = spear_cli("run", path, "--dir", f"/data={tmp_path}", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"/data\n{tmp_path}\n".encode()
    missing = spear_cli("run", path, "--dir", str(tmp_path / "nope"))
    assert_one_error_line(missing, "does not exist")


def test_inspect_describes_a_wasi_command(spear_cli: Cli, command_file: Path) -> None:
    done = spear_cli("inspect", command_file)
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert "kind:        WASI command" in text and "handlers:    _start" in text
    assert "wasi_snapshot_preview1.fd_read" in text and "wasi:        yes" in text
    info = json.loads(spear_cli("inspect", command_file, "--json").stdout)
    assert info["kind"] == "wasi_command" and info["handlers"] == ["_start"]
    assert info["uses_wasi"] is True and info["problem"] is None


def test_inspect_of_a_spear_guest_lists_imports_and_memory(spear_cli: Cli,
                                                           wasm_fixture: Fixture) -> None:
    done = spear_cli("inspect", wasm_fixture("host_call"))
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert "kind:        spear ABI v1" in text
    assert "spear.host_call" in text and "(i32 i32 i32 i32 i32 i32 i32) -> (i32)" in text
    assert "memory:      memory (exported): at least" in text
