"""WASI preview 1 for guests built against wasi-libc: each instance's context, and the WASI
functions the host replaces so that no WASI call can outlast the guest call's deadline.

The context grants nothing beyond a clock, randomness and output: no files or directories,
no environment, no sockets, `argv` = the module's name, stdout discarded, stderr into the
instance's rate-limited log. `WasiContextBuilder` is where further options go.

`poll_oneoff` is the one WASI function that blocks (a clock subscription is how wasi-libc
sleeps). wasmtime's version sleeps as long as the guest asks, past any epoch deadline, so the
linker shadows it with `poll_oneoff` below: it never sleeps past the running call's interrupt
deadline, and traps as an epoch interrupt when it reaches it. Descriptor subscriptions are
answered at once (there are only stdin, at end of file, and the two output streams).
"""

from __future__ import annotations

import contextlib
import struct
import time
from typing import Any

from spear.transport.wasm.capi import WASM_I32, ffi, lib
from spear.transport.wasm.guest_memory import GuestFault
from spear.transport.wasm.host_calls import GuestInterrupted, HostFunction
from spear.transport.wasm.instance_context import InstanceContext

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
    HostFunction(WASI_MODULE, "poll_oneoff", (WASM_I32,) * 4, (WASM_I32,), poll_oneoff),
)


def _stderr(data: Any, buf: Any, length: int) -> int:
    context: InstanceContext = ffi.from_handle(data)
    # Losing a log line must never fail the guest's write.
    with contextlib.suppress(Exception):
        context.log.write_stderr(memoryview(ffi.buffer(buf, length)))
    return length


class WasiOutput:
    """The callbacks WASI output streams write through; owned by the linker's owner."""

    def __init__(self) -> None:
        self.stderr = ffi.callback("ptrdiff_t(void *, const unsigned char *, size_t)", _stderr)


class WasiContextBuilder:
    """Builds one instance's WASI configuration (the store takes ownership of it)."""

    def __init__(self, program: str, output: WasiOutput) -> None:
        self.argv = [program]
        self._output = output

    def build(self, context_handle: Any) -> Any:
        config = lib.wasi_config_new()
        strings = [ffi.new("char[]", arg.encode()) for arg in self.argv]
        argv = ffi.new("const char *[]", strings)
        if not lib.wasi_config_set_argv(config, len(strings), argv):
            raise ValueError("WASI argv must be valid UTF-8")
        # stdout is left unset: wasmtime discards it. stderr goes to the instance's log.
        lib.wasi_config_set_stderr_custom(config, self._output.stderr, context_handle, ffi.NULL)
        return config
