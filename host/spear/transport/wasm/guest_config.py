"""Per-instance configuration: string keys to string values, read by the guest by key.

Like Extism's manifest `config` or Spin's variables: `config={"key": "value"}` at load,
instantiation or in a `FunctionSpec`. The guest asks for one key with `spear.config_get`
(config_import.py); a key that is absent is distinguishable from one whose value is empty.
Bounded: keys of 1 to 1024 bytes, at most 1 MiB of keys and values together
(docs/wasm-abi.md, "Configuration").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spear.errors import InvalidConfiguration

MAX_KEY_BYTES = 1024
MAX_CONFIG_BYTES = 1 << 20


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
