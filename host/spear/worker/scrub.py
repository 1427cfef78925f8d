"""Take secrets out of the worker's environment before any handler code runs.

Removing a variable from `os.environ` also unsets it in the C environment (so children do
not inherit it), but the bytes the kernel placed on the stack at exec time stay, and
`/proc/self/environ` shows them to the handler and to any process of the same user. Where
the C library's `getenv` can be reached, the value is overwritten in place first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterable


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else ctypes.CDLL(None)
    except OSError:
        return None


def remove_from_environment(names: Iterable[str]) -> None:
    """Overwrite each variable's value in the process's own environment block, then unset
    it, so neither the handler, nor its children, nor /proc/PID/environ show it."""
    libc = _libc()
    getenv = None
    if libc is not None:
        getenv = libc.getenv
        getenv.restype = ctypes.c_void_p
        getenv.argtypes = [ctypes.c_char_p]
    for name in names:
        if getenv is not None:
            address = getenv(name.encode())
            if address:
                length = len(ctypes.string_at(address))
                ctypes.memset(address, ord("x"), length)
        os.environ.pop(name, None)
        if name in os.environ:  # pragma: no cover - os.environ.pop always unsets on POSIX
            del os.environ[name]
