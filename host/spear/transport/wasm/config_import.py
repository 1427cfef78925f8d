"""The `spear.config_get` import: the guest reads one configuration key (guest_config.py)."""

from __future__ import annotations

from typing import Any

from spear.transport.wasm import abi
from spear.transport.wasm.capi import WASM_I32
from spear.transport.wasm.host_calls import HostImport
from spear.transport.wasm.instance_context import InstanceContext

_LEN = int.to_bytes


def _config_get(context: InstanceContext, caller: Any, args: Any) -> None:
    """`config_get(key_ptr, key_len, out_ptr, out_cap, len_ptr) -> i32`: 0 (the value is
    written at out_ptr, its length at len_ptr), -4 (out_cap is too small: only the length
    is written), -6 (no such key)."""
    memory = context.memory_for(caller, "spear.config_get")
    key_ptr, key_len = memory.check(args[0].i32, args[1].i32, "spear.config_get key")
    out_ptr, out_cap = memory.check(args[2].i32, args[3].i32, "spear.config_get output")
    len_ptr, _ = memory.check(args[4].i32, 4, "spear.config_get length")
    view = memory.view
    value = context.bindings.config_bytes.get(view[key_ptr:key_ptr + key_len].tobytes())
    if value is None:
        view[len_ptr:len_ptr + 4] = b"\0\0\0\0"
        args[0].i32 = abi.ERR_NOT_FOUND
        return
    size = len(value)
    view[len_ptr:len_ptr + 4] = _LEN(size, 4, "little")
    if size > out_cap:
        args[0].i32 = abi.ERR_BUFFER_TOO_SMALL
        return
    view[out_ptr:out_ptr + size] = value
    args[0].i32 = abi.OK


CONFIG_FUNCTIONS = (
    HostImport(abi.IMPORT_MODULE, "config_get", (WASM_I32,) * 5, (WASM_I32,), _config_get),
)
