"""WASI preview 1 for guests built against wasi-libc: linked, and sandboxed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
