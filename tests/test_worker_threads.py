"""The blocking stream server's paths for synchronous handlers: inline on the reading thread,
leader/follower when requests overlap, the sentinel's takeover, deadlines, cancels and
duplicates. The server runs on real threads in this process, behind a real socketpair."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from spear import codec
from spear.channel.stream import StreamChannel
from spear.config import ChannelConfig
from spear.errors import Timeout
from spear.instance_id import RuntimeInstanceId, RuntimeType
from spear.messages import ExecutionRequest, ExecutionResponse, HealthCheck, HealthResponse
from spear.protocol.framing import ReceiveBuffer, frame
from spear.transport.frame_stream import FrameStream
from spear.worker.stream_server import QUICK_STREAK, StreamServer
from spear.worker.thread_budget import ThreadBudget

IID = RuntimeInstanceId(RuntimeType.PROCESS, "threads")
CONFIG = ChannelConfig(keepalive_interval_ms=0, request_timeout_ms=10000)


class Handler:
    """Sync handlers whose behaviour the test steers with events (never with sleeps)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.barrier = threading.Barrier(4, timeout=10)
        self.slow_mode = False
        self.finished: list[str] = []

    def __call__(self, request: ExecutionRequest) -> object:
        name = request.function_name
        if name == "thread":
            return str(threading.get_ident()).encode()
        if name == "text":
            return "text"
        if name == "wrong":
            return 42
        if name == "boom":
            raise ValueError("boom")
        if name == "exit":
            raise SystemExit(3)
        if name == "together":  # returns only once four of them run at the same time
            self.barrier.wait()
            return b"together"
        if name == "block" or (name == "flip" and self.slow_mode):
            self.entered.set()
            self.release.wait(10)
            self.finished.append(request.request_id)
            return b"released"
        return request.input_data


@dataclass
class Served:
    channel: StreamChannel
    server: StreamServer
    handler: Handler
    done: asyncio.Future[str]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    left, right = socket.socketpair()
    _, stream = await asyncio.get_running_loop().connect_accepted_socket(FrameStream, sock=left)
    handler = Handler()
    server = StreamServer(right, handler, received=ReceiveBuffer(1 << 20),
                          threads=ThreadBudget(8), max_in_flight=64)
    done = asyncio.ensure_future(asyncio.to_thread(server.serve))
    channel = StreamChannel(IID, stream, CONFIG)
    yield Served(channel, server, handler, done)
    handler.release.set()
    await channel.close()
    await asyncio.wait_for(done, 5)


async def call(served: Served, function: str, data: bytes = b"", rid: str = "r",
               timeout_ms: int = 0) -> ExecutionResponse:
    reply = await served.channel.request_response(
        ExecutionRequest(rid, function, data, timeout_ms))
    assert isinstance(reply, ExecutionResponse)
    return reply


async def in_flight(served: Served) -> float:
    health = await served.channel.request_response(HealthCheck("h"))
    assert isinstance(health, HealthResponse)
    return health.metrics["in_flight"]


async def learn_quick(served: Served, function: str) -> None:
    for i in range(QUICK_STREAK + 1):
        assert (await call(served, function, b"x", rid=f"learn-{function}-{i}")).ok


async def test_sync_handler_results_and_failures(served: Served) -> None:
    assert (await call(served, "echo", b"hi", rid="a")).output_data == b"hi"
    assert (await call(served, "text", rid="b")).output_data == b"text"
    wrong = await call(served, "wrong", rid="c")
    assert wrong.error_code == "handler_error" and "int" in (wrong.error_message or "")
    boom = await call(served, "boom", rid="d")
    assert boom.error_code == "handler_error" and "boom" in (boom.error_message or "")
    exited = await call(served, "exit", rid="e")
    assert exited.error_code == "internal_error" and "SystemExit" in (exited.error_message or "")
    assert await in_flight(served) == 0


async def test_sequential_quick_requests_are_served_by_one_thread(served: Served) -> None:
    await learn_quick(served, "thread")
    threads = {(await call(served, "thread", rid=f"t{i}")).output_data for i in range(50)}
    assert len(threads) == 1  # read, run and answered on the reading thread: no hand-off


async def test_slow_requests_run_concurrently_on_threads_of_their_own(served: Served) -> None:
    replies = await asyncio.gather(*(call(served, "together", rid=f"s{i}") for i in range(4)))
    assert [r.output_data for r in replies] == [b"together"] * 4  # the barrier of 4 opened


async def test_a_quick_function_that_turns_slow_does_not_hold_up_the_connection(
    served: Served,
) -> None:
    await learn_quick(served, "flip")
    served.handler.slow_mode = True
    stuck = asyncio.ensure_future(call(served, "flip", rid="stuck"))
    await asyncio.to_thread(served.handler.entered.wait, 5)
    # The thread that read "stuck" runs it inline; another thread takes over reading.
    assert (await call(served, "echo", b"meanwhile", rid="other")).output_data == b"meanwhile"
    assert await in_flight(served) == 1  # the inline request was registered when it dragged on
    served.handler.release.set()
    assert (await stuck).output_data == b"released"


async def test_a_sync_handler_past_its_deadline_is_answered_timeout_on_time(
    served: Served,
) -> None:
    late = await call(served, "block", rid="t", timeout_ms=50)
    assert late.error_code == "timeout" and late.status.value == "timeout"
    served.handler.release.set()
    async with asyncio.timeout(5):
        while "t" not in served.handler.finished:
            await asyncio.sleep(0.01)
    assert (await call(served, "echo", b"after", rid="t")).output_data == b"after"
    assert (await served.channel.get_stats()).messages_dropped == 0  # its late result: never sent


async def test_an_inline_request_that_drags_on_still_gets_its_deadline(served: Served) -> None:
    await learn_quick(served, "flip")
    served.handler.slow_mode = True
    late = await call(served, "flip", rid="late", timeout_ms=100)
    assert late.error_code == "timeout"


async def test_a_cancelled_sync_request_is_answered_and_forgotten_at_once(
    served: Served,
) -> None:
    with pytest.raises(Timeout):
        await served.channel.request_response(ExecutionRequest("c", "block"), timeout=0.05)
    async with asyncio.timeout(5):
        while await in_flight(served):
            await asyncio.sleep(0.01)
    assert (await call(served, "echo", b"again", rid="c")).output_data == b"again"


def _raw_pair() -> tuple[socket.socket, StreamServer, Handler, threading.Thread]:
    left, right = socket.socketpair()
    handler = Handler()
    server = StreamServer(right, handler, received=ReceiveBuffer(1 << 20),
                          threads=ThreadBudget(4))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    left.settimeout(10)
    return left, server, handler, thread


def _replies(sock: socket.socket, count: int) -> list[ExecutionResponse]:
    buffer = ReceiveBuffer(1 << 20)
    out: list[ExecutionResponse] = []
    while len(out) < count:
        chunk = sock.recv(65536)
        assert chunk
        for payload in buffer.feed(chunk):
            message = codec.decode(payload)
            assert isinstance(message, ExecutionResponse)
            out.append(message)
    return out


@pytest.mark.parametrize("function", ["echo", "block"])
def test_a_duplicate_id_in_flight_gets_duplicate_request(function: str) -> None:
    sock, server, handler, thread = _raw_pair()
    try:
        for i in range(QUICK_STREAK + 1):  # "echo" becomes quick and runs inline
            sock.sendall(frame(codec.encode(ExecutionRequest(f"w{i}", function, b"."))))
            if function == "echo":
                _replies(sock, 1)
            else:
                handler.release.set()
                _replies(sock, 1)
                handler.release.clear()
        twice = frame(codec.encode(ExecutionRequest("dup", function, b"1")))
        sock.sendall(twice + twice)  # one write: both are in flight together
        handler.release.set()
        replies = _replies(sock, 2)
        codes = sorted(r.error_code or "ok" for r in replies)
        assert codes == ["duplicate_request", "ok"], replies
        assert all(r.request_id == "dup" for r in replies)
    finally:
        handler.release.set()
        sock.close()
        thread.join(5)
    assert server.end_reason == "closed by the host"


def test_graceful_shutdown_waits_for_an_inline_request_then_closes() -> None:
    from spear.messages import Shutdown

    sock, server, handler, thread = _raw_pair()
    try:
        for i in range(QUICK_STREAK + 1):
            sock.sendall(frame(codec.encode(ExecutionRequest(f"w{i}", "flip", b"."))))
            _replies(sock, 1)
        handler.slow_mode = True
        sock.sendall(frame(codec.encode(ExecutionRequest("last", "flip"))))
        assert handler.entered.wait(5)
        sock.sendall(frame(codec.encode(Shutdown(True, 5000))))
        refused = frame(codec.encode(ExecutionRequest("late", "echo")))
        sock.sendall(refused)
        assert _replies(sock, 1)[0].error_code == "unavailable"
        handler.release.set()
        assert _replies(sock, 1)[0].output_data == b"released"
        assert sock.recv(1) == b""  # then the worker hangs up
    finally:
        handler.release.set()
        sock.close()
        thread.join(5)
    assert server.end_reason == "drained"
