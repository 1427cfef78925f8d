"""Compile guests (C with ``spear.h``, Rust with the ``spear`` crate, Zig with ``spear.zig``)
into spear ABI v1 WebAssembly modules; cache builds by a hash of everything they read."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from spear_guest.errors import BuildError, ToolchainMissing
from spear_guest.options import DEFAULT_OPT, OPT_LEVELS, BuildOptions
from spear_guest.sdk_files import include_dir
from spear_guest.toolchains import SUFFIXES, Toolchain, for_source
from spear_guest.toolchains.c import c_compile_command, c_flags
from spear_guest.wasm_sections import strip_debug_sections

__all__ = [
    "DEFAULT_OPT",
    "OPT_LEVELS",
    "BuildError",
    "BuildResult",
    "ToolchainMissing",
    "build",
    "build_all",
    "build_cached",
    "build_module",
    "compile_command",
    "compile_flags",
    "guest_sources",
    "include_dir",
    "output_name",
    "source_hash",
]

log = logging.getLogger("spear_guest")

# Bump when the flags or the output layout change in a way the hash would not see.
_CACHE_FORMAT = "spear-guest-cache-2"


@dataclass(frozen=True)
class BuildResult:
    """One module: where it is, whether this call compiled it (False: it was up to date, or
    skipped), with which compiler, the compiler's diagnostics (warnings, whole) and how long
    it took. ``skipped`` says why a source was not built (its toolchain is missing)."""

    source: Path
    path: Path
    built: bool
    toolchain: str
    diagnostics: str = ""
    seconds: float = 0.0
    skipped: str = ""

    @property
    def status(self) -> str:
        """``built``, ``up to date`` or ``skipped``."""
        return "skipped" if self.skipped else "built" if self.built else "up to date"

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def compile_flags(
    opt: str = DEFAULT_OPT,
    stack_size: int | None = None,
    extra_flags: Sequence[str] = (),
    *,
    wasi: bool = False,
    debug: bool = False,
) -> list[str]:
    """The clang flags for a C guest, without the include directory, source and output."""
    return c_flags(BuildOptions.make(opt, stack_size, extra_flags, wasi=wasi, debug=debug))


def compile_command(src: Path, out: Path, flags: Sequence[str]) -> list[str]:
    """The full command line that compiles the C guest ``src`` into ``out``."""
    return c_compile_command(Path(src), Path(out), list(flags))


def output_name(src: Path) -> str:
    """The module's file name in an output directory: ``echo.c`` -> ``echo.wasm``,
    ``echo.rs`` -> ``echo.rs.wasm``, ``echo.zig`` -> ``echo.zig.wasm``."""
    return for_source(Path(src)).output_name(Path(src))


def _tmp_path(directory: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    return Path(tmp)


def _compile(toolchain: Toolchain, src: Path, out: Path, options: BuildOptions) -> BuildResult:
    if not src.is_file():
        raise BuildError(f"{src}: no such source file", src=src)
    toolchain.flags(options)  # reject bad options before touching the output directory
    out.parent.mkdir(parents=True, exist_ok=True)
    # Compile into a private temp dir under the final name (linkers record the file name in
    # the name section, so this keeps builds reproducible), then rename into place atomically.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent)).resolve()
    tmp = tmp_dir / out.name
    start = time.monotonic()
    try:
        diagnostics = toolchain.compile(src.resolve(), tmp, options)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise BuildError(f"{src}: compiler produced no output", src=src, stderr=diagnostics)
        if not options.debug:
            try:
                tmp.write_bytes(strip_debug_sections(tmp.read_bytes()))
            except ValueError as exc:
                raise BuildError(f"{src}: compiler output is not a module ({exc})", src=src,
                                 stderr=diagnostics) from exc
        tmp.chmod(0o644)
        os.replace(tmp, out)  # atomic: readers see the old module or the new one
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    if diagnostics.strip():
        log.warning("%s", diagnostics.rstrip())
    return BuildResult(src, out, True, toolchain.describe(), diagnostics,
                       time.monotonic() - start)


def build_module(
    src: Path,
    out: Path,
    *,
    opt: str = DEFAULT_OPT,
    stack_size: int | None = None,
    extra_flags: Sequence[str] = (),
    wasi: bool = False,
    debug: bool = False,
) -> BuildResult:
    """Compile ``src`` (``.c``, ``.rs`` or ``.zig``) into the module ``out``, always.

    Compiler warnings are logged at WARNING on the ``spear_guest`` logger and returned in the
    result; progress of a slow build at INFO. Raises :class:`BuildError`.
    """
    src, out = Path(src), Path(out)
    options = BuildOptions.make(opt, stack_size, extra_flags, wasi=wasi, debug=debug)
    return _compile(for_source(src), src, out, options)


def build(
    src: Path,
    out: Path,
    *,
    opt: str = DEFAULT_OPT,
    stack_size: int | None = None,
    extra_flags: Sequence[str] = (),
    wasi: bool = False,
    debug: bool = False,
) -> Path:
    """Compile ``src`` into the module ``out`` (always recompiles); returns ``out``."""
    return build_module(src, out, opt=opt, stack_size=stack_size, extra_flags=extra_flags,
                        wasi=wasi, debug=debug).path


def _key(toolchain: Toolchain, src: Path, flags: Sequence[str]) -> str:
    h = hashlib.sha256()

    def part(label: str, data: bytes) -> None:
        h.update(f"{label}\0{len(data)}\0".encode())
        h.update(data)

    part("format", _CACHE_FORMAT.encode())
    part("toolchain", toolchain.identity().encode())
    part("flags", "\0".join(flags).encode())
    part("source", src.read_bytes())
    for path in toolchain.sdk_files():
        part(f"sdk/{path.name}", path.read_bytes())
    for path in toolchain.local_inputs(src):
        part(f"local/{path.name}", path.read_bytes())
    return h.hexdigest()


def source_hash(src: Path, flags: Sequence[str]) -> str:
    """Hash of everything a build depends on: the source, the SDK files of its language, the
    files of its language (C: ``*.h``) next to the source, the flags and the compiler."""
    src = Path(src)
    return _key(for_source(src), src, flags)


def _sidecar(out: Path) -> Path:
    return out.with_name(out.name + ".hash")


def _cache_hit(out: Path, key: str) -> bool:
    try:
        recorded = _sidecar(out).read_text().split()
        module = out.read_bytes()
    except OSError:
        return False
    # The sidecar names both the inputs and the exact module bytes, so a module replaced by
    # another build (other flags, or a plain `build`) is never mistaken for this one.
    return recorded == [key, hashlib.sha256(module).hexdigest()]


def _build_cached(src: Path, out_dir: Path, options: BuildOptions, force: bool) -> BuildResult:
    if not src.is_file():
        raise BuildError(f"{src}: no such source file", src=src)
    toolchain = for_source(src)
    key = _key(toolchain, src, toolchain.flags(options))
    out = out_dir / toolchain.output_name(src)
    if not force and _cache_hit(out, key):
        return BuildResult(src, out, False, toolchain.describe())
    result = _compile(toolchain, src, out, options)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    tmp = _tmp_path(out_dir, out.name + ".hash")
    try:
        tmp.write_text(f"{key} {digest}\n")
        tmp.chmod(0o644)
        os.replace(tmp, _sidecar(out))
    finally:
        tmp.unlink(missing_ok=True)
    return result


def build_cached(
    src: Path,
    out_dir: Path,
    *,
    opt: str = DEFAULT_OPT,
    stack_size: int | None = None,
    extra_flags: Sequence[str] = (),
    wasi: bool = False,
    debug: bool = False,
) -> Path:
    """Build ``src`` into ``out_dir/<name>`` (:func:`output_name`) unless an up-to-date build
    is already there; returns the module's path.

    The sidecar ``<module>.hash`` records the input hash (:func:`source_hash`) and the sha256
    of the module; on a hit nothing is written, so the module's mtime is unchanged. Safe for
    concurrent callers: the module and the sidecar are each written to a temp file and renamed
    into place.
    """
    options = BuildOptions.make(opt, stack_size, extra_flags, wasi=wasi, debug=debug)
    return _build_cached(Path(src), Path(out_dir), options, force=False).path


def guest_sources(src_dir: Path) -> list[Path]:
    """The guests in ``src_dir``: every ``*.c``, ``*.rs`` and ``*.zig`` whose name does not
    start with ``_`` or ``.`` (those are helpers that guests include)."""
    return sorted(p for p in Path(src_dir).iterdir()
                  if p.suffix in SUFFIXES and p.is_file() and not p.name.startswith(("_", ".")))


def build_all(
    src_dir: Path,
    out_dir: Path,
    *,
    opt: str = DEFAULT_OPT,
    stack_size: int | None = None,
    extra_flags: Sequence[str] = (),
    wasi: bool = False,
    debug: bool = False,
    force: bool = False,
    skip_unavailable: bool = False,
    on_result: Callable[[BuildResult], None] | None = None,
) -> list[BuildResult]:
    """Build every guest in ``src_dir`` (:func:`guest_sources`) into ``out_dir``, skipping
    up-to-date modules unless ``force`` (same cache as :func:`build_cached`); each result
    says whether it was built or found up to date. ``wasi`` applies to the C guests.
    ``on_result`` sees each result as soon as it is ready. Raises :class:`BuildError` for the
    first source that fails; with ``skip_unavailable``, a source whose toolchain is missing
    is reported as skipped (with the reason) instead."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if not src_dir.is_dir():
        raise BuildError(f"{src_dir}: no such directory")
    sources = guest_sources(src_dir)
    if not sources:
        raise BuildError(f"{src_dir}: no guests ({', '.join('*' + s for s in SUFFIXES)})")
    names: dict[str, Path] = {}
    for src in sources:
        name = output_name(src)
        if name in names:
            raise BuildError(f"{src} and {names[name]} would both build {out_dir / name}")
        names[name] = src
    results = []
    for src in sources:
        options = BuildOptions.make(opt, stack_size, extra_flags, debug=debug,
                                    wasi=wasi and src.suffix == ".c")
        try:
            result = _build_cached(src, out_dir, options, force)
        except ToolchainMissing as exc:
            if not skip_unavailable:
                raise
            reason = f"{exc}; {exc.hint}" if exc.hint else str(exc)
            result = BuildResult(src, out_dir / output_name(src), False, "", skipped=reason)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
