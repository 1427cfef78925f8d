"""Native code is loaded only from files that no other user can have written.

The host loads the `libwasmtime` that the `wasmtime` package ships and the extensions
compiled into this package (the fast-call helper, the wire codec, the HTTP head helper).
Before any is loaded, the file and every directory from it up to the package that holds it
must be owned by root or by us and be writable by nobody else; a symlink on the way is
followed only if its target passes the same checks. A library failing this is refused with
an ImportError that names the reason.

It sits below the layers: the WASM transport, the protocol package and the front door
load through it (`load_optional_extension`: each helper is optional, said once).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import stat
from pathlib import Path
from types import ModuleType

_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
_PACKAGE = Path(__file__).resolve().parent  # the `spear` package


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


def load_package_extension(module: str, directory: Path, what: str) -> ModuleType:
    """Import the compiled extension `module`, only if it was built into `directory` (a
    folder of this package) and passes `check_native_library`; ImportError otherwise."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"no module named {module}")
    here = directory.resolve()
    if Path(spec.origin).resolve().parent != here:
        raise ImportError(f"{spec.origin} is not inside {here}")
    check_native_library(Path(spec.origin), _PACKAGE, what)
    return importlib.import_module(module)


def load_optional_extension(module: str, directory: Path, what: str, log: logging.Logger,
                            without: str) -> ModuleType | None:
    """`load_package_extension` for a helper the package can do without: None, said once
    on `log`, when `SPEAR_NO_NATIVE` is set or the helper cannot be loaded (not built, or
    not trusted). `without` says what runs instead ("WASM calls take the pure-Python
    path")."""
    if os.environ.get("SPEAR_NO_NATIVE"):
        log.info("SPEAR_NO_NATIVE is set: %s", without)
        return None
    try:
        return load_package_extension(module, directory, what)
    except ImportError as exc:
        log.warning("%s was not built with this installation or cannot be used (%s); %s, "
                    "more slowly", what, exc, without)
        return None
