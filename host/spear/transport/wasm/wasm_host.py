"""The owner of everything native the in-process WASM runtime holds.

A `WasmHost` owns the engines (one per configuration, each with its epoch ticker thread), their
linkers, the compiled modules (an LRU bounded by count and bytes) and the on-disk caches, and
knows every instance started from its modules. `close()` closes those instances, then stops
the tickers and frees the engines. `spear.wasm.load` uses a process-wide default host; an
embedder that wants its own lifetime makes one and uses `host.load(...)`.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from spear.errors import ChannelClosed, ExecutionFailed
from spear.transport.wasm.arguments import check_positive_int
from spear.transport.wasm.capi import error_message, ffi, lib, one_line
from spear.transport.wasm.compiled_module import CompiledModule
from spear.transport.wasm.engine import Engine, EngineOptions
from spear.transport.wasm.linker import Linker
from spear.transport.wasm.module_cache import (
    DEFAULT_CACHE_MAX_BYTES,
    ModuleCache,
    default_cache_dir,
)
from spear.transport.wasm.module_info import ModuleInfo
from spear.transport.wasm.module_lru import DEFAULT_MAX_MODULE_BYTES, DEFAULT_MAX_MODULES, ModuleLRU

if TYPE_CHECKING:
    from spear.transport.wasm.command_session import CommandSession
    from spear.transport.wasm.module import WasmModule
    from spear.transport.wasm.session import GuestSession

MAX_CACHE_DIRS = 8  # cache directories remembered (for their size accounting)


class WasmHost:
    def __init__(self, *, max_modules: int = DEFAULT_MAX_MODULES,
                 max_module_bytes: int = DEFAULT_MAX_MODULE_BYTES,
                 cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES) -> None:
        check_positive_int(max_modules, "max_modules")
        check_positive_int(max_module_bytes, "max_module_bytes")
        check_positive_int(cache_max_bytes, "cache_max_bytes")
        self._lock = threading.Lock()
        self._engines: dict[EngineOptions, Engine] = {}
        self._linkers: dict[EngineOptions, Linker] = {}
        self.modules = ModuleLRU(max_modules, max_module_bytes)
        self._cache_max_bytes = cache_max_bytes
        self._caches: collections.OrderedDict[Path, ModuleCache] = collections.OrderedDict()
        self._sessions: weakref.WeakSet[GuestSession | CommandSession] = weakref.WeakSet()
        self._closed = False

    # ------------------------------------------------------------------ loading

    def load(self, source: str | Path | bytes | bytearray | memoryview, *,
             memory_limit: int | None = None, fuel: int | None = None,
             cache_dir: Path | bool | None = True, setup_timeout: float | None = None,
             name: str | None = None, host_functions: Any = None, config: Any = None,
             wasi: Any = None) -> WasmModule:
        """Compile (or take from the caches) a spear guest or WASI command; see
        `spear.wasm.load`."""
        from spear.transport.wasm.module import WasmModule

        return WasmModule._load(self, source, memory_limit=memory_limit, fuel=fuel,
                                cache_dir=cache_dir, setup_timeout=setup_timeout, name=name,
                                host_functions=host_functions, config=config, wasi=wasi)

    def describe(self, source: str | Path | bytes | bytearray | memoryview, *,
                 cache_dir: Path | bool | None = True) -> ModuleInfo:
        """What any module is (kind, imports, exports, memories), without running or linking
        it; see `spear.wasm.describe`."""
        from spear.transport.wasm.module import read_module

        wasm, _ = read_module(source)
        return self.compiled(wasm, EngineOptions(), cache_dir).info

    def compiled(self, wasm: bytes, options: EngineOptions,
                 cache_dir: Path | bool | None) -> CompiledModule:
        sha256 = hashlib.sha256(wasm).hexdigest()
        key = (sha256, options)
        module = self.modules.get(key)
        if module is not None:
            return module
        linker = self._linker(options)
        engine = linker.engine
        cache = self._cache(cache_dir)
        ptr = self._deserialize(engine, cache, sha256, options) if cache is not None else None
        if ptr is None:
            ptr = self._compile(engine, wasm)
            if cache is not None:
                self._serialize(cache, ptr, sha256, options)
        return self.modules.put(key, CompiledModule(ptr, linker, sha256, len(wasm)))

    @staticmethod
    def _compile(engine: Engine, wasm: bytes) -> Any:
        out = ffi.new("wasmtime_module_t **")
        error = lib.wasmtime_module_new(engine.ptr, wasm, len(wasm), out)
        if error != ffi.NULL:
            raise ExecutionFailed(f"invalid WebAssembly module: {one_line(error_message(error))}",
                                  "invalid_module")
        return out[0]

    @staticmethod
    def _deserialize(engine: Engine, cache: ModuleCache, sha256: str,
                     options: EngineOptions) -> Any:
        cached = cache.load(sha256, options.cache_key)  # verified before wasmtime sees it
        if cached is None:
            return None
        out = ffi.new("wasmtime_module_t **")
        error = lib.wasmtime_module_deserialize(engine.ptr, cached, len(cached), out)
        if error != ffi.NULL:
            error_message(error)
            cache.discard(sha256, options.cache_key)
            return None
        return out[0]

    @staticmethod
    def _serialize(cache: ModuleCache, module: Any, sha256: str, options: EngineOptions) -> None:
        vec = ffi.new("wasm_byte_vec_t *")
        error = lib.wasmtime_module_serialize(module, vec)
        if error != ffi.NULL:
            error_message(error)
            return
        try:
            cache.store(sha256, options.cache_key, bytes(ffi.buffer(vec.data, vec.size)))
        finally:
            lib.wasm_byte_vec_delete(vec)

    def _cache(self, cache_dir: Path | bool | None) -> ModuleCache | None:
        directory = default_cache_dir() if cache_dir is True else (cache_dir or None)
        if directory is None:
            return None
        directory = Path(directory)
        with self._lock:
            cache = self._caches.get(directory)
            if cache is None:
                cache = self._caches[directory] = ModuleCache(directory, self._cache_max_bytes)
                while len(self._caches) > MAX_CACHE_DIRS:
                    self._caches.popitem(last=False)
            else:
                self._caches.move_to_end(directory)
            return cache

    # ------------------------------------------------------------------ engines

    def _linker(self, options: EngineOptions) -> Linker:
        with self._lock:
            if self._closed:
                raise ChannelClosed("this WASM host is closed")
            linker = self._linkers.get(options)
            if linker is None:
                engine = self._engines.get(options)
                if engine is None:
                    engine = self._engines[options] = Engine(options)
                linker = self._linkers[options] = Linker(engine)
            return linker

    def engine(self, options: EngineOptions) -> Engine:
        return self._linker(options).engine

    # ------------------------------------------------------------------ instances

    def track(self, session: GuestSession | CommandSession) -> None:
        with self._lock:
            if self._closed:
                raise ChannelClosed("this WASM host is closed")
            self._sessions.add(session)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close every instance started from this host's modules, then free the engines."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sessions = list(self._sessions)
            linkers, self._linkers = list(self._linkers.values()), {}
            engines, self._engines = list(self._engines.values()), {}
        for session in sessions:
            session.close()
        self.modules.clear()
        for linker in linkers:
            linker.close()
        for engine in engines:
            engine.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.modules)} modules"
        return f"<WasmHost {state}>"


_default: WasmHost | None = None
_default_lock = threading.Lock()


def default_host() -> WasmHost:
    """The process-wide host behind `spear.wasm.load` and `WasmRuntime()` (made on first use;
    a closed one is replaced)."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = WasmHost()
        return _default
