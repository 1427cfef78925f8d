"""Drop debug sections from a finished module, keeping the ``name`` section.

Linkers strip all or nothing (zig's ``-Wl,--strip-debug`` and ``-fstrip`` also drop ``name``,
which traps use to name functions), so the build strips DWARF itself: every custom section
whose name starts with ``.debug`` goes, everything else stays byte for byte.
"""

from __future__ import annotations

__all__ = ["strip_debug_sections"]

_HEADER = b"\0asm\x01\0\0\0"


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 35:
            raise ValueError("malformed LEB128 in module")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def strip_debug_sections(module: bytes) -> bytes:
    """``module`` without its ``.debug*`` custom sections."""
    if module[:8] != _HEADER:
        raise ValueError("not a WebAssembly module")
    out = [module[:8]]
    pos = 8
    while pos < len(module):
        start = pos
        section_id = module[pos]
        size, body = _uleb(module, pos + 1)
        end = body + size
        if end > len(module):
            raise ValueError("section runs past the end of the module")
        if section_id == 0:
            name_len, name_at = _uleb(module, body)
            if module[name_at : name_at + name_len].startswith(b".debug"):
                pos = end
                continue
        out.append(module[start:end])
        pos = end
    return b"".join(out)
