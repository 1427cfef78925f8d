"""Wasmtime engines, one per distinct configuration, each with its epoch ticker."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from spear.transport.wasm.capi import ffi, lib
from spear.transport.wasm.native_call import native_ffi
from spear.transport.wasm.ticker import EpochTicker

DEFAULT_MAX_WASM_STACK = 512 * 1024
MEMORY_RESERVATION = 4 << 30


@dataclass(frozen=True)
class EngineOptions:
    """Everything that changes compiled code; modules are cached per these options."""

    fuel: bool = False
    max_wasm_stack: int = DEFAULT_MAX_WASM_STACK

    @property
    def cache_key(self) -> str:
        return f"fuel={int(self.fuel)},stack={self.max_wasm_stack}"


class Engine:
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
        self.ptr: Any = lib.wasm_engine_new_with_config(config)  # takes ownership of config
        if self.ptr == ffi.NULL:
            raise RuntimeError("wasmtime could not create an engine")
        # Native calls count themselves here; the pure-Python path counts in the ticker.
        self.ticker_state: Any = (native_ffi.new("spear_ticker_t *") if native_ffi is not None
                                  else _NoNativeCalls())
        self.ticker = EpochTicker(lib, self.ptr, self.ticker_state)


class _NoNativeCalls:
    running = 0


_engines: dict[EngineOptions, Engine] = {}
_engines_lock = threading.Lock()


def get_engine(options: EngineOptions) -> Engine:
    """Engines live for the whole process: compiled modules and stores point into them."""
    with _engines_lock:
        engine = _engines.get(options)
        if engine is None:
            engine = _engines[options] = Engine(options)
        return engine
