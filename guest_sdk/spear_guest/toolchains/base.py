"""What every language's toolchain provides to the build."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from spear_guest.options import BuildOptions

__all__ = ["Toolchain"]


class Toolchain(ABC):
    """Compiles one language's single-file guests into spear ABI v1 modules."""

    #: "C", "Rust", "Zig"
    language: str
    #: the source suffix, e.g. ".rs"
    suffix: str

    def output_name(self, src: Path) -> str:
        """The module's file name in an output directory: ``echo.rs`` -> ``echo.rs.wasm``
        (C keeps the plain ``echo.wasm``, so C, Rust and Zig guests with one stem coexist)."""
        return f"{src.name}.wasm"

    @abstractmethod
    def identity(self) -> str:
        """Names the exact compiler (version, path): part of the cache key."""

    @abstractmethod
    def describe(self) -> str:
        """For people: which compiler builds this language, e.g.
        ``rustc 1.63.0 (/usr/bin/rustc)``."""

    @abstractmethod
    def flags(self, options: BuildOptions) -> list[str]:
        """The compiler flags for ``options`` (part of the cache key)."""

    @abstractmethod
    def sdk_files(self) -> list[Path]:
        """The SDK sources a build of this language reads (part of the cache key)."""

    def local_inputs(self, src: Path) -> list[Path]:
        """Files next to ``src`` that a build may read (part of the cache key)."""
        return sorted(p for p in src.parent.glob(f"*{self.suffix}") if p != src)

    @abstractmethod
    def compile(self, src: Path, out: Path, options: BuildOptions) -> str:
        """Compile ``src`` into ``out``; returns the compiler's diagnostics (warnings), whole.
        Raises BuildError with the full output and, when we recognise the failure, a hint."""
