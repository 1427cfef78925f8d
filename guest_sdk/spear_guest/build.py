"""Compile C guests (using ``spear.h``) into spear ABI v1 WebAssembly modules with zig's clang."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

__all__ = [
    "OPT_LEVELS",
    "BuildError",
    "build",
    "build_all",
    "build_cached",
    "compile_command",
    "compile_flags",
    "include_dir",
    "source_hash",
]

#: ``-O`` values accepted by :func:`build` (zig-style names and clang levels) -> clang flag.
OPT_LEVELS: dict[str, str] = {
    "Debug": "-O0",
    "ReleaseSafe": "-O2",
    "ReleaseFast": "-O3",
    "ReleaseSmall": "-Oz",
    "0": "-O0",
    "1": "-O1",
    "2": "-O2",
    "3": "-O3",
    "s": "-Os",
    "z": "-Oz",
}
DEFAULT_OPT = "2"

# Bump when the flags or the output layout change in a way the hash would not see.
_CACHE_FORMAT = "spear-guest-cache-1"
_COMPILE_TIMEOUT_S = 300.0


class BuildError(Exception):
    """A guest failed to compile or link. ``stderr`` holds the compiler's full output."""

    def __init__(self, message: str, *, src: Path | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.src = src
        self.stderr = stderr

    @property
    def summary(self) -> str:
        """One line: the first compiler error, or the message."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        first = next((line for line in lines if "error" in line), lines[-1] if lines else "")
        return f"{self}: {first}" if first else str(self)


def include_dir() -> Path:
    """The directory holding ``spear.h`` (pass it as ``-I`` to other toolchains)."""
    return Path(__file__).resolve().parent / "include"


def compile_flags(
    opt: str = DEFAULT_OPT,
    stack_size: int | None = None,
    extra_flags: Sequence[str] = (),
) -> list[str]:
    """The clang flags used for a guest, without the include directory, source and output.

    ``wasm32-freestanding`` (no libc, no WASI), ``-nostdlib`` (``spear.h`` defines the few
    libc symbols the compiler may call), ``--no-entry`` (a reactor-style library with no
    ``_start``), ``-g0`` (no DWARF; the ``name`` section stays, so traps name functions).
    wasm-ld exports ``memory`` and defines ``__heap_base`` by default, and the stack is placed
    first (default 1 MiB) so a shadow-stack overflow traps instead of corrupting data.
    """
    try:
        level = OPT_LEVELS[opt.removeprefix("-O")]
    except KeyError:
        choices = ", ".join(OPT_LEVELS)
        raise BuildError(f"unknown optimisation level {opt!r} (choose from {choices})") from None
    flags = ["--target=wasm32-freestanding", level, "-g0", "-nostdlib", "-Wl,--no-entry"]
    if level == "-O0":
        # zig enables UBSan at -O0, whose runtime freestanding wasm does not have: make the
        # checks trap instead (zig turns this flag on for every level, so only here).
        flags.append("-fsanitize-trap=undefined")
    if stack_size is not None:
        if stack_size <= 0 or stack_size % 16:
            raise BuildError(f"stack size must be a positive multiple of 16, got {stack_size}")
        flags.append(f"-Wl,-z,stack-size={stack_size}")
    flags.extend(extra_flags)
    return flags


def compile_command(src: Path, out: Path, flags: Sequence[str]) -> list[str]:
    """The full command line that compiles ``src`` into ``out``."""
    return [
        sys.executable,
        "-m",
        "ziglang",
        "cc",
        *flags,
        f"-I{include_dir()}",
        str(src),
        "-o",
        str(out),
    ]


def _tmp_path(directory: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    return Path(tmp)


def _compile(src: Path, out: Path, flags: Sequence[str]) -> None:
    if not src.is_file():
        raise BuildError(f"{src}: no such source file", src=src)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Compile into a private temp dir under the final name (wasm-ld records the file name in
    # the name section, so this keeps builds reproducible), then rename into place atomically.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp = tmp_dir / out.name
    try:
        try:
            proc = subprocess.run(
                compile_command(src, tmp, flags),
                capture_output=True,
                text=True,
                timeout=_COMPILE_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BuildError(
                f"{src}: compiler timed out after {_COMPILE_TIMEOUT_S:.0f}s", src=src
            ) from exc
        if proc.returncode != 0:
            stderr = proc.stderr or proc.stdout
            if "No module named ziglang" in stderr:
                raise BuildError("the ziglang package is not installed", src=src, stderr=stderr)
            raise BuildError(f"{src}: compile failed", src=src, stderr=stderr)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise BuildError(f"{src}: compiler produced no output", src=src, stderr=proc.stderr)
        os.replace(tmp, out)  # atomic: readers see the old module or the new one
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def build(
    src: Path,
    out: Path,
    *,
    opt: str = DEFAULT_OPT,
    stack_size: int | None = None,
    extra_flags: Sequence[str] = (),
) -> Path:
    """Compile ``src`` into the module ``out`` (always recompiles). Raises :class:`BuildError`."""
    src, out = Path(src), Path(out)
    _compile(src, out, compile_flags(opt, stack_size, extra_flags))
    return out


def _zig_version() -> str:
    try:
        return metadata.version("ziglang")
    except metadata.PackageNotFoundError:
        return "unknown"


def source_hash(src: Path, flags: Sequence[str]) -> str:
    """Hash of everything a build depends on: the source, ``spear.h``, any ``*.h`` next to the
    source, the flags and the zig version."""
    h = hashlib.sha256()

    def part(label: str, data: bytes) -> None:
        h.update(f"{label}\0{len(data)}\0".encode())
        h.update(data)

    part("format", _CACHE_FORMAT.encode())
    part("zig", _zig_version().encode())
    part("flags", "\0".join(flags).encode())
    part("source", src.read_bytes())
    for header in sorted(include_dir().glob("*.h")):
        part(f"sdk/{header.name}", header.read_bytes())
    for header in sorted(src.parent.glob("*.h")):
        part(f"local/{header.name}", header.read_bytes())
    return h.hexdigest()


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


def _build_cached(src: Path, out_dir: Path, flags: Sequence[str], force: bool) -> Path:
    if not src.is_file():
        raise BuildError(f"{src}: no such source file", src=src)
    key = source_hash(src, flags)
    out = out_dir / f"{src.stem}.wasm"
    if not force and _cache_hit(out, key):
        return out
    _compile(src, out, flags)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    tmp = _tmp_path(out_dir, out.name + ".hash")
    try:
        tmp.write_text(f"{key} {digest}\n")
        tmp.chmod(0o644)
        os.replace(tmp, _sidecar(out))
    finally:
        tmp.unlink(missing_ok=True)
    return out


def build_cached(
    src: Path,
    out_dir: Path,
    *,
    opt: str = DEFAULT_OPT,
    stack_size: int | None = None,
    extra_flags: Sequence[str] = (),
) -> Path:
    """Build ``src`` into ``out_dir/<stem>.wasm`` unless an up-to-date build is already there.

    The sidecar ``out_dir/<stem>.wasm.hash`` records the input hash (:func:`source_hash`) and
    the sha256 of the module; on a hit nothing is written, so the module's mtime is unchanged.
    Safe for concurrent callers: the module and the sidecar are each written to a temp file and
    renamed into place.
    """
    flags = compile_flags(opt, stack_size, extra_flags)
    return _build_cached(Path(src), Path(out_dir), flags, force=False)


def build_all(
    src_dir: Path,
    out_dir: Path,
    *,
    opt: str = DEFAULT_OPT,
    stack_size: int | None = None,
    extra_flags: Sequence[str] = (),
    force: bool = False,
) -> list[Path]:
    """Build every ``*.c`` in ``src_dir`` into ``out_dir/<stem>.wasm``, skipping up-to-date
    modules unless ``force`` (same cache as :func:`build_cached`). Raises :class:`BuildError`
    for the first source that fails."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if not src_dir.is_dir():
        raise BuildError(f"{src_dir}: no such directory")
    sources = sorted(src_dir.glob("*.c"))
    if not sources:
        raise BuildError(f"{src_dir}: no *.c files")
    flags = compile_flags(opt, stack_size, extra_flags)
    return [_build_cached(src, out_dir, flags, force) for src in sources]
