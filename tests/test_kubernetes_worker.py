"""`spear worker` as a pod runs it: flags, token sources, TCP-only serving, shutdown, and a
WASM module served over gRPC."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from k8s_support import TESTS_DIR, PodWorker
from spear import (
    AuthenticationFailed,
    ChannelConfig,
    ExecutionRequest,
    ExecutionResponse,
    ExecutionStatus,
    RuntimeInstanceId,
    RuntimeType,
    Shutdown,
)
from spear.channel.grpc import open_grpc_channel

POD = RuntimeInstanceId(RuntimeType.KUBERNETES, "worker-test")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spear.cli.main", "worker", *args],
                          capture_output=True, text=True, timeout=30, cwd=TESTS_DIR)


@pytest.mark.parametrize(("args", "complaint"), [
    (["--grpc", "127.0.0.1:0"], "MODULE:FUNCTION or --wasm"),
    (["--grpc", "127.0.0.1:0", "--wasm", "x.wasm", "k8s_handlers:echo"], "either"),
    (["--wasm", "x.wasm", "k8s_handlers:echo"], "--wasm needs --grpc or --tcp"),
    (["--grpc", "127.0.0.1:0", "--token-file", "/nonexistent/token", "k8s_handlers:echo"],
     "cannot read token file"),
    (["--grpc", "127.0.0.1:0", "--tls-client-ca", "ca.pem", "k8s_handlers:echo"],
     "--tls-client-ca needs --tls-cert"),
    (["--grpc", "127.0.0.1:0", "no_such_module:echo"], "cannot import"),
])
def test_bad_invocations_fail_with_one_clear_line(args: list[str], complaint: str) -> None:
    result = run_cli(*args)
    assert result.returncode != 0
    assert complaint in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


async def test_token_file_is_required_of_hosts(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-mounted-secret\n")
    with PodWorker("--grpc", "127.0.0.1:0", "--token-file", str(token_file),
                   "k8s_handlers:echo", env={"SPEAR_TOKEN": "env-is-overridden"}) as worker:
        with pytest.raises(AuthenticationFailed):
            await open_grpc_channel(POD, worker.grpc, ChannelConfig(), token="env-is-overridden")
        async with await open_grpc_channel(POD, worker.grpc, ChannelConfig(),
                                           token="from-a-mounted-secret") as channel:
            reply = await channel.request_response(ExecutionRequest("t", "echo", b"ok"))
            assert isinstance(reply, ExecutionResponse) and reply.output_data == b"ok"


async def test_tcp_only_worker_authenticates_the_handshake() -> None:
    from spear.channel.stream import open_tcp_channel

    with PodWorker("--tcp", "127.0.0.1:0", "k8s_handlers:sync_echo",
                   env={"SPEAR_TOKEN": "tcp-secret"}) as worker:
        assert "grpc" not in worker.addresses
        with pytest.raises(AuthenticationFailed):
            await open_tcp_channel(POD, worker.tcp, ChannelConfig(), token="wrong")
        channel = await open_tcp_channel(POD, worker.tcp, ChannelConfig(), token="tcp-secret")
        try:
            reply = await channel.request_response(ExecutionRequest("t", "sync_echo", b"tcp"))
            assert isinstance(reply, ExecutionResponse) and reply.output_data == b"tcp"
        finally:
            await channel.close()


async def test_shutdown_message_drains_and_stops_the_worker() -> None:
    worker = PodWorker("--grpc", "127.0.0.1:0", "k8s_handlers:slow",
                       env={"SPEAR_TOKEN": "shutdown-token"}).start()
    try:
        channel = await open_grpc_channel(POD, worker.grpc, ChannelConfig(),
                                          token="shutdown-token")
        running = asyncio.ensure_future(
            channel.request_response(ExecutionRequest("s", "slow", b"300")))
        await asyncio.sleep(0.1)
        await channel.send(Shutdown(graceful=True, timeout_ms=5000))
        reply = await running
        assert isinstance(reply, ExecutionResponse) and reply.output_data == b"done"
        assert await asyncio.to_thread(worker.wait, 10) == 0
        await channel.close()
    finally:
        worker.kill()


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
async def test_a_worker_without_a_token_refuses_a_shutdown_from_the_network(
    transport: str,
) -> None:
    from spear.channel.stream import open_tcp_channel
    from spear.messages import Error

    async def open_channel(worker: PodWorker) -> object:
        if transport == "grpc":
            return await open_grpc_channel(POD, worker.grpc, ChannelConfig())
        return await open_tcp_channel(POD, worker.tcp, ChannelConfig(keepalive_interval_ms=0))

    with PodWorker(f"--{transport}", "127.0.0.1:0", "k8s_handlers:echo") as worker:
        channel = await open_channel(worker)
        await channel.send(Shutdown(graceful=False, timeout_ms=0))  # type: ignore[attr-defined]
        refusal = await asyncio.wait_for(channel.receive(), 5)  # type: ignore[attr-defined]
        assert isinstance(refusal, Error) and refusal.code == "forbidden"
        reply = await channel.request_response(  # type: ignore[attr-defined]
            ExecutionRequest("still", "echo", b"serving"))
        assert isinstance(reply, ExecutionResponse) and reply.output_data == b"serving"
        assert worker.proc is not None and worker.proc.poll() is None
        await channel.close()  # type: ignore[attr-defined]
    # Unless it was told to take one.
    with PodWorker(f"--{transport}", "127.0.0.1:0", "--allow-remote-shutdown",
                   "k8s_handlers:echo") as worker:
        channel = await open_channel(worker)
        await channel.send(Shutdown(graceful=True, timeout_ms=1000))  # type: ignore[attr-defined]
        assert await asyncio.to_thread(worker.wait, 10) == 0
        await channel.close()  # type: ignore[attr-defined]


def test_sigterm_on_an_idle_worker_exits_zero_at_once() -> None:
    worker = PodWorker("--grpc", "127.0.0.1:0", "--tcp", "127.0.0.1:0",
                       "k8s_handlers:echo").start()
    try:
        worker.terminate()
        assert worker.wait(5) == 0
    finally:
        worker.kill()


# -- WASM (the module is built by the guest SDK, see tests/conftest.py) -----------------------


async def test_wasm_module_served_over_grpc(wasm_fixture: Callable[[str], Path]) -> None:
    pytest.importorskip("spear.wasm", reason="the WASM runtime is not available")
    module = wasm_fixture("spin")
    with PodWorker("--grpc", "127.0.0.1:0", "--wasm", str(module)) as worker:
        async with await open_grpc_channel(POD, worker.grpc, ChannelConfig()) as channel:
            replies = await asyncio.gather(*(channel.request_response(
                ExecutionRequest(f"e{i}", "echo", f"wasm-{i}".encode())) for i in range(50)))
            for i, reply in enumerate(replies):
                assert isinstance(reply, ExecutionResponse) and reply.ok
                assert reply.output_data == f"wasm-{i}".encode()
            # A guest stuck in a loop is preempted at its deadline...
            stuck = await channel.request_response(
                ExecutionRequest("spin", "spin", b"", timeout_ms=100), timeout=5)
            assert isinstance(stuck, ExecutionResponse)
            assert stuck.status is ExecutionStatus.TIMEOUT
            # ...and an unknown handler is an error, not a crash.
            missing = await channel.request_response(ExecutionRequest("m", "nope", b""))
            assert isinstance(missing, ExecutionResponse)
            assert missing.status is ExecutionStatus.ERROR
            again = await channel.request_response(ExecutionRequest("a", "echo", b"still ok"))
            assert isinstance(again, ExecutionResponse) and again.output_data == b"still ok"


def test_without_an_address_it_is_the_process_runtime_worker() -> None:
    result = run_cli("k8s_handlers:echo")
    assert result.returncode == 2
    assert "SPEAR_ENDPOINT" in result.stderr  # it looked for the process runtime's variables
