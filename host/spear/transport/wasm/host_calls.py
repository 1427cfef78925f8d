"""The host-call table: every function the host defines for guests, and the `spear` imports.

Each entry is an *unchecked* host function: wasmtime hands over the raw argument slots and
the implementation answers in place, with no per-call type objects. The implementation gets
the calling instance's `InstanceContext` (through the store's data pointer) and the caller.
A guest breaking the ABI inside a host call (`GuestFault`) traps with that message; a host
call that must stop the guest at its deadline (`GuestInterrupted`) traps as an epoch
interrupt would; any other exception is a host bug and traps as `host error`, never
unwinding through wasm frames.

The table is owned by a linker, which keeps the callbacks alive as long as anything made
from it. More entries (other modules, Python host functions) are added with `add()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from spear.transport.wasm import abi
from spear.transport.wasm.capi import TRAP_INTERRUPT, WASM_I32, WASM_I64, error_message, ffi, lib
from spear.transport.wasm.guest_log import LEVELS, MAX_LOG_LINE
from spear.transport.wasm.guest_memory import GuestFault
from spear.transport.wasm.instance_context import InstanceContext

Implementation = Callable[[InstanceContext, Any, Any], None]
CALLBACK_TYPE = "size_t(void *, wasmtime_caller_t *, wasmtime_val_raw_t *, size_t)"


class GuestInterrupted(Exception):
    """A host call reached the running call's interrupt deadline (a blocking WASI call)."""


@dataclass(frozen=True)
class HostFunction:
    module: str
    name: str
    params: tuple[int, ...]
    results: tuple[int, ...]
    implementation: Implementation


def _trap(message: str) -> int:
    encoded = message.encode()
    return int(ffi.cast("size_t", lib.wasmtime_trap_new(encoded, len(encoded))))


def _callback(function: HostFunction) -> Any:
    implementation = function.implementation
    label = f"{function.module}.{function.name}"
    from_handle = ffi.from_handle
    get_data = lib.wasmtime_context_get_data
    caller_context = lib.wasmtime_caller_context

    def callback(env: Any, caller: Any, args: Any, nargs: int) -> int:
        try:
            context = from_handle(get_data(caller_context(caller)))
            implementation(context, caller, args)
        except GuestFault as fault:
            return _trap(str(fault))
        except GuestInterrupted:
            return int(ffi.cast("size_t", lib.wasmtime_trap_new_code(TRAP_INTERRUPT)))
        except Exception as exc:  # a host bug must not unwind through wasm frames
            return _trap(f"{label}: host error: {type(exc).__name__}: {exc}")
        return 0

    return ffi.callback(CALLBACK_TYPE, callback)


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
    def __init__(self, functions: Iterable[HostFunction] = ()) -> None:
        self._functions: dict[tuple[str, str], HostFunction] = {}
        self._callbacks: dict[tuple[str, str], Any] = {}
        for function in functions:
            self.add(function)

    def add(self, function: HostFunction) -> None:
        key = (function.module, function.name)
        self._functions[key] = function
        self._callbacks[key] = _callback(function)

    def define_on(self, linker: Any) -> None:
        """Define every entry on a wasmtime linker (shadowing earlier definitions)."""
        for key, function in self._functions.items():
            functype = _functype(function.params, function.results)
            module, name = (part.encode() for part in key)
            error = lib.wasmtime_linker_define_func_unchecked(
                linker, module, len(module), name, len(name), functype,
                self._callbacks[key], ffi.NULL, ffi.NULL)
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
    HostFunction(abi.IMPORT_MODULE, "send", (WASM_I32,) * 4, (WASM_I32,), _send),
    HostFunction(abi.IMPORT_MODULE, "recv", (WASM_I32,) * 5, (WASM_I32,), _recv),
    HostFunction(abi.IMPORT_MODULE, "log", (WASM_I32,) * 3, (), _log),
    HostFunction(abi.IMPORT_MODULE, "now", (), (WASM_I64,), _now),
)
