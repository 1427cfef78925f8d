"""`spear serve` as a real subprocess, exercised through real clients: urllib and http.client
for HTTP, a generated gRPC stub, and the `spear invoke` command."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from spear.invocation.generated import function_service_pb2 as pb
from spear.invocation.generated import function_service_pb2_grpc as pb_grpc
from spearlet_support import TESTS_DIR, child_env


class ServeProcess:
    """`spear serve ARGS...`; `start()` waits for the banner and records the addresses."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = [sys.executable, "-m", "spear.cli.main", "serve", *args]
        self.env = {**child_env(), **(env or {})}
        self.output: list[str] = []
        self.http = ""
        self.grpc = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 60.0) -> ServeProcess:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=self.env)
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                if line.startswith("spear serve listening http="):
                    self.http = line.strip().split("=", 1)[1].removeprefix("http://")
                elif line.startswith("spear serve listening grpc="):
                    self.grpc = line.strip().split("=", 1)[1]
                elif line.startswith("metrics:") or line.startswith("try:"):
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"spear serve did not start:\n{''.join(self.output)}")
        time.sleep(0.05)  # let the pump read the rest of the banner
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(5)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, wasm_fixture: Callable[[str], Path]
) -> Iterator[ServeProcess]:
    config = tmp_path_factory.mktemp("serve") / "spear.toml"
    python = json.dumps(sys.executable)
    config.write_text(f"""
[server]
http = "127.0.0.1:0"
grpc = "127.0.0.1:0"
max_body_bytes = 65536

[[functions]]
name = "echo"
runtime = "wasm"
artifact = {json.dumps(str(wasm_fixture("echo")))}
max_instances = 2

[[functions]]
name = "fail"
runtime = "wasm"
artifact = {json.dumps(str(wasm_fixture("multi")))}
handler = "fail"

[[functions]]
name = "meta"
runtime = "wasm"
artifact = {json.dumps(str(wasm_fixture("metadata")))}
handler = "get"

[[functions]]
name = "spin"
runtime = "wasm"
artifact = {json.dumps(str(wasm_fixture("spin")))}
limits = {{ timeout_s = 0.2 }}

[[functions]]
name = "py-echo"
runtime = "process"
command = [{python}, "-m", "spear.worker", "spearlet_handlers:tagged_echo"]
env = {{ PYTHONPATH = {json.dumps(str(TESTS_DIR))} }}
""")
    process = ServeProcess("--config", str(config)).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, "".join(process.output)


def post(server: ServeProcess, name: str, body: bytes, *, query: str = "",
         headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(f"http://{server.http}/functions/{name}/invoke{query}",
                                     data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), _headers(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), _headers(exc.headers)


def _headers(message: Any) -> dict[str, str]:
    """Header names as HTTP has them: case-insensitive (uvicorn sends them lower-case)."""
    return {key.title(): value for key, value in message.items()}


def get(server: ServeProcess, path: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"http://{server.http}{path}", timeout=10) as response:
            return response.status, response.read(), _headers(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), _headers(exc.headers)


# -- HTTP -------------------------------------------------------------------------------------


def test_http_invoke_takes_and_returns_raw_bytes(server: ServeProcess) -> None:
    payload = bytes(range(256)) * 4
    status, body, headers = post(server, "echo", payload)
    assert status == 200 and body == payload
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["X-Spear-Request-Id"]
    status, body, _ = post(server, "py-echo", b"from a process")
    assert status == 200 and body.endswith(b":from a process")


def test_http_reports_each_failure_with_its_own_status(server: ServeProcess) -> None:
    status, body, headers = post(server, "fail", b"x")
    assert status == 500 and b"failed on purpose" in body
    assert headers["X-Spear-Error-Code"] == "42"
    assert post(server, "missing", b"")[0] == 404
    assert post(server, "spin", b"")[0] == 504  # limits.timeout_s = 0.2
    assert post(server, "echo", b"x" * 70_000)[0] == 413  # max_body_bytes = 65536
    assert post(server, "echo", b"x", query="?timeout=abc")[0] == 400
    assert get(server, "/functions/echo/invoke")[0] == 405
    assert get(server, "/nowhere")[0] == 404


def test_http_metadata_headers_and_timeouts_reach_the_function(server: ServeProcess) -> None:
    status, body, _ = post(server, "meta", b"tenant", headers={"X-Spear-Meta-Tenant": "acme"})
    assert (status, body) == (200, b"acme")
    assert post(server, "echo", b"quick", query="?timeout=5")[:2] == (200, b"quick")


def test_http_keeps_the_connection_alive(server: ServeProcess) -> None:
    host, port = server.http.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for i in range(20):
            connection.request("POST", "/functions/echo/invoke", body=f"n{i}".encode())
            response = connection.getresponse()
            assert response.status == 200 and response.read() == f"n{i}".encode()
        assert connection.sock is not None  # the same socket all along
    finally:
        connection.close()


def test_healthz_and_function_listing(server: ServeProcess) -> None:
    status, body, headers = get(server, "/healthz")
    assert status == 200 and headers["Content-Type"] == "application/json"
    health = json.loads(body)
    assert health["status"] == "ok" and health["functions"]["echo"] >= 1
    listing = json.loads(get(server, "/functions")[1])["functions"]
    assert {f["name"] for f in listing} == {"echo", "fail", "meta", "spin", "py-echo"}
    assert next(f for f in listing if f["name"] == "py-echo")["runtime"] == "process"


def test_metrics_show_requests_errors_latency_and_instances(server: ServeProcess) -> None:
    for _ in range(3):
        post(server, "echo", b"m")
    post(server, "fail", b"m")
    status, body, headers = get(server, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
             for line in text.splitlines() if line and not line.startswith("#")}
    echo = 'function="echo",runtime="wasm",transport="memory"'
    assert lines[f"spear_invocations_total{{{echo}}}"] >= 3
    assert lines[f"spear_invocation_duration_seconds_count{{{echo}}}"] >= 3
    assert lines[f"spear_instances{{{echo}}}"] >= 1
    assert lines['spear_invocation_errors_total{function="fail",kind="42",runtime="wasm",'
                 'transport="memory"}'] >= 1
    assert 'spear_in_flight{function="py-echo",runtime="process"}' in lines
    assert any(key.startswith('spear_invocations_total{function="py-echo"') and
               'transport="unix"' in key for key in lines)


# -- gRPC -------------------------------------------------------------------------------------


@pytest.fixture
def stub(server: ServeProcess) -> Iterator[pb_grpc.FunctionServiceStub]:
    with grpc.insecure_channel(server.grpc) as channel:
        yield pb_grpc.FunctionServiceStub(channel)


def test_grpc_invoke_and_its_status_codes(
    server: ServeProcess, stub: pb_grpc.FunctionServiceStub
) -> None:
    reply = stub.Invoke(pb.InvokeRequest(function="echo", input=b"over grpc"), timeout=10)
    assert reply.status == pb.InvokeResponse.SUCCESS and reply.output == b"over grpc"
    reply = stub.Invoke(pb.InvokeRequest(function="meta", input=b"k", metadata={"k": "v"}))
    assert reply.output == b"v"
    failed = stub.Invoke(pb.InvokeRequest(function="fail", input=b"!"), timeout=10)
    assert failed.status == pb.InvokeResponse.ERROR and failed.error_code == "42"
    with pytest.raises(grpc.RpcError) as missing:
        stub.Invoke(pb.InvokeRequest(function="missing"), timeout=10)
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as slow:
        stub.Invoke(pb.InvokeRequest(function="spin", timeout_s=0.1), timeout=10)
    assert slow.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    names = {f.name for f in stub.ListFunctions(pb.ListFunctionsRequest()).functions}
    assert "py-echo" in names


def test_grpc_health_reports_the_server_and_each_function(server: ServeProcess) -> None:
    with grpc.insecure_channel(server.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "echo", "py-echo"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


# -- the `spear invoke` client ----------------------------------------------------------------


def spear_invoke(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "spear.cli.main", "invoke", *args],
                          input=stdin, capture_output=True, timeout=60, env=child_env())


def test_spear_invoke_over_grpc_and_http(server: ServeProcess) -> None:
    done = spear_invoke("echo", "--input", "hello", "--server", server.grpc)
    assert (done.returncode, done.stdout) == (0, b"hello")
    done = spear_invoke("echo", "--input-file", "-", "--server", f"http://{server.http}",
                        stdin=b"\x00binary\xff")
    assert (done.returncode, done.stdout) == (0, b"\x00binary\xff")
    done = spear_invoke("meta", "--input", "who", "--meta", "who=me", "--server", server.grpc)
    assert done.stdout == b"me"
    failed = spear_invoke("fail", "--input", "x", "--server", server.grpc)
    assert failed.returncode == 1 and b"failed on purpose" in failed.stderr
    missing = spear_invoke("missing", "--input", "x", "--server", server.grpc)
    assert missing.returncode == 2 and b"NOT_FOUND" in missing.stderr


# -- the embedded default -----------------------------------------------------------------------


def test_serve_without_config_serves_the_prebuilt_demo_and_compiles_nothing(
    tmp_path: Path, wasm_fixture: Callable[[str], Path]
) -> None:
    wasm_fixture("echo"), wasm_fixture("multi")  # `just fixtures` has built them
    process = ServeProcess("--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0",
                           env={"XDG_CACHE_HOME": str(tmp_path), "HOME": str(tmp_path)})
    process.start()
    try:
        banner = "".join(process.output)
        assert "curl" in banner and "spear invoke echo" in banner
        assert "wasm_fixtures/build" in banner
        assert post(process, "echo", b"demo")[:2] == (200, b"demo")
        assert post(process, "upper", b"demo")[:2] == (200, b"DEMO")
        # No guest built at run time (wasmtime's compiled-module cache may hold .cwasm files).
        assert not list(tmp_path.rglob("*.wasm"))
        assert not (tmp_path / "spear" / "serve-demo").exists()
    finally:
        assert process.stop() == 0


def test_the_demo_without_prebuilt_guests_is_one_clear_line(tmp_path: Path) -> None:
    from spear.errors import InvalidConfiguration
    from spear.invocation.serve_config import demo_config

    with pytest.raises(InvalidConfiguration) as refused:
        demo_config(build_dirs=[tmp_path / "wasm_fixtures" / "build"])
    message = str(refused.value)
    assert "just fixtures" in message and "--config" in message and "\n" not in message


def test_a_bad_config_is_one_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "spear.toml"
    config.write_text('[[functions]]\nname = "x"\nruntime = "wasm"\nartifact = "x.wasm"\n'
                      'max_instancs = 3\n')
    done = subprocess.run([sys.executable, "-m", "spear.cli.main", "serve", "--config",
                           str(config)], capture_output=True, text=True, timeout=60,
                          env=child_env())
    assert done.returncode == 1
    assert "max_instancs" in done.stderr and "Traceback" not in done.stderr


def test_sigterm_stops_the_server_and_its_workers(
    tmp_path: Path, wasm_fixture: Callable[[str], Path]
) -> None:
    config = tmp_path / "spear.toml"
    config.write_text(f"""
[server]
http = "127.0.0.1:0"
grpc = false

[[functions]]
name = "py"
runtime = "process"
command = [{json.dumps(sys.executable)}, "-m", "spear.worker", "spearlet_handlers:tagged_echo"]
env = {{ PYTHONPATH = {json.dumps(str(TESTS_DIR))} }}
""")
    process = ServeProcess("--config", str(config)).start()
    assert not process.grpc
    status, body, _ = post(process, "py", b"x")
    assert status == 200
    worker_pid = int(body.split(b":")[0])
    assert process.stop() == 0
    deadline = time.monotonic() + 10
    while True:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the worker outlived spear serve"
        time.sleep(0.05)


# -- drain, logs, ports, exit codes -------------------------------------------------------------


def _slow_config(tmp_path: Path, drain_s: float, extra: str = "") -> Path:
    config = tmp_path / "spear.toml"
    config.write_text(f"""
[server]
http = "127.0.0.1:0"
grpc = "127.0.0.1:0"
drain_s = {drain_s}
{extra}
[[functions]]
name = "slow"
runtime = "process"
command = [{json.dumps(sys.executable)}, "-m", "spear.worker", "spearlet_handlers:slow"]
env = {{ PYTHONPATH = {json.dumps(str(TESTS_DIR))} }}

[[functions]]
name = "chatty"
runtime = "process"
command = [{json.dumps(sys.executable)}, "-m", "spear.worker", "spearlet_handlers:chatty"]
env = {{ PYTHONPATH = {json.dumps(str(TESTS_DIR))} }}
""")
    return config


def _in_background(fn: Callable[[], tuple[int, bytes, dict[str, str]]]) -> list[Any]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    result.append(thread)
    return result


def test_sigterm_drains_running_requests_and_says_503_meanwhile(tmp_path: Path) -> None:
    process = ServeProcess("--config", str(_slow_config(tmp_path, drain_s=20))).start()
    running = _in_background(lambda: post(process, "slow", b"1500"))
    time.sleep(0.5)  # the request is running
    assert process.proc is not None
    process.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    health = get(process, "/healthz")
    assert health[0] == 503 and json.loads(health[1])["status"] == "draining"
    refused = post(process, "slow", b"1")
    assert refused[0] == 503 and refused[2]["X-Spear-Error-Code"] == "draining"
    with grpc.insecure_channel(process.grpc) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    running[0].join(10)
    assert running[1][:2] == (200, b"1500")  # the running request finished normally
    assert process.proc.wait(20) == 0
    assert "Traceback" not in "".join(process.output)


def test_when_the_drain_time_is_up_running_requests_still_get_an_answer(tmp_path: Path) -> None:
    process = ServeProcess("--config", str(_slow_config(tmp_path, drain_s=0.5))).start()
    running = _in_background(lambda: post(process, "slow", b"8000"))
    time.sleep(0.5)
    assert process.proc is not None
    process.proc.send_signal(signal.SIGINT)
    running[0].join(15)
    assert running[1][0] == 503
    assert process.proc.wait(20) == 0
    output = "".join(process.output)
    assert "Traceback" not in output and "CancelledError" not in output


def test_a_second_serve_on_a_taken_grpc_port_fails(server: ServeProcess) -> None:
    done = subprocess.run([sys.executable, "-m", "spear.cli.main", "serve", "--http", "off",
                           "--grpc", server.grpc], capture_output=True, text=True, timeout=60,
                          env=child_env())
    assert done.returncode == 1
    assert "cannot listen for gRPC" in done.stderr and "Traceback" not in done.stderr


def test_serving_nothing_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "spear.cli.main", "serve", "--http", "off",
                           "--grpc", "off"], capture_output=True, text=True, timeout=60,
                          env=child_env())
    assert done.returncode == 1 and "nothing to serve" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_spear_invoke_has_one_exit_code_for_a_timeout(server: ServeProcess) -> None:
    for address in (server.grpc, f"http://{server.http}"):
        done = spear_invoke("spin", "--input", "x", "--server", address)  # its limit: 0.2 s
        assert done.returncode == 2, done.stderr
        assert b"did not answer within 200 ms" in done.stderr
        done = spear_invoke("py-echo", "--input", "x", "--timeout", "nan", "--server", address)
        assert done.returncode == 2


def test_json_logs_carry_access_records_failures_and_worker_output(
    tmp_path: Path, wasm_fixture: Callable[[str], Path]
) -> None:
    guest = f"""
[[functions]]
name = "logger"
runtime = "wasm"
artifact = {json.dumps(str(wasm_fixture("logger")))}
handler = "log"
"""
    config = _slow_config(tmp_path, drain_s=1)
    config.write_text(config.read_text() + guest)
    process = ServeProcess("--config", str(config), "-v", "--log-format", "json").start()
    try:
        assert post(process, "chatty", b"hi")[0] == 200
        assert post(process, "logger", b"from the guest")[0] == 200
        assert post(process, "slow", b"2000", query="?timeout=0.2")[0] == 504
        time.sleep(0.5)
    finally:
        assert process.stop() == 0
    records = [json.loads(line) for line in process.output if line.startswith("{")]
    assert records, "".join(process.output)
    access = [r for r in records if r.get("event") == "access" and r.get("function") == "chatty"]
    assert access and access[0]["status"] == 200 and access[0]["request_id"]
    assert isinstance(access[0]["duration_ms"], float)
    failed = [r for r in records if r.get("event") == "invoke_failed"]
    assert failed and failed[0]["level"] == "WARNING" and failed[0]["function"] == "slow"
    assert failed[0]["kind"] == "timeout" and failed[0]["request_id"]
    said = [r for r in records if "chatty says hi" in r["message"]]
    assert said and said[0]["function"] == "chatty" and said[0]["instance_id"]
    warned = [r for r in records if "chatty warns" in r["message"]]
    assert warned and warned[0]["function"] == "chatty"
    guest_lines = [r for r in records if r["message"] == "from the guest"]
    assert guest_lines and all(r["function"] == "logger" for r in guest_lines)
    assert guest_lines[0]["instance_id"].startswith("wasm:logger")
