"""The pure-Python call path: the same steps as `native/fastcall.c`, through cffi calls.

Taken where the native helper was not built, or with SPEAR_NO_NATIVE=1. Slower, equivalent.
"""

from __future__ import annotations

import time
from typing import Any

from spear.transport.wasm import abi
from spear.transport.wasm.capi import ffi
from spear.transport.wasm.guest import LiveGuest
from spear.transport.wasm.traps import CallFailure, CallResult, application_error

_REQUEST_pack_into = abi.REQUEST.pack_into
_RESPONSE_unpack_from = abi.RESPONSE.unpack_from
_monotonic_ns = time.monotonic_ns


class PythonHandler:
    __slots__ = ("func", "name", "name_len")

    def __init__(self, func: Any, name: bytes) -> None:
        self.func = func
        self.name = name
        self.name_len = len(name)


class PythonCallPath:
    native_struct: Any = None

    def __init__(self, fuel: int | None) -> None:
        self.calls = 0
        self._guest: LiveGuest | None = None
        self._slots = ffi.new("wasmtime_val_raw_t[1]")
        self._status = ffi.cast("int32_t *", self._slots)  # the handler's i32 result

    def bind(self, guest: LiveGuest) -> None:
        self._guest = guest

    def unbind(self) -> None:
        self._guest = None

    def memory_changed(self) -> None:
        pass  # the guest's GuestMemory refreshes itself

    def request_buffer_changed(self, guest: LiveGuest) -> None:
        pass

    def prepare(self, func: Any, name: bytes) -> PythonHandler:
        return PythonHandler(func, name)

    def call(self, handler: PythonHandler, function: str, input: bytes, timeout: float | None,
             budget: float | None, meta: bytes, meta_count: int) -> CallResult:
        guest = self._guest
        assert guest is not None
        memory = guest.memory
        control = guest.control
        self.calls += 1
        view = memory.view
        ptr = control.req_ptr
        n_name = handler.name_len
        view[ptr:ptr + n_name] = handler.name
        meta_ptr = ptr + n_name
        n_meta = len(meta)
        if n_meta:
            view[meta_ptr:meta_ptr + n_meta] = meta
        input_ptr = meta_ptr + n_meta
        view[input_ptr:input_ptr + len(input)] = input
        interrupt = timeout
        if budget is not None and (interrupt is None or budget < interrupt):
            interrupt = budget
        now = _monotonic_ns() if interrupt is not None else 0
        deadline_ns = now + int(timeout * 1e9) if timeout is not None else 0
        interrupt_at = now + (int(interrupt * 1e9) or 1) if interrupt is not None else 0
        _REQUEST_pack_into(view, control.request, ptr, n_name, meta_ptr, n_meta, input_ptr,
                           len(input), meta_count, 0, self.calls, deadline_ns, 0, 0, 0)
        guest.store.call(handler.func, self._slots, 1, interrupt_at, function)
        status = self._status[0]
        # Host calls during the guest call may have grown memory: read through a fresh view.
        memory.refresh()
        out_ptr, out_len, err_code = _RESPONSE_unpack_from(memory.view, control.response)
        end = out_ptr + out_len
        if end > memory.size or out_len >= 0x80000000:
            return CallFailure(False, f"guest returned an output of {out_len} bytes at "
                               f"{out_ptr:#x}, outside its {memory.size}-byte memory",
                               "bad_pointer")
        if status == 0:
            return memory.view[out_ptr:end].tobytes()
        if status == 1:
            return application_error(memory.view[out_ptr:end].tobytes(), err_code,
                                     guest.store.instance_context.host_failure)
        return CallFailure(False, f"guest returned invalid status {status}", "bad_status")
