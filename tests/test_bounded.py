"""Bounded before trusted: what peers that do not have the token, and peers that do but
misbehave, can make the host and the workers hold. Real sockets, real child processes, real
gRPC servers; memory is the resident set size of the process that would pay for it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from k8s_support import TESTS_DIR, PodWorker
from socket_probes import closed_by_peer
from spear import (
    ChannelClosed,
    ChannelConfig,
    ExecutionRequest,
    ExecutionResponse,
    RuntimeInstanceId,
    RuntimeType,
)
from spear.channel.grpc import open_grpc_channel
from spear.channel.stream import StreamChannel, open_tcp_channel
from spear.errors import DuplicateRequestId, TooManyInFlight
from spear.protocol import codec
from spear.protocol.framing import ReceiveBuffer, frame
from spear.protocol.limits import (
    AUTH_FAILURE_BURST,
    HANDSHAKE_TIMEOUT,
    HOST_INBOX_BYTES,
    MAX_PENDING_HANDSHAKES,
    WORKER_MAX_CONNECTIONS,
)
from spear.protocol.messages import Error, Handshake
from spear.runtime.process import ProcessRuntime, worker_command
from spear.transport.frame_stream import FrameStream
from spear.transport.grpc.generated import spear_runtime_pb2 as pb
from spear.transport.grpc.generated import spear_runtime_pb2_grpc as pb_grpc

TOKEN = "bounded-test-token-0f3c"
POD = RuntimeInstanceId(RuntimeType.KUBERNETES, "bounded")
MIB = 1024 * 1024


def rss(pid: int | None = None) -> int:
    """Resident set size in bytes."""
    with open(f"/proc/{pid or os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.settimeout(5)
    return sock


def read_messages(sock: socket.socket) -> list[object]:
    """Every message the peer sends until it closes the connection."""
    buffer = ReceiveBuffer(1 << 20)
    out: list[object] = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            out.extend(codec.decode(payload) for payload in buffer.feed(chunk))
    return out


@pytest.fixture(scope="module")
def tcp_pod() -> Iterator[PodWorker]:
    with PodWorker("--tcp", "127.0.0.1:0", "k8s_handlers:echo",
                   env={"SPEAR_TOKEN": TOKEN}) as worker:
        yield worker


# -- before authentication: a pod's TCP port ------------------------------------------------


def test_unauthenticated_peers_cannot_make_a_pod_hold_more_than_kilobytes(
    tcp_pod: PodWorker,
) -> None:
    before = rss(tcp_pod.pid)
    socks = []
    for _ in range(12):  # below the failure budget, so the real host below still gets in
        sock = connect(tcp_pod.tcp)
        # A handshake that claims 60 MiB, then a megabyte of it: refused at the header.
        with contextlib.suppress(OSError):
            sock.sendall(struct.pack(">I", 60 * MIB) + b"h" * MIB)
        socks.append(sock)
    replies = [read_messages(sock) for sock in socks]
    for sock in socks:
        sock.close()
    assert all(any(isinstance(m, Error) and m.code == "auth_failed" for m in r)
               for r in replies), replies
    assert rss(tcp_pod.pid) - before < 8 * MIB
    # The worker still serves the host that has the token.
    async def honest() -> bytes:
        async with await open_tcp_channel(POD, tcp_pod.tcp, ChannelConfig(), token=TOKEN) as ch:
            reply = await ch.request_response(ExecutionRequest("ok", "echo", b"fine"))
            assert isinstance(reply, ExecutionResponse)
            return reply.output_data

    assert asyncio.run(honest()) == b"fine"


def test_connections_beyond_the_pending_handshake_cap_are_closed_unread() -> None:
    with PodWorker("--tcp", "127.0.0.1:0", "k8s_handlers:echo",
                   env={"SPEAR_TOKEN": TOKEN}) as worker:
        silent = [connect(worker.tcp) for _ in range(MAX_PENDING_HANDSHAKES + 10)]
        # Those over the cap are closed at once; the others wait for their handshake (5 s),
        # so whatever closes within the first second was refused by the cap.
        closed_at_once = 0
        waiting = list(silent)
        deadline = time.monotonic() + 1.0
        while waiting and (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select(waiting, [], [], left)
            for sock in readable:
                waiting.remove(sock)
                closed_at_once += sock.recv(1) == b""
        for sock in silent:
            sock.close()
    assert closed_at_once == 10, closed_at_once


def test_failed_handshakes_are_throttled_per_peer_and_logged_in_aggregate() -> None:
    with PodWorker("--tcp", "127.0.0.1:0", "k8s_handlers:echo",
                   env={"SPEAR_TOKEN": TOKEN}) as worker:
        wrong = frame(codec.encode(Handshake("x", "not-the-token")))
        answered = refused = 0
        for _ in range(3 * AUTH_FAILURE_BURST):
            sock = connect(worker.tcp)
            with contextlib.suppress(OSError):
                sock.sendall(wrong)
            messages = read_messages(sock)
            sock.close()
            if messages:
                answered += 1
            else:
                refused += 1  # closed without being read: this peer's budget is spent
        output = "".join(worker.output)
    assert AUTH_FAILURE_BURST <= answered < 2 * AUTH_FAILURE_BURST, (answered, refused)
    assert refused >= AUTH_FAILURE_BURST
    warnings = [line for line in output.splitlines() if "failed authentication" in line]
    assert 1 <= len(warnings) <= 3, warnings  # one line per interval, with counts
    assert "wrong token" in warnings[0] and "not-the-token" not in output


def test_an_idle_connection_is_closed_by_the_pod() -> None:
    from spear.worker import examples
    from spear.worker.tcp_listener import TcpWorkerListener

    listener = TcpWorkerListener(examples.echo, idle_timeout=0.3)
    port = listener.start("127.0.0.1:0")
    try:
        sock = connect(f"127.0.0.1:{port}")
        sock.settimeout(10)
        assert sock.recv(1) == b""  # the worker hung up on the silent host
        sock.close()
    finally:
        listener.close()


# -- before authentication: the process runtime's own listener ---------------------------------

FLOODER = '''
import os, socket, struct, sys, threading, time
kind, _, address = os.environ["SPEAR_ENDPOINT"].partition(":")
def attack():
    try:
        if kind == "unix":
            s = socket.socket(socket.AF_UNIX); s.connect(address)
        else:
            host, _, port = address.rpartition(":")
            s = socket.create_connection((host, int(port)))
        s.sendall(struct.pack(">I", 200 * 1024 * 1024) + b"a" * (4 * 1024 * 1024))
    except OSError:
        pass
threads = [threading.Thread(target=attack) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
sys.argv = ["spear-worker", "spear.worker.examples:echo"]
from spear.worker.__main__ import main
sys.exit(main())
'''


@pytest.mark.parametrize("channel_type", ["unix", "tcp"])
async def test_intruders_at_start_up_cannot_make_the_host_hold_megabytes(
    tmp_path: Path, channel_type: str,
) -> None:
    script = tmp_path / "child_flooder.py"
    script.write_text(FLOODER)
    runtime = ProcessRuntime(config=ChannelConfig(channel_type=channel_type,
                                                  keepalive_interval_ms=0))
    before = rss()
    try:
        instance = await runtime.start_instance("flooded", command=[sys.executable, str(script)])
        reply = await instance.channel.request_response(ExecutionRequest("r", "echo", b"in"))
        assert isinstance(reply, ExecutionResponse) and reply.output_data == b"in"
    finally:
        await runtime.close()
    assert rss() - before < 16 * MIB  # 8 intruders offered 32 MiB


# -- after authentication: floods from a worker and from a pod ---------------------------------


async def test_a_worker_flooding_unknown_replies_and_messages_is_bounded_and_counted() -> None:
    runtime = ProcessRuntime(config=ChannelConfig(keepalive_interval_ms=0))
    count, size = 100, MIB
    before = rss()
    try:
        instance = await runtime.start_instance("flood", command=[
            sys.executable, str(TESTS_DIR / "hostile_peers.py"), "flood-stream", str(count),
            str(size)])
        channel = instance.channel
        # Once the flood is through, an honest round trip works.
        async with asyncio.timeout(60):
            while True:
                reply = await channel.request_response(ExecutionRequest("after", "echo", b"."))
                stats = await channel.get_stats()
                if stats.messages_received >= 2 * count:
                    break
        assert isinstance(reply, ExecutionResponse)
        # Every unknown reply was dropped, and the unsolicited messages past the inbox too.
        kept = HOST_INBOX_BYTES // size
        assert stats.messages_dropped >= count + (count - kept) - 1, stats
        assert rss() - before < HOST_INBOX_BYTES + 24 * MIB  # 200 MiB were sent
        received = 0
        while True:
            try:
                await asyncio.wait_for(channel.receive(), 0.2)
                received += 1
            except TimeoutError:
                break
        assert 1 <= received <= kept
    finally:
        await runtime.close()


def _hostile_pod(count: int, size: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(TESTS_DIR / "hostile_peers.py"), "flood-grpc", str(count),
         str(size)], stdout=subprocess.PIPE, text=True, cwd=TESTS_DIR)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith("listening "), line
    return proc, line.split()[1]


async def test_a_pod_flooding_unknown_replies_is_bounded_and_counted() -> None:
    count, size = 150, MIB
    proc, address = _hostile_pod(count, size)
    before = rss()
    try:
        async with await open_grpc_channel(POD, address, ChannelConfig()) as channel:
            async with asyncio.timeout(60):
                while (await channel.get_stats()).messages_dropped < count:
                    await asyncio.sleep(0.05)
            reply = await channel.request_response(ExecutionRequest("after", "echo", b"."))
            assert isinstance(reply, ExecutionResponse) and reply.output_data == b"."
        assert rss() - before < 48 * MIB  # 150 MiB were sent
    finally:
        proc.kill()
        proc.wait()


# -- gRPC before authentication -----------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_pod() -> Iterator[PodWorker]:
    with PodWorker("--grpc", "127.0.0.1:0", "--max-in-flight", "8", "k8s_handlers:slow",
                   env={"SPEAR_TOKEN": TOKEN}) as worker:
        yield worker


def test_an_unauthenticated_huge_execute_is_refused_before_it_is_read(
    grpc_pod: PodWorker,
) -> None:
    before = rss(grpc_pod.pid)
    options = [("grpc.max_send_message_length", 80 * MIB)]
    with grpc.insecure_channel(grpc_pod.grpc, options=options) as channel:
        stub = pb_grpc.SpearRuntimeStub(channel)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as info:
                stub.Execute(pb.ExecuteRequest(function_name="slow", input=b"e" * (60 * MIB)),
                             timeout=30)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert rss(grpc_pod.pid) - before < 24 * MIB  # 180 MiB were offered


async def test_grpc_connections_beyond_the_cap_or_silent_are_closed() -> None:
    with PodWorker("--grpc", "127.0.0.1:0", "k8s_handlers:echo",
                   env={"SPEAR_TOKEN": TOKEN}) as worker:
        host, port = worker.grpc.rsplit(":", 1)
        extra = 8
        socks = [socket.create_connection((host, int(port)), timeout=5)
                 for _ in range(WORKER_MAX_CONNECTIONS + extra)]
        try:
            await asyncio.sleep(1.0)
            closed = {i for i, sock in enumerate(socks) if closed_by_peer(sock)}
            assert len(closed) >= extra  # beyond the cap
            # Those within it never start HTTP/2: the handshake deadline closes them too.
            deadline = time.monotonic() + HANDSHAKE_TIMEOUT + 10
            while len(closed) < len(socks):
                assert time.monotonic() < deadline, f"{len(socks) - len(closed)} were kept"
                await asyncio.sleep(0.2)
                closed |= {i for i, sock in enumerate(socks) if closed_by_peer(sock)}
        finally:
            for sock in socks:
                sock.close()
        # And the worker serves a real host afterwards.
        async with await open_grpc_channel(POD, worker.grpc, ChannelConfig(),
                                           token=TOKEN) as channel:
            reply = await channel.request_response(ExecutionRequest("after", "echo", b"ok"))
        assert isinstance(reply, ExecutionResponse) and reply.output_data == b"ok"


def test_failed_grpc_calls_are_logged_in_aggregate(grpc_pod: PodWorker) -> None:
    with grpc.insecure_channel(grpc_pod.grpc) as channel:
        stub = pb_grpc.SpearRuntimeStub(channel)
        for _ in range(30):
            with pytest.raises(grpc.RpcError):
                stub.Execute(pb.ExecuteRequest(function_name="slow"),
                             metadata=(("x-spear-token", "guess"),), timeout=30)
    lines = [line for line in grpc_pod.output if "failed authentication" in line]
    assert 1 <= len(lines) <= 4, lines
    assert not any("guess" in line for line in grpc_pod.output)


# -- in-flight caps and duplicate ids -------------------------------------------------------


async def test_a_grpc_stream_beyond_its_in_flight_cap_gets_a_clear_error(
    grpc_pod: PodWorker,
) -> None:
    async with await open_grpc_channel(POD, grpc_pod.grpc, ChannelConfig(),
                                       token=TOKEN) as channel:
        replies = await asyncio.gather(*(channel.request_response(
            ExecutionRequest(f"s{i}", "slow", b"300")) for i in range(20)))
    codes = [r.error_code for r in replies if isinstance(r, ExecutionResponse)]
    assert codes.count(None) == 8
    assert codes.count("too_many_requests") == 12


def _two_with_one_id() -> list[bytes]:
    request = codec.encode(ExecutionRequest("dup", "slow", b"200"))
    return [request, request]


async def test_a_duplicate_id_gets_the_same_error_over_grpc_and_over_a_socket(
    grpc_pod: PodWorker,
) -> None:
    # gRPC: both copies in one envelope.
    async with grpc.aio.insecure_channel(grpc_pod.grpc) as channel:
        stub = pb_grpc.SpearRuntimeStub(channel)
        call = stub.Channel(metadata=(("authorization", f"Bearer {TOKEN}"),))
        await call.write(pb.Envelope(messages=_two_with_one_id()))
        got: list[object] = []
        async with asyncio.timeout(10):
            while len(got) < 2:
                envelope = await call.read()
                got.extend(codec.decode(m) for m in envelope.messages)
        call.cancel()
    over_grpc = sorted(str(getattr(m, "error_code", None)) for m in got)
    # A socket: both copies in one write, to the same handler in a TCP pod.
    with PodWorker("--tcp", "127.0.0.1:0", "k8s_handlers:slow") as worker:
        sock = connect(worker.tcp)
        sock.sendall(b"".join(frame(p) for p in _two_with_one_id()))
        buffer = ReceiveBuffer(1 << 20)
        replies: list[object] = []
        while len(replies) < 2:
            replies.extend(codec.decode(p) for p in buffer.feed(sock.recv(65536)))
        sock.close()
    over_tcp = sorted(str(getattr(m, "error_code", None)) for m in replies)
    assert over_grpc == over_tcp == ["None", "duplicate_request"]


async def test_the_host_refuses_a_duplicate_id_and_one_request_over_its_cap() -> None:
    left, right = socket.socketpair()
    _, stream = await asyncio.get_running_loop().connect_accepted_socket(FrameStream, sock=left)
    channel = StreamChannel(RuntimeInstanceId(RuntimeType.PROCESS, "cap"), stream,
                            ChannelConfig(keepalive_interval_ms=0), max_in_flight=4)
    calls = [asyncio.ensure_future(channel.request_response(ExecutionRequest(f"c{i}", "f")))
             for i in range(4)]
    await asyncio.sleep(0)
    with pytest.raises(DuplicateRequestId, match="already in flight"):
        await channel.request_response(ExecutionRequest("c0", "f"))
    with pytest.raises(TooManyInFlight, match="4 requests in flight"):
        await channel.request_response(ExecutionRequest("c9", "f"))
    await channel.close()
    for call in calls:
        with pytest.raises(ChannelClosed):
            await call
    right.close()


# -- the token stays out of handler code's reach --------------------------------------------


async def test_a_process_worker_handler_cannot_find_its_token_in_the_environment() -> None:
    runtime = ProcessRuntime(config=ChannelConfig(keepalive_interval_ms=0))
    try:
        env = {"PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
        instance = await runtime.start_instance(
            "probe", command=worker_command("k8s_handlers:token_probe"), env=env)
        reply = await instance.channel.request_response(ExecutionRequest("p", "probe"))
    finally:
        await runtime.close()
    assert isinstance(reply, ExecutionResponse) and reply.ok, reply
    seen = dict(part.split("=", 1) for part in reply.output_data.decode().split("|"))
    assert seen["env"] == "" and seen["child"] == ""
    assert set(seen["proc"]) <= {"x"}  # overwritten in place (43 characters of "x")


def test_a_pod_worker_handler_cannot_find_its_token_in_the_environment() -> None:
    async def probe(address: str) -> bytes:
        async with await open_tcp_channel(POD, address, ChannelConfig(), token=TOKEN) as ch:
            reply = await ch.request_response(ExecutionRequest("p", "token_probe"))
            assert isinstance(reply, ExecutionResponse) and reply.ok, reply
            return reply.output_data

    with PodWorker("--tcp", "127.0.0.1:0", "k8s_handlers:token_probe",
                   env={"SPEAR_TOKEN": TOKEN}) as worker:
        output = asyncio.run(probe(worker.tcp)).decode()
    assert TOKEN not in output
    seen = dict(part.split("=", 1) for part in output.split("|"))
    assert seen["env"] == "" and seen["child"] == ""
