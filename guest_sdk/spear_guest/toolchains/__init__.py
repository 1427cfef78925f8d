"""One toolchain per guest language, chosen by the source file's suffix."""

from __future__ import annotations

from pathlib import Path

from spear_guest.errors import BuildError
from spear_guest.toolchains.base import Toolchain
from spear_guest.toolchains.c import CToolchain
from spear_guest.toolchains.rust import RustToolchain
from spear_guest.toolchains.zig import ZigToolchain

__all__ = ["SUFFIXES", "Toolchain", "for_source"]

_TOOLCHAINS: dict[str, type[Toolchain]] = {
    ".c": CToolchain,
    ".rs": RustToolchain,
    ".zig": ZigToolchain,
}
#: Source suffixes `spear-guest` builds.
SUFFIXES = tuple(_TOOLCHAINS)


def for_source(src: Path) -> Toolchain:
    """The toolchain that builds ``src`` (by suffix)."""
    try:
        return _TOOLCHAINS[src.suffix]()
    except KeyError:
        raise BuildError(
            f"{src}: don't know how to build {src.suffix or 'a file without suffix'} "
            f"(spear-guest builds {', '.join(SUFFIXES)})",
            src=src,
        ) from None
