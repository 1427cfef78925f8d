"""Length-prefixed frames: the receive buffer both ends parse in place, and `FrameStream`,
the asyncio protocol every host connection speaks, over real sockets."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from spear.errors import InvalidMessage
from spear.protocol.framing import HEADER_SIZE, ReceiveBuffer, check_length, frame
from spear.protocol.limits import HANDSHAKE_FRAME_LIMIT
from spear.transport.frame_stream import PREAUTH_BUFFER, FrameStream

# Every asyncio test here runs on asyncio's own loop and on uvloop: they differ in when they
# read (uvloop reads in the same iteration a connection is made, for one).
pytestmark = pytest.mark.both_loops


def test_frame_is_big_endian_length_then_payload() -> None:
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_check_length_refuses_empty_and_oversized_frames() -> None:
    check_length(10, 10)
    with pytest.raises(InvalidMessage, match="empty"):
        check_length(0, 10)
    with pytest.raises(InvalidMessage, match="exceeds"):
        check_length(11, 10)


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20), st.data())
def test_receive_buffer_splits_any_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    buffer = ReceiveBuffer(max_frame=1000, capacity=64)  # tiny: forces compaction and growth
    out: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out.extend(buffer.feed(stream[start:cut]))
        start = cut
    assert out == payloads
    assert buffer.buffered == 0


def test_receive_buffer_returns_many_frames_from_one_read() -> None:
    buffer = ReceiveBuffer(max_frame=100)
    assert buffer.feed(frame(b"a") + frame(b"bb") + frame(b"ccc")[:5]) == [b"a", b"bb"]
    assert buffer.feed(frame(b"ccc")[5:]) == [b"ccc"]


def test_a_huge_length_is_refused_before_any_payload_is_kept() -> None:
    buffer = ReceiveBuffer(max_frame=64 * 1024 * 1024)
    with pytest.raises(InvalidMessage, match="4294967295 bytes exceeds"):
        buffer.feed(b"\xff\xff\xff\xff" + b"x" * 10)
    assert buffer.capacity <= 256 * 1024  # it never grew for the claimed size


def test_a_huge_length_split_across_reads_is_refused_too() -> None:
    buffer = ReceiveBuffer(max_frame=1000)
    assert buffer.feed(frame(b"ok")[:3]) == []
    assert buffer.feed(frame(b"ok")[3:] + b"\x00\x01") == [b"ok"]
    with pytest.raises(InvalidMessage, match="exceeds"):
        buffer.feed(b"\x00\x00")


def test_an_empty_frame_is_refused() -> None:
    with pytest.raises(InvalidMessage, match="empty"):
        ReceiveBuffer(max_frame=10).feed(b"\x00\x00\x00\x00")


def test_a_large_frame_grows_the_buffer_only_while_it_is_read() -> None:
    buffer = ReceiveBuffer(max_frame=1 << 20, capacity=4096)
    big = bytes(range(256)) * 1024  # 256 KiB
    assert buffer.feed(frame(big)) == [big]
    assert buffer.capacity >= len(big)
    assert buffer.feed(frame(big)) == [big]  # back to back: the room is kept meanwhile
    assert buffer.feed(frame(b"small")) == [b"small"]
    assert buffer.feed(frame(b"small")) == [b"small"]
    assert buffer.capacity == 4096  # small frames again: the room was given back


def test_frames_put_back_come_out_again() -> None:
    buffer = ReceiveBuffer(max_frame=100)
    room = buffer.writable()
    data = frame(b"first") + frame(b"second") + frame(b"third")
    room[:len(data)] = data
    buffer.commit(len(data))
    frames = buffer.frames()
    buffer.unread(sum(len(f) + HEADER_SIZE for f in frames[1:]))
    assert [bytes(f) for f in buffer.frames()] == [b"second", b"third"]


# -- FrameStream over real sockets ----------------------------------------------------------


async def _pair() -> tuple[FrameStream, socket.socket]:
    left, right = socket.socketpair()
    _, stream = await asyncio.get_running_loop().connect_accepted_socket(FrameStream, sock=left)
    right.setblocking(False)
    return stream, right


async def _read_frames(sock: socket.socket, count: int, max_frame: int) -> list[bytes]:
    loop = asyncio.get_running_loop()
    buffer = ReceiveBuffer(max_frame)
    got: list[bytes] = []
    while len(got) < count:
        chunk = await loop.sock_recv(sock, 1 << 20)
        assert chunk, "the stream closed early"
        got.extend(buffer.feed(chunk))
    return got


async def test_writes_coalesce_and_keep_their_order() -> None:
    stream, peer = await _pair()
    payloads = [struct.pack(">I", i) * (1 + i % 7) for i in range(500)]
    written = sum(stream.write(p) for p in payloads)
    await stream.drain()
    assert written == sum(HEADER_SIZE + len(p) for p in payloads)
    assert await _read_frames(peer, len(payloads), 1000) == payloads
    stream.close()
    peer.close()


async def test_large_payloads_go_out_whole() -> None:
    stream, peer = await _pair()
    big = bytes(range(256)) * 4096  # 1 MiB
    stream.write(b"small")
    stream.write(big)
    drained = asyncio.ensure_future(stream.drain())
    assert await _read_frames(peer, 2, 2 * len(big)) == [b"small", big]
    await drained
    stream.close()
    peer.close()


async def test_before_authentication_a_frame_over_the_handshake_limit_closes_the_stream() -> None:
    stream, peer = await _pair()
    closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
    stream.on_close = closed.set_result
    stream.release()
    assert stream.receive_capacity == PREAUTH_BUFFER
    await asyncio.get_running_loop().sock_sendall(
        peer, struct.pack(">I", HANDSHAKE_FRAME_LIMIT + 1) + b"x" * 1000)
    error = await asyncio.wait_for(closed, 2)
    assert isinstance(error, InvalidMessage) and "exceeds" in str(error)
    assert stream.receive_capacity == PREAUTH_BUFFER  # nothing of it was kept
    peer.close()


async def test_after_authentication_large_frames_are_accepted() -> None:
    stream, peer = await _pair()
    got: list[bytes] = []
    stream.on_frame = lambda payload: got.append(bytes(payload))
    stream.authenticated(1 << 20)
    stream.release()
    big = b"y" * (HANDSHAKE_FRAME_LIMIT * 10)
    await asyncio.get_running_loop().sock_sendall(peer, frame(big))
    async with asyncio.timeout(2):
        while not got:
            await asyncio.sleep(0.01)
    assert got == [big]
    stream.close()
    peer.close()


async def test_frames_behind_a_held_frame_wait_for_the_next_owner() -> None:
    stream, peer = await _pair()
    first: list[bytes] = []
    rest: list[bytes] = []

    def take_first(payload: memoryview | bytes) -> None:
        first.append(bytes(payload))
        stream.hold()

    stream.on_frame = take_first
    stream.release()
    await asyncio.get_running_loop().sock_sendall(
        peer, frame(b"hello") + frame(b"one") + frame(b"two"))
    async with asyncio.timeout(2):
        while not first:
            await asyncio.sleep(0.01)
    stream.on_frame = lambda payload: rest.append(bytes(payload))
    stream.release()
    assert first == [b"hello"] and rest == [b"one", b"two"]
    stream.close()
    peer.close()


async def test_frames_that_arrive_before_anyone_owns_the_stream_wait_for_the_owner() -> None:
    stream, peer = await _pair()
    await asyncio.get_running_loop().sock_sendall(peer, frame(b"early") + frame(b"bird"))
    await asyncio.sleep(0.05)  # a loop that reads at once would have delivered them by now
    got: list[bytes] = []
    stream.on_frame = lambda payload: got.append(bytes(payload))
    stream.release()
    async with asyncio.timeout(2):
        while len(got) < 2:
            await asyncio.sleep(0.01)
    assert got == [b"early", b"bird"]
    stream.close()
    peer.close()
