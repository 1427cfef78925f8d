"""A spear guest module, loaded: its compiled code, its limits, and `instantiate()`.

Loading checks everything it can before the first call: the bytes are WebAssembly, every
export the host calls has its ABI type, the imports link, and one probe instance passes the
ABI handshake within the set-up timeout (so `spear inspect` can report the version).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from spear.errors import ExecutionFailed
from spear.transport.wasm.arguments import check_positive_int, check_timeout
from spear.transport.wasm.compiled_module import CompiledModule
from spear.transport.wasm.engine import Engine, EngineOptions
from spear.transport.wasm.limits import (
    DEFAULT_MAX_MESSAGE,
    DEFAULT_MEMORY_LIMIT,
    MAX_MEMORY_LIMIT,
    SETUP_TIMEOUT,
    GuestLimits,
)

if TYPE_CHECKING:
    from spear.transport.wasm.instance import WasmInstance
    from spear.transport.wasm.wasm_host import WasmHost

WASM_MAGIC = b"\x00asm"
__all__ = ["DEFAULT_MEMORY_LIMIT", "WasmModule"]


class WasmModule:
    """A guest function module, compiled and linked; `instantiate()` makes instances."""

    def __init__(self, compiled: CompiledModule, host: WasmHost, *, name: str,
                 memory_limit: int, fuel: int | None, setup_timeout: float) -> None:
        self.compiled = compiled
        self.host = host
        self.name = name
        self.memory_limit = memory_limit
        self.fuel = fuel
        self.setup_timeout = setup_timeout
        self.sha256 = compiled.sha256
        exports = compiled.exports
        self.handlers = list(exports.handlers)
        self.handler_names = frozenset(exports.handlers)
        self.has_dispatch = exports.has_dispatch
        self.has_initialize = exports.has_initialize
        self.uses_wasi = compiled.uses_wasi
        self.abi_version: int | None = None
        # One probe instance checks the ABI handshake now, so a bad module fails at load time
        # rather than at its first call.
        probe = self.instantiate()
        self.abi_version = probe._session.abi_version
        probe.close()

    @property
    def engine(self) -> Engine:
        return self.compiled.engine

    @classmethod
    def _load(cls, host: WasmHost, source: str | Path | bytes | bytearray | memoryview, *,
              memory_limit: int | None = None, fuel: int | None = None,
              cache_dir: Path | bool | None = True, setup_timeout: float | None = None,
              name: str | None = None) -> WasmModule:
        if memory_limit is not None:
            check_positive_int(memory_limit, "memory_limit", 65536, MAX_MEMORY_LIMIT)
        if fuel is not None:
            check_positive_int(fuel, "fuel", 1, (1 << 63) - 1)
        setup = check_timeout(setup_timeout, "setup_timeout") or SETUP_TIMEOUT
        if isinstance(source, bytes | bytearray | memoryview):
            wasm = bytes(source)
        elif isinstance(source, str | Path):
            path = Path(source)
            try:
                wasm = path.read_bytes()
            except OSError as exc:
                raise ExecutionFailed(f"cannot read module {path}: {exc.strerror}", "io") \
                    from exc
            name = name or path.stem
        else:
            raise TypeError(f"source must be a path or bytes, not {type(source).__name__}")
        if not wasm.startswith(WASM_MAGIC):
            raise ExecutionFailed("not a WebAssembly module (missing \\0asm header)",
                                  "invalid_module")
        compiled = host.compiled(wasm, EngineOptions(fuel=fuel is not None), cache_dir)
        return cls(compiled, host, name=name or "module",
                   memory_limit=memory_limit or DEFAULT_MEMORY_LIMIT, fuel=fuel,
                   setup_timeout=setup)

    @classmethod
    def load(cls, source: str | Path | bytes | bytearray | memoryview, *,
             memory_limit: int | None = None, fuel: int | None = None,
             cache_dir: Path | bool | None = True,
             setup_timeout: float | None = None) -> WasmModule:
        """Load through the process-wide default host (see `spear.wasm.load`)."""
        from spear.transport.wasm.wasm_host import default_host

        return cls._load(default_host(), source, memory_limit=memory_limit, fuel=fuel,
                         cache_dir=cache_dir, setup_timeout=setup_timeout)

    def instantiate(self, *, label: str | None = None,
                    max_message_size: int = DEFAULT_MAX_MESSAGE,
                    limits: GuestLimits | None = None) -> WasmInstance:
        """A new instance with its own store and memory (the start function, `_initialize`
        and the handshake run now, within the module's set-up timeout)."""
        from spear.transport.wasm.instance import WasmInstance

        return WasmInstance(self, label=label, max_message_size=max_message_size,
                            limits=limits)

    def __repr__(self) -> str:
        return f"<WasmModule {self.name} handlers={self.handlers}>"
