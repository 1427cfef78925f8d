"""Length-prefixed frames: 4-byte big-endian length, then the payload.

The length is checked against the connection's maximum *before* any buffer is allocated,
so a hostile 4 GiB prefix costs nothing.
"""

from __future__ import annotations

import asyncio
import struct

from spear.errors import InvalidMessage

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def check_length(length: int, max_size: int) -> None:
    if length == 0:
        raise InvalidMessage("empty frame")
    if length > max_size:
        raise InvalidMessage(f"frame of {length} bytes exceeds the maximum of {max_size} bytes")


async def read_frame(reader: asyncio.StreamReader, max_size: int) -> bytes:
    """Read one frame's payload. Raises `asyncio.IncompleteReadError` at a clean EOF."""
    header = await reader.readexactly(HEADER_SIZE)
    (length,) = HEADER.unpack(header)
    check_length(length, max_size)
    return await reader.readexactly(length)
