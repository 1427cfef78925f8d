"""The host imports a guest may use (module `spear`): send, recv, log, now.

They are defined once per engine as *unchecked* host functions: wasmtime hands us the raw
argument slots and we answer in place, with no per-call type objects. The calling instance
is found through the store's data pointer. Every guest pointer is bounds-checked against the
memory size at that moment; a bad one traps the guest (never a read outside its memory).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from spear.transport.wasm import abi
from spear.transport.wasm.capi import WASM_I32, WASM_I64, ffi, lib

if TYPE_CHECKING:
    from spear.transport.wasm.instance import WasmInstance

guest_log = logging.getLogger("spear.guest")

_LOG_LEVELS = {0: 5, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
MAX_LOG_LINE = 16 * 1024


class GuestFault(Exception):
    """A guest broke the ABI inside a host call; becomes a trap with this message."""


def _instance(caller: Any) -> WasmInstance:
    context = lib.wasmtime_caller_context(caller)
    instance: WasmInstance = ffi.from_handle(lib.wasmtime_context_get_data(context))
    return instance


def _i32(slot: Any) -> int:
    return int(slot.i32)


def _send(instance: WasmInstance, args: Any) -> None:
    topic = instance.read_guest(_i32(args[0]), _i32(args[1]), "spear.send topic")
    data = instance.read_guest(_i32(args[2]), _i32(args[3]), "spear.send data")
    args[0].i32 = instance.guest_sent(topic, data)


def _recv(instance: WasmInstance, args: Any) -> None:
    topic_buf, topic_cap = _i32(args[0]), _i32(args[1])
    data_buf, data_cap = _i32(args[2]), _i32(args[3])
    sizes_ptr = _i32(args[4])
    args[0].i32 = instance.guest_recv(topic_buf, topic_cap, data_buf, data_cap, sizes_ptr)


def _log(instance: WasmInstance, args: Any) -> None:
    level = _LOG_LEVELS.get(_i32(args[0]), logging.INFO)
    ptr, length = _i32(args[1]), _i32(args[2])
    instance.check_guest_range(ptr, length, "spear.log")  # the whole range, before truncating
    text = instance.read_guest(ptr, min(length & abi.U32_MAX, MAX_LOG_LINE),
                               "spear.log").decode("utf-8", "replace")
    guest_log.log(level, "%s", text, extra={"instance": instance.label})


def _now(instance: WasmInstance, args: Any) -> None:
    args[0].i64 = time.monotonic_ns()


HostCall = Callable[["WasmInstance", Any], None]

# name -> (params, results, implementation)
HOST_CALLS: dict[str, tuple[tuple[int, ...], tuple[int, ...], HostCall]] = {
    "send": ((WASM_I32,) * 4, (WASM_I32,), _send),
    "recv": ((WASM_I32,) * 5, (WASM_I32,), _recv),
    "log": ((WASM_I32,) * 3, (), _log),
    "now": ((), (WASM_I64,), _now),
}


def _make_callback(name: str, implementation: HostCall) -> Any:
    def callback(env: Any, caller: Any, args: Any, nargs: int) -> int:
        try:
            implementation(_instance(caller), args)
        except GuestFault as fault:
            message = str(fault).encode()
            return int(ffi.cast("size_t", lib.wasmtime_trap_new(message, len(message))))
        except Exception as exc:  # a host bug must not unwind through wasm frames
            message = f"spear.{name}: host error: {type(exc).__name__}: {exc}".encode()
            return int(ffi.cast("size_t", lib.wasmtime_trap_new(message, len(message))))
        return 0

    return ffi.callback("size_t(void *, wasmtime_caller_t *, wasmtime_val_raw_t *, size_t)",
                        callback)


# Callbacks must outlive every linker that points at them: keep them for the process.
_CALLBACKS = {name: _make_callback(name, impl) for name, (_, _, impl) in HOST_CALLS.items()}


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


def define_host_calls(linker: Any) -> None:
    """Define every `spear.*` import on a linker."""
    from spear.transport.wasm.capi import error_message

    module = abi.IMPORT_MODULE.encode()
    for name, (params, results, _) in HOST_CALLS.items():
        functype = _functype(params, results)
        encoded = name.encode()
        error = lib.wasmtime_linker_define_func_unchecked(
            linker, module, len(module), encoded, len(encoded), functype,
            _CALLBACKS[name], ffi.NULL, ffi.NULL,
        )
        lib.wasm_functype_delete(functype)
        if error != ffi.NULL:
            raise RuntimeError(f"cannot define spear.{name}: {error_message(error)}")
