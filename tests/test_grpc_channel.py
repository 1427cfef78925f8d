"""The gRPC channel against real worker subprocesses (stand-ins for pods)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from k8s_support import PodWorker
from spear import (
    AuthenticationFailed,
    ChannelClosed,
    ChannelConfig,
    ConnectionFailed,
    ExecutionRequest,
    ExecutionResponse,
    ExecutionStatus,
    HealthCheck,
    HealthResponse,
    InvalidMessage,
    RuntimeInstanceId,
    RuntimeType,
    Shutdown,
    Timeout,
)
from spear.channel.grpc import GrpcChannel, open_grpc_channel
from spear.transport.grpc.generated import spear_runtime_pb2 as pb
from spear.transport.grpc.generated import spear_runtime_pb2_grpc as pb_grpc

TOKEN = "test-token-3b9f"
POD = RuntimeInstanceId(RuntimeType.KUBERNETES, "pod-0", "default")


@pytest.fixture(scope="module")
def echo_worker() -> Iterator[PodWorker]:
    with PodWorker("--grpc", "127.0.0.1:0", "k8s_handlers:echo",
                   env={"SPEAR_TOKEN": TOKEN}) as worker:
        yield worker


@pytest.fixture(scope="module")
def slow_worker() -> Iterator[PodWorker]:
    with PodWorker("--grpc", "127.0.0.1:0", "k8s_handlers:slow") as worker:
        yield worker


async def test_many_requests_in_flight_are_all_matched(echo_worker: PodWorker) -> None:
    channel = await open_grpc_channel(POD, echo_worker.grpc, ChannelConfig(), token=TOKEN)
    gate = asyncio.Semaphore(64)
    peak = 0

    async def one(i: int) -> None:
        nonlocal peak
        async with gate:
            payload = f"payload-{i}".encode() * (1 + i % 7)
            peak = max(peak, channel.in_flight + 1)
            reply = await channel.request_response(ExecutionRequest(f"r{i}", "echo", payload))
            assert isinstance(reply, ExecutionResponse)
            assert reply.request_id == f"r{i}"
            assert reply.output_data == payload

    try:
        await asyncio.gather(*(one(i) for i in range(2000)))
        stats = await channel.get_stats()
        assert stats.requests_completed == 2000
        assert stats.messages_sent == stats.messages_received == 2000
        assert stats.mean_latency_ms > 0
        assert peak >= 32  # really concurrent, not one at a time
    finally:
        await channel.close()
    assert not channel.connected


async def test_health_check_message_and_grpc_health_service(echo_worker: PodWorker) -> None:
    async with await open_grpc_channel(POD, echo_worker.grpc, ChannelConfig(),
                                       token=TOKEN) as channel:
        reply = await channel.request_response(HealthCheck("h1"))
        assert isinstance(reply, HealthResponse)
        assert reply.status == "serving"
    async with grpc.aio.insecure_channel(echo_worker.grpc) as raw:
        stub = health_pb2_grpc.HealthStub(raw)
        for service in ("", "spear.runtime.v1.SpearRuntime"):
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_wrong_or_missing_token_is_rejected(echo_worker: PodWorker,
                                                  token: str | None) -> None:
    with pytest.raises(AuthenticationFailed):
        await open_grpc_channel(POD, echo_worker.grpc, ChannelConfig(), token=token)


async def test_unary_execute_accepts_either_token_header(echo_worker: PodWorker) -> None:
    async with grpc.aio.insecure_channel(echo_worker.grpc) as raw:
        stub = pb_grpc.SpearRuntimeStub(raw)
        request = pb.ExecuteRequest(function_name="echo", input=b"typed", request_id="u1")
        for metadata in ((("authorization", f"Bearer {TOKEN}"),), (("x-spear-token", TOKEN),)):
            answer = await stub.Execute(request, metadata=metadata)
            assert answer.output == b"typed"
            assert answer.request_id == "u1"
            assert answer.status == pb.ExecuteResponse.SUCCESS
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Execute(request, metadata=(("x-spear-token", "nope"),))
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_handler_failure_comes_back_as_an_error_response() -> None:
    with PodWorker("--grpc", "127.0.0.1:0", "k8s_handlers:fail") as worker:
        async with await open_grpc_channel(POD, worker.grpc, ChannelConfig()) as channel:
            reply = await channel.request_response(ExecutionRequest("f1", "fail", b""))
            assert isinstance(reply, ExecutionResponse)
            assert reply.status is ExecutionStatus.ERROR
            assert "failed on purpose" in (reply.error_message or "")
            # The stream survives a failing handler.
            again = await channel.request_response(HealthCheck("h"))
            assert isinstance(again, HealthResponse)


async def test_timeout_raises_and_cancels_the_request_on_the_worker(
    slow_worker: PodWorker,
) -> None:
    async with await open_grpc_channel(POD, slow_worker.grpc, ChannelConfig()) as channel:
        with pytest.raises(Timeout):
            await channel.request_response(ExecutionRequest("t1", "slow", b"5000"), timeout=0.2)
        stats = await channel.get_stats()
        assert stats.timeout_errors == 1
        # The Cancel reached the worker: nothing is left running there.
        deadline = time.monotonic() + 2
        while True:
            health = await channel.request_response(HealthCheck("h"))
            assert isinstance(health, HealthResponse)
            if health.metrics["in_flight"] == 0:
                break
            assert time.monotonic() < deadline, health.metrics
            await asyncio.sleep(0.02)
        # A late reply for t1 never shows up as an unsolicited message, and the id is reusable.
        reply = await channel.request_response(ExecutionRequest("t1", "slow", b"1"))
        assert isinstance(reply, ExecutionResponse) and reply.output_data == b"done"


async def test_killed_worker_fails_pending_requests_at_once() -> None:
    worker = PodWorker("--grpc", "127.0.0.1:0", "k8s_handlers:slow").start()
    channel = await open_grpc_channel(POD, worker.grpc, ChannelConfig(request_timeout_ms=30_000))
    try:
        pending = [asyncio.ensure_future(
            channel.request_response(ExecutionRequest(f"k{i}", "slow", b"20000")))
            for i in range(10)]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        worker.kill()
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert time.monotonic() - started < 1.0
        assert all(isinstance(result, ChannelClosed) for result in results), results
        assert not channel.connected
        with pytest.raises(ChannelClosed):
            await channel.request_response(HealthCheck("after"))
        with pytest.raises(ChannelClosed):
            await channel.receive()
    finally:
        await channel.close()
        worker.kill()


async def test_draining_worker_reports_not_serving_and_finishes_work() -> None:
    worker = PodWorker("--grpc", "127.0.0.1:0", "k8s_handlers:slow").start()
    try:
        channel = await open_grpc_channel(POD, worker.grpc, ChannelConfig())
        in_flight = asyncio.ensure_future(
            channel.request_response(ExecutionRequest("d1", "slow", b"500")))
        await asyncio.sleep(0.2)
        worker.terminate()
        notice = await asyncio.wait_for(channel.receive(), 5)
        assert isinstance(notice, Shutdown) and notice.graceful
        async with grpc.aio.insecure_channel(worker.grpc) as raw:
            answer = await health_pb2_grpc.HealthStub(raw).Check(
                health_pb2.HealthCheckRequest(service=""))
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
        # New work is refused while draining; work in flight completes.
        refused = await channel.request_response(ExecutionRequest("d2", "slow", b"1"))
        assert isinstance(refused, ExecutionResponse) and refused.error_code == "unavailable"
        reply = await in_flight
        assert isinstance(reply, ExecutionResponse) and reply.output_data == b"done"
        assert await asyncio.to_thread(worker.wait, 10) == 0
        await channel.close()
    finally:
        worker.kill()


async def test_unreachable_port_fails_fast_with_connection_failed() -> None:
    from k8s_support import free_port

    started = time.monotonic()
    with pytest.raises(ConnectionFailed):
        await open_grpc_channel(POD, f"127.0.0.1:{free_port()}", ChannelConfig())
    assert time.monotonic() - started < 2.0


async def test_oversized_message_is_refused_before_sending(echo_worker: PodWorker) -> None:
    config = ChannelConfig(max_message_size=1024)
    async with await open_grpc_channel(POD, echo_worker.grpc, config, token=TOKEN) as channel:
        with pytest.raises(InvalidMessage):
            await channel.request_response(ExecutionRequest("big", "echo", b"x" * 4096))
        reply = await channel.request_response(ExecutionRequest("small", "echo", b"x" * 100))
        assert isinstance(reply, ExecutionResponse) and reply.ok
        assert channel.in_flight == 0


async def test_channel_reports_its_identity(echo_worker: PodWorker) -> None:
    channel = GrpcChannel(POD, echo_worker.grpc, ChannelConfig(), token=TOKEN)
    assert not channel.connected
    await channel.connect()
    assert channel.instance_id == POD
    assert await channel.is_connected()
    await channel.close()
    assert not await channel.is_connected()


async def test_large_messages_in_flight_are_batched_within_the_limit(
    echo_worker: PodWorker,
) -> None:
    config = ChannelConfig(max_message_size=3 * 1024 * 1024)
    async with await open_grpc_channel(POD, echo_worker.grpc, config, token=TOKEN) as channel:
        payloads = [bytes([i]) * (1024 * 1024) for i in range(8)]
        replies = await asyncio.gather(*(channel.request_response(
            ExecutionRequest(f"big{i}", "echo", p)) for i, p in enumerate(payloads)))
        assert [r.output_data for r in replies if isinstance(r, ExecutionResponse)] == payloads


async def test_reply_over_the_hosts_limit_fails_only_its_request() -> None:
    with PodWorker("--grpc", "127.0.0.1:0", "k8s_handlers:double") as worker:
        # The worker allows 64 MiB; this host allows 1 MiB.
        config = ChannelConfig(max_message_size=1024 * 1024)
        async with await open_grpc_channel(POD, worker.grpc, config) as channel:
            replies = await asyncio.gather(*(channel.request_response(
                ExecutionRequest(f"r{i}", "double", b"x" * (600 * 1024 if i == 0 else 10)))
                for i in range(4)))
            first = replies[0]
            assert isinstance(first, ExecutionResponse)
            assert first.error_code == "response_too_large"
            assert all(isinstance(r, ExecutionResponse) and r.ok for r in replies[1:])
            assert channel.connected
    with PodWorker("--grpc", "127.0.0.1:0", "k8s_handlers:echo",
                   "--max-message-size", str(64 * 1024)) as worker:
        async with await open_grpc_channel(POD, worker.grpc, ChannelConfig()) as channel:
            refused = await channel.request_response(
                ExecutionRequest("huge", "echo", b"y" * (128 * 1024)))
            assert isinstance(refused, ExecutionResponse)
            assert refused.error_code == "request_too_large"
            fine = await channel.request_response(ExecutionRequest("ok", "echo", b"z"))
            assert isinstance(fine, ExecutionResponse) and fine.ok
