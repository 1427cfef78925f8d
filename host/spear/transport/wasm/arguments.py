"""Checks on what callers hand a guest call: timeout, metadata, input, function name.

Wrong types raise TypeError, wrong values InvalidConfiguration; both name the argument.
Every check has a fast path for the ordinary case (a float, no metadata, bytes), since they
run on every call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from spear.errors import InvalidConfiguration
from spear.transport.wasm.limits import MAX_TIMEOUT


def check_timeout(timeout: Any, name: str = "timeout") -> float | None:
    """None, or a positive, finite number of seconds no larger than MAX_TIMEOUT."""
    if timeout is None:
        return None
    if type(timeout) is float and 0.0 < timeout <= MAX_TIMEOUT:
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"{name} must be a number of seconds or None, "
                        f"not {type(timeout).__name__}")
    value = float(timeout) if not isinstance(timeout, int) or abs(timeout) < 1 << 62 else math.inf
    if not math.isfinite(value) or value <= 0 or value > MAX_TIMEOUT:
        raise InvalidConfiguration(
            f"{name} must be a positive, finite number of seconds at most {MAX_TIMEOUT:g}, "
            f"got {timeout!r}")
    return value


def check_positive_int(value: Any, name: str, minimum: int = 1,
                       maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise InvalidConfiguration(f"{name} must be at least {minimum}{bound}, got {value}")
    return value


def as_input(data: Any, name: str = "input") -> bytes:
    """The request input as bytes: bytes, bytearray, memoryview or any contiguous buffer."""
    if type(data) is bytes:
        return data
    if isinstance(data, str | int) or data is None:
        raise TypeError(f"{name} must be bytes-like, not {type(data).__name__}")
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"{name} must be bytes-like, not {type(data).__name__}") from None
    return view.tobytes()


def check_function(function: Any, name: str = "function") -> str:
    if type(function) is not str:
        raise TypeError(f"{name} must be a str, not {type(function).__name__}")
    return function


def encode_metadata(metadata: Any, name: str = "metadata") -> tuple[bytes, int]:
    """(`u32 key_len, key, u32 value_len, value` per pair, number of pairs), as the guest
    reads them (docs/wasm-abi.md); refuses anything but str keys and values."""
    if not isinstance(metadata, Mapping):
        raise TypeError(f"{name} must be a mapping of str to str, not {type(metadata).__name__}")
    parts: list[bytes] = []
    try:
        for key, value in metadata.items():
            if type(key) is not str or type(value) is not str:
                bad = key if type(key) is not str else value
                raise TypeError(f"{name} must map str to str; found {type(bad).__name__} "
                                f"{'key' if bad is key else 'value'} {bad!r:.40}")
            k = key.encode()
            v = value.encode()
            parts += (len(k).to_bytes(4, "little"), k, len(v).to_bytes(4, "little"), v)
    except UnicodeEncodeError as exc:
        raise InvalidConfiguration(f"{name} holds a string that is not valid UTF-8: {exc}") \
            from None
    except OverflowError:
        raise InvalidConfiguration(f"{name} holds a string of 4 GiB or more") from None
    return b"".join(parts), len(metadata)
