"""A wasmtime engine and its epoch ticker, owned together: closing one stops both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spear.transport.wasm.capi import WASMTIME_VERSION, ffi, lib
from spear.transport.wasm.managed import Managed
from spear.transport.wasm.native_call import FUNCTIONS, native, native_ffi, to_native
from spear.transport.wasm.ticker import EpochTicker

DEFAULT_MAX_WASM_STACK = 512 * 1024
MEMORY_RESERVATION = 4 << 30


@dataclass(frozen=True)
class EngineOptions:
    """Everything that changes compiled code; compiled modules are kept per these options."""

    fuel: bool = False
    max_wasm_stack: int = DEFAULT_MAX_WASM_STACK

    @property
    def cache_key(self) -> str:
        """Names the engine configuration in the compiled-module cache (with the version)."""
        return (f"wasmtime={WASMTIME_VERSION},fuel={int(self.fuel)},"
                f"stack={self.max_wasm_stack},epoch=1,reservation={MEMORY_RESERVATION},"
                "may_move=0,cow=0")


class Engine(Managed):
    _what = "WASM engine"

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        config = lib.wasm_config_new()
        lib.wasmtime_config_epoch_interruption_set(config, True)
        lib.wasmtime_config_consume_fuel_set(config, options.fuel)
        lib.wasmtime_config_max_wasm_stack_set(config, options.max_wasm_stack)
        # A 4 GiB reservation that never moves: a 32-bit linear memory keeps its base address
        # for life, so the host's view of guest memory stays valid across `memory.grow`.
        lib.wasmtime_config_memory_reservation_set(config, MEMORY_RESERVATION)
        lib.wasmtime_config_memory_may_move_set(config, False)
        # No copy-on-write memory images: each would hold a file descriptor (a memfd) per
        # compiled module; data segments are copied at instantiation instead.
        lib.wasmtime_config_memory_init_cow_set(config, False)
        ptr = lib.wasm_engine_new_with_config(config)  # takes ownership of config
        if ptr == ffi.NULL:
            raise RuntimeError("wasmtime could not create an engine")
        super().__init__(ptr)
        self.ticker = EpochTicker(
            lib, ptr, native, native_ffi,
            native_engine=to_native(ptr) if native is not None else None,
            native_increment=FUNCTIONS.get("increment_epoch"))

    def _free(self, ptr: Any) -> None:
        # The ticker uses the engine pointer: stop it first. Modules and stores made from
        # this engine keep wasmtime's engine alive on their own.
        self.ticker.stop()
        lib.wasm_engine_delete(ptr)
