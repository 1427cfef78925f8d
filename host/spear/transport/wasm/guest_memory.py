"""Bounds-checked access to one guest's exported linear memory.

Every pointer and length comes from the guest, so each is read as unsigned 32-bit and checked
against the memory's size at that moment. The memory never moves (the engine reserves 4 GiB
with `memory_may_move = false`) and never shrinks, so a view stays valid and only needs
extending when the guest grows its memory.
"""

from __future__ import annotations

from typing import Any

from spear.transport.wasm import abi
from spear.transport.wasm.capi import ffi, lib

_memory_size = lib.wasmtime_memory_data_size


class GuestFault(Exception):
    """A guest broke the ABI inside a host call; becomes a trap with this message."""


class GuestMemory:
    __slots__ = ("_context", "base", "handle", "size", "view")

    def __init__(self, context: Any, memory: Any) -> None:
        self._context = context
        self.handle: Any = ffi.new("wasmtime_memory_t *", memory)
        self.size = 0
        self.view = memoryview(b"")
        self.base: Any = ffi.NULL
        self.refresh()

    def refresh(self) -> None:
        """Re-read the size (the guest may have grown its memory)."""
        size = _memory_size(self._context, self.handle)
        if size != self.size or not self.view:
            self.base = lib.wasmtime_memory_data(self._context, self.handle)
            self.size = size
            self.view = memoryview(ffi.buffer(self.base, size)) if size else memoryview(b"")

    def current_size(self) -> int:
        return int(_memory_size(self._context, self.handle))

    def check(self, ptr: int, length: int, what: str) -> tuple[int, int]:
        """(ptr, length) as unsigned, after checking the range lies inside memory."""
        ptr &= abi.U32_MAX
        length &= abi.U32_MAX
        if ptr + length > self.size:
            self.refresh()
            if ptr + length > self.size:
                raise GuestFault(
                    f"{what}: pointer out of bounds ({ptr:#x}+{length} > {self.size})")
        return ptr, length

    def read(self, ptr: int, length: int, what: str) -> bytes:
        ptr, length = self.check(ptr, length, what)
        return self.view[ptr:ptr + length].tobytes()

    def write(self, ptr: int, data: bytes, what: str) -> None:
        ptr, _ = self.check(ptr, len(data), what)
        self.view[ptr:ptr + len(data)] = data

    def slice(self, start: int, end: int) -> bytes:
        """Bytes [start, end), already known to be in bounds of the memory as it is now."""
        if end > self.size:
            self.refresh()
        return self.view[start:end].tobytes()
