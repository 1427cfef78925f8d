"""WASI preview 1 for guests built against wasi-libc: each store's context, and the WASI
functions the host replaces so that no WASI call can outlast the guest call's deadline.

`WasiContextBuilder` builds a store's context from the instance's `WasiConfig`
(wasi_config.py; default-deny: a clock, randomness, `argv` = the module's name, stdout
discarded, stderr logged) and, for a WASI command call, the call's input as stdin. Output
goes through the callbacks of wasi_output.py.

`poll_oneoff` is the one WASI function that blocks (a clock subscription is how wasi-libc
sleeps). wasmtime's version sleeps as long as the guest asks, past any epoch deadline, so the
linker shadows it with `poll_oneoff` below: it never sleeps past the running call's interrupt
deadline, and traps as an epoch interrupt when it reaches it. Descriptor subscriptions are
answered at once (there are only stdin, at end of file, and the two output streams).
"""

from __future__ import annotations

import struct
import time
from typing import Any

from spear.errors import ExecutionFailed
from spear.transport.wasm.capi import WASM_I32, ffi, lib
from spear.transport.wasm.guest_memory import GuestFault
from spear.transport.wasm.host_calls import GuestInterrupted, HostImport
from spear.transport.wasm.instance_context import InstanceContext
from spear.transport.wasm.wasi_config import WasiConfig
from spear.transport.wasm.wasi_output import WasiOutput

WASI_MODULE = "wasi_snapshot_preview1"

ERRNO_SUCCESS = 0
ERRNO_BADF = 8
ERRNO_FAULT = 21
ERRNO_INVAL = 28

EVENT_CLOCK = 0
EVENT_FD_READ = 1
EVENT_FD_WRITE = 2
CLOCK_REALTIME = 0
CLOCK_THREAD_CPUTIME = 3
SUBSCRIPTION_CLOCK_ABSTIME = 1
MAX_SUBSCRIPTIONS = 4096  # more is refused (EINVAL): parsing them must stay cheap

SUBSCRIPTION = struct.Struct("<QB7xI4xQ8xH6x")  # userdata, tag, clock id | fd, timeout, flags
EVENT = struct.Struct("<QHB5xQH6x")  # userdata, errno, type, nbytes, flags
assert SUBSCRIPTION.size == 48 and EVENT.size == 32


def _due_ns(clock: int, timeout: int, flags: int, now: int) -> int:
    """A clock subscription's moment, on the monotonic clock."""
    if not flags & SUBSCRIPTION_CLOCK_ABSTIME:
        return now + timeout
    if clock == CLOCK_REALTIME:
        return now + (timeout - time.time_ns())
    return timeout


def poll_oneoff(context: InstanceContext, caller: Any, args: Any) -> None:
    in_ptr, out_ptr, count, nevents_ptr = (int(args[i].i32) & 0xFFFFFFFF for i in range(4))
    if count == 0 or count > MAX_SUBSCRIPTIONS:
        args[0].i32 = ERRNO_INVAL
        return
    memory = context.memory_for(caller, "poll_oneoff")
    try:
        raw = memory.read(in_ptr, count * SUBSCRIPTION.size, "poll_oneoff")
        memory.check(out_ptr, count * EVENT.size, "poll_oneoff")
        memory.check(nevents_ptr, 4, "poll_oneoff")
    except GuestFault:
        args[0].i32 = ERRNO_FAULT
        return
    now = time.monotonic_ns()
    ready: list[bytes] = []
    clocks: list[tuple[int, int]] = []  # (due, userdata)
    for userdata, tag, which, timeout, flags in SUBSCRIPTION.iter_unpack(raw):
        if tag == EVENT_CLOCK:
            if which > CLOCK_THREAD_CPUTIME:
                ready.append(EVENT.pack(userdata, ERRNO_INVAL, EVENT_CLOCK, 0, 0))
            else:
                clocks.append((_due_ns(which, timeout, flags, now), userdata))
        elif tag in (EVENT_FD_READ, EVENT_FD_WRITE):
            errno = ERRNO_SUCCESS if which <= 2 else ERRNO_BADF
            ready.append(EVENT.pack(userdata, errno, tag, 0, 0))
        else:
            ready.append(EVENT.pack(userdata, ERRNO_INVAL, tag & 0xFF, 0, 0))
    if not ready:
        due = min(due for due, _ in clocks)
        interrupt_at = context.interrupt_at()
        if interrupt_at and due >= interrupt_at:
            _sleep_until(interrupt_at)
            raise GuestInterrupted
        _sleep_until(due)
        now = max(time.monotonic_ns(), due)
        ready = [EVENT.pack(userdata, ERRNO_SUCCESS, EVENT_CLOCK, 0, 0)
                 for at, userdata in clocks if at <= now]
    memory.write(out_ptr, b"".join(ready), "poll_oneoff")
    memory.write(nevents_ptr, len(ready).to_bytes(4, "little"), "poll_oneoff")
    args[0].i32 = ERRNO_SUCCESS


def _sleep_until(monotonic_ns: int) -> None:
    while True:
        left = monotonic_ns - time.monotonic_ns()
        if left <= 0:
            return
        time.sleep(left / 1e9)


WASI_SHADOWS = (
    HostImport(WASI_MODULE, "poll_oneoff", (WASM_I32,) * 4, (WASM_I32,), poll_oneoff),
)


class WasiContextBuilder:
    """Builds one store's WASI configuration (the store takes ownership of it)."""

    def __init__(self, program: str, config: WasiConfig, output: WasiOutput,
                 stdin: bytes | None = None) -> None:
        self.argv = [program, *config.args]
        self.config = config
        self.stdin = config.stdin if stdin is None else stdin
        self._output = output

    def build(self, context_handle: Any) -> Any:
        config = lib.wasi_config_new()
        try:
            self._fill(config, context_handle)
        except BaseException:
            lib.wasi_config_delete(config)
            raise
        return config

    def _fill(self, config: Any, context_handle: Any) -> None:
        strings = [ffi.new("char[]", arg.encode()) for arg in self.argv]
        if not lib.wasi_config_set_argv(config, len(strings), ffi.new("const char *[]", strings)):
            raise ExecutionFailed("WASI argv must be valid UTF-8", "wasi")
        env = self.config.env
        if env:
            names = [ffi.new("char[]", key.encode()) for key in env]
            values = [ffi.new("char[]", value.encode()) for value in env.values()]
            if not lib.wasi_config_set_env(config, len(names), ffi.new("const char *[]", names),
                                           ffi.new("const char *[]", values)):
                raise ExecutionFailed("WASI environment must be valid UTF-8", "wasi")
        for guest, host in self.config.preopens.items():
            if not lib.wasi_config_preopen_dir(config, str(host).encode(), guest.encode(),
                                               not self.config.read_only):
                raise ExecutionFailed(
                    f"cannot open host directory {host!r} for the guest as {guest!r}", "wasi")
        if self.stdin:
            vec = ffi.new("wasm_byte_vec_t *")
            lib.wasm_byte_vec_new(vec, len(self.stdin), self.stdin)
            lib.wasi_config_set_stdin_bytes(config, vec)  # takes the bytes
        lib.wasi_config_set_stdout_custom(config, self._output.stdout, context_handle, ffi.NULL)
        lib.wasi_config_set_stderr_custom(config, self._output.stderr, context_handle, ffi.NULL)
