"""WASI preview 1 for guests built against wasi-libc: linked, and sandboxed."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import spear
import wasmtime
from spear import wasm

# A minimal ABI v1 guest (control block at 1024) that calls WASI functions.
WASI_GUEST = r"""
(module
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
          (func $env_sizes (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "SPER\01\00\00\00\00\08\00\00\00\10\00\00")
  (data (i32.const 300) "wasi-guest-wrote-this\n")
  (func (export "spear_abi_version") (result i32) (i32.const 1))
  (func (export "spear_init") (param i32) (result i32) (i32.const 1024))
  (func (export "spear_reserve") (param i32) (result i32) (i32.const 1))
  (func $output (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 1088) (local.get $ptr))
    (i32.store (i32.const 1092) (local.get $len))
    (i32.const 0))
  (func (export "spear.handler.random") (result i32)
    (drop (call $random (i32.const 100) (i32.const 16)))
    (call $output (i32.const 100) (i32.const 16)))
  ;; write to fd N (the input's first byte), answer the errno as 4 bytes
  (func (export "spear.handler.write") (result i32)
    (i32.store (i32.const 200) (i32.const 300))
    (i32.store (i32.const 204) (i32.const 22))
    (i32.store (i32.const 208)
      (call $fd_write (i32.load8_u (i32.load (i32.const 1056)))
                      (i32.const 200) (i32.const 1) (i32.const 212)))
    (call $output (i32.const 208) (i32.const 4)))
  ;; how many environment variables the guest sees, as 4 bytes
  (func (export "spear.handler.environ") (result i32)
    (drop (call $env_sizes (i32.const 220) (i32.const 224)))
    (call $output (i32.const 220) (i32.const 4)))
)
"""


def wasi_module() -> wasm.WasmModule:
    return wasm.load(bytes(wasmtime.wat2wasm(WASI_GUEST)))


def test_a_guest_importing_wasi_links_and_gets_randomness() -> None:
    module = wasi_module()
    assert module.uses_wasi
    with module.instantiate() as instance:
        first, second = instance.call("random", b""), instance.call("random", b"")
    assert len(first) == 16 and first != second


def test_a_wasi_guest_sees_no_environment() -> None:
    with wasi_module().instantiate() as instance:
        assert int.from_bytes(instance.call("environ", b""), "little") == 0


def test_guest_stdout_is_discarded_and_stderr_reaches_the_host() -> None:
    # Run in a child so we can read the host process's own stdout and stderr.
    script = textwrap.dedent(f"""
        import wasmtime
        from spear import wasm
        module = wasm.load(bytes(wasmtime.wat2wasm({WASI_GUEST!r})))
        with module.instantiate() as instance:
            for fd in (1, 2):
                errno = int.from_bytes(instance.call("write", bytes([fd])), "little")
                assert errno == 0, errno
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "wasi-guest-wrote-this" not in done.stdout
    assert "wasi-guest-wrote-this" in done.stderr


def test_a_module_without_wasi_imports_gets_no_wasi_context(echo_wasm: object) -> None:
    assert not wasm.load(echo_wasm).uses_wasi  # type: ignore[arg-type]


# ------------------------------------------------------------------ WasiConfig

READER_GUEST = r"""
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
          (func $env_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $env_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 1024) "SPER\01\00\00\00\00\08\00\00\00\10\00\00")
  (data (i32.const 300) "line one\nline two\npartial")
  (func (export "spear_abi_version") (result i32) (i32.const 1))
  (func (export "spear_init") (param i32) (result i32) (i32.const 1024))
  (func (export "spear_reserve") (param i32) (result i32) (i32.const 1))
  (func $output (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 1088) (local.get $ptr))
    (i32.store (i32.const 1092) (local.get $len))
    (i32.const 0))
  ;; the environment, as environ_get lays it out ("K=V\0...")
  (func (export "spear.handler.env") (result i32)
    (drop (call $env_sizes (i32.const 16) (i32.const 20)))
    (drop (call $env_get (i32.const 8192) (i32.const 12288)))
    (call $output (i32.const 12288) (i32.load (i32.const 20))))
  ;; up to 4 KiB of stdin
  (func (export "spear.handler.stdin") (result i32)
    (i32.store (i32.const 32) (i32.const 16384))
    (i32.store (i32.const 36) (i32.const 4096))
    (drop (call $fd_read (i32.const 0) (i32.const 32) (i32.const 1) (i32.const 40)))
    (call $output (i32.const 16384) (i32.load (i32.const 40))))
  ;; two and a half lines to stdout
  (func (export "spear.handler.print") (result i32)
    (i32.store (i32.const 32) (i32.const 300))
    (i32.store (i32.const 36) (i32.const 25))
    (drop (call $fd_write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 40)))
    (call $output (i32.const 0) (i32.const 0)))
  ;; whether descriptor 3 is a preopened directory (its errno, 4 bytes)
  (func (export "spear.handler.prestat") (result i32)
    (i32.store (i32.const 48) (call $prestat (i32.const 3) (i32.const 56)))
    (call $output (i32.const 48) (i32.const 4)))
)
"""


def reader(**wasi: object) -> wasm.WasmInstance:
    module = wasm.load(bytes(wasmtime.wat2wasm(READER_GUEST)))
    return module.instantiate(wasi=wasm.WasiConfig(**wasi))  # type: ignore[arg-type]


def test_wasi_env_and_stdin_reach_a_spear_guest() -> None:
    with reader(env={"A": "1", "B": ""}, stdin=b"static stdin") as instance:
        assert instance.call("env", b"") == b"A=1\0B=\0"
        assert instance.call("stdin", b"") == b"static stdin"
        assert instance.call("stdin", b"") == b""  # read once: at end of file now
    with reader() as instance:
        assert instance.call("env", b"") == b""
        assert instance.call("stdin", b"") == b""


def test_wasi_stdout_can_be_logged_under_the_function_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="spear.guest"), reader(stdout="log") as instance:
        instance.call("print", b"")
    lines = [r for r in caplog.records if getattr(r, "stream", None) == "stdout"]
    assert [r.getMessage() for r in lines] == ["line one", "line two", "partial"]
    assert {r.handler for r in lines[:2]} == {"print"}  # type: ignore[attr-defined]
    assert all(r.levelno == logging.INFO for r in lines)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="spear.guest"), reader() as instance:
        instance.call("print", b"")  # stdout is discarded by default
    assert not [r for r in caplog.records if getattr(r, "stream", None) == "stdout"]


def test_a_preopened_directory_is_visible_only_when_granted(tmp_path: Path) -> None:
    with reader(preopens={"/data": str(tmp_path)}) as instance:
        assert int.from_bytes(instance.call("prestat", b""), "little") == 0
    with reader() as instance:
        assert int.from_bytes(instance.call("prestat", b""), "little") == 8  # EBADF


def test_preopen_paths_are_checked_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(spear.InvalidConfiguration, match="does not exist"):
        wasm.WasiConfig(preopens={"/d": str(tmp_path / "missing")})
    with pytest.raises(spear.InvalidConfiguration, match="not a directory"):
        wasm.WasiConfig(preopens={"/d": str(tmp_path / "file")})
    with pytest.raises(spear.InvalidConfiguration, match="relative"):
        wasm.WasiConfig(preopens={"/d": "some/dir"})
    with pytest.raises(spear.InvalidConfiguration, match="must not be empty"):
        wasm.WasiConfig(preopens={"": str(tmp_path)})
    with pytest.raises(TypeError, match="path"):
        wasm.WasiConfig(preopens={"/d": 3})  # type: ignore[dict-item]
    assert wasm.WasiConfig(preopens={"/d": tmp_path}).preopens == {"/d": str(tmp_path)}


def test_wasi_options_are_checked() -> None:
    with pytest.raises(spear.InvalidConfiguration, match="'='"):
        wasm.WasiConfig(env={"A=B": "x"})
    with pytest.raises(spear.InvalidConfiguration, match="NUL"):
        wasm.WasiConfig(env={"A": "x\0y"})
    with pytest.raises(TypeError, match="sequence of str"):
        wasm.WasiConfig(args="one string")  # type: ignore[arg-type]
    with pytest.raises(spear.InvalidConfiguration, match="NUL"):
        wasm.WasiConfig(args=["a\0"])
    with pytest.raises(spear.InvalidConfiguration, match="'log' or 'discard'"):
        wasm.WasiConfig(stdout="capture")  # type: ignore[arg-type]
    with pytest.raises(spear.InvalidConfiguration, match="more than"):
        wasm.WasiConfig(env={"BIG": "x" * (1 << 20)})
    with pytest.raises(spear.InvalidConfiguration, match="more than"):
        wasm.WasiConfig(stdin=b"x" * (64 * 1024 * 1024 + 1))
    with pytest.raises(TypeError, match="bool"):
        wasm.WasiConfig(read_only=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="WasiConfig"):
        wasm.load(bytes(wasmtime.wat2wasm(READER_GUEST)), wasi={"env": {}})  # type: ignore
