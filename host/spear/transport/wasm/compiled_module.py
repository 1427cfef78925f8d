"""A module compiled by wasmtime and linked, ready to instantiate: what the LRU holds.

Compiling is the slow step (milliseconds to seconds); `InstancePre` resolves the imports once
so each new instance costs only a store and an instantiate. Both handles are freed when the
last user lets go of this object (the LRU, a `WasmModule`, an instance), or by `close()`.
"""

from __future__ import annotations

from typing import Any

from spear.errors import ExecutionFailed
from spear.transport.wasm.capi import error_message, ffi, lib, one_line
from spear.transport.wasm.exports import ModuleExports, check_exports, import_modules
from spear.transport.wasm.linker import Linker
from spear.transport.wasm.managed import Managed


class InstancePre(Managed):
    _what = "linked module"

    def _free(self, ptr: Any) -> None:
        lib.wasmtime_instance_pre_delete(ptr)


class CompiledModule(Managed):
    _what = "compiled module"

    def __init__(self, ptr: Any, linker: Linker, sha256: str, wasm_size: int) -> None:
        super().__init__(ptr)
        self.linker = linker
        self.engine = linker.engine
        self.sha256 = sha256
        try:
            self.exports: ModuleExports = check_exports(ptr)
            self.uses_wasi = any(name.startswith("wasi_") for name in import_modules(ptr))
            pre = ffi.new("wasmtime_instance_pre_t **")
            error = lib.wasmtime_linker_instantiate_pre(linker.ptr, ptr, pre)
            if error != ffi.NULL:
                raise ExecutionFailed(f"cannot link module: {one_line(error_message(error))}",
                                      "link_error")
            self.instance_pre = InstancePre(pre[0])
        except BaseException:
            self.close()
            raise
        start, end = ffi.new("void **"), ffi.new("void **")
        lib.wasmtime_module_image_range(ptr, start, end)
        code = int(ffi.cast("uintptr_t", end[0])) - int(ffi.cast("uintptr_t", start[0]))
        # What the host holds for it: the compiled image plus (about) its data segments.
        self.size = max(0, code) + wasm_size

    def close(self) -> None:
        pre = getattr(self, "instance_pre", None)
        if pre is not None:
            pre.close()
        super().close()

    def _free(self, ptr: Any) -> None:
        lib.wasmtime_module_delete(ptr)
