"""The native call path: one C call (`spear_call`) per guest call, handles prepared per guest.

`bind` points the session's `spear_fast_t` at a new guest; the struct lives as long as the
session, so request ids (`calls`) run on across replacements.
"""

from __future__ import annotations

from typing import Any

from spear.transport.wasm.capi import ffi
from spear.transport.wasm.guest import LiveGuest
from spear.transport.wasm.guest_memory import GuestMemory
from spear.transport.wasm.instance_context import InstanceContext
from spear.transport.wasm.native_call import FUNCTIONS, from_native, native, native_ffi, to_native
from spear.transport.wasm.ticker import EpochTicker
from spear.transport.wasm.traps import CallFailure, CallResult, GuestTrap, application_error

FAST_TRAPPED = -1
FAST_STATUS = -3
FAST_BAD_POINTER = -4
_NULL = ffi.NULL


class NativeHandler:
    __slots__ = ("func", "keep", "name", "name_len", "native")

    def __init__(self, func: Any, name: bytes) -> None:
        self.func = func
        self.name = name
        self.name_len = len(name)
        # The C struct points at `keep`; the handler keeps both alive together.
        self.keep = native_ffi.new("uint8_t[]", name)
        self.native = native_ffi.new("spear_handler_t *", {
            "func": to_native(func), "name": self.keep, "name_len": len(name)})


class NativeCallPath:
    native_struct: Any

    def __init__(self, ticker: EpochTicker, fuel: int | None) -> None:
        fast = self.native_struct = native_ffi.new("spear_fast_t *")
        fast.call_unchecked = FUNCTIONS["call_unchecked"]
        fast.set_deadline = FUNCTIONS["set_deadline"]
        fast.memory_size = FUNCTIONS["memory_size"]
        fast.set_fuel = FUNCTIONS["set_fuel"]
        fast.ticker = ticker.shared
        fast.tick_ns = ticker.tick_ns
        fast.fuel = fuel or 0
        self._call = native.spear_call
        self._call_meta = native.spear_call_meta
        self._memory: GuestMemory | None = None
        self._context: InstanceContext | None = None

    @property
    def calls(self) -> int:
        return int(self.native_struct.calls)

    def bind(self, guest: LiveGuest) -> None:
        fast = self.native_struct
        fast.context = to_native(guest.store.context)
        fast.memory = to_native(guest.memory.handle)
        fast.ctrl = guest.control.address
        fast.deadline_armed = 0  # Python-side entries leave no deadline armed
        fast.interrupt_at_ns = 0
        self._memory = guest.memory
        self._context = guest.store.instance_context
        self.memory_changed()
        self.request_buffer_changed(guest)

    def unbind(self) -> None:
        fast = self.native_struct
        fast.context = native_ffi.NULL
        fast.memory = native_ffi.NULL
        fast.base = native_ffi.NULL
        fast.size = 0
        fast.req_cap = 0
        self._memory = None
        self._context = None

    def memory_changed(self) -> None:
        memory = self._memory
        assert memory is not None
        memory.refresh()
        self.native_struct.base = native_ffi.cast("uint8_t *", to_native(memory.base))
        self.native_struct.size = memory.size

    def request_buffer_changed(self, guest: LiveGuest) -> None:
        self.native_struct.req_ptr = guest.control.req_ptr
        self.native_struct.req_cap = guest.control.req_cap
        self.memory_changed()

    def prepare(self, func: Any, name: bytes) -> NativeHandler:
        return NativeHandler(func, name)

    def call(self, handler: NativeHandler, function: str, input: bytes, timeout: float | None,
             budget: float | None, meta: bytes, meta_count: int) -> CallResult:
        # The hot path: no attribute chains, no helper calls on success.
        if meta:
            result = self._call_meta(
                self.native_struct, handler.native, input, len(input),
                0 if timeout is None else (int(timeout * 1e9) or 1),
                0 if budget is None else (int(budget * 1e9) or 1), meta, len(meta), meta_count)
        else:
            result = self._call(
                self.native_struct, handler.native, input, len(input),
                0 if timeout is None else (int(timeout * 1e9) or 1),
                0 if budget is None else (int(budget * 1e9) or 1))
        if result >= 0:
            out_ptr = result & 0xFFFFFFFF
            end = out_ptr + (result >> 32)
            memory = self._memory
            if end > memory.size:  # type: ignore[union-attr]
                memory.refresh()  # type: ignore[union-attr]
            return memory.view[out_ptr:end].tobytes()  # type: ignore[union-attr]
        return self.outcome(result, function)

    def outcome(self, result: int, function: str) -> CallResult:
        """Everything but plain success from the native call."""
        fast = self.native_struct
        if result == FAST_TRAPPED:
            from spear.transport.wasm.capi import error_message, exit_status, trap_details

            if fast.trap:
                trap = from_native(fast.trap, "wasm_trap_t *")
                fast.trap = native_ffi.NULL
                if fast.error:
                    error_message(from_native(fast.error, "wasmtime_error_t *"))
                    fast.error = native_ffi.NULL
                code, message = trap_details(trap)
                raise GuestTrap(function, code, message)
            error = from_native(fast.error, "wasmtime_error_t *")
            fast.error = native_ffi.NULL
            status = exit_status(error)  # before error_message frees it
            raise GuestTrap(function, None, error_message(error), status)
        if result == FAST_BAD_POINTER:
            return CallFailure(False, f"guest returned an output of {fast.out_len} bytes at "
                               f"{fast.out_ptr:#x}, outside its {fast.size}-byte memory",
                               "bad_pointer")
        if result == FAST_STATUS:
            status = fast.status
            if status == 1:
                memory = self._memory
                assert memory is not None
                text = memory.slice(fast.out_ptr, fast.out_ptr + fast.out_len)
                context = self._context
                return application_error(text, fast.err_code,
                                         context.host_failure if context else None)
            return CallFailure(False, f"guest returned invalid status {status}", "bad_status")
        return CallFailure(False, f"native call failed with {result}", "internal")
