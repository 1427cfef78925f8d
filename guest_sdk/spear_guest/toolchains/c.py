"""C guests: zig's clang, freestanding (spear.h only) or against wasi-libc (``--wasi``)."""

from __future__ import annotations

import re
from pathlib import Path

from spear_guest.errors import BuildError
from spear_guest.options import BuildOptions
from spear_guest.runner import run_compiler
from spear_guest.sdk_files import include_dir
from spear_guest.toolchains.base import Toolchain
from spear_guest.toolchains.ziglang import zig_command, zig_version

__all__ = ["CToolchain", "c_compile_command", "c_flags"]

_LEVEL_FLAGS = {
    "0": ["-O0"],
    "1": ["-O1"],
    "2": ["-O2"],
    "3": ["-O3"],
    "s": ["-Os"],
    "z": ["-Oz"],
    # ReleaseSafe: optimised, with undefined-behaviour checks that trap (no UBSan runtime)
    "safe": ["-O2", "-fsanitize=undefined"],
}

# Headers of the C standard library and POSIX that freestanding guests do not have (clang's
# own freestanding headers - stdint.h, stddef.h, stdbool.h, stdarg.h, limits.h, float.h,
# stdalign.h, stdnoreturn.h, stdatomic.h - work without --wasi).
_LIBC_HEADERS = frozenset({
    "assert.h", "complex.h", "ctype.h", "errno.h", "fenv.h", "inttypes.h", "locale.h",
    "math.h", "setjmp.h", "signal.h", "stdio.h", "stdlib.h", "string.h", "strings.h",
    "tgmath.h", "threads.h", "time.h", "uchar.h", "wchar.h", "wctype.h", "unistd.h",
    "fcntl.h", "dirent.h", "sys/types.h", "sys/stat.h", "sys/time.h", "poll.h", "sched.h",
    "pthread.h",
})
_LIBC_FUNCTIONS = frozenset({
    "printf", "fprintf", "sprintf", "snprintf", "vsnprintf", "puts", "putchar", "malloc",
    "calloc", "realloc", "free", "strdup", "strcpy", "strncpy", "strcat", "strcmp",
    "strncmp", "strchr", "strrchr", "strstr", "strtol", "strtoul", "strtod", "atoi", "atof",
    "qsort", "bsearch", "abs", "labs", "exit", "abort", "time", "clock", "rand", "srand",
})
_MISSING_HEADER = re.compile(r"fatal error: '([^']+)' file not found")
_UNDEFINED = re.compile(r"undefined symbol: (\w+)")
_WASI_SLOW = ("the first --wasi build also compiles wasi-libc, about a minute; "
              "zig caches it for later builds")


def c_flags(options: BuildOptions) -> list[str]:
    """The clang flags for ``options``, without the include directory, source and output.

    Freestanding: ``wasm32-freestanding`` with zig's compiler-rt (128-bit arithmetic,
    ``memcpy``) and no libc; ``spear.h`` defines the few libc symbols the compiler may call.
    ``--wasi``: ``wasm32-wasi`` against wasi-libc as a reactor (``_initialize``, no
    ``_start``). Both: DWARF off unless ``debug`` (the ``name`` section stays, so traps name
    functions), the stack placed first (1 MiB unless told) so an overflow traps instead of
    corrupting data.
    """
    if options.wasi:
        flags = ["--target=wasm32-wasi", "-mexec-model=reactor"]
    else:
        flags = ["--target=wasm32-freestanding", "-Wl,--no-entry"]
    flags += _LEVEL_FLAGS[options.level]
    if options.level in ("0", "safe"):
        # zig enables UBSan at -O0; wasm guests have no UBSan runtime, so the checks trap.
        flags.append("-fsanitize-trap=undefined")
    # (the build drops any DWARF that libraries bring - wasi-libc has plenty - afterwards)
    flags.append("-g" if options.debug else "-g0")
    flags.append(f"-Wl,-z,stack-size={options.stack_size}")
    flags.extend(options.extra_flags)
    return flags


def c_compile_command(src: Path, out: Path, flags: list[str]) -> list[str]:
    """The full command line that compiles ``src`` into ``out``."""
    return [*zig_command(), "cc", *flags, f"-I{include_dir()}", str(src), "-o", str(out)]


def _hint(output: str, options: BuildOptions) -> str:
    if options.wasi:
        return ""
    header = _MISSING_HEADER.search(output)
    if header and header.group(1) in _LIBC_HEADERS:
        return (f"{header.group(1)} is part of libc, which freestanding guests do not have: "
                "build with --wasi to use wasi-libc (or use spear.h's own helpers)")
    for symbol in _UNDEFINED.findall(output):
        if symbol in _LIBC_FUNCTIONS:
            return (f"{symbol} comes from libc, which freestanding guests do not have: "
                    "build with --wasi to use wasi-libc")
    return ""


class CToolchain(Toolchain):
    language = "C"
    suffix = ".c"

    def output_name(self, src: Path) -> str:
        return f"{src.stem}.wasm"

    def identity(self) -> str:
        return f"zig {zig_version()}"

    def describe(self) -> str:
        zig_command()  # raises ToolchainMissing without the ziglang package
        return f"zig {zig_version()} cc (clang)"

    def flags(self, options: BuildOptions) -> list[str]:
        return c_flags(options)

    def sdk_files(self) -> list[Path]:
        return sorted(include_dir().glob("*.h"))

    def local_inputs(self, src: Path) -> list[Path]:
        return sorted(src.parent.glob("*.h"))

    def compile(self, src: Path, out: Path, options: BuildOptions) -> str:
        done = run_compiler(
            c_compile_command(src, out, c_flags(options)),
            src=src,
            what="compiling",
            slow_hint=_WASI_SLOW if options.wasi else "",
            # zig caches the compiled source and would not repeat its warnings next time: a
            # private local cache (in the build's temp dir) recompiles it, while compiler-rt
            # and wasi-libc stay in zig's global cache
            env={"ZIG_LOCAL_CACHE_DIR": str(out.parent / "zig-local-cache")},
        )
        if done.returncode != 0:
            raise BuildError(f"{src}: compile failed", src=src, stderr=done.output,
                             hint=_hint(done.output, options))
        return done.output
