"""Build options shared by every language: optimisation, stack, WASI, debug info."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from spear_guest.errors import BuildError

__all__ = ["DEFAULT_OPT", "DEFAULT_STACK_SIZE", "OPT_LEVELS", "BuildOptions"]

#: ``-O`` values accepted by every language -> the canonical level. Zig-style names and clang
#: levels; each toolchain maps the canonical level to its own flags.
OPT_LEVELS: dict[str, str] = {
    "Debug": "0",
    "ReleaseSafe": "safe",
    "ReleaseFast": "3",
    "ReleaseSmall": "z",
    "0": "0",
    "1": "1",
    "2": "2",
    "3": "3",
    "s": "s",
    "z": "z",
}
DEFAULT_OPT = "2"
#: Shadow-stack size every language gets unless told otherwise (placed first, so an
#: overflow traps instead of corrupting data).
DEFAULT_STACK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class BuildOptions:
    """How to build a guest. ``level`` is the canonical optimisation level (see OPT_LEVELS)."""

    level: str = OPT_LEVELS[DEFAULT_OPT]
    stack_size: int = DEFAULT_STACK_SIZE
    wasi: bool = False
    debug: bool = False
    extra_flags: tuple[str, ...] = field(default=())

    @classmethod
    def make(
        cls,
        opt: str = DEFAULT_OPT,
        stack_size: int | None = None,
        extra_flags: Sequence[str] = (),
        *,
        wasi: bool = False,
        debug: bool = False,
    ) -> BuildOptions:
        """Validate user-facing values (``-O`` name, stack size) into options."""
        try:
            level = OPT_LEVELS[opt.removeprefix("-O")]
        except KeyError:
            choices = ", ".join(OPT_LEVELS)
            raise BuildError(
                f"unknown optimisation level {opt!r} (choose from {choices})"
            ) from None
        if stack_size is None:
            stack_size = DEFAULT_STACK_SIZE
        elif stack_size <= 0 or stack_size % 16:
            raise BuildError(f"stack size must be a positive multiple of 16, got {stack_size}")
        return cls(level, stack_size, wasi, debug, tuple(extra_flags))
