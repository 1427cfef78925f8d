"""The optional native fast call: `native/fastcall.c`, compiled once with zig, cached.

It moves the per-call work (copy in, fill the control block, enter the guest, check the
output) into one C function, so a call crosses from Python to C once. Built on first use
with the `ziglang` package (already a dependency for the guest SDK) into the user cache;
when that is impossible (no zig, read-only cache, SPEAR_NO_NATIVE=1) spear falls back to the
pure-Python path, which is slower but equivalent.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from spear.transport.wasm.capi import ffi, lib, resolve_all
from spear.transport.wasm.module_cache import default_cache_dir

log = logging.getLogger("spear.wasm.native")

SOURCE = Path(__file__).parent / "native" / "fastcall.c"


def _native_dir() -> Path:
    cache = default_cache_dir()
    base = cache.parent if cache is not None else Path(tempfile.gettempdir()) / "spear"
    return base / "native"


def _build(target: Path) -> None:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".so")
    os.close(fd)
    try:
        command = [sys.executable, "-m", "ziglang", "cc", "-shared", "-fPIC", "-O2",
                   "-nostdlib", "-o", tmp, str(SOURCE)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip() or f"zig exited {done.returncode}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> Any:
    if os.environ.get("SPEAR_NO_NATIVE"):
        return None
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + platform.machine().encode() + sys.platform.encode())
    target = _native_dir() / f"fastcall-{key.hexdigest()[:16]}.so"
    try:
        if not target.exists():
            _build(target)
        library = ffi.dlopen(str(target))
        resolve_all(library)
        return library
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("native fast call unavailable, using the Python path: %s", exc)
        return None


native: Any = _load()

# Addresses of the wasmtime functions the native code calls, as plain pointers.
FUNCTIONS = {
    "call_unchecked": ffi.cast("void *", ffi.addressof(lib, "wasmtime_func_call_unchecked")),
    "set_deadline": ffi.cast("void *", ffi.addressof(lib, "wasmtime_context_set_epoch_deadline")),
    "memory_size": ffi.cast("void *", ffi.addressof(lib, "wasmtime_memory_data_size")),
}
