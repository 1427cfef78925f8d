"""The zig compiler from the ``ziglang`` PyPI package (no system toolchain)."""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from importlib import metadata

from spear_guest.errors import ToolchainMissing

__all__ = ["zig_command", "zig_version"]


@cache
def zig_version() -> str:
    try:
        return metadata.version("ziglang")
    except metadata.PackageNotFoundError:
        return "unknown"


def zig_command() -> list[str]:
    """``python -m ziglang``, checked to be importable."""
    if importlib.util.find_spec("ziglang") is None:
        raise ToolchainMissing(
            "the ziglang package is not installed (pip install spear-guest brings it)"
        )
    return [sys.executable, "-m", "ziglang"]
