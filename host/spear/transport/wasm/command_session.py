"""A WASI command as a function: each call runs `_start` in a fresh instance.

What every language's WASI target produces (Rust, C, Zig, Go, AssemblyScript...) is a
command: `_start` runs `main` once, reading stdin and writing stdout. So a call is one run:
the call's input is stdin, stdout is its output, a non-zero exit status (`proc_exit`, or
`main` returning it) fails the call with `ExecutionFailed(code="exit:N")` carrying the end of
stderr, `proc_exit(0)` is success. Every run gets a new store from the module's `InstancePre`
(well under a millisecond), with the call's deadline, the module's memory limit and fuel, and
the instance's `WasiConfig` (env, args, preopens; stderr logged unless discarded); nothing of
one run is seen by the next. The session has the shape of `GuestSession`, so the synchronous
API, `WasmRuntime` channels and `spear serve` run commands like any guest.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING

from spear.errors import ChannelClosed, ExecutionFailed, InvalidConfiguration
from spear.transport.wasm import abi
from spear.transport.wasm.arguments import as_input, check_function, check_timeout, encode_metadata
from spear.transport.wasm.bindings import Bindings
from spear.transport.wasm.capi import ffi
from spear.transport.wasm.guest import LiveGuest
from spear.transport.wasm.guest_log import GuestLog
from spear.transport.wasm.instance_context import InstanceContext
from spear.transport.wasm.limits import MAX_TIMEOUT, GuestLimits
from spear.transport.wasm.mailbox import Mailbox
from spear.transport.wasm.store import Store
from spear.transport.wasm.traps import (
    CallFailure,
    CallResult,
    GuestTrap,
    exit_failure,
    needs_thread,
    reentrant_call,
)
from spear.transport.wasm.wasi import WasiContextBuilder
from spear.transport.wasm.wasi_output import CallOutput

if TYPE_CHECKING:
    from spear.transport.wasm.module import WasmModule

START = abi.EXPORT_START


def _ns(seconds: float) -> int:
    return int(seconds * 1e9) or 1


class CommandSession:
    live = False  # no instance outlives a call: a call always starts one (never inline)
    abi_version = 0

    def __init__(self, module: WasmModule, *, label: str, max_message_size: int,
                 limits: GuestLimits, setup_timeout: float, bindings: Bindings) -> None:
        if bindings.wasi.stdin is not None:
            raise InvalidConfiguration(
                "wasi.stdin does not apply to a WASI command: each call's input is its stdin")
        self.module = module
        self.label = label
        self.bindings = bindings
        self.limits = limits
        self.max_message_size = max_message_size
        self.setup_timeout = setup_timeout
        self.mailbox = Mailbox(limits, max_message_size)
        self.log = GuestLog(label, limits)
        self.replacements = 0
        self.calls = 0
        self._lock = threading.Lock()
        self._closed = False
        self._pre = module.compiled.instance_pre  # links now: a bad import fails here
        self._names = frozenset({START})
        module.host.track(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def answer_as_start(self, name: str) -> None:
        """Run `_start` when called as `name` too (a deployed function's own name)."""
        self._names = self._names | {name}

    def memory_size(self) -> int:
        """No instance lives between calls."""
        return 0

    def execute(self, function: str, input: bytes, timeout: float | None,
                metadata: dict[str, str] | None, budget: float | None = None) -> CallResult:
        if type(function) is not str:
            check_function(function)
        if type(input) is not bytes:
            input = as_input(input)
        if timeout is not None and (type(timeout) is not float
                                    or not 0.0 < timeout <= MAX_TIMEOUT):
            timeout = check_timeout(timeout)
        if metadata:
            encode_metadata(metadata)  # checked like any call's; a command cannot see it
        elif metadata is not None and not isinstance(metadata, dict):
            encode_metadata(metadata)
        if function not in self._names:
            return CallFailure(False, f"module is a WASI command: its only function is "
                               f"{START!r}, not {function[:200]!r}", "no_such_handler")
        if len(input) > self.max_message_size:
            return CallFailure(False, f"request of {len(input)} bytes exceeds the maximum of "
                               f"{self.max_message_size}", "too_large")
        if budget is not None:
            return needs_thread("a WASI command call starts an instance")
        lock = self._lock
        if not lock.acquire(False):
            if self.bindings.reentrant():
                return reentrant_call(self.label)
            lock.acquire()
        try:
            if self._closed:
                raise ChannelClosed(f"WASM instance {self.label} is closed")
            self.calls += 1
            return self._run(input, timeout)
        finally:
            lock.release()

    def _run(self, input: bytes, timeout: float | None) -> CallResult:
        module = self.module
        compiled = module.compiled
        context = InstanceContext(self.label, self.mailbox, self.log, self.bindings)
        context.function = START
        output = context.output = CallOutput(self.max_message_size)
        wasi = (WasiContextBuilder(module.name, self.bindings.wasi,
                                   compiled.linker.wasi_output, stdin=input)
                if compiled.uses_wasi else None)
        now = time.monotonic_ns()
        run_until = now + _ns(timeout) if timeout is not None else 0
        start_until = run_until or now + _ns(self.setup_timeout)
        store: Store | None = None
        try:
            store = Store(compiled.engine, context, memory_limit=module.memory_limit,
                          limits=self.limits, fuel=module.fuel, wasi=wasi)
            guest = LiveGuest(store, store.instantiate(self._pre.ptr, start_until))
            slots = ffi.new("wasmtime_val_raw_t[1]")
            store.call(guest.func(START), slots, 1, run_until, START)
        except GuestTrap as trap:
            if context.abort is not None:
                raise context.abort from None
            if trap.exit_status != 0:
                return self._failed(trap, timeout, output)
        except ExecutionFailed as exc:
            return CallFailure(False, str(exc), str(exc.code))
        finally:
            if store is not None:
                store.close()
            if self.mailbox.touched:
                self.mailbox.commit()
        if output.overflowed:
            return CallFailure(False, f"{START!r} wrote more than {self.max_message_size} "
                               "bytes to stdout (the instance's maximum message size)",
                               "too_large")
        return bytes(output.stdout)

    def _failed(self, trap: GuestTrap, timeout: float | None,
                output: CallOutput) -> CallFailure:
        tail = output.stderr_tail()
        if trap.exit_status is not None:
            return exit_failure(trap.exit_status, START, tail)
        where = "" if trap.where == START else f" in {trap.where}"
        if trap.interrupted:
            allowed = timeout if timeout is not None else self.setup_timeout
            return CallFailure(True, f"{START!r} did not finish within {allowed:g} s "
                               f"(guest interrupted{where})", "timeout")
        message = f"guest trapped in {trap.where!r}: {trap.reason}"
        if tail:
            message += f"; stderr: {tail[-2048:]}"
        return CallFailure(False, message, f"trap:{trap.kind}")

    def close(self) -> None:
        if not self._lock.acquire(False):
            if self.bindings.reentrant():
                raise ExecutionFailed(f"WASM instance {self.label} cannot be closed from one "
                                      "of its own host functions", "reentrant")
            self._lock.acquire()
        with contextlib.ExitStack() as held:
            held.callback(self._lock.release)
            if self._closed:
                return
            self._closed = True
        self.log.close()
