"""The one exception the build raises."""

from __future__ import annotations

from pathlib import Path

__all__ = ["BuildError", "ToolchainMissing"]


class BuildError(Exception):
    """A guest failed to compile or link, or no toolchain can build it.

    ``stderr`` holds the compiler's full output (warnings and errors, untrimmed); ``hint`` an
    actionable suggestion when we recognise the failure (a libc header without ``--wasi``, a
    missing toolchain).
    """

    def __init__(
        self, message: str, *, src: Path | None = None, stderr: str = "", hint: str = ""
    ) -> None:
        super().__init__(message)
        self.src = src
        self.stderr = stderr
        self.hint = hint

    @property
    def summary(self) -> str:
        """One line: the message and the first compiler error."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        first = next((line for line in lines if "error" in line), lines[-1] if lines else "")
        return f"{self}: {first}" if first else str(self)


class ToolchainMissing(BuildError):
    """No compiler for the guest's language is installed (``hint`` says how to get one)."""
