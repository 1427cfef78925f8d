"""The short paths of a stream round trip: bytes handled in the transport's read callback
(`StreamTakeover`) on both ends, and async handlers started eagerly by the worker's
`Dispatcher.serve` (answered without an event-loop iteration when they do not wait)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from spear import codec
from spear.channel.stream import StreamChannel
from spear.config import ChannelConfig
from spear.errors import Timeout
from spear.instance_id import RuntimeInstanceId, RuntimeType
from spear.messages import ExecutionRequest, ExecutionResponse, HealthCheck, HealthResponse
from spear.transport.framing import frame
from spear.worker.dispatcher import Dispatcher
from spear.worker.stream_server import serve_stream

IID = RuntimeInstanceId(RuntimeType.PROCESS, "latency")
CONFIG = ChannelConfig(keepalive_interval_ms=0, request_timeout_ms=5000)
SEEN: list[object] = []


async def inspecting(request: ExecutionRequest) -> bytes:
    """Sees what any handler sees in a task, even when started eagerly."""
    name = request.function_name
    if name == "task":
        task = asyncio.current_task()
        assert task is not None
        return type(task).__name__.encode()
    if name == "timeout":  # asyncio.timeout needs the current task, on the first step
        async with asyncio.timeout(0.05):
            await asyncio.sleep(5)
        return b"not reached"
    if name == "yield":  # a bare yield on the first step, then finish
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return b"yielded"
    if name == "slow":
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            SEEN.append(request.request_id)
            raise
        return b"slow"
    if name == "boom":
        raise ValueError("boom")
    return request.input_data


@dataclass
class Pair:
    channel: StreamChannel
    dispatcher: Dispatcher
    server: asyncio.Task[None]


async def _pair(handler: Callable[[ExecutionRequest], object]) -> Pair:
    left, right = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=left)
    worker_reader, worker_writer = await asyncio.open_connection(sock=right)
    dispatcher = Dispatcher(handler)  # type: ignore[arg-type]
    server = asyncio.ensure_future(serve_stream(
        worker_reader, worker_writer, dispatcher, max_message_size=1 << 20, max_in_flight=4))
    return Pair(StreamChannel(IID, reader, writer, CONFIG), dispatcher, server)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    made = await _pair(inspecting)
    yield made
    await made.channel.close()
    await asyncio.wait_for(made.server, 2)
    made.dispatcher.close()


async def call(pair: Pair, function: str, data: bytes = b"", rid: str = "r",
               timeout_ms: int = 0) -> ExecutionResponse:
    reply = await pair.channel.request_response(
        ExecutionRequest(rid, function, data, timeout_ms))
    assert isinstance(reply, ExecutionResponse)
    return reply


async def test_eager_handler_runs_as_the_current_task(pair: Pair) -> None:
    reply = await call(pair, "task")
    assert reply.ok and reply.output_data == b"Task"


async def test_eager_handler_can_use_asyncio_timeout_on_its_first_step(pair: Pair) -> None:
    reply = await call(pair, "timeout")
    assert reply.error_code == "handler_error" and "TimeoutError" in (reply.error_message or "")


async def test_request_timeout_applies_to_eager_handlers(pair: Pair) -> None:
    reply = await call(pair, "slow", rid="t1", timeout_ms=50)
    assert reply.error_code == "timeout"


async def test_bare_yields_and_failures_on_the_eager_path(pair: Pair) -> None:
    assert (await call(pair, "yield")).output_data == b"yielded"
    failed = await call(pair, "boom", rid="b")
    assert failed.error_code == "handler_error" and "boom" in (failed.error_message or "")
    assert (await call(pair, "echo", b"after", rid="e")).output_data == b"after"
    assert pair.dispatcher.in_flight == 0


async def test_cancel_reaches_a_handler_that_waited_after_its_eager_step(pair: Pair) -> None:
    with pytest.raises(Timeout):
        await pair.channel.request_response(ExecutionRequest("c1", "slow", b""), timeout=0.05)
    for _ in range(100):
        if "c1" in SEEN:
            break
        await asyncio.sleep(0.01)
    assert "c1" in SEEN
    assert (await call(pair, "echo", b"x", rid="c2")).output_data == b"x"


async def test_many_in_flight_beyond_the_worker_limit_all_answer(pair: Pair) -> None:
    replies = await asyncio.gather(*(call(pair, "yield", rid=f"m{i}") for i in range(50)),
                                   *(call(pair, "echo", b"%d" % i, rid=f"e{i}")
                                     for i in range(50)))
    assert all(r.ok for r in replies)
    health = await pair.channel.request_response(HealthCheck("h"))
    assert isinstance(health, HealthResponse) and health.metrics["in_flight"] == 0


async def test_frames_buffered_before_the_takeover_are_not_lost() -> None:
    """Bytes the `StreamReader` already holds when the channel takes the transport over
    (frames sent right behind the handshake) are dispatched, not dropped."""
    left, right = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=left)
    right.sendall(frame(codec.encode(HealthCheck("early"))))
    await reader.readexactly(0)
    for _ in range(100):  # let the stream reader buffer it
        await asyncio.sleep(0.001)
        if getattr(reader, "_buffer", b""):
            break
    assert getattr(reader, "_buffer", b"")  # the path under test
    channel = StreamChannel(IID, reader, writer, CONFIG)
    right.setblocking(False)
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(right, 1024), 2)
    assert codec.decode(data[4:]) == HealthResponse("early", "serving", {})
    await channel.close()
    right.close()


# -- sync handlers: the handler thread hands the response straight to the loop ---------------

def sync_handler(request: ExecutionRequest) -> object:
    name = request.function_name
    if name == "sleep":
        time.sleep(float(request.input_data))
        return b"slept"
    if name == "text":
        return "text"
    if name == "wrong":
        return 42
    if name == "boom":
        raise ValueError("boom")
    if name == "exit":
        raise SystemExit(3)
    return request.input_data


@pytest.fixture
async def sync_pair() -> AsyncIterator[Pair]:
    made = await _pair(sync_handler)
    yield made
    await made.channel.close()
    await asyncio.wait_for(made.server, 2)
    made.dispatcher.close()


async def test_sync_handler_results_and_failures(sync_pair: Pair) -> None:
    assert (await call(sync_pair, "echo", b"hi", rid="a")).output_data == b"hi"
    assert (await call(sync_pair, "text", rid="b")).output_data == b"text"
    wrong = await call(sync_pair, "wrong", rid="c")
    assert wrong.error_code == "handler_error" and "int" in (wrong.error_message or "")
    boom = await call(sync_pair, "boom", rid="d")
    assert boom.error_code == "handler_error" and "boom" in (boom.error_message or "")
    exited = await call(sync_pair, "exit", rid="e")
    assert exited.error_code == "internal_error" and "SystemExit" in (exited.error_message or "")
    assert sync_pair.dispatcher.in_flight == 0


async def test_sync_handlers_still_run_concurrently(sync_pair: Pair) -> None:
    started = time.perf_counter()
    replies = await asyncio.gather(*(call(sync_pair, "sleep", b"0.2", rid=f"s{i}")
                                     for i in range(4)))
    assert all(r.output_data == b"slept" for r in replies)
    assert time.perf_counter() - started < 0.6
    assert sync_pair.dispatcher.in_flight == 0


async def test_sync_handler_deadline_and_cancel(sync_pair: Pair) -> None:
    late = await call(sync_pair, "sleep", b"0.3", rid="t", timeout_ms=50)
    assert late.error_code == "timeout"
    with pytest.raises(Timeout):
        await sync_pair.channel.request_response(
            ExecutionRequest("c", "sleep", b"0.3"), timeout=0.05)
    for _ in range(100):  # the worker forgets the cancelled request at once
        health = await sync_pair.channel.request_response(HealthCheck("h"))
        assert isinstance(health, HealthResponse)
        if health.metrics["in_flight"] == 0:
            break
        await asyncio.sleep(0.01)
    assert health.metrics["in_flight"] == 0
    assert (await call(sync_pair, "echo", b"after", rid="c")).output_data == b"after"
