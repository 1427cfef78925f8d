"""Where a guest's WASI stdout and stderr go: logged, discarded, or captured for one call.

Every store's WASI context writes both streams through the callbacks below, with the store's
`InstanceContext` as their data. A WASI command call captures them in a `CallOutput`: stdout
is the call's output (at most the instance's maximum message size; a write beyond it fails
with EFBIG and the call fails with `code="too_large"`), and the last `STDERR_TAIL` bytes of
stderr are kept for the error of a failed call. Otherwise (and for a command's stderr too)
each stream is logged line by line or discarded, as the instance's `WasiConfig` says.
"""

from __future__ import annotations

import contextlib
from typing import Any

from spear.transport.wasm.capi import ffi
from spear.transport.wasm.instance_context import InstanceContext

STDERR_TAIL = 4096  # bytes of a command's stderr kept for the error message
EFBIG = 27
CALLBACK_TYPE = "ptrdiff_t(void *, const unsigned char *, size_t)"


class CallOutput:
    """One WASI command call's stdout (whole, bounded) and the end of its stderr."""

    __slots__ = ("limit", "overflowed", "stderr", "stdout")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.overflowed = False

    def add_stdout(self, data: memoryview) -> bool:
        if len(self.stdout) + len(data) > self.limit:
            self.overflowed = True
            return False
        self.stdout += data
        return True

    def add_stderr(self, data: memoryview) -> None:
        self.stderr += data[-STDERR_TAIL:]
        if len(self.stderr) > STDERR_TAIL:
            del self.stderr[:-STDERR_TAIL]

    def stderr_tail(self) -> str:
        return bytes(self.stderr).decode("utf-8", "replace").strip()


def _stdout(data: Any, buf: Any, length: int) -> int:
    try:
        context: InstanceContext = ffi.from_handle(data)
        view = memoryview(ffi.buffer(buf, length))
        output = context.output
        if output is not None:
            return length if output.add_stdout(view) else -EFBIG
        if context.bindings.wasi.stdout == "log":
            context.log.write_stream("stdout", view, context.function)
    except Exception:
        pass
    return length


def _stderr(data: Any, buf: Any, length: int) -> int:
    with contextlib.suppress(Exception):  # as above
        context: InstanceContext = ffi.from_handle(data)
        view = memoryview(ffi.buffer(buf, length))
        output = context.output
        if output is not None:
            output.add_stderr(view)
        if context.bindings.wasi.stderr == "log":
            context.log.write_stream("stderr", view, context.function)
    return length


class WasiOutput:
    """The callbacks WASI output streams write through; owned by the linker's owner."""

    def __init__(self) -> None:
        self.stdout = ffi.callback(CALLBACK_TYPE, _stdout)
        self.stderr = ffi.callback(CALLBACK_TYPE, _stderr)
