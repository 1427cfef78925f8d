"""Zig guests: ``zig build-exe`` for wasm32-freestanding with spear.zig as the module
``spear`` (zig from the ``ziglang`` package)."""

from __future__ import annotations

from pathlib import Path

from spear_guest.errors import BuildError
from spear_guest.options import BuildOptions
from spear_guest.runner import run_compiler
from spear_guest.sdk_files import zig_sdk_file
from spear_guest.toolchains.base import Toolchain
from spear_guest.toolchains.ziglang import zig_command, zig_version

__all__ = ["ZigToolchain", "zig_flags"]

_MODES = {"0": "Debug", "1": "ReleaseFast", "2": "ReleaseFast", "3": "ReleaseFast",
          "s": "ReleaseSmall", "z": "ReleaseSmall", "safe": "ReleaseSafe"}


def zig_flags(options: BuildOptions) -> list[str]:
    """``-fno-entry`` (a library with no ``_start``), ``-rdynamic`` so the handlers'
    ``@export``s reach the module's exports (and ``__stack_pointer`` with them)."""
    if options.wasi:
        raise BuildError("--wasi is for C guests; Zig guests build for wasm32-freestanding")
    return ["-target", "wasm32-freestanding", "-O", _MODES[options.level], "-fno-entry",
            # -fstrip would drop the name section too; the build strips DWARF itself
            "-rdynamic", "-fno-strip",
            "--stack", str(options.stack_size), *options.extra_flags]


class ZigToolchain(Toolchain):
    language = "Zig"
    suffix = ".zig"

    def identity(self) -> str:
        return f"zig {zig_version()}"

    def describe(self) -> str:
        zig_command()  # raises ToolchainMissing without the ziglang package
        return f"zig {zig_version()}"

    def flags(self, options: BuildOptions) -> list[str]:
        return zig_flags(options)

    def sdk_files(self) -> list[Path]:
        return [zig_sdk_file()]

    def compile(self, src: Path, out: Path, options: BuildOptions) -> str:
        done = run_compiler(
            [*zig_command(), "build-exe", *zig_flags(options), "--dep", "spear",
             f"-Mroot={src}", f"-Mspear={zig_sdk_file()}", f"-femit-bin={out}"],
            src=src,
            what="compiling",
            slow_hint="the first zig build compiles parts of zig's std; cached afterwards",
            cwd=out.parent,
        )
        if done.returncode != 0:
            raise BuildError(f"{src}: compile failed", src=src, stderr=done.output)
        return done.output
