"""One live guest: a store with its instantiated module, memory and control block, negotiated
and ready for calls. A guest whose state became unknown (trap, timeout) is closed as a whole
and a new one spawned; nothing of the old one is reused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spear.errors import ExecutionFailed
from spear.transport.wasm import abi
from spear.transport.wasm.capi import EXTERN_FUNC, EXTERN_MEMORY, ffi, lib
from spear.transport.wasm.control_block import ControlBlock, negotiate
from spear.transport.wasm.guest_memory import GuestMemory
from spear.transport.wasm.instance_context import InstanceContext
from spear.transport.wasm.limits import GuestLimits
from spear.transport.wasm.store import Store
from spear.transport.wasm.wasi import WasiContextBuilder

if TYPE_CHECKING:
    from spear.transport.wasm.module import WasmModule


class LiveGuest:
    def __init__(self, store: Store, instance: Any) -> None:
        self.store = store
        self._instance = instance
        self._funcs: dict[str, Any] = {}
        self.handlers: dict[str, Any] = {}  # function name -> the call path's prepared handler
        self.memory: GuestMemory
        self.control: ControlBlock
        self.abi_version = 0
        self._interrupt_at = 0

    def export(self, name: str, kind: int) -> Any:
        item = ffi.new("wasmtime_extern_t *")
        encoded = name.encode()
        found = lib.wasmtime_instance_export_get(self.store.context, self._instance, encoded,
                                                 len(encoded), item)
        if not found or item.kind != kind:
            raise ExecutionFailed(f"module has no export {name!r} of the right kind", "abi")
        return item

    def func(self, name: str) -> Any:
        func = self._funcs.get(name)
        if func is None:
            # Keep `item` referenced while reading from it: cffi's `item.of` does not.
            item = self.export(name, EXTERN_FUNC)
            func = self._funcs[name] = ffi.new("wasmtime_func_t *", item.of.func)
        return func

    def call_export(self, name: str, args: tuple[int, ...], interrupt_at_ns: int) -> int:
        """Call an i32-typed export (types were checked at load) and return its i32 result."""
        slots = ffi.new("wasmtime_val_raw_t[]", max(1, len(args)))
        for i, value in enumerate(args):
            slots[i].i32 = value
        self.store.call(self.func(name), slots, len(slots), interrupt_at_ns, name)
        return int(slots[0].i32)

    def close(self) -> None:
        self.store.close()


def spawn_guest(module: WasmModule, context: InstanceContext, limits: GuestLimits,
                max_message_size: int, interrupt_at_ns: int) -> LiveGuest:
    """Instantiate `module`, run `_initialize` and the handshake, all before `interrupt_at_ns`.

    Raises GuestTrap (guest code trapped or was interrupted) or ExecutionFailed (the module
    broke the ABI or could not be instantiated).
    """
    compiled = module.compiled
    wasi = (WasiContextBuilder(module.name, context.bindings.wasi, compiled.linker.wasi_output)
            if compiled.uses_wasi else None)
    store = Store(compiled.engine, context, memory_limit=module.memory_limit, limits=limits,
                  fuel=module.fuel, wasi=wasi)
    try:
        guest = LiveGuest(store, store.instantiate(compiled.instance_pre.ptr, interrupt_at_ns))
        item = guest.export(abi.EXPORT_MEMORY, EXTERN_MEMORY)
        memory = GuestMemory(store.context, item.of.memory)
        context.memory = memory  # from here on, host calls use it directly
        guest.memory = memory
        if compiled.exports.has_initialize:
            guest.call_export(abi.EXPORT_INITIALIZE, (), interrupt_at_ns)
        guest.abi_version, guest.control = negotiate(
            lambda name, args: guest.call_export(name, args, interrupt_at_ns), memory,
            max_message_size)
        return guest
    except BaseException:
        store.close()
        raise
