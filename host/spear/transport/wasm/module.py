"""A compiled guest module: compile (or load from cache) once, instantiate many times.

Compilation is the slow step (milliseconds to seconds); `InstancePre` resolves imports once
so each new instance costs only a store and an instantiate (tens of microseconds).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spear.errors import ExecutionFailed, InvalidConfiguration
from spear.transport.wasm import abi
from spear.transport.wasm.capi import EXTERN_FUNC, error_message, ffi, lib, one_line
from spear.transport.wasm.engine import Engine, EngineOptions, get_engine
from spear.transport.wasm.host_calls import define_host_calls
from spear.transport.wasm.module_cache import ModuleCache, default_cache_dir

if TYPE_CHECKING:
    from spear.transport.wasm.instance import WasmInstance

DEFAULT_MEMORY_LIMIT = 64 * 1024 * 1024
WASM_MAGIC = b"\x00asm"

_linkers: dict[EngineOptions, Any] = {}
_linkers_lock = threading.Lock()
_compiled: dict[tuple[str, EngineOptions], Any] = {}  # in-process cache: hash -> module ptr


def _linker_for(engine: Engine) -> Any:
    with _linkers_lock:
        linker = _linkers.get(engine.options)
        if linker is None:
            linker = lib.wasmtime_linker_new(engine.ptr)
            define_host_calls(linker)
            # WASI preview 1 for guests built against wasi-libc; each store gets a sandboxed
            # context (see WasmInstance): no files, no environment, stderr only.
            error = lib.wasmtime_linker_define_wasi(linker)
            if error != ffi.NULL:
                raise RuntimeError(f"cannot define WASI: {error_message(error)}")
            _linkers[engine.options] = linker
        return linker


def _compile(engine: Engine, wasm: bytes, wasm_hash: str, cache: ModuleCache) -> Any:
    key = (wasm_hash, engine.options)
    module = _compiled.get(key)
    if module is not None:
        return module
    out = ffi.new("wasmtime_module_t **")
    path = cache.path_for(wasm_hash, engine.options.cache_key)
    if path is not None:
        cached = cache.load(path)
        if cached is not None:
            error = lib.wasmtime_module_deserialize(engine.ptr, cached, len(cached), out)
            if error == ffi.NULL:
                _compiled[key] = out[0]
                return out[0]
            # Stale or damaged entry: recompile below and overwrite it.
            error_message(error)
            cache.discard(path)
    error = lib.wasmtime_module_new(engine.ptr, wasm, len(wasm), out)
    if error != ffi.NULL:
        raise ExecutionFailed(f"invalid WebAssembly module: {one_line(error_message(error))}",
                              "invalid_module")
    module = out[0]
    if path is not None:
        vec = ffi.new("wasm_byte_vec_t *")
        error = lib.wasmtime_module_serialize(module, vec)
        if error == ffi.NULL:
            cache.store(path, bytes(ffi.buffer(vec.data, vec.size)))
            lib.wasm_byte_vec_delete(vec)
        else:
            error_message(error)
    _compiled[key] = module
    return module


def _import_modules(module: Any) -> set[str]:
    imports = ffi.new("wasm_importtype_vec_t *")
    lib.wasmtime_module_imports(module, imports)
    try:
        names = set()
        for i in range(imports.size):
            name = lib.wasm_importtype_module(imports.data[i])
            names.add(bytes(ffi.buffer(name.data, name.size)).decode("utf-8", "replace"))
        return names
    finally:
        lib.wasm_importtype_vec_delete(imports)


def _export_names(module: Any) -> list[tuple[str, int]]:
    exports = ffi.new("wasm_exporttype_vec_t *")
    lib.wasmtime_module_exports(module, exports)
    try:
        names = []
        for i in range(exports.size):
            export = exports.data[i]
            name = lib.wasm_exporttype_name(export)
            kind = lib.wasm_externtype_kind(lib.wasm_exporttype_type(export))
            names.append((bytes(ffi.buffer(name.data, name.size)).decode("utf-8", "replace"), kind))
        return names
    finally:
        lib.wasm_exporttype_vec_delete(exports)


class WasmModule:
    """A guest function module, compiled and linked; `instantiate()` makes instances."""

    def __init__(
        self,
        wasm: bytes,
        *,
        memory_limit: int | None = None,
        fuel: int | None = None,
        name: str | None = None,
        cache_dir: Path | bool | None = True,
    ) -> None:
        if not wasm.startswith(WASM_MAGIC):
            raise ExecutionFailed("not a WebAssembly module (missing \\0asm header)",
                                  "invalid_module")
        if memory_limit is not None and memory_limit < 65536:
            raise InvalidConfiguration(f"memory_limit must be at least 64 KiB, got {memory_limit}")
        if fuel is not None and fuel <= 0:
            raise InvalidConfiguration(f"fuel must be positive, got {fuel}")
        self.name = name or "module"
        self.memory_limit = memory_limit or DEFAULT_MEMORY_LIMIT
        self.fuel = fuel
        self.sha256 = hashlib.sha256(wasm).hexdigest()
        self.engine = get_engine(EngineOptions(fuel=fuel is not None))
        directory = default_cache_dir() if cache_dir is True else (cache_dir or None)
        self._module = _compile(self.engine, wasm, self.sha256, ModuleCache(directory))
        exports = _export_names(self._module)
        functions = {name for name, kind in exports if kind == EXTERN_FUNC}
        missing = [
            n for n in (abi.EXPORT_ABI_VERSION, abi.EXPORT_INIT, abi.EXPORT_RESERVE)
            if n not in functions
        ]
        if missing or abi.EXPORT_MEMORY not in {name for name, _ in exports}:
            what = ", ".join(missing + ([] if any(n == "memory" for n, _ in exports)
                                        else ["memory"]))
            raise ExecutionFailed(
                f"module is not a spear guest: missing export(s) {what} (see docs/wasm-abi.md)",
                "invalid_module",
            )
        self.handlers = sorted(
            name[len(abi.HANDLER_PREFIX):] for name in functions
            if name.startswith(abi.HANDLER_PREFIX)
        )
        self.has_dispatch = abi.EXPORT_DISPATCH in functions
        self.has_initialize = abi.EXPORT_INITIALIZE in functions
        self.uses_wasi = any(name.startswith("wasi_") for name in _import_modules(self._module))
        pre = ffi.new("wasmtime_instance_pre_t **")
        error = lib.wasmtime_linker_instantiate_pre(_linker_for(self.engine), self._module, pre)
        if error != ffi.NULL:
            raise ExecutionFailed(f"cannot link module: {one_line(error_message(error))}",
                                  "link_error")
        self._instance_pre = pre[0]
        self.abi_version: int | None = None
        # One probe instance checks the ABI handshake now, so a bad module fails at load time
        # rather than at its first call (and `spear inspect` can report the version).
        self.instantiate().close()

    @classmethod
    def load(
        cls,
        source: str | Path | bytes,
        *,
        memory_limit: int | None = None,
        fuel: int | None = None,
        cache_dir: Path | bool | None = True,
    ) -> WasmModule:
        if isinstance(source, bytes | bytearray | memoryview):
            return cls(bytes(source), memory_limit=memory_limit, fuel=fuel, cache_dir=cache_dir)
        path = Path(source)
        try:
            wasm = path.read_bytes()
        except OSError as exc:
            raise ExecutionFailed(f"cannot read module {path}: {exc.strerror}", "io") from exc
        return cls(wasm, memory_limit=memory_limit, fuel=fuel, name=path.stem,
                   cache_dir=cache_dir)

    def instantiate(self) -> WasmInstance:
        from spear.transport.wasm.instance import WasmInstance

        return WasmInstance(self)

    def _instantiate_raw(self, context: Any, out: Any) -> None:
        trap = ffi.new("wasm_trap_t **")
        error = lib.wasmtime_instance_pre_instantiate(self._instance_pre, context, out, trap)
        if error != ffi.NULL:
            raise ExecutionFailed(f"cannot instantiate: {one_line(error_message(error))}",
                                  "instantiate")
        if trap[0] != ffi.NULL:
            from spear.transport.wasm.capi import trap_details

            _, message = trap_details(trap[0])
            raise ExecutionFailed(f"module trapped during start: {one_line(message)}", "trap")

    def __del__(self) -> None:
        # Instances hold a reference to their module, so none can still need this.
        pre = getattr(self, "_instance_pre", None)
        if pre is not None:
            self._instance_pre = None
            lib.wasmtime_instance_pre_delete(pre)

    def __repr__(self) -> str:
        return f"<WasmModule {self.name} handlers={self.handlers}>"
