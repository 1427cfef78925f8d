"""The worker side: its environment contract, the blocking `StreamServer`, and the
`spear-worker` command."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from spear import codec
from spear.channel.stream import StreamChannel
from spear.config import ChannelConfig
from spear.errors import InvalidConfiguration
from spear.instance_id import RuntimeInstanceId, RuntimeType
from spear.messages import (
    Cancel,
    ExecutionRequest,
    ExecutionResponse,
    ExecutionStatus,
    HealthCheck,
    HealthResponse,
    Shutdown,
)
from spear.protocol.environment import (
    ENV_ENDPOINT,
    ENV_INSTANCE_ID,
    ENV_MAX_MESSAGE_SIZE,
    ENV_TOKEN,
    Endpoint,
    WorkerEnvironment,
)
from spear.protocol.framing import ReceiveBuffer
from spear.transport.frame_stream import FrameStream
from spear.worker import examples
from spear.worker.async_bridge import AsyncBridge
from spear.worker.dispatcher import Dispatcher
from spear.worker.stream_server import StreamServer

IID = RuntimeInstanceId(RuntimeType.PROCESS, "w")
CONFIG = ChannelConfig(keepalive_interval_ms=0, request_timeout_ms=5000)

# -- the environment contract ---------------------------------------------------------------


def test_environment_round_trips_and_hides_the_token() -> None:
    env = WorkerEnvironment(Endpoint("unix", "/run/spear/w.sock"), "process:w", "tok3n", 1024)
    variables = env.to_environ()
    assert variables == {
        ENV_ENDPOINT: "unix:/run/spear/w.sock", ENV_INSTANCE_ID: "process:w",
        ENV_TOKEN: "tok3n", ENV_MAX_MESSAGE_SIZE: "1024",
    }
    assert WorkerEnvironment.from_environ(variables) == env
    assert "tok3n" not in repr(env)


def test_endpoints_parse_unix_paths_and_tcp_addresses() -> None:
    assert Endpoint.parse("unix:/tmp/a:b.sock") == Endpoint("unix", "/tmp/a:b.sock")
    assert Endpoint.parse("tcp:127.0.0.1:4000") == Endpoint("tcp", "127.0.0.1:4000")
    for bad in ("/tmp/x.sock", "udp:1.2.3.4:5", "unix:"):
        with pytest.raises(InvalidConfiguration):
            Endpoint.parse(bad)


def test_missing_or_bad_variables_are_named() -> None:
    with pytest.raises(InvalidConfiguration, match="SPEAR_ENDPOINT, SPEAR_TOKEN"):
        WorkerEnvironment.from_environ({ENV_INSTANCE_ID: "x"})
    good = {ENV_ENDPOINT: "tcp:127.0.0.1:1", ENV_INSTANCE_ID: "x", ENV_TOKEN: "t"}
    assert WorkerEnvironment.from_environ(good).max_message_size == 64 * 1024 * 1024
    with pytest.raises(InvalidConfiguration, match=ENV_MAX_MESSAGE_SIZE):
        WorkerEnvironment.from_environ({**good, ENV_MAX_MESSAGE_SIZE: "lots"})


def _run_worker(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPEAR_")}
    return subprocess.run([sys.executable, "-m", "spear.worker", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=30)


def test_the_worker_command_without_its_environment_exits_2_saying_why() -> None:
    result = _run_worker("spear.worker.examples:echo", env={})
    assert result.returncode == 2
    assert "SPEAR_ENDPOINT" in result.stderr and "Traceback" not in result.stderr


def test_the_worker_command_with_a_bad_handler_exits_2() -> None:
    env = {ENV_ENDPOINT: "tcp:127.0.0.1:1", ENV_INSTANCE_ID: "x", ENV_TOKEN: "t"}
    result = _run_worker("spear.worker.examples:nope", env=env)
    assert result.returncode == 2 and "has no 'nope'" in result.stderr


def test_the_worker_command_exits_1_when_the_host_is_unreachable() -> None:
    env = {ENV_ENDPOINT: "unix:/nonexistent/spear.sock", ENV_INSTANCE_ID: "x", ENV_TOKEN: "t"}
    result = _run_worker("spear.worker.examples:echo", env=env)
    assert result.returncode == 1 and "cannot connect" in result.stderr


# -- the stream server (async handlers, on its bridge's loop thread) -------------------------


@dataclass
class Served:
    channel: StreamChannel
    dispatcher: Dispatcher
    server: asyncio.Future[str]  # the serving thread; its result says why it ended


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    left, right = socket.socketpair()
    _, stream = await asyncio.get_running_loop().connect_accepted_socket(FrameStream, sock=left)
    dispatcher = Dispatcher(examples.route)
    bridge = AsyncBridge(dispatcher)
    worker = StreamServer(right, examples.route, received=ReceiveBuffer(1 << 20), bridge=bridge,
                          max_in_flight=8)
    server = asyncio.ensure_future(asyncio.to_thread(worker.serve))
    channel = StreamChannel(IID, stream, CONFIG)
    yield Served(channel, dispatcher, server)
    await channel.close()
    await asyncio.wait_for(server, 2)
    bridge.close()


async def request(served: Served, function: str, data: bytes = b"", rid: str = "r"
                  ) -> ExecutionResponse:
    reply = await served.channel.request_response(ExecutionRequest(rid, function, data))
    assert isinstance(reply, ExecutionResponse)
    return reply


async def test_graceful_shutdown_finishes_in_flight_and_refuses_new_requests(
    served: Served,
) -> None:
    slow = [asyncio.ensure_future(request(served, "async_slow", b"0.2", f"s{i}"))
            for i in range(5)]
    await asyncio.sleep(0.05)
    await served.channel.send(Shutdown(graceful=True, timeout_ms=2000))
    refused = await request(served, "echo", b"late", "late")
    assert refused.error_code == "unavailable"
    health = await served.channel.request_response(HealthCheck("h"))
    assert isinstance(health, HealthResponse) and health.status == "draining"
    assert health.metrics["in_flight"] == 5
    assert all(r.ok for r in await asyncio.gather(*slow))
    await asyncio.wait_for(served.server, 2)  # then the worker hangs up
    await served.channel.wait_closed()
    assert served.channel.closed_by_peer


async def test_non_graceful_shutdown_abandons_in_flight_requests(served: Served) -> None:
    slow = asyncio.ensure_future(request(served, "async_slow", b"5"))
    await asyncio.sleep(0.05)
    await served.channel.send(Shutdown(graceful=False, timeout_ms=0))
    await asyncio.wait_for(served.server, 2)
    with pytest.raises(Exception, match="closed"):
        await slow


async def test_the_worker_honours_a_requests_timeout_ms(served: Served) -> None:
    started = time.monotonic()
    reply = await served.channel.request_response(
        ExecutionRequest("t", "async_slow", b"5", timeout_ms=100))
    assert isinstance(reply, ExecutionResponse)
    assert reply.status is ExecutionStatus.TIMEOUT and reply.error_code == "timeout"
    assert time.monotonic() - started < 1.0


async def test_cancel_stops_the_handler_and_answers_cancelled(served: Served) -> None:
    call = asyncio.ensure_future(request(served, "async_slow", b"5", "victim"))
    await asyncio.sleep(0.05)
    await served.channel.send(Cancel("victim"))
    reply = await asyncio.wait_for(call, 2)
    assert reply.error_code == "cancelled" and "victim" in examples.CANCELLED


async def test_requests_beyond_max_in_flight_are_refused_with_a_clear_error(
    served: Served,
) -> None:
    replies = await asyncio.gather(*(request(served, "async_slow", b"0.2", f"m{i}")
                                     for i in range(40)))
    refused = [r for r in replies if r.error_code == "too_many_requests"]
    assert sum(r.ok for r in replies) == 8  # the fixture's max_in_flight
    assert len(refused) == 32
    assert "already has 8 requests in flight" in (refused[0].error_message or "")
    # Once those finish there is room again.
    assert (await request(served, "echo", b"again", "after")).ok


async def test_a_reply_too_large_for_the_host_fails_only_that_request(served: Served) -> None:
    rid = "r" * 200
    size = 1 << 20  # the worker's max_message_size in the fixture
    overhead = len(codec.encode(ExecutionRequest(rid, "tagged_echo", b"")))
    big = ExecutionRequest(rid, "tagged_echo", b"x" * (size - overhead - 100))
    assert len(codec.encode(big)) < size
    reply = await served.channel.request_response(big)
    assert isinstance(reply, ExecutionResponse)
    assert reply.error_code == "response_too_large" and not reply.ok
    assert (await request(served, "echo", b"still fine", "next")).ok


async def test_a_host_that_hangs_up_cancels_its_requests(served: Served) -> None:
    call = asyncio.ensure_future(request(served, "async_slow", b"5", "orphan"))
    await asyncio.sleep(0.05)
    await served.channel.close()
    assert await asyncio.wait_for(served.server, 2) == "closed by the host"
    async with asyncio.timeout(2):
        while served.dispatcher.in_flight:  # the bridge's loop cancels it
            await asyncio.sleep(0.01)
    assert "orphan" in examples.CANCELLED
    assert call.done()
