"""What any WebAssembly module is, read from its compiled form without running it.

`spear inspect` and `spear.wasm.describe` report this for every module; loading uses the
kind to decide how the module is called:

- `spear`: exports `spear_abi_version`, `spear_init` or `spear_reserve`; called by handler
  name, through the ABI (docs/wasm-abi.md);
- `wasi_command`: exports `_start` (and is not a spear guest); `call("_start", input)` runs
  it with input as stdin and returns its stdout, a fresh instance per call;
- `wasi_reactor`: exports `_initialize` (and is neither of the above): refused at load;
- `plain`: anything else: refused at load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from spear.transport.wasm import abi
from spear.transport.wasm.capi import (
    EXTERN_FUNC,
    EXTERN_GLOBAL,
    EXTERN_MEMORY,
    EXTERN_TABLE,
    VALTYPE_NAMES,
    ffi,
    lib,
)

ModuleKind = Literal["spear", "wasi_command", "wasi_reactor", "plain"]
KIND_NAMES: dict[str, str] = {"spear": "spear ABI", "wasi_command": "WASI command",
                              "wasi_reactor": "WASI reactor", "plain": "plain module"}
WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")
PAGE = 65536
_KIND_WORDS = {EXTERN_FUNC: "func", EXTERN_GLOBAL: "global", EXTERN_TABLE: "table",
               EXTERN_MEMORY: "memory"}


@dataclass(frozen=True)
class ImportInfo:
    module: str
    name: str
    kind: str  # func, global, table, memory
    type: str


@dataclass(frozen=True)
class ExportInfo:
    name: str
    kind: str
    type: str


@dataclass(frozen=True)
class MemoryInfo:
    """A linear memory the module defines (exported under `name`) or imports."""

    name: str
    imported: bool
    min_pages: int
    max_pages: int | None
    memory64: bool
    shared: bool

    @property
    def min_bytes(self) -> int:
        return self.min_pages * PAGE

    @property
    def max_bytes(self) -> int | None:
        return None if self.max_pages is None else self.max_pages * PAGE


@dataclass(frozen=True)
class ModuleInfo:
    kind: ModuleKind
    imports: tuple[ImportInfo, ...]
    exports: tuple[ExportInfo, ...]
    memories: tuple[MemoryInfo, ...]

    @property
    def uses_wasi(self) -> bool:
        return any(item.module in WASI_MODULES for item in self.imports)

    @property
    def export_names(self) -> frozenset[str]:
        return frozenset(item.name for item in self.exports)

    @property
    def handlers(self) -> list[str]:
        """Handler names (spear guests), or `["_start"]` (WASI commands)."""
        if self.kind == "wasi_command":
            return [abi.EXPORT_START]
        return sorted(item.name[len(abi.HANDLER_PREFIX):] for item in self.exports
                      if item.name.startswith(abi.HANDLER_PREFIX) and item.kind == "func")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "imports": [vars(item) for item in self.imports],
            "exports": [vars(item) for item in self.exports],
            "memories": [{**vars(item), "min_bytes": item.min_bytes,
                          "max_bytes": item.max_bytes} for item in self.memories],
        }


def _text(vec: Any) -> str:
    return bytes(ffi.buffer(vec.data, vec.size)).decode("utf-8", "replace")


def _valtypes(vec: Any) -> str:
    return " ".join(VALTYPE_NAMES.get(k, f"type#{k}") for k in
                    (lib.wasm_valtype_kind(vec.data[i]) for i in range(vec.size)))


def _valtype(valtype: Any) -> str:
    kind = lib.wasm_valtype_kind(valtype)
    return VALTYPE_NAMES.get(kind, f"type#{kind}")


def _memory(externtype: Any) -> tuple[int, int | None, bool, bool]:
    memorytype = lib.wasm_externtype_as_memorytype_const(externtype)
    maximum = ffi.new("uint64_t *")
    has_max = lib.wasmtime_memorytype_maximum(memorytype, maximum)
    return (int(lib.wasmtime_memorytype_minimum(memorytype)),
            int(maximum[0]) if has_max else None,
            bool(lib.wasmtime_memorytype_is64(memorytype)),
            bool(lib.wasmtime_memorytype_isshared(memorytype)))


def describe_type(kind: int, externtype: Any) -> str:
    if kind == EXTERN_FUNC:
        functype = lib.wasm_externtype_as_functype_const(externtype)
        return (f"({_valtypes(lib.wasm_functype_params(functype))}) -> "
                f"({_valtypes(lib.wasm_functype_results(functype))})")
    if kind == EXTERN_MEMORY:
        low, high, is64, shared = _memory(externtype)
        limits = f"{low}..{high}" if high is not None else f"{low}.."
        return f"{limits} pages{' 64-bit' if is64 else ''}{' shared' if shared else ''}"
    if kind == EXTERN_TABLE:
        tabletype = lib.wasm_externtype_as_tabletype_const(externtype)
        limits = lib.wasm_tabletype_limits(tabletype)
        most = "" if limits.max == 0xFFFFFFFF else str(limits.max)
        return f"{_valtype(lib.wasm_tabletype_element(tabletype))} {limits.min}..{most}"
    if kind == EXTERN_GLOBAL:
        globaltype = lib.wasm_externtype_as_globaltype_const(externtype)
        mutable = "mut " if lib.wasm_globaltype_mutability(globaltype) else ""
        return f"{mutable}{_valtype(lib.wasm_globaltype_content(globaltype))}"
    return "unknown"


def describe_compiled(module: Any) -> ModuleInfo:
    """Imports, exports, memories and kind of a compiled `wasmtime_module_t`."""
    imports: list[ImportInfo] = []
    exports: list[ExportInfo] = []
    memories: list[MemoryInfo] = []
    vec = ffi.new("wasm_importtype_vec_t *")
    lib.wasmtime_module_imports(module, vec)
    try:
        for i in range(vec.size):
            item = vec.data[i]
            externtype = lib.wasm_importtype_type(item)
            kind = lib.wasm_externtype_kind(externtype)
            entry = ImportInfo(_text(lib.wasm_importtype_module(item)),
                               _text(lib.wasm_importtype_name(item)),
                               _KIND_WORDS.get(kind, "unknown"), describe_type(kind, externtype))
            imports.append(entry)
            if kind == EXTERN_MEMORY:
                memories.append(MemoryInfo(f"{entry.module}.{entry.name}", True,
                                           *_memory(externtype)))
    finally:
        lib.wasm_importtype_vec_delete(vec)
    out = ffi.new("wasm_exporttype_vec_t *")
    lib.wasmtime_module_exports(module, out)
    try:
        for i in range(out.size):
            item = out.data[i]
            externtype = lib.wasm_exporttype_type(item)
            kind = lib.wasm_externtype_kind(externtype)
            entry_name = _text(lib.wasm_exporttype_name(item))
            exports.append(ExportInfo(entry_name, _KIND_WORDS.get(kind, "unknown"),
                                      describe_type(kind, externtype)))
            if kind == EXTERN_MEMORY:
                memories.append(MemoryInfo(entry_name, False, *_memory(externtype)))
    finally:
        lib.wasm_exporttype_vec_delete(out)
    names = {item.name for item in exports}
    kind_of: ModuleKind
    if names & {abi.EXPORT_ABI_VERSION, abi.EXPORT_INIT, abi.EXPORT_RESERVE}:
        kind_of = "spear"
    elif abi.EXPORT_START in names:
        kind_of = "wasi_command"
    elif abi.EXPORT_INITIALIZE in names:
        kind_of = "wasi_reactor"
    else:
        kind_of = "plain"
    return ModuleInfo(kind_of, tuple(imports), tuple(exports), tuple(memories))
