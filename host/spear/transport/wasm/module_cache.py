"""On-disk cache of compiled modules, keyed by module hash, wasmtime version and engine options.

Deserializing compiled code runs it, so the cache directory must be private: we create it
0700 and refuse to use one that another user owns or others can write. Entries are written
atomically; an entry that fails to load (stale, truncated, other wasmtime) is recompiled and
replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import tempfile
from pathlib import Path

from spear.transport.wasm.capi import WASMTIME_VERSION

log = logging.getLogger("spear.wasm.cache")

_reported: set[Path] = set()  # directories already reported unusable: one log line each


def default_cache_dir() -> Path | None:
    """$SPEAR_CACHE_DIR, else $XDG_CACHE_HOME/spear/modules; None if SPEAR_NO_MODULE_CACHE."""
    if os.environ.get("SPEAR_NO_MODULE_CACHE"):
        return None
    explicit = os.environ.get("SPEAR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "spear" / "modules"


class ModuleCache:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def path_for(self, wasm_hash: str, engine_key: str) -> Path | None:
        if self.directory is None:
            return None
        key = hashlib.sha256(f"{wasm_hash}|{WASMTIME_VERSION}|{engine_key}".encode()).hexdigest()
        return self.directory / f"{key}.cwasm"

    def _usable_dir(self) -> bool:
        assert self.directory is not None
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self.directory.stat()
        except OSError as exc:
            self._unusable(exc.strerror or str(exc))
            return False
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            self._unusable("it is not private to this user")
            return False
        return True

    def _unusable(self, why: str) -> None:
        assert self.directory is not None
        if self.directory in _reported:
            return
        _reported.add(self.directory)
        log.warning("compiled-module cache %s is unusable (%s): modules are compiled on every "
                    "load; set SPEAR_CACHE_DIR to a private writable directory, or "
                    "SPEAR_NO_MODULE_CACHE=1", self.directory, why)

    def load(self, path: Path) -> bytes | None:
        if not self._usable_dir():
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read cached module %s: %s", path, exc)
            return None

    def store(self, path: Path, compiled: bytes) -> None:
        if not self._usable_dir():
            return
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".cwasm")
            with os.fdopen(fd, "wb") as handle:
                handle.write(compiled)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write cached module %s: %s", path, exc)

    def discard(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()
