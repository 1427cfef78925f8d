"""KubernetesRuntime against worker subprocesses standing in for pods: the gRPC-then-TCP
strategy, authentication, reconnection, and a link cut inside a network namespace."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from k8s_support import PodWorker, free_port
from spear import (
    AuthenticationFailed,
    ChannelClosed,
    ChannelConfig,
    ChannelCreationFailed,
    ConnectionFailed,
    ExecutionRequest,
    ExecutionResponse,
    HealthCheck,
    HealthResponse,
    RuntimeInstanceId,
    RuntimeType,
    Shutdown,
)
from spear.channel.grpc import GrpcChannel
from spear.channel.reconnecting import ReconnectingChannel
from spear.runtime.kubernetes import KubernetesRuntime

TOKEN = "pod-token-51c2"


@pytest.fixture(scope="module")
def dual_worker() -> Iterator[PodWorker]:
    """A pod serving both transports, as the generated manifests do."""
    with PodWorker("--grpc", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "k8s_handlers:whoami",
                   env={"SPEAR_TOKEN": TOKEN}) as worker:
        yield worker


def tcp_port(worker: PodWorker) -> str:
    return worker.tcp.rpartition(":")[2]


def inner(channel: object) -> object:
    assert isinstance(channel, ReconnectingChannel)
    return channel.current


async def ask(channel: object, rid: str = "r") -> bytes:
    from spear.channel.base import CommunicationChannel

    assert isinstance(channel, CommunicationChannel)
    reply = await channel.request_response(ExecutionRequest(rid, "whoami", b""))
    assert isinstance(reply, ExecutionResponse) and reply.ok, reply
    return reply.output_data


async def test_start_instance_prefers_grpc(dual_worker: PodWorker) -> None:
    async with KubernetesRuntime(token=TOKEN) as runtime:
        instance = await runtime.start_instance(
            "fn-0", config=ChannelConfig(address=dual_worker.grpc,
                                         extra={"tcp_port": tcp_port(dual_worker)}))
        assert instance.instance_id == RuntimeInstanceId(RuntimeType.KUBERNETES, "fn-0")
        assert isinstance(inner(instance.channel), GrpcChannel)
        assert await ask(instance.channel) == str(dual_worker.pid).encode()
        assert instance.alive
        assert runtime.instances() == [instance]
        await runtime.stop_instance(instance)
        assert not instance.alive
        assert runtime.instances() == []


async def test_falls_back_to_tcp_when_grpc_port_does_not_answer(dual_worker: PodWorker) -> None:
    dead_grpc = f"127.0.0.1:{free_port()}"
    async with KubernetesRuntime(token=TOKEN) as runtime:
        started = time.monotonic()
        instance = await runtime.start_instance(
            "fn-1", config=ChannelConfig(address=dead_grpc,
                                         extra={"tcp_port": tcp_port(dual_worker)}))
        assert time.monotonic() - started < 2.0
        channel = inner(instance.channel)
        assert not isinstance(channel, GrpcChannel)
        assert type(channel).__name__ == "StreamChannel"
        assert await ask(instance.channel) == str(dual_worker.pid).encode()


async def test_tcp_address_can_be_given_explicitly(dual_worker: PodWorker) -> None:
    async with KubernetesRuntime(token=TOKEN, channel_order=("tcp",)) as runtime:
        instance = await runtime.start_instance(
            "fn-2", config=ChannelConfig(extra={"tcp_address": dual_worker.tcp}))
        assert type(inner(instance.channel)).__name__ == "StreamChannel"
        assert await ask(instance.channel) == str(dual_worker.pid).encode()


async def test_creation_failure_lists_both_attempts_and_causes() -> None:
    async with KubernetesRuntime() as runtime:
        with pytest.raises(ChannelCreationFailed) as info:
            await runtime.start_instance("fn-3", config=ChannelConfig(
                address=f"127.0.0.1:{free_port()}", extra={"tcp_port": str(free_port())}))
    error = info.value
    assert error.attempted_types == ["grpc", "tcp"]
    assert len(error.causes) == 2
    assert all(isinstance(cause, ConnectionFailed) for cause in error.causes), error.causes
    assert "grpc" in str(error) and "tcp" in str(error)


async def test_channel_order_is_the_strategy() -> None:
    async with KubernetesRuntime(channel_order=("tcp", "grpc")) as runtime:
        with pytest.raises(ChannelCreationFailed) as info:
            await runtime.start_instance("fn-4", config=ChannelConfig(
                address=f"127.0.0.1:{free_port()}", extra={"tcp_port": str(free_port())}))
    assert info.value.attempted_types == ["tcp", "grpc"]


async def test_wrong_token_raises_authentication_failed(dual_worker: PodWorker) -> None:
    async with KubernetesRuntime(token="not-the-token") as runtime:
        with pytest.raises(AuthenticationFailed) as info:
            await runtime.start_instance("fn-5", config=ChannelConfig(
                address=dual_worker.grpc, extra={"tcp_port": tcp_port(dual_worker)}))
    assert isinstance(info.value, ChannelCreationFailed)
    assert all(isinstance(cause, AuthenticationFailed) for cause in info.value.causes)


async def test_pod_restart_fails_pending_at_once_then_reconnects() -> None:
    first = PodWorker("--grpc", "127.0.0.1:0", "k8s_handlers:slow").start()
    address = first.grpc
    second: PodWorker | None = None
    runtime = KubernetesRuntime(backoff_initial=0.02, backoff_max=0.2)
    try:
        instance = await runtime.start_instance("fn-6", config=ChannelConfig(address=address))
        channel = instance.channel
        assert isinstance(channel, ReconnectingChannel)
        pending = [asyncio.ensure_future(channel.request_response(
            ExecutionRequest(f"p{i}", "slow", b"20000"))) for i in range(5)]
        await asyncio.sleep(0.2)
        killed_at = time.monotonic()
        first.kill()
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert time.monotonic() - killed_at < 1.0
        assert all(isinstance(r, ChannelClosed) for r in results), results
        # While the pod is away, requests fail fast instead of waiting for a timeout.
        await asyncio.sleep(0.1)
        assert not channel.connected
        with pytest.raises(ChannelClosed):
            await channel.request_response(HealthCheck("h0"), timeout=5)
        second = PodWorker("--grpc", address, "k8s_handlers:slow").start()
        await channel.wait_connected(timeout=5)
        reply = await channel.request_response(ExecutionRequest("after", "slow", b"1"))
        assert isinstance(reply, ExecutionResponse) and reply.output_data == b"done"
        assert instance.channel is channel and instance.alive
        assert channel.reconnects == 1
        stats = await channel.get_stats()
        assert stats.requests_completed >= 1 and stats.connection_errors >= 1
    finally:
        await runtime.close()
        first.kill()
        if second is not None:
            second.kill()


async def test_tcp_fallback_channel_reconnects_too() -> None:
    first = PodWorker("--tcp", "127.0.0.1:0", "k8s_handlers:whoami",
                      env={"SPEAR_TOKEN": TOKEN}).start()
    address = first.tcp
    second: PodWorker | None = None
    runtime = KubernetesRuntime(channel_order=("tcp",), token=TOKEN, backoff_initial=0.02,
                                backoff_max=0.2)
    try:
        instance = await runtime.start_instance(
            "fn-tcp", config=ChannelConfig(extra={"tcp_address": address}))
        assert await ask(instance.channel) == str(first.pid).encode()
        first.kill()
        second = PodWorker("--tcp", address, "k8s_handlers:whoami",
                           env={"SPEAR_TOKEN": TOKEN}).start()
        channel = instance.channel
        assert isinstance(channel, ReconnectingChannel)
        for _ in range(100):  # the break is noticed, then the pod is redialled
            if channel.reconnects and channel.connected:
                break
            await asyncio.sleep(0.05)
        assert await ask(instance.channel) == str(second.pid).encode()
    finally:
        await runtime.close()
        first.kill()
        if second is not None:
            second.kill()


async def test_unsolicited_messages_reach_the_instance_channel() -> None:
    worker = PodWorker("--grpc", "127.0.0.1:0", "k8s_handlers:whoami").start()
    try:
        async with KubernetesRuntime() as runtime:
            instance = await runtime.start_instance(
                "fn-notice", config=ChannelConfig(address=worker.grpc))
            worker.terminate()  # the pod is being stopped: it says so before it goes
            notice = await asyncio.wait_for(instance.channel.receive(), 5)
            assert isinstance(notice, Shutdown)
            assert await asyncio.to_thread(worker.wait, 10) == 0
    finally:
        worker.kill()


# -- a cut link, in a network namespace --------------------------------------------------------


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"spear-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class VethPod:
    """A network namespace joined to this one by a veth pair: a pod on its own link."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.netns = f"spear-t{tag}"
        self.host_if = f"spa{tag}"
        self.pod_if = f"spb{tag}"
        # A /30 of its own per test process, so concurrent runs never share a subnet.
        n = os.getpid() % 37500
        subnet = f"10.{100 + n // 250}.{n % 250}"
        self.host_ip = f"{subnet}.1"
        self.pod_ip = f"{subnet}.2"

    def _ip(self, *args: str, netns: bool = False) -> None:
        command = ["ip", "netns", "exec", self.netns, "ip", *args] if netns else ["ip", *args]
        subprocess.run(command, check=True, capture_output=True)

    def up(self) -> None:
        self._ip("netns", "add", self.netns)
        self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.pod_if)
        self._ip("link", "set", self.pod_if, "netns", self.netns)
        self._ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        self._ip("link", "set", self.host_if, "up")
        self._ip("addr", "add", f"{self.pod_ip}/30", "dev", self.pod_if, netns=True)
        self._ip("link", "set", self.pod_if, "up", netns=True)
        self._ip("link", "set", "lo", "up", netns=True)

    def cut(self) -> None:
        """Take the pod's end of the link down: no FIN, no RST, packets just vanish."""
        self._ip("link", "set", self.pod_if, "down", netns=True)

    def down(self) -> None:
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)


@pytest.fixture
def veth_pod() -> Iterator[VethPod]:
    reason = _netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    pod = VethPod()
    try:
        pod.up()
        yield pod
    finally:
        pod.down()


async def test_cut_link_fails_pending_requests_when_keepalive_notices(veth_pod: VethPod) -> None:
    worker = PodWorker("--grpc", f"{veth_pod.pod_ip}:0", "k8s_handlers:slow",
                       prefix=["ip", "netns", "exec", veth_pod.netns]).start()
    config = ChannelConfig(address=worker.grpc, keepalive_interval_ms=200,
                           extra={"keepalive_timeout_ms": "300"})
    runtime = KubernetesRuntime(backoff_initial=0.05, backoff_max=0.1)
    try:
        instance = await runtime.start_instance("fn-veth", config=config)
        assert await instance.channel.request_response(HealthCheck("h"), timeout=5) == \
            HealthResponse("h", "serving", {"in_flight": 0.0, "streams": 1.0})
        pending = [asyncio.ensure_future(instance.channel.request_response(
            ExecutionRequest(f"v{i}", "slow", b"30000"), timeout=20)) for i in range(5)]
        await asyncio.sleep(0.3)
        cut_at = time.monotonic()
        veth_pod.cut()
        results = await asyncio.gather(*pending, return_exceptions=True)
        noticed = time.monotonic() - cut_at
        assert all(isinstance(r, ChannelClosed) for r in results), results
        assert noticed < 3.0, f"keepalive took {noticed:.2f} s"
        assert not instance.channel.connected
    finally:
        await runtime.close()
        worker.kill()
