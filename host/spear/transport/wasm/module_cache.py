"""On-disk cache of compiled modules: deserializing runs code, so nothing unverified gets there.

An entry is two files named after a key (the module's hash and the engine's configuration and
wasmtime version): `KEY.cwasm`, the compiled code, and `KEY.digest`, kept apart from it, which
records the module hash, the engine configuration and the SHA-256 and size of the code. Before
wasmtime sees an entry's bytes, both files must be regular files (opened without following
symlinks and without blocking, so a FIFO is refused rather than waited on), owned by this
user, readable and writable by nobody else, with one link each; the digest must name exactly
this module and engine, and the code's size and hash must match it. A bad entry is removed
and the module compiled again, never deserialized: another module's entry copied or linked in
place, a flipped byte, a truncated file, a FIFO.

The directory must be private too (created 0700; refused if another user owns it or others
can write it). Entries are written atomically. The cache is bounded in bytes: when it grows
past its limit the least recently used entries are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("spear.wasm.cache")

DIGEST_FORMAT = 1
DEFAULT_CACHE_MAX_BYTES = 1 << 30
MAX_ENTRY_BYTES = 1 << 30  # larger files are not read at all
MAX_DIGEST_BYTES = 4096
_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
    | getattr(os, "O_CLOEXEC", 0)


def default_cache_dir() -> Path | None:
    """$SPEAR_CACHE_DIR, else $XDG_CACHE_HOME/spear/modules; None if SPEAR_NO_MODULE_CACHE."""
    if os.environ.get("SPEAR_NO_MODULE_CACHE"):
        return None
    explicit = os.environ.get("SPEAR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "spear" / "modules"


class BadEntry(Exception):
    """Why a cache entry will not be deserialized."""


def _read_private(path: Path, limit: int) -> bytes:
    """The contents of `path` if it is a private regular file of ours; else BadEntry."""
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:  # ELOOP: a symlink; others: unreadable
        raise BadEntry(f"cannot open it ({exc.strerror})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadEntry("it is not a regular file")
        if info.st_uid != os.geteuid():
            raise BadEntry(f"it belongs to uid {info.st_uid}")
        if info.st_mode & 0o077:
            raise BadEntry(f"its mode {stat.S_IMODE(info.st_mode):o} lets others in")
        if info.st_nlink != 1:
            raise BadEntry(f"it has {info.st_nlink} links")
        if info.st_size > limit:
            raise BadEntry(f"it is {info.st_size} bytes, more than {limit}")
        os.set_blocking(fd, True)
        chunks = []
        left = info.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) != info.st_size:
            raise BadEntry("it changed while being read")
        return data
    finally:
        os.close(fd)


class ModuleCache:
    """One cache directory (None: caching off)."""

    def __init__(self, directory: Path | None, max_bytes: int = DEFAULT_CACHE_MAX_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._reported = False
        self._lock = threading.Lock()
        self._approx_bytes: int | None = None  # what the directory holds, as far as we know

    def _key(self, wasm_hash: str, engine_key: str) -> str:
        return hashlib.sha256(f"{wasm_hash}|{engine_key}".encode()).hexdigest()

    def _usable_dir(self) -> bool:
        assert self.directory is not None
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self.directory.stat()
        except OSError as exc:
            self._unusable(exc.strerror or str(exc))
            return False
        if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            self._unusable("it is not private to this user")
            return False
        return True

    def _unusable(self, why: str) -> None:
        if self._reported:
            return
        self._reported = True
        log.warning("compiled-module cache %s is unusable (%s): modules are compiled on every "
                    "load; set SPEAR_CACHE_DIR to a private writable directory, or "
                    "SPEAR_NO_MODULE_CACHE=1", self.directory, why)

    def _digest(self, wasm_hash: str, engine_key: str, compiled: bytes) -> dict[str, object]:
        return {"format": DIGEST_FORMAT, "module_sha256": wasm_hash, "engine": engine_key,
                "size": len(compiled), "sha256": hashlib.sha256(compiled).hexdigest()}

    def load(self, wasm_hash: str, engine_key: str) -> bytes | None:
        """The verified compiled code of this module for this engine, or None."""
        if self.directory is None or not self._usable_dir():
            return None
        key = self._key(wasm_hash, engine_key)
        code_path = self.directory / f"{key}.cwasm"
        digest_path = self.directory / f"{key}.digest"
        try:
            digest = json.loads(_read_private(digest_path, MAX_DIGEST_BYTES))
            if not isinstance(digest, dict):
                raise BadEntry("its digest is not an object")
            compiled = _read_private(code_path, MAX_ENTRY_BYTES)
            expected = self._digest(wasm_hash, engine_key, compiled)
            for field in ("format", "module_sha256", "engine", "size", "sha256"):
                if digest.get(field) != expected[field]:
                    raise BadEntry(f"its {field} does not match")
        except FileNotFoundError:
            return None
        except (BadEntry, ValueError, OSError) as exc:
            log.warning("compiled-module cache entry %s is not used and is removed: %s",
                        code_path, exc)
            self.discard(wasm_hash, engine_key)
            return None
        with contextlib.suppress(OSError, NotImplementedError):
            # Recently used (the access time orders pruning; the modification time stays).
            info = os.stat(code_path, follow_symlinks=False)
            os.utime(code_path, ns=(time.time_ns(), info.st_mtime_ns), follow_symlinks=False)
        return compiled

    def store(self, wasm_hash: str, engine_key: str, compiled: bytes) -> None:
        if self.directory is None or not self._usable_dir():
            return
        key = self._key(wasm_hash, engine_key)
        digest = json.dumps(self._digest(wasm_hash, engine_key, compiled)).encode()
        try:
            self._write(self.directory / f"{key}.cwasm", compiled)
            self._write(self.directory / f"{key}.digest", digest)
        except OSError as exc:
            log.warning("cannot write to the compiled-module cache %s: %s", self.directory, exc)
            return
        self._account(len(compiled) + len(digest))

    def _write(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as handle:  # mkstemp: mode 0600
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def discard(self, wasm_hash: str, engine_key: str) -> None:
        assert self.directory is not None
        key = self._key(wasm_hash, engine_key)
        for suffix in (".cwasm", ".digest"):
            with contextlib.suppress(OSError):
                os.unlink(self.directory / f"{key}{suffix}")

    # ------------------------------------------------------------------ size bound

    def _scan(self) -> list[tuple[float, int, str]]:
        assert self.directory is not None
        entries = []
        with os.scandir(self.directory) as listing:
            for item in listing:
                if item.name.endswith(".cwasm") and not item.name.startswith("."):
                    with contextlib.suppress(OSError):
                        info = item.stat(follow_symlinks=False)
                        entries.append((info.st_atime, info.st_size, item.name[:-6]))
        return entries

    def _account(self, added: int) -> None:
        with self._lock:
            try:
                if self._approx_bytes is None:
                    self._approx_bytes = sum(size for _, size, _ in self._scan())
                else:
                    self._approx_bytes += added
                if self._approx_bytes <= self.max_bytes:
                    return
                entries = sorted(self._scan())
                total = sum(size for _, size, _ in entries)
                for _, size, key in entries:
                    if total <= self.max_bytes * 3 // 4:
                        break
                    for suffix in (".cwasm", ".digest"):
                        with contextlib.suppress(OSError):
                            os.unlink(self.directory / f"{key}{suffix}")  # type: ignore[operator]
                    total -= size
                self._approx_bytes = total
            except OSError as exc:
                log.warning("cannot prune the compiled-module cache %s: %s", self.directory, exc)
