"""What host calls reach: the context of one guest instance, set before any guest code runs.

Each store's data pointer is a handle to one `InstanceContext`, created with the store and
freed after it, so a host call always finds the context of its own instance, even from the
start function of a replacement while the old store is already gone. Its memory is known once
instantiation returns; a host call made earlier (from the start function) finds the memory
through its caller instead.

What the embedder bound to the instance (Python host functions, configuration, WASI options)
is a `Bindings`, shared by every store the instance ever has; what belongs to one store (a
host function's held result, a WASI command's captured output) lives here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spear.transport.wasm.capi import EXTERN_MEMORY, ffi, lib
from spear.transport.wasm.guest_log import GuestLog
from spear.transport.wasm.guest_memory import GuestFault, GuestMemory
from spear.transport.wasm.mailbox import Mailbox
from spear.transport.wasm.native_call import native_ffi

if TYPE_CHECKING:
    from spear.transport.wasm.bindings import Bindings
    from spear.transport.wasm.wasi_output import CallOutput

_MEMORY = b"memory"


class InstanceContext:
    """Per store: label, mailbox, log, bindings, memory and the running call's deadline."""

    def __init__(self, label: str, mailbox: Mailbox, log: GuestLog, bindings: Bindings,
                 native: Any = None) -> None:
        self.label = label
        self.mailbox = mailbox
        self.log = log
        self.bindings = bindings
        self.memory: GuestMemory | None = None
        self._native = native  # the session's spear_fast_t, whose calls set interrupt_at_ns
        self._interrupt_at_ns = 0
        # A host function's result the guest's buffer was too small for (`host_result`).
        self.held: bytes | None = None
        # The last host function failure of this store, for the caller's exception chain.
        self.host_failure: BaseException | None = None
        # What a host function raised that must reach the caller (KeyboardInterrupt...).
        self.abort: BaseException | None = None
        # The handler being run (for WASI output lines), when the module uses WASI.
        self.function: str | None = None
        # A WASI command call's stdout and stderr (None: not a command call).
        self.output: CallOutput | None = None

    def memory_for(self, caller: Any, what: str) -> GuestMemory:
        memory = self.memory
        if memory is not None:
            return memory
        if native_ffi is not None and isinstance(caller, native_ffi.CData):
            caller = ffi.cast("wasmtime_caller_t *", int(native_ffi.cast("uintptr_t", caller)))
        item = ffi.new("wasmtime_extern_t *")
        if (not lib.wasmtime_caller_export_get(caller, _MEMORY, len(_MEMORY), item)
                or item.kind != EXTERN_MEMORY):
            raise GuestFault(f"{what}: the guest exports no memory")
        memory = GuestMemory(lib.wasmtime_caller_context(caller), item.of.memory)
        self.memory = memory
        return memory

    def set_interrupt_at(self, monotonic_ns: int) -> None:
        """When the guest entry about to run is interrupted (0: never)."""
        self._interrupt_at_ns = monotonic_ns
        if self._native is not None:
            self._native.interrupt_at_ns = monotonic_ns

    def interrupt_at(self) -> int:
        if self._native is not None:
            return int(self._native.interrupt_at_ns)
        return self._interrupt_at_ns
