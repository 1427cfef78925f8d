"""WASI commands compiled from plain C (wasi-libc) and plain Rust (`fn main`), with no spear
SDK, run as functions: wasm_fixtures/commands/env_stdin.{c,rs}.

C is built with zig's clang from the `ziglang` package (`--target=wasm32-wasi`), Rust with a
rustc that has the wasm32-wasi standard library; a missing toolchain skips its tests (fails
them in CI, where SPEAR_REQUIRE_TOOLCHAINS=1).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import spear
from conftest import toolchains_required
from spear import wasm

pytestmark = pytest.mark.timeout(300)

COMMANDS = Path(__file__).resolve().parents[1] / "wasm_fixtures" / "commands"


def _missing(why: str) -> None:
    if toolchains_required():
        pytest.fail(why)
    pytest.skip(why)


def _build_c(out: Path) -> Path:
    try:
        import ziglang  # noqa: F401
    except ModuleNotFoundError:
        _missing("the ziglang package is not installed")
    target = out / "env_stdin.c.wasm"
    done = subprocess.run(
        [sys.executable, "-m", "ziglang", "cc", "--target=wasm32-wasi", "-O2", "-s",
         str(COMMANDS / "env_stdin.c"), "-o", str(target)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "ZIG_LOCAL_CACHE_DIR": str(out / "zig-local-cache")})
    assert done.returncode == 0, done.stderr
    return target


def _rustc_with_wasi() -> str | None:
    for rustc in (os.environ.get("SPEAR_GUEST_RUSTC"), shutil.which("rustc"), "/usr/bin/rustc"):
        if not rustc or not Path(rustc).exists():
            continue
        sysroot = subprocess.run([rustc, "--print", "sysroot"], capture_output=True,
                                 text=True).stdout.strip()
        if (Path(sysroot) / "lib" / "rustlib" / "wasm32-wasi").is_dir():
            return rustc
    return None


def _build_rust(out: Path) -> Path:
    rustc = _rustc_with_wasi()
    if rustc is None:
        _missing("no rustc with the wasm32-wasi standard library")
    target = out / "env_stdin.rs.wasm"
    done = subprocess.run(
        [rustc, "--edition", "2021", "--target", "wasm32-wasi", "-O", "-C", "debuginfo=0",
         "-C", "strip=debuginfo", str(COMMANDS / "env_stdin.rs"), "-o", str(target)],
        capture_output=True, text=True, timeout=600, cwd=out)
    assert done.returncode == 0, done.stderr
    return target


@pytest.fixture(scope="module", params=["c", "rust"])
def command_wasm(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(f"command-{request.param}")
    return _build_c(out) if request.param == "c" else _build_rust(out)


def test_a_compiled_command_returns_its_environment_and_stdin(command_wasm: Path) -> None:
    module = wasm.load(command_wasm, wasi=wasm.WasiConfig(env={"GREETING": "hi"}))
    assert wasm.describe(command_wasm).kind == "wasi_command"
    with module.instantiate() as instance:
        assert instance.call("_start", b"line one\nline two") == (
            b"GREETING=hi\nline one\nline two")
        big = bytes(range(256)) * 4096
        assert instance.call("_start", big) == b"GREETING=hi\n" + big


def test_a_compiled_command_exit_code_3_raises_execution_failed_naming_it(
    command_wasm: Path,
) -> None:
    module = wasm.load(command_wasm, wasi=wasm.WasiConfig(env={"EXIT": "3"}))
    with module.instantiate() as instance, pytest.raises(spear.ExecutionFailed) as info:
        instance.call("_start", b"")
    assert "exited with code 3" in str(info.value) and "exiting with 3" in str(info.value)
    assert info.value.error_code == 3 and info.value.code == "exit:3"
    zero = wasm.load(command_wasm, wasi=wasm.WasiConfig(env={"EXIT": "0"}))
    with zero.instantiate() as instance:
        assert instance.call("_start", b"ok") == b"EXIT=0\nok"


def _files_command(tmp_path: Path, **wasi: object) -> tuple[wasm.WasmModule, Path]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from the host\n")
    return wasm.load(_build_c(tmp_path), **wasi), data  # type: ignore[arg-type]


def test_a_preopened_directory_is_read_only_unless_granted(tmp_path: Path) -> None:
    module, data = _files_command(tmp_path)
    read_only = wasm.WasiConfig(args=["files"], preopens={"/data": str(data)})
    with module.instantiate(wasi=read_only) as instance:
        output = instance.call("_start", b"").decode()
    assert "read: from the host" in output
    assert "write refused" in output and not (data / "out.txt").exists()
    writable = wasm.WasiConfig(args=["files"], preopens={"/data": str(data)}, read_only=False)
    with module.instantiate(wasi=writable) as instance:
        assert "write ok" in instance.call("_start", b"").decode()
    assert (data / "out.txt").read_text() == "written by the guest\n"


def test_without_preopens_a_command_sees_no_files(tmp_path: Path) -> None:
    module, _ = _files_command(tmp_path)
    with module.instantiate(wasi=wasm.WasiConfig(args=["files"])) as instance:
        output = instance.call("_start", b"").decode()
    assert "read refused" in output and "write refused" in output


def test_spear_run_runs_a_compiled_command(command_wasm: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "spear.cli.main", "run", str(command_wasm), "--env", "A=1",
         "--input-file", "-"], input=b"piped", capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"A=1\npiped"
    failed = subprocess.run(
        [sys.executable, "-m", "spear.cli.main", "run", str(command_wasm), "--env", "EXIT=3"],
        capture_output=True, timeout=120)
    assert failed.returncode == 3
    assert b"exited with code 3" in failed.stderr
