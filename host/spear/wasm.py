"""Embed WASM functions in Python: `spear.wasm.load(path).instantiate().call(name, data)`.

The synchronous, minimal surface for the embedding case (like Extism's `Plugin.call`, much
faster). The async runtime API is `spear.WasmRuntime`. Modules loaded here belong to a
process-wide `WasmHost`; make your own `WasmHost()` to own (and `close()`) engines, compiled
modules and instances yourself.
"""

from __future__ import annotations

from pathlib import Path

from spear.transport.wasm.instance import WasmInstance
from spear.transport.wasm.limits import (
    DEFAULT_LIMITS,
    DEFAULT_LOOP_BUDGET,
    DEFAULT_MAX_MESSAGE,
    DEFAULT_MEMORY_LIMIT,
    MAX_TIMEOUT,
    SETUP_TIMEOUT,
    GuestLimits,
)
from spear.transport.wasm.mailbox import Mailbox
from spear.transport.wasm.module import WasmModule
from spear.transport.wasm.native_call import active as native_active
from spear.transport.wasm.wasm_host import WasmHost, default_host


def load(
    source: str | Path | bytes | bytearray | memoryview,
    *,
    memory_limit: int | None = None,
    fuel: int | None = None,
    setup_timeout: float | None = None,
) -> WasmModule:
    """Compile (or fetch from the compiled-module caches) a spear guest module.

    `memory_limit` caps each instance's linear memory (default 64 MiB); `fuel` bounds the work
    of each call (off by default: fuel metering slows guests down); `setup_timeout` (default
    5 s) bounds a new instance's start function, `_initialize` and handshake.
    """
    return default_host().load(source, memory_limit=memory_limit, fuel=fuel,
                               setup_timeout=setup_timeout)


__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_LOOP_BUDGET",
    "DEFAULT_MAX_MESSAGE",
    "DEFAULT_MEMORY_LIMIT",
    "MAX_TIMEOUT",
    "SETUP_TIMEOUT",
    "GuestLimits",
    "Mailbox",
    "WasmHost",
    "WasmInstance",
    "WasmModule",
    "default_host",
    "load",
    "native_active",
]
