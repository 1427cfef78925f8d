"""Per-instance configuration: string keys to string values, read by the guest by key.

Like Extism's manifest `config` or Spin's variables: `config={"key": "value"}` at load,
instantiation or in a `FunctionSpec`. The guest asks for one key with `spear.config_get`; a key
that is absent is distinguishable from one whose value is empty. Bounded: keys of 1 to 1024
bytes, at most 1 MiB of keys and values together (docs/wasm-abi.md, "Configuration").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spear.errors import InvalidConfiguration
from spear.transport.wasm import abi
from spear.transport.wasm.capi import WASM_I32
from spear.transport.wasm.host_calls import HostImport
from spear.transport.wasm.instance_context import InstanceContext

MAX_KEY_BYTES = 1024
MAX_CONFIG_BYTES = 1 << 20

_LEN = int.to_bytes


def check_config(config: Any, name: str = "config") -> dict[str, str]:
    if not isinstance(config, Mapping):
        raise TypeError(f"{name} must be a mapping of str to str, not {type(config).__name__}")
    checked: dict[str, str] = {}
    total = 0
    for key, value in config.items():
        if type(key) is not str or type(value) is not str:
            bad = key if type(key) is not str else value
            raise TypeError(f"{name} must map str to str; found {type(bad).__name__} "
                            f"{'key' if bad is key else 'value'} {bad!r:.40}")
        try:
            size = len(key.encode())
            total += size + len(value.encode())
        except UnicodeEncodeError as exc:
            raise InvalidConfiguration(f"{name} holds a string that is not valid UTF-8: "
                                       f"{exc}") from None
        if not 0 < size <= MAX_KEY_BYTES:
            raise InvalidConfiguration(
                f"{name}: a key must have 1 to {MAX_KEY_BYTES} bytes, got {key!r:.60}")
        checked[key] = value
    if total > MAX_CONFIG_BYTES:
        raise InvalidConfiguration(
            f"{name} holds {total} bytes of keys and values, more than {MAX_CONFIG_BYTES}")
    return checked


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
