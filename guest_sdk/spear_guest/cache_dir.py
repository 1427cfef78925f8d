"""Where spear-guest keeps what it compiles once per toolchain (the Rust crate)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

__all__ = ["cache_dir"]


@cache
def cache_dir() -> Path:
    """``$SPEAR_GUEST_CACHE_DIR``, else ``$XDG_CACHE_HOME/spear-guest``, else
    ``~/.cache/spear-guest``; a private temporary directory (removed at exit) when that is
    not writable, e.g. for a user without a home."""
    explicit = os.environ.get("SPEAR_GUEST_CACHE_DIR")
    if explicit:
        path = Path(explicit)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "spear-guest"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe."):
            return path
    except OSError:
        tmp = Path(tempfile.mkdtemp(prefix="spear-guest-cache-"))
        atexit.register(shutil.rmtree, tmp, True)
        return tmp
