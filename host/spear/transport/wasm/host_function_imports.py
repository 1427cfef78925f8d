"""The imports through which a guest calls Python host functions: `host_call`, `host_result`.

`host_call(name_ptr, name_len, in_ptr, in_len, out_ptr, out_cap, len_ptr) -> i32` runs the
host function bound under that name on the input and answers (the length always at len_ptr):

| result | meaning |
|---|---|
| `0` | the output is written at out_ptr |
| `-4` | the output is longer than out_cap; the host holds it for `host_result` |
| `-6` | no host function of that name (length 0) |
| `-7` | the host function failed; its message is the result, written if it fits, else held |

`host_result(out_ptr, out_cap) -> i32` writes the held result and returns its length, or
returns -4 (still too small; the result stays held) or -8 (nothing is held). A held result
is kept until the guest takes it or makes another `host_call`, so the Python function never
runs twice for one answer; a replaced instance has none.
"""

from __future__ import annotations

import threading
from typing import Any

from spear.transport.wasm import abi
from spear.transport.wasm.capi import WASM_I32
from spear.transport.wasm.host_calls import GuestAbort, GuestInterrupted, HostImport, trap_for
from spear.transport.wasm.host_functions import (
    DeadlinePassed,
    HostFunction,
    HostFunctionFailed,
    as_output,
    describe_failure,
    run_async,
)
from spear.transport.wasm.instance_context import InstanceContext
from spear.transport.wasm.native_call import native_ffi

_get_ident = threading.get_ident
_LEN = int.to_bytes


def _invoke(context: InstanceContext, name: str, entry: HostFunction,
            data: bytes) -> tuple[bytes, bool]:
    """(output, failed): run the function; a failure's output is its message."""
    bindings = context.bindings
    outer, bindings.host_thread = bindings.host_thread, _get_ident()
    try:
        if entry.is_async:
            value = run_async(bindings, entry.function, data, context.interrupt_at())
        else:
            value = entry.function(data)
        return as_output(name, value, bindings.max_output), False
    except HostFunctionFailed as failed:
        context.host_failure = failed.cause
        return str(failed).encode(), True
    except DeadlinePassed as exc:
        raise GuestInterrupted from exc  # the call's deadline passed while it ran
    except Exception as exc:
        context.host_failure = exc
        return describe_failure(name, exc).encode("utf-8", "replace"), True
    except BaseException as exc:
        raise GuestAbort(f"spear.host_call: host function {name!r} raised "
                         f"{type(exc).__name__}", exc) from exc
    finally:
        bindings.host_thread = outer


def _host_call(context: InstanceContext, caller: Any, args: Any) -> None:
    memory = context.memory_for(caller, "spear.host_call")
    name_ptr, name_len = memory.check(args[0].i32, args[1].i32, "spear.host_call name")
    in_ptr, in_len = memory.check(args[2].i32, args[3].i32, "spear.host_call input")
    out_ptr, out_cap = memory.check(args[4].i32, args[5].i32, "spear.host_call output")
    len_ptr, _ = memory.check(args[6].i32, 4, "spear.host_call length")
    view = memory.view
    context.held = None
    context.host_failure = None
    found = context.bindings.functions.get(view[name_ptr:name_ptr + name_len].tobytes())
    if found is None:
        view[len_ptr:len_ptr + 4] = b"\0\0\0\0"
        args[0].i32 = abi.ERR_NOT_FOUND
        return
    output, failed = _invoke(context, found[0], found[1], view[in_ptr:in_ptr + in_len].tobytes())
    size = len(output)
    view = memory.view  # a host function cannot grow guest memory; the view stays valid
    view[len_ptr:len_ptr + 4] = _LEN(size, 4, "little")
    if size <= out_cap:
        view[out_ptr:out_ptr + size] = output
        args[0].i32 = abi.ERR_HOST_FUNCTION if failed else abi.OK
        return
    context.held = output
    args[0].i32 = abi.ERR_HOST_FUNCTION if failed else abi.ERR_BUFFER_TOO_SMALL


def _host_result(context: InstanceContext, caller: Any, args: Any) -> None:
    memory = context.memory_for(caller, "spear.host_result")
    out_ptr, out_cap = memory.check(args[0].i32, args[1].i32, "spear.host_result output")
    held = context.held
    if held is None:
        args[0].i32 = abi.ERR_NOTHING_HELD
        return
    if len(held) > out_cap:
        args[0].i32 = abi.ERR_BUFFER_TOO_SMALL
        return
    memory.view[out_ptr:out_ptr + len(held)] = held
    context.held = None
    args[0].i32 = len(held)


if native_ffi is not None:
    _from_handle = native_ffi.from_handle
    _unpack = native_ffi.unpack
    _memmove = native_ffi.memmove
    _cast = native_ffi.cast

    @native_ffi.def_extern()  # type: ignore[untyped-decorator]
    def spear_py_host_call(data: Any, name: Any, name_len: int, input: Any, input_len: int,
                           out: Any, out_cap: int, out_len: Any, trap: Any) -> int:
        """`host_call` after native/fastcall.c checked every pointer against memory."""
        context = None
        try:
            context = _from_handle(data)
            context.held = None
            context.host_failure = None
            found = context.bindings.functions.get(_unpack(name, name_len))
            if found is None:
                return abi.ERR_NOT_FOUND
            output, failed = _invoke(context, found[0], found[1], _unpack(input, input_len))
            size = len(output)
            out_len[0] = size
            if size <= out_cap:
                _memmove(out, output, size)
                return abi.ERR_HOST_FUNCTION if failed else abi.OK
            context.held = output
            return abi.ERR_HOST_FUNCTION if failed else abi.ERR_BUFFER_TOO_SMALL
        except Exception as exc:  # nothing may unwind through wasm frames
            trap[0] = _cast("void *", trap_for(exc, context, "spear.host_call"))
            return 0


HOST_FUNCTION_IMPORTS = (
    HostImport(abi.IMPORT_MODULE, "host_call", (WASM_I32,) * 7, (WASM_I32,), _host_call,
               native="spear_host_call_cb"),
    HostImport(abi.IMPORT_MODULE, "host_result", (WASM_I32,) * 2, (WASM_I32,), _host_result),
)
