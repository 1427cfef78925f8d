"""The life of one guest instance as callers see it: calls, replacement, mailbox, log.

A session holds one `LiveGuest` at a time and serialises calls into it. After a trap or a
timeout the guest's state is unknown, so the session closes it; the next call spawns a fresh
one (under that call's deadline). The mailbox and the log belong to the session, so they
outlive replacements.

`execute(..., budget=...)` is how the channel runs a call on the event loop: the guest is
interrupted once `budget` seconds pass, its instance is dropped, the call's mailbox effects
are rolled back, and a `needs_thread` failure tells the channel to run the call again on the
instance's thread. A call that would first have to spawn a guest (which runs guest code) is
never started on the loop at all.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

from spear.errors import ChannelClosed, ExecutionFailed, InvalidConfiguration
from spear.transport.wasm import abi
from spear.transport.wasm.arguments import as_input, check_function, check_timeout, encode_metadata
from spear.transport.wasm.bindings import Bindings
from spear.transport.wasm.guest import LiveGuest, spawn_guest
from spear.transport.wasm.guest_log import GuestLog
from spear.transport.wasm.instance_context import InstanceContext
from spear.transport.wasm.limits import MAX_TIMEOUT, GuestLimits
from spear.transport.wasm.mailbox import Mailbox
from spear.transport.wasm.native_call import native
from spear.transport.wasm.traps import (
    CallFailure,
    CallResult,
    GuestTrap,
    exit_failure,
    needs_thread,
    reentrant_call,
)

if TYPE_CHECKING:
    from spear.transport.wasm.command_session import CommandSession
    from spear.transport.wasm.module import WasmModule
    from spear.transport.wasm.native_path import NativeCallPath
    from spear.transport.wasm.python_path import PythonCallPath

_monotonic_ns = time.monotonic_ns
MAX_PREPARED_HANDLERS = 1024  # handlers prepared and kept per instance
MAX_LISTED_HANDLERS = 50  # handler names an error message lists


def _ns(seconds: float) -> int:
    return int(seconds * 1e9) or 1


class GuestSession:
    def __init__(self, module: WasmModule, *, label: str, max_message_size: int,
                 limits: GuestLimits, setup_timeout: float, bindings: Bindings) -> None:
        self.module = module
        self.label = label
        self.bindings = bindings
        # WASI output lines name the running function: only then does a call record it.
        self._names_calls = module.uses_wasi and "log" in (bindings.wasi.stdout,
                                                           bindings.wasi.stderr)
        self._context: InstanceContext | None = None
        self.limits = limits
        self.max_message_size = max_message_size
        self.setup_timeout = setup_timeout
        self.mailbox = Mailbox(limits, max_message_size)
        self.log = GuestLog(label, limits)
        self.replacements = 0
        self._lock = threading.Lock()
        self._guest: LiveGuest | None = None
        self.live = False  # a guest is instantiated and ready (a call needs no spawn first)
        self._closed = False
        ticker = module.compiled.engine.ticker
        if native is not None:
            from spear.transport.wasm.native_path import NativeCallPath

            self._path: NativeCallPath | PythonCallPath = NativeCallPath(ticker, module.fuel)
        else:
            from spear.transport.wasm.python_path import PythonCallPath

            self._path = PythonCallPath(module.fuel)
        # The native helper's entry point, called straight from `execute` (None: Python path).
        self._native_call: Any = native.spear_call if native is not None else None
        self._native_struct: Any = self._path.native_struct
        self._mailbox = self.mailbox
        module.host.track(self)
        with self._lock:
            failure = self._spawn(None)
        if failure is not None:
            self.log.close()
            raise failure.exception()

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def calls(self) -> int:
        return self._path.calls

    @property
    def abi_version(self) -> int:
        guest = self._guest
        return guest.abi_version if guest is not None else 0

    def memory_size(self) -> int:
        """Never waits: while a call runs it reports the size last seen."""
        if not self._lock.acquire(blocking=False):
            guest = self._guest
            return guest.memory.size if guest is not None else 0
        try:
            guest = self._guest
            return guest.memory.current_size() if guest is not None else 0
        finally:
            self._lock.release()

    # ------------------------------------------------------------------ spawning

    def _spawn(self, timeout: float | None) -> CallFailure | None:
        """Start a fresh guest within `timeout` (None: the set-up timeout). Lock held."""
        if self._closed:
            raise ChannelClosed(f"WASM instance {self.label} is closed")
        allowed = self.setup_timeout if timeout is None else timeout
        context = InstanceContext(self.label, self.mailbox, self.log, self.bindings,
                                  self._path.native_struct)
        self._context = context
        try:
            guest = spawn_guest(self.module, context, self.limits, self.max_message_size,
                                _monotonic_ns() + _ns(allowed))
        except GuestTrap as trap:
            if context.abort is not None:
                raise context.abort from None
            if trap.interrupted:
                return CallFailure(True, f"guest did not finish {trap.where} within "
                                   f"{allowed:g} s (guest interrupted)", "timeout")
            if trap.exit_status is not None:
                return exit_failure(trap.exit_status, trap.where)
            return CallFailure(False, f"guest trapped in {trap.where}: {trap.reason}",
                               f"trap:{trap.kind}")
        except ExecutionFailed as exc:
            return CallFailure(False, str(exc), str(exc.code))
        finally:
            self.mailbox.commit()  # whatever the start function sent is delivered
        self._path.bind(guest)
        self._guest = guest
        self.live = True
        return None

    def _drop(self) -> None:
        """Close the guest whose state is now unknown; the next call spawns a new one."""
        guest, self._guest = self._guest, None
        self.live = False
        if guest is not None:
            self._path.unbind()
            guest.close()
            self.replacements += 1

    # ------------------------------------------------------------------ calls

    def execute(self, function: str, input: bytes, timeout: float | None,
                metadata: dict[str, str] | None, budget: float | None = None) -> CallResult:
        """Run handler `function`; a failure comes back as a `CallFailure` (no exception)."""
        if type(function) is not str:
            check_function(function)
        if type(input) is not bytes:
            input = as_input(input)
        if timeout is not None and (type(timeout) is not float
                                    or not 0.0 < timeout <= MAX_TIMEOUT):
            timeout = check_timeout(timeout)
        if metadata:
            meta, meta_count = encode_metadata(metadata)
        else:
            if metadata is not None and not isinstance(metadata, dict):
                encode_metadata(metadata)  # raises TypeError naming the argument
            meta, meta_count = b"", 0
        lock = self._lock
        if not lock.acquire(False):
            if self.bindings.reentrant():
                return reentrant_call(self.label)
            lock.acquire()
        try:
            guest = self._guest
            if guest is None:
                if self._closed:
                    raise ChannelClosed(f"WASM instance {self.label} is closed")
                if budget is not None:
                    return needs_thread("the instance must be replaced first")
                failure = self._spawn(timeout)
                if failure is not None:
                    return failure
                guest = self._guest
                assert guest is not None
            handler = guest.handlers.get(function)
            if handler is None:
                handler = self._resolve(guest, function)
                if handler is None:
                    return self._no_such_handler(function)
            if self._names_calls:
                self._context.function = function  # type: ignore[union-attr]
            total = handler.name_len + len(meta) + len(input)
            if total > guest.control.room:
                started = _monotonic_ns()
                failure = self._make_room(guest, function, total, timeout, budget)
                if failure is not None:
                    return failure
                if timeout is not None:
                    timeout = max(1e-9, timeout - (_monotonic_ns() - started) / 1e9)
                if budget is not None:
                    budget = max(1e-9, budget - (_monotonic_ns() - started) / 1e9)
            try:
                native_call = self._native_call
                if native_call is not None and not meta:
                    # The hot path, written out here: one C call, one copy out.
                    packed: int = native_call(
                        self._native_struct, handler.native, input, len(input),
                        0 if timeout is None else (int(timeout * 1e9) or 1),
                        0 if budget is None else (int(budget * 1e9) or 1))
                    result: CallResult
                    if packed >= 0:
                        out_ptr = packed & 0xFFFFFFFF
                        end = out_ptr + (packed >> 32)
                        memory = guest.memory
                        if end > memory.size:
                            memory.refresh()
                        result = memory.view[out_ptr:end].tobytes()
                    else:
                        result = self._path.outcome(packed, function)  # type: ignore[union-attr]
                else:
                    result = self._path.call(handler, function, input, timeout, budget, meta,
                                             meta_count)
            except GuestTrap as trap:
                return self._trapped(trap, function, timeout, budget)
            if self._mailbox.touched:
                self.mailbox.commit()
            return result
        finally:
            lock.release()

    def _resolve(self, guest: LiveGuest, function: str) -> Any:
        module = self.module
        if function in module.handler_names:
            func = guest.func(abi.HANDLER_PREFIX + function)
        elif module.has_dispatch:
            func = guest.func(abi.EXPORT_DISPATCH)
        else:
            return None
        try:
            name = function.encode()
        except UnicodeEncodeError as exc:
            raise InvalidConfiguration(f"function is not valid UTF-8: {exc}") from None
        handler = self._path.prepare(func, name)
        # Names a caller makes up (through spear_dispatch) must not grow the host without end.
        if len(guest.handlers) < MAX_PREPARED_HANDLERS:
            guest.handlers[function] = handler
        return handler

    def _no_such_handler(self, function: str) -> CallFailure:
        names = self.module.handlers
        listed = ", ".join(names[:MAX_LISTED_HANDLERS]) or "none"
        if len(names) > MAX_LISTED_HANDLERS:
            listed += f", ... ({len(names)} in all)"
        return CallFailure(False, f"module has no handler named {function[:200]!r} "
                           f"(handlers: {listed})", "no_such_handler")

    def _make_room(self, guest: LiveGuest, function: str, total: int, timeout: float | None,
                   budget: float | None) -> CallFailure | None:
        if total > self.max_message_size:
            return CallFailure(False, f"request of {total} bytes exceeds the maximum of "
                               f"{self.max_message_size}", "too_large")
        if total > abi.U32_MAX:
            return CallFailure(False, f"request of {total} bytes does not fit a 32-bit memory",
                               "too_large")
        limit = timeout
        if budget is not None and (limit is None or budget < limit):
            limit = budget
        interrupt_at = _monotonic_ns() + _ns(limit) if limit is not None else 0
        try:
            status = guest.call_export(abi.EXPORT_RESERVE, (total,), interrupt_at)
        except GuestTrap as trap:
            return self._trapped(trap, function, timeout, budget)
        finally:
            if self.mailbox.touched:
                self.mailbox.commit()
        if status != 0:
            self._path.memory_changed()
            return CallFailure(False, f"guest could not reserve {total} bytes for the request "
                               "(out of memory)", "oom")
        try:
            guest.control.read_request_buffer(guest.memory, self.max_message_size)
        except ExecutionFailed as exc:
            self._drop()  # the guest broke its own control block: do not trust it again
            return CallFailure(False, str(exc), str(exc.code))
        self._path.request_buffer_changed(guest)
        if guest.control.req_cap < total:
            return CallFailure(False, f"guest reserved {guest.control.req_cap} bytes, {total} "
                               "were asked for", "abi")
        return None

    def _trapped(self, trap: GuestTrap, function: str, timeout: float | None,
                 budget: float | None) -> CallFailure:
        """A trap or an interrupt: the guest's state is unknown, so it is dropped."""
        context = self._context
        abort = context.abort if context is not None else None
        self._drop()
        if abort is not None:
            self.mailbox.commit()
            raise abort
        where = "" if trap.where == function else f" in {trap.where}"
        if trap.interrupted:
            if budget is not None and (timeout is None or budget < timeout):
                self.mailbox.rollback()
                return needs_thread(f"{function!r} ran past the event loop's budget{where}")
            self.mailbox.commit()
            return CallFailure(True, f"{function!r} did not finish within {timeout} s "
                               f"(guest interrupted{where})", "timeout")
        self.mailbox.commit()
        if trap.exit_status is not None:
            return exit_failure(trap.exit_status, trap.where)
        return CallFailure(False, f"guest trapped in {trap.where!r}: {trap.reason}",
                           f"trap:{trap.kind}")

    # ------------------------------------------------------------------ closing

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
            self.live = False
            guest, self._guest = self._guest, None
            if guest is not None:
                self._path.unbind()
                guest.close()
        self.log.close()


def open_session(module: WasmModule, *, label: str, max_message_size: int,
                 limits: GuestLimits, setup_timeout: float,
                 bindings: Bindings) -> GuestSession | CommandSession:
    """The session that runs `module`: a live guest (spear ABI) or a run per call (WASI
    command)."""
    if module.kind == "wasi_command":
        from spear.transport.wasm.command_session import CommandSession

        return CommandSession(module, label=label, max_message_size=max_message_size,
                              limits=limits, setup_timeout=setup_timeout, bindings=bindings)
    return GuestSession(module, label=label, max_message_size=max_message_size, limits=limits,
                        setup_timeout=setup_timeout, bindings=bindings)
