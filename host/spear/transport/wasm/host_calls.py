"""The host-call table: every function the host defines for guests, and the `spear` imports.

Each entry is an *unchecked* host function: wasmtime hands over the raw argument slots and
the implementation answers in place, with no per-call type objects. The implementation gets
the calling instance's `InstanceContext` (through the store's data pointer) and the caller.
A guest breaking the ABI inside a host call (`GuestFault`) traps with that message; a host
call that must stop the guest at its deadline (`GuestInterrupted`) traps as an epoch
interrupt would; a `GuestAbort` traps with its message and is re-raised to the caller when
the guest has unwound (a KeyboardInterrupt inside a Python host function); any other
exception is a host bug and traps as `host error`, never unwinding through wasm frames.

How wasmtime reaches the implementation: with the native helper, through C callbacks in
`native/fastcall.c` (`spear_host_trampoline` enters Python through cffi's `extern "Python"`,
a direct C call; `spear.now` is answered in C); without it, through cffi ABI-mode callbacks
(a libffi closure each, several times slower).

The table is owned by a linker, which keeps the callbacks alive as long as anything made
from it. More entries are added with `add()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from spear.transport.wasm import abi
from spear.transport.wasm.capi import (
    EXTERN_MEMORY,
    TRAP_INTERRUPT,
    WASM_I32,
    WASM_I64,
    error_message,
    ffi,
    lib,
)
from spear.transport.wasm.guest_log import LEVELS, MAX_LOG_LINE
from spear.transport.wasm.guest_memory import GuestFault
from spear.transport.wasm.instance_context import InstanceContext
from spear.transport.wasm.native_call import native, native_ffi

Implementation = Callable[[InstanceContext, Any, Any], None]
CALLBACK_TYPE = "size_t(void *, wasmtime_caller_t *, wasmtime_val_raw_t *, size_t)"


class GuestInterrupted(Exception):
    """A host call reached the running call's interrupt deadline (a blocking WASI call)."""


class GuestAbort(Exception):
    """Stop the guest now (a trap with this message) and re-raise `cause` to the caller once
    it has unwound: what a Python host function raised that is not an `Exception`."""

    def __init__(self, message: str, cause: BaseException) -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True)
class HostImport:
    """One function the host defines for guests: `module.name` of wasm type params ->
    results, answered by `implementation(context, caller, args)`. `native` names a C
    callback of the helper that answers it without Python (used when the helper is loaded).
    """

    module: str
    name: str
    params: tuple[int, ...]
    results: tuple[int, ...]
    implementation: Implementation
    native: str | None = None


def _trap(message: str) -> int:
    encoded = message.encode()
    return int(ffi.cast("size_t", lib.wasmtime_trap_new(encoded, len(encoded))))


def trap_for(exc: BaseException, context: Any, label: str) -> int:
    """The trap (as an address) that stops the guest for what a host call raised."""
    if isinstance(exc, GuestFault):
        return _trap(str(exc))
    if isinstance(exc, GuestInterrupted):
        return int(ffi.cast("size_t", lib.wasmtime_trap_new_code(TRAP_INTERRUPT)))
    if isinstance(exc, GuestAbort):
        if context is not None:
            context.abort = exc.cause
        return _trap(str(exc))
    return _trap(f"{label}: host error: {type(exc).__name__}: {exc}")


def _run(implementation: Implementation, label: str, context: InstanceContext, caller: Any,
         args: Any) -> int:
    """Run one host call; what it raises becomes a trap (0: returned normally)."""
    try:
        implementation(context, caller, args)
    except Exception as exc:  # nothing may unwind through wasm frames
        return trap_for(exc, context, label)
    return 0


def _callback(function: HostImport) -> Any:
    """An ABI-mode callback (the path without the native helper)."""
    implementation = function.implementation
    label = f"{function.module}.{function.name}"
    from_handle = ffi.from_handle
    get_data = lib.wasmtime_context_get_data
    caller_context = lib.wasmtime_caller_context

    def callback(env: Any, caller: Any, args: Any, nargs: int) -> int:
        try:
            context = from_handle(get_data(caller_context(caller)))
        except Exception as exc:
            return _trap(f"{label}: host error: {type(exc).__name__}: {exc}")
        return _run(implementation, label, context, caller, args)

    return ffi.callback(CALLBACK_TYPE, callback)


# Implementations the native trampoline enters, by index (its `env`). Only host imports
# defined by this package are registered, once each, so the list stays small.
_NATIVE_ENTRIES: list[tuple[Implementation, str]] = []


def _native_index(function: HostImport) -> int:
    entry = (function.implementation, f"{function.module}.{function.name}")
    for index, known in enumerate(_NATIVE_ENTRIES):
        if known[0] is entry[0] and known[1] == entry[1]:
            return index
    _NATIVE_ENTRIES.append(entry)
    return len(_NATIVE_ENTRIES) - 1


def _address(symbol: str) -> Any:
    return native_ffi.cast("void *", int(ffi.cast("uintptr_t", ffi.addressof(lib, symbol))))


if native is not None:
    _EXTERN_SIZE = ffi.sizeof("wasmtime_extern_t")
    if _EXTERN_SIZE > 64:
        raise ImportError(f"wasmtime_extern_t is {_EXTERN_SIZE} bytes; the native helper "
                          "allows 64")
    native.spear_host_api(native_ffi.new("spear_host_api_t *", {
        "caller_context": _address("wasmtime_caller_context"),
        "context_get_data": _address("wasmtime_context_get_data"),
        "caller_export_get": _address("wasmtime_caller_export_get"),
        "memory_data": _address("wasmtime_memory_data"),
        "memory_data_size": _address("wasmtime_memory_data_size"),
        "trap_new": _address("wasmtime_trap_new"),
        "extern_size": _EXTERN_SIZE,
        "extern_of": ffi.offsetof("wasmtime_extern_t", "of"),
        "extern_memory": EXTERN_MEMORY,
    }))
    _native_from_handle = native_ffi.from_handle

    @native_ffi.def_extern()  # type: ignore[untyped-decorator]
    def spear_py_host(index: int, data: Any, caller: Any, args: Any) -> int:
        try:
            implementation, label = _NATIVE_ENTRIES[index]
            context = _native_from_handle(data)
        except Exception as exc:
            return _trap(f"host error: {type(exc).__name__}: {exc}")
        return _run(implementation, label, context, caller, args)


def _functype(params: tuple[int, ...], results: tuple[int, ...]) -> Any:
    def vec(kinds: tuple[int, ...]) -> Any:
        out = ffi.new("wasm_valtype_vec_t *")
        if kinds:
            items = ffi.new("wasm_valtype_t *[]", [lib.wasm_valtype_new(k) for k in kinds])
            lib.wasm_valtype_vec_new(out, len(kinds), items)
        else:
            lib.wasm_valtype_vec_new_empty(out)
        return out

    return lib.wasm_functype_new(vec(params), vec(results))


class HostCallTable:
    def __init__(self, functions: Iterable[HostImport] = ()) -> None:
        self._functions: dict[tuple[str, str], HostImport] = {}
        self._callbacks: dict[tuple[str, str], tuple[Any, Any]] = {}
        for function in functions:
            self.add(function)

    def add(self, function: HostImport) -> None:
        key = (function.module, function.name)
        self._functions[key] = function
        if native is None:
            self._callbacks[key] = (_callback(function), ffi.NULL)
            return
        symbol = function.native or "spear_host_trampoline"
        pointer = native_ffi.addressof(native, symbol)
        env = 0 if function.native else _native_index(function)
        self._callbacks[key] = (
            ffi.cast("wasmtime_func_unchecked_callback_t",
                     int(native_ffi.cast("uintptr_t", pointer))),
            ffi.cast("void *", env))

    def names(self, module: str) -> set[str]:
        """The functions this table defines in `module`."""
        return {name for mod, name in self._functions if mod == module}

    def signature(self, module: str, name: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        function = self._functions.get((module, name))
        return None if function is None else (function.params, function.results)

    def define_on(self, linker: Any) -> None:
        """Define every entry on a wasmtime linker (shadowing earlier definitions)."""
        for key, function in self._functions.items():
            functype = _functype(function.params, function.results)
            module, name = (part.encode() for part in key)
            callback, env = self._callbacks[key]
            error = lib.wasmtime_linker_define_func_unchecked(
                linker, module, len(module), name, len(name), functype,
                callback, env, ffi.NULL)
            lib.wasm_functype_delete(functype)
            if error != ffi.NULL:
                raise RuntimeError(f"cannot define {module.decode()}.{name.decode()}: "
                                   f"{error_message(error)}")


# ------------------------------------------------------------------ the `spear` imports


def _i32(slot: Any) -> int:
    return int(slot.i32)


def _send(context: InstanceContext, caller: Any, args: Any) -> None:
    memory = context.memory_for(caller, "spear.send")
    topic_ptr, topic_len = memory.check(_i32(args[0]), _i32(args[1]), "spear.send topic")
    data_ptr, data_len = memory.check(_i32(args[2]), _i32(args[3]), "spear.send data")
    mailbox = context.mailbox
    if topic_len + data_len > mailbox.max_message_size:
        args[0].i32 = abi.ERR_TOO_LARGE  # refused before copying anything
        return
    if not mailbox.has_room(topic_len + data_len):
        args[0].i32 = abi.ERR_FULL
        return
    view = memory.view
    args[0].i32 = mailbox.guest_send(view[topic_ptr:topic_ptr + topic_len].tobytes(),
                                     view[data_ptr:data_ptr + data_len].tobytes())


def _recv(context: InstanceContext, caller: Any, args: Any) -> None:
    memory = context.memory_for(caller, "spear.recv")
    mailbox = context.mailbox
    message = mailbox.guest_peek()
    if message is None:
        args[0].i32 = 0
        return
    topic, data = message
    encoded = topic.encode()
    memory.write(_i32(args[4]), len(encoded).to_bytes(4, "little") +
                 len(data).to_bytes(4, "little"), "spear.recv sizes")
    if (len(encoded) > (_i32(args[1]) & abi.U32_MAX)
            or len(data) > (_i32(args[3]) & abi.U32_MAX)):
        args[0].i32 = abi.ERR_BUFFER_TOO_SMALL
        return
    memory.write(_i32(args[0]), encoded, "spear.recv topic")
    memory.write(_i32(args[2]), data, "spear.recv data")
    mailbox.guest_took()
    args[0].i32 = 1


def _log(context: InstanceContext, caller: Any, args: Any) -> None:
    memory = context.memory_for(caller, "spear.log")
    ptr, length = memory.check(_i32(args[1]), _i32(args[2]), "spear.log")  # the whole range
    level = LEVELS.get(_i32(args[0]), LEVELS[2])
    if context.log.enabled(level):
        context.log.write(level, memory.view[ptr:ptr + min(length, MAX_LOG_LINE)].tobytes())


def _now(context: InstanceContext, caller: Any, args: Any) -> None:
    args[0].i64 = time.monotonic_ns()


SPEAR_FUNCTIONS = (
    HostImport(abi.IMPORT_MODULE, "send", (WASM_I32,) * 4, (WASM_I32,), _send),
    HostImport(abi.IMPORT_MODULE, "recv", (WASM_I32,) * 5, (WASM_I32,), _recv),
    HostImport(abi.IMPORT_MODULE, "log", (WASM_I32,) * 3, (), _log),
    HostImport(abi.IMPORT_MODULE, "now", (), (WASM_I64,), _now, native="spear_host_now"),
)
