"""A loaded module: its compiled code, its limits, its bindings, and `instantiate()`.

Two kinds of module load (module_info.py): spear guests (ABI exports; called by handler name)
and WASI commands (`_start`; each call a fresh run). Loading checks everything it can before
the first call: the bytes are WebAssembly, every export the host calls has its ABI type, the
imports link, and, for a spear guest, one probe instance passes the ABI handshake within the
set-up timeout (so `spear inspect` can report the version). Other modules (WASI reactors,
plain modules) are refused with a message saying what they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from spear.errors import ExecutionFailed
from spear.transport.wasm import abi
from spear.transport.wasm.arguments import check_positive_int, check_timeout
from spear.transport.wasm.bindings import Bindings, make_bindings
from spear.transport.wasm.compiled_module import CompiledModule
from spear.transport.wasm.engine import Engine, EngineOptions
from spear.transport.wasm.limits import (
    DEFAULT_MAX_MESSAGE,
    DEFAULT_MEMORY_LIMIT,
    MAX_MEMORY_LIMIT,
    SETUP_TIMEOUT,
    GuestLimits,
)
from spear.transport.wasm.module_info import KIND_NAMES, ModuleInfo

if TYPE_CHECKING:
    from spear.transport.wasm.instance import WasmInstance
    from spear.transport.wasm.wasm_host import WasmHost

WASM_MAGIC = b"\x00asm"
__all__ = ["DEFAULT_MEMORY_LIMIT", "WasmModule", "read_module"]
Source = str | Path | bytes | bytearray | memoryview


def read_module(source: Source) -> tuple[bytes, str | None]:
    """(the module's bytes, a name from its path). A missing file raises FileNotFoundError
    (any unreadable one its OSError); bytes that are not WebAssembly, ExecutionFailed."""
    name = None
    if isinstance(source, bytes | bytearray | memoryview):
        wasm = bytes(source)
    elif isinstance(source, str | Path):
        path = Path(source)
        wasm = path.read_bytes()
        name = path.stem
    else:
        raise TypeError(f"source must be a path or bytes, not {type(source).__name__}")
    if not wasm.startswith(WASM_MAGIC):
        raise ExecutionFailed("not a WebAssembly module (missing \\0asm header)",
                              "invalid_module")
    return wasm, name


class WasmModule:
    """A function module, compiled and linked; `instantiate()` makes instances."""

    def __init__(self, compiled: CompiledModule, host: WasmHost, *, name: str,
                 memory_limit: int, fuel: int | None, setup_timeout: float,
                 bindings: Bindings | None = None) -> None:
        self.compiled = compiled
        self.host = host
        self.name = name
        self.memory_limit = memory_limit
        self.fuel = fuel
        self.setup_timeout = setup_timeout
        self.sha256 = compiled.sha256
        self.info: ModuleInfo = compiled.info
        self.kind = self.info.kind
        self.bindings = bindings or make_bindings(None, max_output=DEFAULT_MAX_MESSAGE)
        self.uses_wasi = compiled.uses_wasi
        self.abi_version: int | None = None
        if self.kind == "spear":
            exports = compiled.exports
            self.handlers = list(exports.handlers)
            self.has_dispatch = exports.has_dispatch
            self.has_initialize = exports.has_initialize
        elif self.kind == "wasi_command":
            _check_start(self.info)
            self.handlers = [abi.EXPORT_START]
            self.has_dispatch = False
            self.has_initialize = False
        else:
            raise ExecutionFailed(
                f"module is not a spear guest: missing export(s) {abi.EXPORT_ABI_VERSION}, "
                f"{abi.EXPORT_INIT}, {abi.EXPORT_RESERVE}; and it is a "
                f"{KIND_NAMES[self.kind]}, not a WASI command (no {abi.EXPORT_START} export), "
                "so spear cannot call it (see docs/wasm-abi.md; `spear inspect` describes it)",
                "invalid_module")
        self.handler_names = frozenset(self.handlers)
        compiled.instance_pre  # noqa: B018 - link now: a missing import fails the load
        if self.kind == "spear":
            # One probe instance checks the ABI handshake now, so a bad module fails at load
            # time rather than at its first call.
            probe = self.instantiate()
            self.abi_version = probe._session.abi_version
            probe.close()

    @property
    def engine(self) -> Engine:
        return self.compiled.engine

    @classmethod
    def _load(cls, host: WasmHost, source: Source, *, memory_limit: int | None = None,
              fuel: int | None = None, cache_dir: Path | bool | None = True,
              setup_timeout: float | None = None, name: str | None = None,
              host_functions: Any = None, config: Any = None,
              wasi: Any = None) -> WasmModule:
        if memory_limit is not None:
            check_positive_int(memory_limit, "memory_limit", 65536, MAX_MEMORY_LIMIT)
        if fuel is not None:
            check_positive_int(fuel, "fuel", 1, (1 << 63) - 1)
        setup = check_timeout(setup_timeout, "setup_timeout") or SETUP_TIMEOUT
        bindings = make_bindings(None, host_functions=host_functions, config=config, wasi=wasi,
                                 max_output=DEFAULT_MAX_MESSAGE)
        wasm, path_name = read_module(source)
        compiled = host.compiled(wasm, EngineOptions(fuel=fuel is not None), cache_dir)
        return cls(compiled, host, name=name or path_name or "module",
                   memory_limit=memory_limit or DEFAULT_MEMORY_LIMIT, fuel=fuel,
                   setup_timeout=setup, bindings=bindings)

    @classmethod
    def load(cls, source: Source, *, memory_limit: int | None = None, fuel: int | None = None,
             cache_dir: Path | bool | None = True, setup_timeout: float | None = None,
             host_functions: Any = None, config: Any = None, wasi: Any = None) -> WasmModule:
        """Load through the process-wide default host (see `spear.wasm.load`)."""
        from spear.transport.wasm.wasm_host import default_host

        return cls._load(default_host(), source, memory_limit=memory_limit, fuel=fuel,
                         cache_dir=cache_dir, setup_timeout=setup_timeout,
                         host_functions=host_functions, config=config, wasi=wasi)

    def instantiate(self, *, label: str | None = None,
                    max_message_size: int = DEFAULT_MAX_MESSAGE,
                    limits: GuestLimits | None = None, host_functions: Any = None,
                    config: Any = None, wasi: Any = None) -> WasmInstance:
        """A new instance with its own store and memory (the start function, `_initialize`
        and the handshake run now, within the module's set-up timeout). `host_functions` and
        `config` are merged over the module's; `wasi` replaces the module's."""
        from spear.transport.wasm.instance import WasmInstance

        return WasmInstance(self, label=label, max_message_size=max_message_size,
                            limits=limits, host_functions=host_functions, config=config,
                            wasi=wasi)

    def __repr__(self) -> str:
        return f"<WasmModule {self.name} ({KIND_NAMES[self.kind]}) handlers={self.handlers}>"


def _check_start(info: ModuleInfo) -> None:
    for item in info.exports:
        if item.name == abi.EXPORT_START:
            if item.kind != "func" or item.type != "() -> ()":
                raise ExecutionFailed(
                    f"export {abi.EXPORT_START!r} of a WASI command must have type () -> (), "
                    f"but it is {item.kind} {item.type} (see docs/wasm-abi.md)", "abi")
            return
    raise AssertionError("a WASI command exports _start by definition")
