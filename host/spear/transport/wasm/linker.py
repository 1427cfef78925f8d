"""The linker of one engine: WASI preview 1, then the host-call table over it (the `spear`
imports: messages, log, clock, Python host functions, configuration).

The table's entries shadow wasmtime's WASI where they name the same function (`poll_oneoff`,
see wasi.py). The linker owns the table and the WASI output callbacks, and every module
linked with it keeps it alive, so no callback can be freed while a guest can still reach it.
"""

from __future__ import annotations

from typing import Any

from spear.transport.wasm.capi import error_message, ffi, lib
from spear.transport.wasm.config_import import CONFIG_FUNCTIONS
from spear.transport.wasm.engine import Engine
from spear.transport.wasm.host_calls import SPEAR_FUNCTIONS, HostCallTable
from spear.transport.wasm.host_function_imports import HOST_FUNCTION_IMPORTS
from spear.transport.wasm.managed import Managed
from spear.transport.wasm.wasi import WASI_SHADOWS
from spear.transport.wasm.wasi_output import WasiOutput

HOST_IMPORTS = (*SPEAR_FUNCTIONS, *HOST_FUNCTION_IMPORTS, *CONFIG_FUNCTIONS, *WASI_SHADOWS)


class Linker(Managed):
    _what = "WASM linker"

    def __init__(self, engine: Engine, host_calls: HostCallTable | None = None) -> None:
        self.engine = engine
        self.host_calls = host_calls or HostCallTable(HOST_IMPORTS)
        self.wasi_output = WasiOutput()
        ptr = lib.wasmtime_linker_new(engine.ptr)
        super().__init__(ptr)
        try:
            error = lib.wasmtime_linker_define_wasi(ptr)
            if error != ffi.NULL:
                raise RuntimeError(f"cannot define WASI: {error_message(error)}")
            lib.wasmtime_linker_allow_shadowing(ptr, True)
            self.host_calls.define_on(ptr)
        except BaseException:
            self.close()
            raise

    def _free(self, ptr: Any) -> None:
        lib.wasmtime_linker_delete(ptr)
