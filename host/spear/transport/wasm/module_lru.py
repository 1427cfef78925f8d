"""Compiled modules kept for reuse, bounded by count and bytes, least recently used first out.

The LRU only keeps modules warm: an evicted module stays alive while a `WasmModule` or an
instance still uses it and is freed with the last of them, so a host that loads ever new
modules holds a bounded number of them (and, the engine making no copy-on-write images, no
file descriptor for any of them).
"""

from __future__ import annotations

import collections
import threading

from spear.transport.wasm.compiled_module import CompiledModule
from spear.transport.wasm.engine import EngineOptions

DEFAULT_MAX_MODULES = 64
DEFAULT_MAX_MODULE_BYTES = 256 << 20

Key = tuple[str, EngineOptions]


class ModuleLRU:
    def __init__(self, max_modules: int = DEFAULT_MAX_MODULES,
                 max_bytes: int = DEFAULT_MAX_MODULE_BYTES) -> None:
        self.max_modules = max_modules
        self.max_bytes = max_bytes
        self._modules: collections.OrderedDict[Key, CompiledModule] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Key) -> CompiledModule | None:
        with self._lock:
            module = self._modules.get(key)
            if module is not None:
                if module.closed:
                    self._drop(key)
                    return None
                self._modules.move_to_end(key)
            return module

    def put(self, key: Key, module: CompiledModule) -> CompiledModule:
        """Keep `module`; if another thread put one under the same key first, that one."""
        with self._lock:
            existing = self._modules.get(key)
            if existing is not None and not existing.closed:
                self._modules.move_to_end(key)
                return existing
            if existing is not None:
                self._drop(key)
            self._modules[key] = module
            self._bytes += module.size
            while self._modules and (len(self._modules) > self.max_modules
                                     or self._bytes > self.max_bytes):
                oldest = next(iter(self._modules))
                if oldest == key and len(self._modules) == 1:
                    break  # one module larger than the byte bound: keep just it
                self._drop(oldest)
            return module

    def _drop(self, key: Key) -> None:
        module = self._modules.pop(key)
        self._bytes -= module.size

    def clear(self) -> None:
        with self._lock:
            self._modules.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._modules)

    @property
    def bytes(self) -> int:
        return self._bytes
