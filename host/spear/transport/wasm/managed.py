"""One owner per C handle: `close()` frees it exactly once, so does the finalizer.

The shape of wasmtime-py's `Managed`: a wasmtime object lives as long as the Python object
that owns it, `close()` (or `with`) frees it early, and anything using it afterwards gets a
clear error instead of a dangling pointer.
"""

from __future__ import annotations

import threading
from typing import Any, Self


class Managed:
    """Owns one native handle; subclasses say how to free it (`_free`)."""

    _what = "handle"

    def __init__(self, ptr: Any) -> None:
        self._ptr: Any = ptr
        self._close_lock = threading.Lock()

    @property
    def ptr(self) -> Any:
        ptr = self._ptr
        if ptr is None:
            raise ValueError(f"this {self._what} is closed")
        return ptr

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def _free(self, ptr: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with self._close_lock:
            ptr, self._ptr = self._ptr, None
            if ptr is not None:
                self._free(ptr)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_ptr", None) is not None:
            self.close()
