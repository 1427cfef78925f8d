"""Hand-written guests in WAT for precise ABI abuse (docs/wasm-abi.md).

`guest()` builds a minimal valid spear guest: one 64 KiB page, the control block at 1024
(magic "SPER", version 1, request buffer at 2048 with 4096 bytes), handler `ok` returning
empty output and handler `echo` returning its input. Every part can be replaced to break
exactly one rule.
"""

from __future__ import annotations

import wasmtime

CTRL = 1024
OUT_PTR = CTRL + 64
OUT_LEN = CTRL + 68
INPUT_PTR = CTRL + 32
INPUT_LEN = CTRL + 36
CONTROL_BLOCK = r'"SPER\01\00\00\00\00\08\00\00\00\10\00\00"'

SPEAR_IMPORTS = """
  (import "spear" "log" (func $log (param i32 i32 i32)))
  (import "spear" "send" (func $send (param i32 i32 i32 i32) (result i32)))
  (import "spear" "recv" (func $recv (param i32 i32 i32 i32 i32) (result i32)))
  (import "spear" "now" (func $now (result i64)))
"""
POLL_IMPORT = """
  (import "wasi_snapshot_preview1" "poll_oneoff"
          (func $poll (param i32 i32 i32 i32) (result i32)))
"""

ECHO = f"""
  (func (export "spear.handler.echo") (result i32)
    (i32.store (i32.const {OUT_PTR}) (i32.load (i32.const {INPUT_PTR})))
    (i32.store (i32.const {OUT_LEN}) (i32.load (i32.const {INPUT_LEN})))
    (i32.const 0))
"""
# Writes the i32 `rc` as the 4-byte output (at address 100).
OUT_RC = f"""
  (func $out_rc (param $rc i32) (result i32)
    (i32.store (i32.const 100) (local.get $rc))
    (i32.store (i32.const {OUT_PTR}) (i32.const 100))
    (i32.store (i32.const {OUT_LEN}) (i32.const 4))
    (i32.const 0))
"""
SPIN = "(loop $l (br $l))"


def guest(
    body: str = "",
    *,
    imports: str = SPEAR_IMPORTS,
    memory: str = '(memory (export "memory") 1)',
    abi_version: str = '(func (export "spear_abi_version") (result i32) (i32.const 1))',
    init: str = "(i32.const 1024)",
    init_export: str | None = None,
    reserve: str = "(i32.const 1)",
    reserve_export: str | None = None,
    handlers: str = ECHO + '(func (export "spear.handler.ok") (result i32) (i32.const 0))',
    start: str | None = None,
    data: str = "",
) -> bytes:
    init_export = init_export or (
        f'(func (export "spear_init") (param i32) (result i32) {init})')
    reserve_export = reserve_export or (
        f'(func (export "spear_reserve") (param $size i32) (result i32) {reserve})')
    start_part = f"(func $start {start}) (start $start)" if start is not None else ""
    wat = f"""
    (module
      {imports}
      {memory}
      (data (i32.const {CTRL}) {CONTROL_BLOCK})
      (data (i32.const 0) "tick")
      {data}
      {abi_version}
      {init_export}
      {reserve_export}
      {OUT_RC}
      {handlers}
      {body}
      {start_part}
    )
    """
    return bytes(wasmtime.wat2wasm(wat))


def memory64_guest() -> bytes:
    """Exports every ABI function with its right type, but a 64-bit `memory`."""
    return bytes(wasmtime.wat2wasm("""
    (module
      (memory (export "memory") i64 1)
      (func (export "spear_abi_version") (result i32) (i32.const 1))
      (func (export "spear_init") (param i32) (result i32) (i32.const 1024))
      (func (export "spear_reserve") (param i32) (result i32) (i32.const 1))
      (func (export "spear.handler.ok") (result i32) (i32.const 0)))
    """))


# A handler `sleep` asking WASI poll_oneoff for one monotonic clock subscription of N ns
# (N = the input's first 8 bytes, little-endian). Its output: errno (4 bytes), nevents (4),
# then the first event (32 bytes).
SLEEP = f"""
  (func (export "spear.handler.sleep") (result i32)
    (i64.store (i32.const 9000) (i64.const 7))
    (i32.store8 (i32.const 9008) (i32.const 0))
    (i32.store (i32.const 9016) (i32.const 1))
    (i64.store (i32.const 9024) (i64.load (i32.load (i32.const {INPUT_PTR}))))
    (i64.store (i32.const 9032) (i64.const 0))
    (i32.store16 (i32.const 9040) (i32.const 0))
    (i32.store (i32.const 9300)
      (call $poll (i32.const 9000) (i32.const 9100) (i32.const 1) (i32.const 9200)))
    (i32.store (i32.const 9304) (i32.load (i32.const 9200)))
    (memory.copy (i32.const 9308) (i32.const 9100) (i32.const 32))
    (i32.store (i32.const {OUT_PTR}) (i32.const 9300))
    (i32.store (i32.const {OUT_LEN}) (i32.const 40))
    (i32.const 0))
"""

# A handler `busy`: sends one message ("tick" = "tick"), then spins, calling spear.now, until
# the input's first 8 bytes (ns, little-endian) have passed.
BUSY = f"""
  (func (export "spear.handler.busy") (result i32)
    (local $until i64)
    (local.set $until (i64.add (call $now) (i64.load (i32.load (i32.const {INPUT_PTR})))))
    (drop (call $send (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 4)))
    (loop $l (br_if $l (i64.lt_u (call $now) (local.get $until))))
    (i32.const 0))
"""

# A handler `pull_busy`: pulls one message (its data becomes the output), then spins like
# `busy` for the input's first 8 bytes of ns.
PULL_BUSY = f"""
  (func (export "spear.handler.pull_busy") (result i32)
    (local $until i64)
    (local.set $until (i64.add (call $now) (i64.load (i32.load (i32.const {INPUT_PTR})))))
    (i32.store (i32.const 9904) (i32.const 0))
    (drop (call $recv (i32.const 9500) (i32.const 64) (i32.const 9600) (i32.const 256)
                      (i32.const 9900)))
    (loop $l (br_if $l (i64.lt_u (call $now) (local.get $until))))
    (i32.store (i32.const {OUT_PTR}) (i32.const 9600))
    (i32.store (i32.const {OUT_LEN}) (i32.load (i32.const 9904)))
    (i32.const 0))
"""
