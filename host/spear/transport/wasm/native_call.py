"""The native fast call: `native/fastcall.c`, compiled with the package, loaded from it.

It moves the per-call work (copy in, fill the control block, enter the guest, check the
output) into one C function, so a call crosses from Python to C once, through cffi's API
mode (a direct C call, no libffi). The helper is built when the wheel or the editable install
is built (`native/build_fastcall.py`, run by setup.py) and imported as an ordinary extension
module of this package: nothing is compiled, written or loaded from anywhere else at run
time, and the file is checked (`spear.native_trust`) before it is imported. Where it was not
built (an sdist installed without a C compiler), or with SPEAR_NO_NATIVE=1, calls take the
pure-Python path, which is slower but equivalent.

The helper has its own cffi `ffi`; wasmtime handles cross from capi's `ffi` as addresses
(`to_native`, `from_native`), once per instance, never per call.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from spear.native_trust import load_optional_extension
from spear.transport.wasm.capi import ffi, lib

log = logging.getLogger("spear.wasm.native")

HELPER = "spear.transport.wasm._fastcall"


def _load() -> tuple[Any, Any]:
    module = load_optional_extension(HELPER, Path(__file__).parent,
                                     "the native fast-call helper", log,
                                     "WASM calls take the pure-Python path")
    return (None, None) if module is None else (module.ffi, module.lib)


native_ffi, native = _load()


def active() -> bool:
    """Whether WASM calls use the native helper (False: the pure-Python path)."""
    return native is not None


def to_native(pointer: Any) -> Any:
    """A capi pointer as the helper's `void *`."""
    return native_ffi.cast("void *", int(ffi.cast("uintptr_t", pointer)))


def from_native(pointer: Any, ctype: str) -> Any:
    """A `void *` the helper holds, as a capi pointer of `ctype`."""
    return ffi.cast(ctype, int(native_ffi.cast("uintptr_t", pointer)))


# Addresses of the wasmtime functions the native code calls.
FUNCTIONS = {
    name: to_native(ffi.addressof(lib, symbol))
    for name, symbol in (
        ("call_unchecked", "wasmtime_func_call_unchecked"),
        ("set_deadline", "wasmtime_context_set_epoch_deadline"),
        ("memory_size", "wasmtime_memory_data_size"),
        ("set_fuel", "wasmtime_context_set_fuel"),
        ("increment_epoch", "wasmtime_engine_increment_epoch"),
    )
} if native is not None else {}
