"""What an embedder binds to one instance: Python host functions, configuration, WASI options.

Given at load (`spear.wasm.load(..., host_functions=, config=, wasi=)`, the module's
defaults), at instantiation or in a `FunctionSpec` (the instance's own, which win: host
functions and configuration keys are merged over the module's, `wasi` replaces it). Shared by
every store the instance has (a replacement after a trap sees the same bindings).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

from spear.transport.wasm.guest_config import check_config
from spear.transport.wasm.host_functions import HostFunction, check_host_functions
from spear.transport.wasm.wasi_config import WasiConfig

NO_WASI = WasiConfig()


class Bindings:
    def __init__(self, functions: Mapping[str, HostFunction], config: Mapping[str, str],
                 wasi: WasiConfig, max_output: int,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.host_functions = dict(functions)
        # Looked up by the bytes the guest passes, with no decoding per call.
        self.functions: dict[bytes, tuple[str, HostFunction]] = {
            name.encode(): (name, function) for name, function in functions.items()}
        self.config = dict(config)
        self.config_bytes: dict[bytes, bytes] = {
            key.encode(): value.encode() for key, value in config.items()}
        self.wasi = wasi
        self.max_output = max_output
        self.loop = loop
        self.has_async = any(f.is_async for f in functions.values())
        # Calls may run on the event loop only when no host function can block it.
        self.inline_safe = all(f.inline_safe for f in functions.values())
        # Re-entrance: the thread running one of these host functions now (0: none), and
        # the loop an async one is awaited on. A call into the instance from either would
        # wait for itself.
        self.host_thread = 0
        self.awaiting_loop: asyncio.AbstractEventLoop | None = None

    def reentrant(self) -> bool:
        """Whether the current thread is inside one of this instance's host functions (so
        waiting for the instance would wait for itself)."""
        if self.host_thread == threading.get_ident():
            return True
        loop = self.awaiting_loop
        if loop is None:
            return False
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False


def make_bindings(module_bindings: Bindings | None, *, host_functions: Any = None,
                  config: Any = None, wasi: Any = None, max_output: int,
                  loop: asyncio.AbstractEventLoop | None = None) -> Bindings:
    """An instance's bindings: its own over the module's defaults (checked here)."""
    functions = dict(module_bindings.host_functions) if module_bindings else {}
    functions.update(check_host_functions(host_functions))
    merged_config = dict(module_bindings.config) if module_bindings else {}
    if config is not None:
        merged_config.update(check_config(config))
        check_config(merged_config)  # the merged whole is bounded too
    if wasi is not None and not isinstance(wasi, WasiConfig):
        raise TypeError(f"wasi must be a spear.wasm.WasiConfig, not {type(wasi).__name__}")
    chosen = wasi or (module_bindings.wasi if module_bindings else NO_WASI)
    return Bindings(functions, merged_config, chosen, max_output, loop)
