"""What a compiled module exports and imports, checked against the ABI before anything runs.

Every export the host calls is entered with a fixed number of value slots; a function of
another type would make wasmtime read or write past them. So each one is compared with its
ABI type (`abi.FUNCTION_TYPES`, `abi.HANDLER_TYPE`) when the module is loaded, and a mismatch
fails the load with a message naming the export, the type the ABI needs and the one it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spear.errors import ExecutionFailed
from spear.transport.wasm import abi
from spear.transport.wasm.capi import (
    EXTERN_FUNC,
    EXTERN_MEMORY,
    EXTERN_NAMES,
    VALTYPE_NAMES,
    ffi,
    lib,
)

Signature = tuple[tuple[str, ...], tuple[str, ...]]


@dataclass(frozen=True)
class ModuleExports:
    handlers: tuple[str, ...]
    has_dispatch: bool
    has_initialize: bool


def _name(vec: Any) -> str:
    return bytes(ffi.buffer(vec.data, vec.size)).decode("utf-8", "replace")


def _kinds(vec: Any) -> tuple[str, ...]:
    return tuple(VALTYPE_NAMES.get(k, f"type#{k}")
                 for k in (lib.wasm_valtype_kind(vec.data[i]) for i in range(vec.size)))


def _signature(externtype: Any) -> Signature:
    functype = lib.wasm_externtype_as_functype_const(externtype)
    return (_kinds(lib.wasm_functype_params(functype)),
            _kinds(lib.wasm_functype_results(functype)))


def show(signature: Signature) -> str:
    params, results = signature
    return f"({' '.join(params)}) -> ({' '.join(results)})"


def _abi_error(message: str) -> ExecutionFailed:
    return ExecutionFailed(f"{message} (see docs/wasm-abi.md)", "abi")


def _expected(name: str) -> Signature | None:
    if name in abi.FUNCTION_TYPES:
        return abi.FUNCTION_TYPES[name]
    if name.startswith(abi.HANDLER_PREFIX):
        return abi.HANDLER_TYPE
    return None


def check_exports(module: Any) -> ModuleExports:
    """The module's handlers, after checking every export the host calls."""
    exports = ffi.new("wasm_exporttype_vec_t *")
    lib.wasmtime_module_exports(module, exports)
    try:
        found: dict[str, tuple[int, Any]] = {}
        for i in range(exports.size):
            export = exports.data[i]
            externtype = lib.wasm_exporttype_type(export)
            found[_name(lib.wasm_exporttype_name(export))] = (
                lib.wasm_externtype_kind(externtype), externtype)
        missing = [name for name in abi.REQUIRED_EXPORTS if name not in found]
        if missing:
            raise ExecutionFailed(
                f"module is not a spear guest: missing export(s) {', '.join(missing)} "
                "(see docs/wasm-abi.md)", "invalid_module")
        handlers: list[str] = []
        for name, (kind, externtype) in found.items():
            if name == abi.EXPORT_MEMORY:
                _check_memory(kind, externtype)
                continue
            expected = _expected(name)
            if expected is None:
                continue
            if kind != EXTERN_FUNC:
                raise _abi_error(f"export {name!r} must be a function {show(expected)}, "
                                 f"but it is {EXTERN_NAMES.get(kind, 'something else')}")
            actual = _signature(externtype)
            if actual != expected:
                raise _abi_error(f"export {name!r} must have type {show(expected)}, "
                                 f"but it has type {show(actual)}")
            if name.startswith(abi.HANDLER_PREFIX):
                handlers.append(name[len(abi.HANDLER_PREFIX):])
        return ModuleExports(
            handlers=tuple(sorted(handlers)),
            has_dispatch=abi.EXPORT_DISPATCH in found,
            has_initialize=abi.EXPORT_INITIALIZE in found,
        )
    finally:
        lib.wasm_exporttype_vec_delete(exports)


def _check_memory(kind: int, externtype: Any) -> None:
    if kind != EXTERN_MEMORY:
        raise _abi_error(f"export 'memory' must be a 32-bit linear memory, but it is "
                         f"{EXTERN_NAMES.get(kind, 'something else')}")
    memorytype = lib.wasm_externtype_as_memorytype_const(externtype)
    if lib.wasmtime_memorytype_is64(memorytype):
        raise _abi_error("export 'memory' must be a 32-bit linear memory, but it is a "
                         "64-bit one")
    if lib.wasmtime_memorytype_isshared(memorytype):
        raise _abi_error("export 'memory' must be a 32-bit linear memory, but it is a "
                         "shared one")
