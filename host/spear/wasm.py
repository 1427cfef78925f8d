"""Embed WASM functions in Python: `spear.wasm.load(path).instantiate().call(name, data)`.

The synchronous, minimal surface for the embedding case (like Extism's `Plugin.call`, much
faster): `load` gives a `Module` (spear guests and WASI commands), `Module.instantiate()` an
`Instance`, whose `call()` and `close()` are all most embedders need. Python host functions,
per-instance configuration and WASI options are arguments of `load` (defaults for every
instance) and `instantiate` (this instance's own). `describe` says what any module is.
docs/embedding.md is the guide, with a comparison to Extism and wasmtime-py. The async
runtime API is `spear.WasmRuntime`. Modules loaded here belong to a process-wide `WasmHost`;
make your own `WasmHost()` to own (and `close()`) engines, compiled modules and instances.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from spear.transport.wasm.abi import ABI_REVISION, ABI_VERSION
from spear.transport.wasm.host_functions import HostFunction
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
from spear.transport.wasm.module_info import ExportInfo, ImportInfo, MemoryInfo, ModuleInfo
from spear.transport.wasm.native_call import active as native_active
from spear.transport.wasm.wasi_config import WasiConfig
from spear.transport.wasm.wasm_host import WasmHost, default_host

# The embedding names (docs/embedding.md): a Module is loaded, an Instance is called.
Module = WasmModule
Instance = WasmInstance
HostFunctions = Mapping[str, Callable[[bytes], Any] | HostFunction]


def load(
    source: str | Path | bytes | bytearray | memoryview,
    *,
    memory_limit: int | None = None,
    fuel: int | None = None,
    setup_timeout: float | None = None,
    host_functions: HostFunctions | None = None,
    config: Mapping[str, str] | None = None,
    wasi: WasiConfig | None = None,
) -> WasmModule:
    """Compile (or fetch from the compiled-module caches) a spear guest or a WASI command.

    `memory_limit` caps each instance's linear memory (default 64 MiB); `fuel` bounds the work
    of each call (off by default: fuel metering slows guests down); `setup_timeout` (default
    5 s) bounds a new instance's start function, `_initialize` and handshake.
    `host_functions` (`{"name": fn}`, fn taking and returning bytes, or a `HostFunction`),
    `config` (`{"key": "value"}`) and `wasi` (a `WasiConfig`) are every instance's defaults.
    A missing file raises FileNotFoundError.
    """
    return default_host().load(source, memory_limit=memory_limit, fuel=fuel,
                               setup_timeout=setup_timeout, host_functions=host_functions,
                               config=config, wasi=wasi)


def describe(source: str | Path | bytes | bytearray | memoryview) -> ModuleInfo:
    """What any WebAssembly module is: its kind (spear guest, WASI command, WASI reactor,
    plain module), imports, exports and memories. Compiles it; runs nothing."""
    return default_host().describe(source)


__all__ = [
    "ABI_REVISION",
    "ABI_VERSION",
    "DEFAULT_LIMITS",
    "DEFAULT_LOOP_BUDGET",
    "DEFAULT_MAX_MESSAGE",
    "DEFAULT_MEMORY_LIMIT",
    "MAX_TIMEOUT",
    "SETUP_TIMEOUT",
    "ExportInfo",
    "GuestLimits",
    "HostFunction",
    "HostFunctions",
    "ImportInfo",
    "Instance",
    "Mailbox",
    "MemoryInfo",
    "Module",
    "ModuleInfo",
    "WasiConfig",
    "WasmHost",
    "WasmInstance",
    "WasmModule",
    "default_host",
    "describe",
    "load",
    "native_active",
]
