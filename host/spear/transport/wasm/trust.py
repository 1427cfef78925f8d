"""Native code is loaded only from files that no other user can have written.

The host loads two shared libraries: the `libwasmtime` that the `wasmtime` package ships and
the fast-call helper compiled into this package. Before either is loaded, the file and every
directory from it up to the package that holds it must be owned by root or by us and be
writable by nobody else; a symlink on the way is followed only if its target passes the same
checks. A library failing this is refused with an ImportError that names the reason.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


class UntrustedFile(ImportError):
    """A native library lies where another user could have written it."""


def _owners() -> set[int]:
    return {0, os.geteuid()}


def _check(path: Path, what: str) -> os.stat_result:
    try:
        info = path.stat()
    except OSError as exc:
        raise UntrustedFile(f"cannot check {what} {path}: {exc.strerror}") from exc
    if info.st_uid not in _owners():
        raise UntrustedFile(
            f"refusing to load {what}: {path} belongs to uid {info.st_uid}, "
            "neither root nor this user")
    if info.st_mode & _WRITABLE_BY_OTHERS:
        raise UntrustedFile(
            f"refusing to load {what}: {path} is writable by other users "
            f"(mode {stat.S_IMODE(info.st_mode):o}); fix the installation's permissions")
    return info


def check_native_library(library: Path, package_dir: Path, what: str) -> Path:
    """`library` (resolved) if it and its directories up to `package_dir`'s parent are
    trusted; raises `UntrustedFile` otherwise."""
    resolved = library.resolve()
    package = package_dir.resolve()
    if not resolved.is_relative_to(package):
        raise UntrustedFile(f"refusing to load {what}: {resolved} is outside {package}")
    info = _check(resolved, what)
    if not stat.S_ISREG(info.st_mode):
        raise UntrustedFile(f"refusing to load {what}: {resolved} is not a regular file")
    directory = resolved.parent
    while True:
        _check(directory, what)
        if directory == package.parent or directory == directory.parent:
            break
        directory = directory.parent
    return resolved
