"""WASI commands written by hand in WAT, with no spear SDK: `_start` and WASI preview 1 only.

They stand for what any language's WASI target produces (a `main` reading stdin, writing
stdout, exiting with a status), small enough to read and needing no toolchain, so the tests
that use them run against an installed wheel too.
"""

from __future__ import annotations

import wasmtime

WASI = "wasi_snapshot_preview1"
IMPORTS = f"""
  (import "{WASI}" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "environ_sizes_get" (func $env_sizes (param i32 i32) (result i32)))
  (import "{WASI}" "environ_get" (func $env_get (param i32 i32) (result i32)))
  (import "{WASI}" "args_sizes_get" (func $args_sizes (param i32 i32) (result i32)))
  (import "{WASI}" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "{WASI}" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "{WASI}" "fd_prestat_dir_name" (func $prestat_name (param i32 i32 i32) (result i32)))
  (import "{WASI}" "proc_exit" (func $exit (param i32)))
"""
# write(fd, ptr, len): one fd_write; returns the errno.
WRITE = """
  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
"""


def command(body: str, *, data: str = "", extra: str = "", memory: str = "2") -> bytes:
    return bytes(wasmtime.wat2wasm(f"""
(module
  {IMPORTS}
  {extra}
  (memory (export "memory") {memory})
  (global $runs (mut i32) (i32.const 0))
  {data}
  {WRITE}
  (func (export "_start") (local $n i32) (local $i i32)
    {body}))
"""))


# The environment ("K=V" lines), then stdin, to stdout; with arguments after argv[0], it
# writes "failing" to stderr and exits with their number as its status.
ENV_AND_STDIN = command("""
    (drop (call $env_sizes (i32.const 16) (i32.const 20)))
    (drop (call $env_get (i32.const 1024) (i32.const 4096)))
    (local.set $n (i32.load (i32.const 20)))
    (block $done (loop $nl
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (if (i32.eqz (i32.load8_u (i32.add (i32.const 4096) (local.get $i))))
        (then (i32.store8 (i32.add (i32.const 4096) (local.get $i)) (i32.const 10))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $nl)))
    (drop (call $write (i32.const 1) (i32.const 4096) (local.get $n)))
    (block $eof (loop $read
      (i32.store (i32.const 32) (i32.const 65536))
      (i32.store (i32.const 36) (i32.const 65536))
      (br_if $eof (call $fd_read (i32.const 0) (i32.const 32) (i32.const 1) (i32.const 40)))
      (br_if $eof (i32.eqz (i32.load (i32.const 40))))
      (drop (call $write (i32.const 1) (i32.const 65536) (i32.load (i32.const 40))))
      (br $read)))
    (drop (call $args_sizes (i32.const 48) (i32.const 52)))
    (if (i32.gt_u (i32.load (i32.const 48)) (i32.const 1))
      (then (drop (call $write (i32.const 2) (i32.const 200) (i32.const 8)))
            (call $exit (i32.sub (i32.load (i32.const 48)) (i32.const 1)))))
""", data='(data (i32.const 200) "failing\\n")')

# argv, one per line.
ARGS = command("""
    (drop (call $args_sizes (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 1024) (i32.const 4096)))
    (local.set $n (i32.load (i32.const 20)))
    (block $done (loop $nl
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (if (i32.eqz (i32.load8_u (i32.add (i32.const 4096) (local.get $i))))
        (then (i32.store8 (i32.add (i32.const 4096) (local.get $i)) (i32.const 10))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $nl)))
    (drop (call $write (i32.const 1) (i32.const 4096) (local.get $n)))
""")

# The names of the preopened directories (descriptors 3, 4, ...), one per line.
PREOPENS = command("""
    (local.set $i (i32.const 3))
    (block $done (loop $next
      (br_if $done (call $prestat (local.get $i) (i32.const 16)))
      (local.set $n (i32.load (i32.const 20)))
      (drop (call $prestat_name (local.get $i) (i32.const 4096) (local.get $n)))
      (i32.store8 (i32.add (i32.const 4096) (local.get $n)) (i32.const 10))
      (drop (call $write (i32.const 1) (i32.const 4096) (i32.add (local.get $n) (i32.const 1))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
""")

# How many times _start ran in this instance (always 1: every call is a fresh instance).
RUNS = command("""
    (global.set $runs (i32.add (global.get $runs) (i32.const 1)))
    (i32.store8 (i32.const 100) (i32.add (i32.const 48) (global.get $runs)))
    (drop (call $write (i32.const 1) (i32.const 100) (i32.const 1)))
""")

# Writes "before", exits with status 0, would write "after".
EXIT_ZERO = command("""
    (drop (call $write (i32.const 1) (i32.const 200) (i32.const 6)))
    (call $exit (i32.const 0))
    (drop (call $write (i32.const 1) (i32.const 210) (i32.const 5)))
""", data='(data (i32.const 200) "before") (data (i32.const 210) "after")')

SPIN = command("(loop $l (br $l))")
TRAP = command("""
    (drop (call $write (i32.const 2) (i32.const 200) (i32.const 14)))
    unreachable
""", data='(data (i32.const 200) "about to trap\\n")')

# Writes 64 KiB to stdout 1024 times (64 MiB), stopping at the first failed write.
FLOOD = command("""
    (block $done (loop $more
      (br_if $done (i32.ge_u (local.get $i) (i32.const 1024)))
      (br_if $done (call $write (i32.const 1) (i32.const 65536) (i32.const 65536)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $more)))
""", memory="3")

# Grows memory by 1 GiB; writes "grown" or "refused".
GROW = command("""
    (if (i32.eq (memory.grow (i32.const 16384)) (i32.const -1))
      (then (drop (call $write (i32.const 1) (i32.const 210) (i32.const 7))))
      (else (drop (call $write (i32.const 1) (i32.const 200) (i32.const 5)))))
""", data='(data (i32.const 200) "grown") (data (i32.const 210) "refused")')

# Reads stdin into memory, relays it through host function "transform", writes the result.
HOST_CALL = command("""
    (i32.store (i32.const 32) (i32.const 65536))
    (i32.store (i32.const 36) (i32.const 4096))
    (drop (call $fd_read (i32.const 0) (i32.const 32) (i32.const 1) (i32.const 40)))
    (local.set $n (call $host_call (i32.const 200) (i32.const 9)
                    (i32.const 65536) (i32.load (i32.const 40))
                    (i32.const 70000) (i32.const 4096) (i32.const 44)))
    (if (local.get $n) (then (call $exit (i32.const 9))))
    (drop (call $write (i32.const 1) (i32.const 70000) (i32.load (i32.const 44))))
""", data='(data (i32.const 200) "transform")', extra="""
  (import "spear" "host_call"
          (func $host_call (param i32 i32 i32 i32 i32 i32 i32) (result i32)))""")


def module(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


REACTOR = module('(module (memory (export "memory") 1) (func (export "_initialize")))')
PLAIN = module('(module (memory (export "memory") 1 4) (func (export "add") (param i32 i32)'
               ' (result i32) local.get 0 local.get 1 i32.add))')
BAD_START = module('(module (memory (export "memory") 1)'
                   ' (func (export "_start") (param i32)))')
