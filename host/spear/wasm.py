"""Embed WASM functions in Python: `spear.wasm.load(path).instantiate().call(name, data)`.

The synchronous, minimal surface for the embedding case (like Extism's `Plugin.call`, much
faster). The async runtime API is `spear.WasmRuntime`.
"""

from __future__ import annotations

from pathlib import Path

from spear.transport.wasm.instance import WasmInstance
from spear.transport.wasm.module import DEFAULT_MEMORY_LIMIT, WasmModule
from spear.transport.wasm.native_call import active as native_active


def load(
    source: str | Path | bytes,
    *,
    memory_limit: int | None = None,
    fuel: int | None = None,
) -> WasmModule:
    """Compile (or fetch from the compiled-module cache) a spear guest module.

    `memory_limit` caps each instance's linear memory (default 64 MiB); `fuel` bounds the work
    of each call (off by default: fuel metering slows guests down).
    """
    return WasmModule.load(source, memory_limit=memory_limit, fuel=fuel)


__all__ = ["DEFAULT_MEMORY_LIMIT", "WasmInstance", "WasmModule", "load", "native_active"]
