"""Length-prefixed frames: one at a time (`framing`) and in bulk (`frame_io`)."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from spear.errors import InvalidMessage
from spear.transport.frame_io import FrameBuffer, FrameWriter
from spear.transport.framing import HEADER_SIZE, check_length, frame, read_frame


def test_frame_is_big_endian_length_then_payload() -> None:
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_check_length_refuses_empty_and_oversized_frames() -> None:
    check_length(10, 10)
    with pytest.raises(InvalidMessage, match="empty"):
        check_length(0, 10)
    with pytest.raises(InvalidMessage, match="exceeds"):
        check_length(11, 10)


async def _reader_with(data: bytes, *, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


async def test_read_frame_reads_one_frame_at_a_time() -> None:
    reader = await _reader_with(frame(b"one") + frame(b"two"))
    assert await read_frame(reader, 100) == b"one"
    assert await read_frame(reader, 100) == b"two"
    with pytest.raises(asyncio.IncompleteReadError):
        await read_frame(reader, 100)


async def test_read_frame_checks_the_length_before_reading_the_payload() -> None:
    # Only the header is there: a 4 GiB claim must fail at once, not wait for 4 GiB.
    reader = await _reader_with(b"\xff\xff\xff\xff", eof=False)
    with pytest.raises(InvalidMessage, match="4294967295"):
        await asyncio.wait_for(read_frame(reader, 64 * 1024 * 1024), 1.0)


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20), st.data())
def test_frame_buffer_splits_any_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    buffer = FrameBuffer(max_size=1000)
    out: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out.extend(bytes(f) for f in buffer.feed(stream[start:cut]))
        start = cut
    assert out == payloads
    assert buffer.buffered == 0


def test_frame_buffer_returns_many_frames_from_one_chunk() -> None:
    buffer = FrameBuffer(max_size=100)
    frames = buffer.feed(frame(b"a") + frame(b"bb") + frame(b"ccc")[:5])
    assert [bytes(f) for f in frames] == [b"a", b"bb"]
    assert [bytes(f) for f in buffer.feed(frame(b"ccc")[5:])] == [b"ccc"]


def test_frame_buffer_refuses_a_huge_length_without_buffering_it() -> None:
    buffer = FrameBuffer(max_size=64 * 1024 * 1024)
    with pytest.raises(InvalidMessage, match="exceeds"):
        buffer.feed(b"\xff\xff\xff\xff" + b"x" * 10)
    assert buffer.buffered == 0


def test_frame_buffer_refuses_a_huge_length_split_across_reads() -> None:
    buffer = FrameBuffer(max_size=1000)
    assert buffer.feed(frame(b"ok")[:3]) == []
    assert [bytes(f) for f in buffer.feed(frame(b"ok")[3:] + b"\x00\x01")] == [b"ok"]
    with pytest.raises(InvalidMessage, match="exceeds"):
        buffer.feed(b"\x00\x00")


def test_frame_buffer_refuses_an_empty_frame() -> None:
    with pytest.raises(InvalidMessage, match="empty"):
        FrameBuffer(max_size=10).feed(b"\x00\x00\x00\x00")


async def test_frame_writer_coalesces_and_keeps_order_over_a_real_socket() -> None:
    left, right = socket.socketpair()
    _reader, writer = await asyncio.open_connection(sock=left)
    peer_reader, peer_writer = await asyncio.open_connection(sock=right)
    out = FrameWriter(writer)
    payloads = [struct.pack(">I", i) * (1 + i % 7) for i in range(500)]
    written = sum(out.write(p) for p in payloads)
    await out.drain()
    assert written == sum(HEADER_SIZE + len(p) for p in payloads)
    buffer = FrameBuffer(max_size=1000)
    got: list[bytes] = []
    while len(got) < len(payloads):
        got.extend(bytes(f) for f in buffer.feed(await peer_reader.read(65536)))
    assert got == payloads
    writer.close()
    peer_writer.close()


async def test_frame_writer_sends_large_payloads_whole() -> None:
    left, right = socket.socketpair()
    _, writer = await asyncio.open_connection(sock=left)
    peer_reader, peer_writer = await asyncio.open_connection(sock=right)
    out = FrameWriter(writer)
    big = bytes(range(256)) * 4096  # 1 MiB
    out.write(b"small")
    out.write(big)
    drained = asyncio.ensure_future(out.drain())  # the peer must read for this to finish
    buffer = FrameBuffer(max_size=2 * len(big))
    got: list[bytes] = []
    while len(got) < 2:
        got.extend(bytes(f) for f in buffer.feed(await peer_reader.read(1 << 20)))
    await drained
    assert got == [b"small", big]
    writer.close()
    peer_writer.close()
