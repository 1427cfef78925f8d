"""A module compiled by wasmtime, described, and (once asked) checked and linked: what the LRU
holds.

Compiling is the slow step (milliseconds to seconds); `InstancePre` resolves the imports once
so each new instance costs only a store and an instantiate. Describing needs neither checks
nor links (`spear inspect` describes any module); loading a module to call it checks its
exports against the ABI and links it, once, on first use. Both handles are freed when the last
user lets go of this object (the LRU, a `WasmModule`, an instance), or by `close()`.
"""

from __future__ import annotations

import threading
from typing import Any

from spear.errors import ExecutionFailed
from spear.transport.wasm import abi
from spear.transport.wasm.capi import VALTYPE_NAMES, error_message, ffi, lib, one_line
from spear.transport.wasm.exports import ModuleExports, check_exports
from spear.transport.wasm.linker import Linker
from spear.transport.wasm.managed import Managed
from spear.transport.wasm.module_info import ModuleInfo, describe_compiled


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
        self._lock = threading.Lock()
        self._exports: ModuleExports | None = None
        self._instance_pre: InstancePre | None = None
        try:
            self.info: ModuleInfo = describe_compiled(ptr)
        except BaseException:
            self.close()
            raise
        self.uses_wasi = self.info.uses_wasi
        start, end = ffi.new("void **"), ffi.new("void **")
        lib.wasmtime_module_image_range(ptr, start, end)
        code = int(ffi.cast("uintptr_t", end[0])) - int(ffi.cast("uintptr_t", start[0]))
        # What the host holds for it: the compiled image plus (about) its data segments.
        self.size = max(0, code) + wasm_size

    @property
    def exports(self) -> ModuleExports:
        """The module's ABI exports, checked on first use (spear guests only)."""
        with self._lock:
            if self._exports is None:
                self._exports = check_exports(self.ptr)
            return self._exports

    @property
    def instance_pre(self) -> InstancePre:
        """The module linked with the host's imports, made on first use."""
        with self._lock:
            if self._instance_pre is None:
                self._check_spear_imports()
                pre = ffi.new("wasmtime_instance_pre_t **")
                error = lib.wasmtime_linker_instantiate_pre(self.linker.ptr, self.ptr, pre)
                if error != ffi.NULL:
                    raise ExecutionFailed(
                        f"cannot link module: {one_line(error_message(error))}", "link_error")
                self._instance_pre = InstancePre(pre[0])
            return self._instance_pre

    def _check_spear_imports(self) -> None:
        """A guest built for a newer host imports what this one lacks: say so by name."""
        table = self.linker.host_calls
        for item in self.info.imports:
            if item.module != abi.IMPORT_MODULE:
                continue
            signature = table.signature(abi.IMPORT_MODULE, item.name)
            if signature is None:
                provided = ", ".join(sorted(table.names(abi.IMPORT_MODULE)))
                raise ExecutionFailed(
                    f"cannot link module: it imports spear.{item.name}, which this host does "
                    f"not provide (spear ABI v{abi.ABI_VERSION} revision {abi.ABI_REVISION}: "
                    f"{provided}); was it built for a newer spear host? "
                    "(see docs/wasm-abi.md)", "link_error")
            params, results = signature
            expected = (f"({' '.join(VALTYPE_NAMES[k] for k in params)}) -> "
                        f"({' '.join(VALTYPE_NAMES[k] for k in results)})")
            if item.kind != "func" or item.type != expected:
                raise ExecutionFailed(
                    f"cannot link module: spear.{item.name} must be imported as a function "
                    f"{expected}, but the module imports {item.kind} {item.type} "
                    "(see docs/wasm-abi.md)", "link_error")

    def close(self) -> None:
        pre = getattr(self, "_instance_pre", None)
        if pre is not None:
            pre.close()
        super().close()

    def _free(self, ptr: Any) -> None:
        lib.wasmtime_module_delete(ptr)
