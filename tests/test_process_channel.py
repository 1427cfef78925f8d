"""`StreamChannel` over real sockets, with the peer in this process.

Two kinds of peer: a real worker listener (the pod worker's threaded listener: handshake,
then the blocking `StreamServer`) that the channel dials with `open_unix_channel` /
`open_tcp_channel`, and a scripted raw peer on the other end of a socketpair, for
misbehaviour no honest worker produces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator

import pytest
from spear import codec
from spear.channel.stream import StreamChannel, open_tcp_channel, open_unix_channel
from spear.config import ChannelConfig
from spear.errors import (
    AuthenticationFailed,
    ChannelClosed,
    CommunicationError,
    InvalidMessage,
    Timeout,
)
from spear.instance_id import RuntimeInstanceId, RuntimeType
from spear.messages import (
    Ack,
    Cancel,
    Error,
    ExecutionRequest,
    ExecutionResponse,
    HealthCheck,
    HealthResponse,
    RuntimeMessage,
    Shutdown,
)
from spear.protocol.framing import ReceiveBuffer, frame
from spear.transport.frame_stream import FrameStream
from spear.transport.unix import bind_private_socket, make_private_dir
from spear.worker import examples
from spear.worker.async_bridge import AsyncBridge
from spear.worker.dispatcher import Dispatcher
from spear.worker.tcp_listener import TcpWorkerListener

# Every asyncio test here runs on asyncio's own loop and on uvloop: they differ in when they
# read (uvloop reads in the same iteration a connection is made, for one).
pytestmark = pytest.mark.both_loops


IID = RuntimeInstanceId(RuntimeType.PROCESS, "chan")
TOKEN = "correct-horse-battery-staple"
QUIET = ChannelConfig(keepalive_interval_ms=0, request_timeout_ms=5000, connect_timeout_ms=2000)


class InProcessWorker:
    """A listening worker in this process (on threads): checks the host's handshake, then
    serves with the blocking stream server, async handlers on a bridge loop."""

    def __init__(self) -> None:
        self.bridge = AsyncBridge(Dispatcher(examples.route))
        self.listeners: list[TcpWorkerListener] = []

    def _listener(self) -> TcpWorkerListener:
        listener = TcpWorkerListener(examples.route, bridge=self.bridge, token=TOKEN,
                                     handshake_timeout=2.0)
        self.listeners.append(listener)
        return listener

    async def listen_unix(self, directory: str) -> str:
        path = f"{directory}/worker.sock"
        self._listener().start_on(bind_private_socket(path))
        return path

    async def listen_tcp(self) -> str:
        port = self._listener().start("127.0.0.1:0")
        return f"127.0.0.1:{port}"

    async def close(self) -> None:
        for listener in self.listeners:
            listener.close()
        self.bridge.close()


@pytest.fixture
async def worker() -> AsyncIterator[InProcessWorker]:
    server = InProcessWorker()
    yield server
    await server.close()


@pytest.fixture
def private_dir() -> Iterator[str]:
    """A 0700 directory for sockets (short, unlike tmp_path), removed afterwards."""
    directory = make_private_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def unix_channel(worker: InProcessWorker, private_dir: str) -> AsyncIterator[StreamChannel]:
    path = await worker.listen_unix(private_dir)
    channel = await open_unix_channel(IID, path, QUIET, token=TOKEN)
    yield channel
    await channel.close()


class RawPeer:
    """The far end of a socketpair, driven by the test byte by byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = ReceiveBuffer(1 << 20)
        self.inbox: list[RuntimeMessage] = []

    async def next_message(self, timeout: float = 2.0) -> RuntimeMessage:
        async with asyncio.timeout(timeout):
            while not self.inbox:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError
                self.inbox.extend(codec.decode(f) for f in self.frames.feed(data))
        return self.inbox.pop(0)

    def send(self, message: RuntimeMessage) -> None:
        self.writer.write(frame(codec.encode(message)))

    async def wait_eof(self, timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while await self.reader.read(65536):
                pass


_opened: list[tuple[StreamChannel, RawPeer]] = []


async def channel_with_raw_peer(config: ChannelConfig = QUIET) -> tuple[StreamChannel, RawPeer]:
    left, right = socket.socketpair()
    _, stream = await asyncio.get_running_loop().connect_accepted_socket(FrameStream, sock=left)
    peer_reader, peer_writer = await asyncio.open_connection(sock=right)
    pair = StreamChannel(IID, stream, config), RawPeer(peer_reader, peer_writer)
    _opened.append(pair)
    return pair


@pytest.fixture(autouse=True)
async def _close_raw_peers() -> AsyncIterator[None]:
    yield
    while _opened:
        channel, peer = _opened.pop()
        await channel.close()
        peer.writer.close()
        with contextlib.suppress(Exception):
            await peer.writer.wait_closed()


# -- dialling and authenticating ------------------------------------------------------------


async def test_unix_round_trip_through_the_dial_helper(unix_channel: StreamChannel) -> None:
    reply = await unix_channel.request_response(ExecutionRequest("r1", "upper", b"hello"))
    assert isinstance(reply, ExecutionResponse) and reply.ok
    assert reply.output_data == b"HELLO"
    assert unix_channel.connected and unix_channel.peer.startswith("unix:")


async def test_tcp_round_trip_through_the_dial_helper(worker: InProcessWorker) -> None:
    address = await worker.listen_tcp()
    assert address.startswith("127.0.0.1:")
    async with await open_tcp_channel(IID, address, QUIET, token=TOKEN) as channel:
        reply = await channel.request_response(ExecutionRequest("r1", "echo", b"over tcp"))
        assert isinstance(reply, ExecutionResponse) and reply.output_data == b"over tcp"


async def test_a_wrong_token_is_refused_with_authentication_failed(
    worker: InProcessWorker, private_dir: str,
) -> None:
    path = await worker.listen_unix(private_dir)
    with pytest.raises(AuthenticationFailed, match="auth_failed"):
        await open_unix_channel(IID, path, QUIET, token="not-the-token")


async def test_dialling_nothing_fails_with_connection_failed(private_dir: str) -> None:
    with pytest.raises(CommunicationError, match="cannot connect"):
        await open_unix_channel(IID, f"{private_dir}/absent.sock", QUIET, token=TOKEN)
    with pytest.raises(CommunicationError, match="cannot connect"):
        await open_tcp_channel(IID, "127.0.0.1:1", QUIET)


# -- multiplexing ---------------------------------------------------------------------------


async def test_many_requests_in_flight_are_each_matched_to_their_reply(
    unix_channel: StreamChannel,
) -> None:
    async def one(i: int) -> None:
        request = ExecutionRequest(f"id-{i}", "tagged_echo", str(i).encode())
        reply = await unix_channel.request_response(request)
        assert isinstance(reply, ExecutionResponse)
        assert reply.request_id == f"id-{i}"
        assert reply.output_data == f"id-{i}|{i}".encode()

    await asyncio.gather(*(one(i) for i in range(500)))
    assert unix_channel.in_flight == 0


async def test_a_duplicate_request_id_in_flight_is_refused(unix_channel: StreamChannel) -> None:
    first = asyncio.ensure_future(
        unix_channel.request_response(ExecutionRequest("same", "async_slow", b"0.2")))
    await asyncio.sleep(0.01)
    with pytest.raises(CommunicationError, match="already in flight"):
        await unix_channel.request_response(ExecutionRequest("same", "echo", b"x"))
    reply = await first
    assert isinstance(reply, ExecutionResponse) and reply.ok
    # Once answered, the id may be used again.
    assert isinstance(await unix_channel.request_response(ExecutionRequest("same", "echo")),
                      ExecutionResponse)


async def test_request_response_takes_only_requests_and_health_checks(
    unix_channel: StreamChannel,
) -> None:
    with pytest.raises(InvalidMessage, match="ExecutionRequest or HealthCheck"):
        await unix_channel.request_response(Ack("x"))
    reply = await unix_channel.request_response(HealthCheck("hc"))
    assert isinstance(reply, HealthResponse) and reply.status == "serving"


async def test_handler_failures_come_back_as_error_responses(unix_channel: StreamChannel) -> None:
    reply = await unix_channel.request_response(ExecutionRequest("f", "fail", b"boom"))
    assert isinstance(reply, ExecutionResponse) and not reply.ok
    assert reply.error_code == "handler_error"
    assert "failed on purpose" in (reply.error_message or "")


async def test_an_oversized_message_is_refused_before_sending(
    worker: InProcessWorker, private_dir: str,
) -> None:
    path = await worker.listen_unix(private_dir)
    config = QUIET.with_changes(max_message_size=1024)
    async with await open_unix_channel(IID, path, config, token=TOKEN) as channel:
        with pytest.raises(InvalidMessage, match="exceeds"):
            await channel.request_response(ExecutionRequest("big", "echo", b"x" * 2048))
        reply = await channel.request_response(ExecutionRequest("small", "echo", b"x" * 100))
        assert isinstance(reply, ExecutionResponse) and reply.ok


async def test_a_large_message_round_trips(worker: InProcessWorker, private_dir: str) -> None:
    path = await worker.listen_unix(private_dir)
    async with await open_unix_channel(IID, path, QUIET, token=TOKEN) as channel:
        payload = bytes(range(256)) * 16384  # 4 MiB
        reply = await channel.request_response(ExecutionRequest("big", "echo", payload))
        assert isinstance(reply, ExecutionResponse) and reply.output_data == payload


# -- timeouts and cancellation --------------------------------------------------------------


async def test_a_timeout_raises_timeout_counts_it_and_cancels_on_the_worker(
    unix_channel: StreamChannel,
) -> None:
    started = time.monotonic()
    with pytest.raises(Timeout):
        await unix_channel.request_response(ExecutionRequest("late", "async_slow", b"5"),
                                            timeout=0.1)
    assert time.monotonic() - started < 1.0
    assert (await unix_channel.get_stats()).timeout_errors == 1
    async with asyncio.timeout(2):
        while "late" not in examples.CANCELLED:
            await asyncio.sleep(0.01)
    # The channel is still fine afterwards.
    reply = await unix_channel.request_response(ExecutionRequest("next", "echo", b"ok"))
    assert isinstance(reply, ExecutionResponse) and reply.output_data == b"ok"


async def test_a_cancelled_caller_sends_cancel_to_the_peer() -> None:
    channel, peer = await channel_with_raw_peer()
    call = asyncio.ensure_future(channel.request_response(ExecutionRequest("c1", "f")))
    assert isinstance(await peer.next_message(), ExecutionRequest)
    call.cancel()
    assert await peer.next_message() == Cancel("c1")
    assert channel.in_flight == 0
    await channel.close()


async def test_each_request_expires_at_its_own_deadline_whatever_the_mix() -> None:
    channel, peer = await channel_with_raw_peer()
    started = time.monotonic()
    # A long timeout first, then a short one, then more distinct timeouts than get queues.
    timeouts = [0.6, 0.05, *(0.1 + i * 0.01 for i in range(20))]
    calls = [asyncio.ensure_future(channel.request_response(
        ExecutionRequest(f"d{i}", "f"), timeout=t)) for i, t in enumerate(timeouts)]
    expired_at: dict[int, float] = {}
    for i, call in enumerate(calls):
        call.add_done_callback(
            lambda _, i=i: expired_at.__setitem__(i, time.monotonic() - started))  # type: ignore[misc]
    for call in calls:
        with pytest.raises(Timeout):
            await call
    for i, t in enumerate(timeouts):
        assert t - 0.01 <= expired_at[i] < t + 0.5, (t, expired_at[i])
    assert (await channel.get_stats()).timeout_errors == len(timeouts)
    cancels = [m for m in [await peer.next_message() for _ in range(2 * len(timeouts))]
               if isinstance(m, Cancel)]
    assert len(cancels) == len(timeouts)


async def test_answered_requests_never_time_out_later() -> None:
    channel, peer = await channel_with_raw_peer()

    async def answer_all() -> None:
        while True:
            message = await peer.next_message(timeout=5)
            if isinstance(message, ExecutionRequest):
                peer.send(ExecutionResponse(message.request_id, b"ok"))

    answering = asyncio.ensure_future(answer_all())
    for i in range(200):
        await channel.request_response(ExecutionRequest(f"q{i}", "f"), timeout=0.05)
    await asyncio.sleep(0.1)
    assert (await channel.get_stats()).timeout_errors == 0
    answering.cancel()


async def test_a_late_reply_after_a_timeout_is_dropped() -> None:
    channel, peer = await channel_with_raw_peer()
    with pytest.raises(Timeout):
        await channel.request_response(ExecutionRequest("t1", "f"), timeout=0.05)
    assert isinstance(await peer.next_message(), ExecutionRequest)
    assert await peer.next_message() == Cancel("t1")
    peer.send(ExecutionResponse("t1", b"too late"))
    peer.send(ExecutionResponse("t2", b"unknown"))
    call = asyncio.ensure_future(channel.request_response(ExecutionRequest("t3", "f")))
    await peer.next_message()
    peer.send(ExecutionResponse("t3", b"on time"))
    reply = await call
    assert isinstance(reply, ExecutionResponse) and reply.output_data == b"on time"
    await channel.close()


# -- dead peers -----------------------------------------------------------------------------


async def test_a_peer_that_hangs_up_fails_every_pending_request_at_once() -> None:
    channel, peer = await channel_with_raw_peer(QUIET.with_changes(request_timeout_ms=30000))
    calls = [asyncio.ensure_future(channel.request_response(ExecutionRequest(f"p{i}", "f")))
             for i in range(50)]
    await peer.next_message()
    started = time.monotonic()
    peer.writer.close()
    for call in calls:
        with pytest.raises(ChannelClosed):
            await call
    assert time.monotonic() - started < 1.0
    assert not channel.connected
    with pytest.raises(ChannelClosed):
        await channel.request_response(ExecutionRequest("after", "f"))
    assert (await channel.get_stats()).connection_errors == 1


async def test_a_peer_that_stops_answering_heartbeats_is_declared_dead() -> None:
    config = QUIET.with_changes(keepalive_interval_ms=50, request_timeout_ms=30000)
    channel, peer = await channel_with_raw_peer(config)
    pending = asyncio.ensure_future(channel.request_response(ExecutionRequest("p", "f")))
    # Answer the first heartbeat like a live peer, then go silent (but keep the socket open).
    while True:
        message = await peer.next_message()
        if isinstance(message, HealthCheck):
            peer.send(HealthResponse(message.request_id))
            break
    started = time.monotonic()
    with pytest.raises(ChannelClosed, match="missed 3 heartbeats"):
        await pending
    assert 0.1 <= time.monotonic() - started < 1.0
    assert not channel.connected


async def test_a_peer_that_answers_heartbeats_stays_alive() -> None:
    config = QUIET.with_changes(keepalive_interval_ms=20)
    channel, peer = await channel_with_raw_peer(config)

    async def answer() -> None:
        while True:
            message = await peer.next_message()
            if isinstance(message, HealthCheck):
                peer.send(HealthResponse(message.request_id))

    answering = asyncio.ensure_future(answer())
    await asyncio.sleep(0.3)
    assert channel.connected
    answering.cancel()
    await channel.close()


async def test_close_fails_pending_requests_with_channel_closed() -> None:
    channel, peer = await channel_with_raw_peer()
    call = asyncio.ensure_future(channel.request_response(ExecutionRequest("p", "f")))
    await peer.next_message()
    await channel.close()
    with pytest.raises(ChannelClosed):
        await call
    await peer.wait_eof()
    assert (await channel.get_stats()).connection_errors == 0


# -- malformed input ------------------------------------------------------------------------


async def test_a_malformed_frame_closes_only_that_connection(
    caplog: pytest.LogCaptureFixture, unix_channel: StreamChannel
) -> None:
    channel, peer = await channel_with_raw_peer()
    call = asyncio.ensure_future(channel.request_response(ExecutionRequest("p", "f")))
    await peer.next_message()
    with caplog.at_level(logging.WARNING, logger="spear.channel.stream"):
        peer.writer.write(frame(b"\xc1 this is not msgpack"))
        with pytest.raises(ChannelClosed, match="invalid message"):
            await call
    assert "invalid message" in caplog.text
    # The peer is told why, then disconnected.
    error = await peer.next_message()
    assert isinstance(error, Error) and error.code == "invalid_message"
    await peer.wait_eof()
    # Another channel is not disturbed.
    reply = await unix_channel.request_response(ExecutionRequest("ok", "echo", b"fine"))
    assert isinstance(reply, ExecutionResponse) and reply.output_data == b"fine"


async def test_a_4_gib_length_prefix_is_refused_without_allocating(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel, peer = await channel_with_raw_peer()
    call = asyncio.ensure_future(channel.request_response(ExecutionRequest("p", "f")))
    await peer.next_message()
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="spear.channel.stream"):
            peer.writer.write(b"\xff\xff\xff\xff" + b"\x00" * 64)
            with pytest.raises(ChannelClosed, match="exceeds"):
                await call
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024
    assert "4294967295" in caplog.text
    await peer.wait_eof()


# -- unsolicited messages -------------------------------------------------------------------


async def test_receive_returns_unsolicited_messages_then_channel_closed() -> None:
    channel, peer = await channel_with_raw_peer()
    peer.send(ExecutionRequest("guest-1", "notify", b"event"))
    peer.send(Shutdown(True, 100))
    peer.send(Error("", "something odd", "odd"))
    assert await channel.receive() == ExecutionRequest("guest-1", "notify", b"event")
    assert await channel.receive() == Shutdown(True, 100)
    assert await channel.receive() == Error("", "something odd", "odd")
    waiting = asyncio.ensure_future(channel.receive())
    await asyncio.sleep(0.01)
    peer.writer.close()
    with pytest.raises(ChannelClosed):
        await waiting


async def test_the_channel_answers_the_peers_health_checks_and_sends_messages() -> None:
    channel, peer = await channel_with_raw_peer()
    peer.send(HealthCheck("from-peer"))
    assert await peer.next_message() == HealthResponse("from-peer", "serving", {})
    await channel.send(Shutdown(False, 0))
    assert await peer.next_message() == Shutdown(False, 0)
    await channel.close()
    with pytest.raises(ChannelClosed):
        await channel.send(Shutdown())


# -- stats ----------------------------------------------------------------------------------


async def test_stats_count_messages_bytes_and_a_true_mean_latency() -> None:
    channel, peer = await channel_with_raw_peer()

    async def answer(delay: float) -> None:
        request = await peer.next_message()
        assert isinstance(request, ExecutionRequest)
        await asyncio.sleep(delay)
        peer.send(ExecutionResponse(request.request_id, b"done"))

    for i, delay in enumerate((0.0, 0.1)):
        answering = asyncio.ensure_future(answer(delay))
        await channel.request_response(ExecutionRequest(f"s{i}", "f", b"12345"))
        await answering
    stats = await channel.get_stats()
    request_bytes = 4 + len(codec.encode(ExecutionRequest("s0", "f", b"12345")))
    reply_bytes = 4 + len(codec.encode(ExecutionResponse("s0", b"done")))
    assert stats.messages_sent == 2 and stats.messages_received == 2
    assert stats.bytes_sent == 2 * request_bytes
    assert stats.bytes_received == 2 * reply_bytes
    assert stats.requests_completed == 2
    # Two requests of ~0 ms and ~100 ms: the mean is ~50 ms, not the last or the max.
    assert 45 <= stats.mean_latency_ms <= 90
    assert stats.uptime_s > 0
    await channel.close()


async def test_repr_shows_the_instance_and_state(unix_channel: StreamChannel) -> None:
    assert "process:chan" in repr(unix_channel) and "open" in repr(unix_channel)
    assert TOKEN not in repr(unix_channel)
    with contextlib.suppress(Exception):
        await unix_channel.close()
    assert "closed" in repr(unix_channel)
