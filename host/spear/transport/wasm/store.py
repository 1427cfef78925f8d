"""One wasmtime store: the home of one guest instance, its limits, and every entry into it.

The store's data is a handle to the instance's `InstanceContext`, made before the store and
freed after it, so host calls can always reach it. The store limiter bounds linear memory,
table elements, tables, memories and instances. Every entry into guest code made from Python
(the start function during instantiation, `_initialize`, `spear_abi_version`, `spear_init`,
`spear_reserve`, handlers on the pure-Python path) goes through `_enter`/`_leave`: fuel is
refilled, the epoch deadline is armed for the entry's interrupt time (or disarmed), and the
engine's ticker knows a deadline is running.
"""

from __future__ import annotations

import time
from typing import Any

from spear.errors import ExecutionFailed
from spear.transport.wasm.capi import error_message, exit_status, ffi, lib, one_line, trap_details
from spear.transport.wasm.engine import Engine
from spear.transport.wasm.instance_context import InstanceContext
from spear.transport.wasm.limits import GuestLimits
from spear.transport.wasm.managed import Managed
from spear.transport.wasm.traps import GuestTrap
from spear.transport.wasm.wasi import WasiContextBuilder

NO_DEADLINE = 1 << 62  # epoch ticks: effectively never
INSTANCES_PER_STORE = 1

_set_deadline = lib.wasmtime_context_set_epoch_deadline
_call_unchecked = lib.wasmtime_func_call_unchecked
_NULL = ffi.NULL


class Store(Managed):
    _what = "WASM store"

    def __init__(self, engine: Engine, instance_context: InstanceContext, *,
                 memory_limit: int, limits: GuestLimits, fuel: int | None,
                 wasi: WasiContextBuilder | None) -> None:
        self.instance_context = instance_context
        self._handle = ffi.new_handle(instance_context)  # outlives the store: freed after it
        self._ticker = engine.ticker
        self._fuel = fuel
        ptr = lib.wasmtime_store_new(engine.ptr, self._handle, _NULL)
        super().__init__(ptr)
        lib.wasmtime_store_limiter(ptr, memory_limit, limits.table_elements, INSTANCES_PER_STORE,
                                   limits.tables, limits.memories)
        self.context: Any = lib.wasmtime_store_context(ptr)
        _set_deadline(self.context, NO_DEADLINE)
        self._trap = ffi.new("wasm_trap_t **")
        if wasi is not None:
            self._check(lib.wasmtime_context_set_wasi(self.context, wasi.build(self._handle)))

    def _free(self, ptr: Any) -> None:
        lib.wasmtime_store_delete(ptr)

    @staticmethod
    def _check(error: Any) -> None:
        if error != _NULL:
            raise ExecutionFailed(one_line(error_message(error)), "wasmtime")

    def _enter(self, interrupt_at_ns: int) -> None:
        context = self.context
        if self._fuel is not None:
            self._check(lib.wasmtime_context_set_fuel(context, self._fuel))
        self.instance_context.set_interrupt_at(interrupt_at_ns)
        if interrupt_at_ns:
            left = max(0, interrupt_at_ns - time.monotonic_ns()) / 1e9
            _set_deadline(context, self._ticker.ticks_for(left))
            self._ticker.call_started()
        else:
            # A deadline a native call left armed must not interrupt this entry.
            _set_deadline(context, NO_DEADLINE)

    def _leave(self, interrupt_at_ns: int) -> None:
        if interrupt_at_ns:
            self._ticker.call_finished()
            _set_deadline(self.context, NO_DEADLINE)
        self.instance_context.set_interrupt_at(0)

    def instantiate(self, instance_pre: Any, interrupt_at_ns: int) -> Any:
        """Instantiate (running the start function, if any) before `interrupt_at_ns`."""
        instance = ffi.new("wasmtime_instance_t *")
        trap = self._trap
        self._enter(interrupt_at_ns)
        try:
            error = lib.wasmtime_instance_pre_instantiate(instance_pre, self.context, instance,
                                                          trap)
        finally:
            self._leave(interrupt_at_ns)
        if trap[0] != _NULL:
            code, message = trap_details(trap[0])
            trap[0] = _NULL
            raise GuestTrap("the start function", code, message)
        if error != _NULL:
            status = exit_status(error)
            if status is not None:
                raise GuestTrap("the start function", None, error_message(error), status)
            raise ExecutionFailed(f"cannot instantiate: {one_line(error_message(error))}",
                                  "instantiate")
        return instance

    def call(self, func: Any, slots: Any, nslots: int, interrupt_at_ns: int, where: str) -> None:
        """Enter `func` with raw `slots` (arguments in, results out)."""
        trap = self._trap
        self._enter(interrupt_at_ns)
        try:
            error = _call_unchecked(self.context, func, slots, nslots, trap)
        finally:
            self._leave(interrupt_at_ns)
        if trap[0] != _NULL:
            code, message = trap_details(trap[0])
            trap[0] = _NULL
            raise GuestTrap(where, code, message)
        if error != _NULL:
            status = exit_status(error)  # before error_message frees it
            raise GuestTrap(where, None, error_message(error), status)
