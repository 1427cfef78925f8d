"""Helpers for the guest SDK tests: building sources written inline, and what a missing
toolchain means (a skip on a workstation, a failure in CI)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import spear_guest


def toolchains_required() -> bool:
    """.ci/run sets SPEAR_REQUIRE_TOOLCHAINS=1: there a missing toolchain fails the test."""
    return os.environ.get("SPEAR_REQUIRE_TOOLCHAINS") == "1"


def build_source(directory: Path, name: str, source: str, **options: Any) -> Path:
    """Write ``source`` to ``directory/name`` and build it; a missing toolchain skips (or, in
    CI, fails)."""
    src = directory / name
    src.write_text(source)
    try:
        return spear_guest.build(src, directory / f"{name}.wasm", **options)
    except spear_guest.ToolchainMissing as exc:
        if toolchains_required():
            raise
        pytest.skip(f"{exc} ({exc.hint})")


def wasm_sections(module: bytes) -> list[str]:
    """Names of the module's custom sections (``name``, ``.debug_info``, ...)."""
    assert module[:8] == b"\0asm\x01\0\0\0"
    pos, names = 8, []
    while pos < len(module):
        section_id = module[pos]
        pos += 1
        size, pos = _leb(module, pos)
        if section_id == 0:
            name_len, name_pos = _leb(module, pos)
            names.append(module[name_pos : name_pos + name_len].decode())
        pos += size
    return names


def _leb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos
