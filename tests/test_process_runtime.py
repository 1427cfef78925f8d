"""`ProcessRuntime` with real child processes over real sockets.

Misbehaving children are small Python scripts written to tmp_path: they connect to their
own endpoint the way an intruder would, refuse the Unix socket, ignore signals, or send bad
frames after authenticating.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import spear
from spear.config import ChannelConfig
from spear.errors import (
    ChannelClosed,
    ChannelCreationFailed,
    InvalidConfiguration,
    Timeout,
    UnsupportedChannel,
)
from spear.messages import ExecutionRequest, ExecutionResponse
from spear.runtime.process import (
    DEFAULT_CHANNEL_ORDER,
    MAX_OUTPUT_LINE,
    OUTPUT_LINES_BURST,
    OUTPUT_LINES_PER_S,
    ProcessInstance,
    ProcessRuntime,
    RestartPolicy,
    worker_command,
)
from spear.transport.unix import UNIX_PATH_MAX
from spearlet_support import TESTS_DIR

ROUTE = worker_command("spear.worker.examples:route")
CONFIG = ChannelConfig(keepalive_interval_ms=0, connect_timeout_ms=10000,
                       request_timeout_ms=10000)


@pytest.fixture
async def runtime() -> AsyncIterator[ProcessRuntime]:
    rt = ProcessRuntime(config=CONFIG, auth_timeout=2.0, shutdown_grace=2.0, term_grace=1.0)
    yield rt
    await rt.close()


async def call(instance: ProcessInstance, function: str, data: bytes = b"",
               request_id: str = "r", timeout: float | None = None) -> ExecutionResponse:
    reply = await instance.channel.request_response(
        ExecutionRequest(request_id, function, data), timeout=timeout)
    assert isinstance(reply, ExecutionResponse)
    return reply


def script(tmp_path: Path, name: str, source: str) -> list[str]:
    path = tmp_path / f"child_{name}.py"  # never shadow a stdlib module
    path.write_text(source)
    return [sys.executable, str(path)]


async def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 5.0
                       ) -> str:
    async with asyncio.timeout(timeout):
        while True:
            for record in caplog.records:
                message = record.getMessage()
                if text in message:
                    return message
            await asyncio.sleep(0.02)


async def wait_until_stopped(pid: int) -> None:
    """Until every thread of `pid` is stopped (state T in /proc)."""
    async with asyncio.timeout(5):
        while not all((task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
                      for task in Path(f"/proc/{pid}/task").iterdir()):
            await asyncio.sleep(0.005)


async def wait_until_gone(runtime: ProcessRuntime, instance: ProcessInstance) -> None:
    async with asyncio.timeout(5):
        while instance in runtime.instances():
            await asyncio.sleep(0.02)


_DIAL = '''
import os, socket
kind, _, address = os.environ["SPEAR_ENDPOINT"].partition(":")
def connect():
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX)
        s.connect(address)
    else:
        host, _, port = address.rpartition(":")
        s = socket.create_connection((host, int(port)))
    s.settimeout(10)
    return s
'''

_RUN_WORKER = '''
sys.argv = ["spear-worker", "spear.worker.examples:route"]
from spear.worker.__main__ import main
sys.exit(main())
'''

INTRUDER = _DIAL + '''
import sys, threading, time
from spear import codec
from spear.messages import ExecutionRequest, Handshake
from spear.protocol.framing import ReceiveBuffer, frame

ATTACKS = {
    "wrong-token": frame(codec.encode(Handshake(os.environ["SPEAR_INSTANCE_ID"], "guess"))),
    "not-a-handshake": frame(codec.encode(ExecutionRequest("r", "echo", b"let me in"))),
    "garbage": b"GET / HTTP/1.1\\r\\nHost: spear\\r\\n\\r\\n",
    "huge-length": b"\\xff\\xff\\xff\\xff",
    "silent": b"",
}

def watch(name, s):
    started = time.monotonic()
    frames, replies = ReceiveBuffer(1 << 20), []
    try:
        while chunk := s.recv(65536):
            for f in frames.feed(chunk):
                message = codec.decode(f)
                replies.append(f"{type(message).__name__}:{getattr(message, 'code', '')}"
                               f"[{getattr(message, 'message', '')}]")
        end = "closed"
    except OSError as exc:
        end = f"still open ({exc})"
    print(f"intruder {name}: {' '.join(replies)} {end} after "
          f"{time.monotonic() - started:.2f} s", flush=True)

for name in sys.argv[1].split(","):
    s = connect()
    s.sendall(ATTACKS[name])
    threading.Thread(target=watch, args=(name, s), daemon=True).start()
time.sleep(0.1)  # the bad connections are in before the real worker dials
''' + _RUN_WORKER

# A worker that does the handshake itself (blocking, as the real worker does) and then
# misbehaves.
_AUTHENTICATED = '''
import os
from spear.transport.tcp import connect_tcp_socket
from spear.transport.unix import connect_unix_socket
from spear.worker.handshake import present_token

def authenticated():
    """The socket, and whether bytes came in behind the handshake's Ack already."""
    kind, _, address = os.environ["SPEAR_ENDPOINT"].partition(":")
    connect = connect_unix_socket if kind == "unix" else connect_tcp_socket
    sock = connect(address, timeout=5)
    received = present_token(sock, instance_id=os.environ["SPEAR_INSTANCE_ID"],
                             token=os.environ["SPEAR_TOKEN"], timeout=5,
                             max_message_size=1 << 26)
    return sock, received.buffered > 0
'''

BAD_FRAME_AFTER_AUTH = _AUTHENTICATED + '''
import sys, time
sock, request_in = authenticated()
if not request_in:
    sock.recv(65536)  # the first request
sock.sendall(bytes.fromhex(sys.argv[1]))
while sock.recv(65536):
    pass
print("host hung up", flush=True)
time.sleep(30)
'''

STUBBORN = _AUTHENTICATED + '''
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sock, _ = authenticated()
time.sleep(60)  # never reads: ignores Shutdown too
'''

INSPECTOR = '''
import os, stat, sys
kind, _, path = os.environ["SPEAR_ENDPOINT"].partition(":")
info = os.stat(path)
directory = os.stat(os.path.dirname(path))
print(f"inspect socket={stat.S_ISSOCK(info.st_mode)} mode={oct(stat.S_IMODE(info.st_mode))} "
      f"dir={oct(stat.S_IMODE(directory.st_mode))} name={os.path.basename(path)}", flush=True)
with open(sys.argv[1], "w") as out:
    out.write(os.environ["SPEAR_TOKEN"])
''' + "import sys\n" + _RUN_WORKER

UNIX_REFUSER = '''
import os, sys, time
if os.environ["SPEAR_ENDPOINT"].startswith("unix:"):
    time.sleep(60)
''' + _RUN_WORKER

CRASH_AFTER_CONNECT = _AUTHENTICATED + '''
sock, _ = authenticated()
os._exit(3)
'''


# -- starting, talking, stopping ------------------------------------------------------------


async def test_start_round_trip_and_stop_over_unix(runtime: ProcessRuntime) -> None:
    instance = await runtime.start_instance("basic", command=ROUTE)
    assert isinstance(instance, ProcessInstance)
    assert instance.channel_type == "unix" and instance.endpoint.startswith("unix:")
    assert instance.instance_id.full_id == "process:basic" and instance.pid > 0
    assert instance.alive and runtime.instances() == [instance]
    assert (await call(instance, "upper", b"hello")).output_data == b"HELLO"
    failed = await call(instance, "fail", b"x")
    assert not failed.ok and failed.error_code == "handler_error"
    await runtime.stop_instance(instance)
    assert instance.returncode == 0 and not instance.alive
    assert runtime.instances() == []


async def test_the_lazy_export_is_this_runtime() -> None:
    assert spear.ProcessRuntime is ProcessRuntime
    assert DEFAULT_CHANNEL_ORDER == ("unix", "tcp")


async def test_socket_is_0600_in_a_0700_directory_and_removed_once_connected(
    runtime: ProcessRuntime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    token_file = tmp_path / "token"
    instance = await runtime.start_instance(
        "perm", command=[*script(tmp_path, "inspect", INSPECTOR), str(token_file)])
    line = await wait_for_log(caplog, "inspect socket=")
    assert "socket=True mode=0o600 dir=0o700 name=perm.sock" in line
    assert runtime.runtime_dir is not None
    assert stat.S_IMODE(os.stat(runtime.runtime_dir).st_mode) == 0o700
    assert os.listdir(runtime.runtime_dir) == []  # nobody else can dial in any more
    assert (await call(instance, "echo", b"x")).ok
    # The token reached the child, and never the host's logs or reprs.
    token = token_file.read_text()
    assert len(token) >= 40
    assert token not in caplog.text
    assert token not in repr(instance) and token not in repr(instance.channel)


async def test_the_child_gets_its_endpoint_instance_id_and_token_in_its_environment(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    out = tmp_path / "env"
    source = f'''
import os, sys
with open({str(out)!r}, "w") as f:
    for name in ("SPEAR_ENDPOINT", "SPEAR_INSTANCE_ID", "SPEAR_MAX_MESSAGE_SIZE", "EXTRA"):
        f.write(name + "=" + os.environ.get(name, "") + "\\n")
''' + _RUN_WORKER
    instance = await runtime.start_instance(
        "envy", command=script(tmp_path, "env", source), env={"EXTRA": "yes"})
    seen = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert seen["SPEAR_ENDPOINT"] == instance.endpoint
    assert seen["SPEAR_INSTANCE_ID"] == "process:envy"
    assert seen["SPEAR_MAX_MESSAGE_SIZE"] == str(CONFIG.max_message_size)
    assert seen["EXTRA"] == "yes"


async def test_10000_requests_64_in_flight_each_matched_to_its_reply(
    runtime: ProcessRuntime,
) -> None:
    instance = await runtime.start_instance("many", command=ROUTE)
    channel = instance.channel
    queue = iter(range(10_000))
    seen: set[int] = set()

    async def lane() -> None:
        for i in queue:
            request = ExecutionRequest(f"req-{i}", "tagged_echo", f"payload-{i}".encode())
            reply = await channel.request_response(request)
            assert isinstance(reply, ExecutionResponse)
            assert reply.request_id == f"req-{i}"
            assert reply.output_data == f"req-{i}|payload-{i}".encode()
            seen.add(i)

    await asyncio.gather(*(lane() for _ in range(64)))
    assert seen == set(range(10_000))
    stats = await channel.get_stats()
    assert stats.requests_completed == 10_000
    assert stats.messages_sent == stats.messages_received == 10_000
    assert stats.timeout_errors == stats.connection_errors == 0
    assert stats.mean_latency_ms > 0


async def test_many_large_messages_in_flight_get_through_back_pressure(
    runtime: ProcessRuntime,
) -> None:
    instance = await runtime.start_instance("bulk", command=ROUTE)
    payloads = [bytes([i]) * (1 << 20) for i in range(32)]  # 32 MiB in flight each way
    replies = await asyncio.gather(*(call(instance, "echo", p, request_id=f"b{i}")
                                     for i, p in enumerate(payloads)))
    assert [r.output_data for r in replies] == payloads


async def test_stats_count_requests_and_bytes(runtime: ProcessRuntime) -> None:
    instance = await runtime.start_instance("stats", command=ROUTE)
    for i in range(10):
        await call(instance, "echo", b"x" * 100, request_id=f"s{i}")
    stats = await instance.channel.get_stats()
    assert stats.messages_sent == stats.messages_received == stats.requests_completed == 10
    assert stats.bytes_sent > 10 * 100 and stats.bytes_received > 10 * 100
    assert stats.mean_latency_ms > 0 and stats.uptime_s > 0


async def test_sync_handlers_run_on_threads_concurrently(
    runtime: ProcessRuntime,
) -> None:
    instance = await runtime.start_instance(
        "sync", command=worker_command("spear.worker.examples:slow"))
    started = time.monotonic()
    replies = await asyncio.gather(*(call(instance, "slow", b"0.3", request_id=f"t{i}")
                                     for i in range(8)))
    assert all(r.ok for r in replies)
    assert time.monotonic() - started < 1.5  # 8 x 0.3 s in parallel, not 2.4 s in a row


async def test_child_output_is_logged_line_by_line_tagged_by_instance(
    runtime: ProcessRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    instance = await runtime.start_instance("loud", command=ROUTE)
    await call(instance, "shout", b"hello there")
    await wait_for_log(caplog, "stderr: hello there")
    records = [r for r in caplog.records
               if r.name == "spear.process" and getattr(r, "spear_instance", "").endswith(":loud")]
    out = [r for r in records if "stdout: hello there" in r.getMessage()]
    err = [r for r in records if "stderr: hello there" in r.getMessage()]
    assert out and out[0].levelno == logging.INFO and "process:loud" in out[0].getMessage()
    assert err and err[0].levelno == logging.WARNING


async def test_a_child_flooding_its_output_cannot_flood_the_host_log(
    runtime: ProcessRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    instance = await runtime.start_instance(
        "flood", command=worker_command("spearlet_handlers:flood_output"),
        env={"PYTHONPATH": str(TESTS_DIR)})
    started = time.monotonic()
    reply = await call(instance, "flood_output", b"20000")
    assert reply.ok and reply.output_data == b"20000"
    await runtime.stop_instance(instance)  # its output ends: the pump says what it held back
    took = time.monotonic() - started
    records = [r for r in caplog.records
               if r.name == "spear.process" and "process:flood" in r.getMessage()]
    lines = [r for r in records if "flood line" in r.getMessage()]
    assert 0 < len(lines) <= OUTPUT_LINES_BURST + OUTPUT_LINES_PER_S * took + 1, took
    summaries = [r.getMessage() for r in records
                 if getattr(r, "event", None) == "log_lines_suppressed"]
    assert summaries and len(summaries) <= took + 2  # at most once a second, and at the end
    held = sum(int(m.split(" ", 1)[0]) for m in summaries)
    assert held + len(lines) == 20_000  # every line written or counted
    (long_line,) = [r.getMessage() for r in records if "LLLL" in r.getMessage()]
    assert len(long_line) < MAX_OUTPUT_LINE + 100  # cut


async def test_graceful_stop_with_requests_in_flight_loses_none(runtime: ProcessRuntime) -> None:
    instance = await runtime.start_instance("drain", command=ROUTE)
    calls = [asyncio.ensure_future(call(instance, "async_slow", b"0.3", request_id=f"d{i}"))
             for i in range(30)]
    await asyncio.sleep(0.05)
    await runtime.stop_instance(instance)
    replies = await asyncio.gather(*calls)
    assert all(r.ok for r in replies)
    assert instance.returncode == 0


async def test_sigterm_drains_the_worker_too(runtime: ProcessRuntime) -> None:
    instance = await runtime.start_instance("term", command=ROUTE)
    calls = [asyncio.ensure_future(call(instance, "async_slow", b"0.3", request_id=f"t{i}"))
             for i in range(10)]
    await asyncio.sleep(0.05)
    os.kill(instance.pid, signal.SIGTERM)
    replies = await asyncio.gather(*calls)
    assert all(r.ok for r in replies)
    await wait_until_gone(runtime, instance)
    assert instance.returncode == 0


async def test_stop_escalates_to_sigterm_then_sigkill(tmp_path: Path) -> None:
    runtime = ProcessRuntime(config=CONFIG, shutdown_grace=0.3, term_grace=0.3)
    try:
        instance = await runtime.start_instance("stubborn",
                                                command=script(tmp_path, "stubborn", STUBBORN))
        started = time.monotonic()
        await runtime.stop_instance(instance)
        elapsed = time.monotonic() - started
        assert instance.returncode == -signal.SIGKILL
        assert 0.6 <= elapsed < 3.0
    finally:
        await runtime.close()


async def test_close_stops_everything_and_removes_the_socket_directory() -> None:
    runtime = ProcessRuntime(config=CONFIG)
    instances = [await runtime.start_instance(f"c{i}", command=ROUTE) for i in range(2)]
    directory = runtime.runtime_dir
    assert directory is not None and os.path.isdir(directory)
    await runtime.close()
    assert runtime.instances() == [] and not os.path.exists(directory)
    assert all(i.returncode == 0 for i in instances)


async def test_a_running_instance_id_cannot_be_started_twice(runtime: ProcessRuntime) -> None:
    await runtime.start_instance("twice", command=ROUTE)
    with pytest.raises(InvalidConfiguration, match="already running"):
        await runtime.start_instance("twice", command=ROUTE)


async def test_long_and_odd_instance_ids_get_safe_short_socket_names(
    runtime: ProcessRuntime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    long_id = "very/long:" + "x" * 200
    instance = await runtime.start_instance(
        long_id, command=[*script(tmp_path, "inspect", INSPECTOR), str(tmp_path / "t")])
    line = await wait_for_log(caplog, "inspect socket=")
    name = line.rsplit("name=", 1)[1]
    assert name.startswith("s-") and name.endswith(".sock")
    assert len(os.fsencode(os.path.join(str(runtime.runtime_dir), name))) <= UNIX_PATH_MAX
    assert (await call(instance, "echo", b"ok")).ok


# -- dead children --------------------------------------------------------------------------


async def test_kill_9_fails_every_pending_request_within_a_second(
    runtime: ProcessRuntime,
) -> None:
    instance = await runtime.start_instance("victim", command=ROUTE)
    calls = [asyncio.ensure_future(call(instance, "async_slow", b"10", request_id=f"k{i}"))
             for i in range(20)]
    await asyncio.sleep(0.1)
    started = time.monotonic()
    os.kill(instance.pid, signal.SIGKILL)
    for pending in calls:
        with pytest.raises(ChannelClosed):
            await pending
    assert time.monotonic() - started < 1.0
    await wait_until_gone(runtime, instance)
    assert instance.returncode == -signal.SIGKILL
    with pytest.raises(ChannelClosed, match="gone"):
        await instance.wait_ready(timeout=1)


async def test_on_failure_policy_restarts_a_killed_worker_behind_the_same_instance(
    runtime: ProcessRuntime,
) -> None:
    instance = await runtime.start_instance(
        "phoenix", command=ROUTE,
        restart_policy=RestartPolicy.on_failure(max_restarts=2, initial_backoff=0.05))
    old_pid, old_channel = instance.pid, instance.channel
    pending = asyncio.ensure_future(call(instance, "async_slow", b"10"))
    await asyncio.sleep(0.1)
    os.kill(old_pid, signal.SIGKILL)
    with pytest.raises(ChannelClosed):
        await pending
    channel = await instance.wait_ready(timeout=10)
    assert channel is instance.channel and channel is not old_channel
    assert not old_channel.connected
    assert instance.pid != old_pid and instance.restarts == 1
    assert runtime.instances() == [instance]
    assert (await call(instance, "echo", b"back")).output_data == b"back"


async def test_restarts_stop_after_max_restarts(runtime: ProcessRuntime, tmp_path: Path) -> None:
    instance = await runtime.start_instance(
        "crashy", command=script(tmp_path, "crash", CRASH_AFTER_CONNECT),
        restart_policy=RestartPolicy.on_failure(max_restarts=2, initial_backoff=0.01))
    await wait_until_gone(runtime, instance)
    assert instance.restarts == 2 and instance.returncode == 3
    with pytest.raises(ChannelClosed, match="used up its 2 restarts"):
        await instance.wait_ready(timeout=1)


async def test_a_stopped_child_is_declared_dead_after_missed_heartbeats(
    runtime: ProcessRuntime,
) -> None:
    config = CONFIG.with_changes(keepalive_interval_ms=100)
    instance = await runtime.start_instance("frozen", command=ROUTE, config=config)
    assert (await call(instance, "echo", b"alive")).ok
    os.kill(instance.pid, signal.SIGSTOP)
    # A stop takes effect when the child next enters the kernel or is interrupted, which on a
    # busy VM can be after it has answered a request sent right away: wait until it has.
    await wait_until_stopped(instance.pid)
    pending = asyncio.ensure_future(
        call(instance, "echo", b"never answered", request_id="never"))
    started = time.monotonic()
    try:
        with pytest.raises(ChannelClosed, match="missed 3 heartbeats"):
            await pending
        assert time.monotonic() - started < 1.5
        # The runtime kills what it cannot talk to (SIGKILL works on a stopped process).
        await wait_until_gone(runtime, instance)
        assert instance.returncode == -signal.SIGKILL
    finally:
        if instance.returncode is None:
            os.kill(instance.pid, signal.SIGKILL)


async def test_a_timeout_raises_timeout_and_the_worker_receives_cancel(
    runtime: ProcessRuntime,
) -> None:
    instance = await runtime.start_instance("slowpoke", command=ROUTE)
    with pytest.raises(Timeout):
        await call(instance, "async_slow", b"5", request_id="too-slow", timeout=0.2)
    assert (await instance.channel.get_stats()).timeout_errors == 1
    async with asyncio.timeout(3):
        while b"too-slow" not in (await call(instance, "cancelled", request_id="q")).output_data:
            await asyncio.sleep(0.02)


# -- intruders and bad frames ---------------------------------------------------------------


async def test_intruders_are_refused_without_disturbing_the_expected_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    runtime = ProcessRuntime(config=CONFIG, auth_timeout=8.0)
    attacks = ["wrong-token", "not-a-handshake", "garbage", "huge-length", "silent"]
    try:
        started = time.monotonic()
        instance = await runtime.start_instance(
            "guarded", command=[*script(tmp_path, "intruder", INTRUDER), ",".join(attacks)])
        # The silent connection did not hold the worker up: it was still silent when the
        # worker got in, and was refused when the listener closed behind the worker.
        assert (await call(instance, "echo", b"safe")).output_data == b"safe"
        for attack in attacks:
            line = await wait_for_log(caplog, f"intruder {attack}:")
            assert "Error:auth_failed[" in line and line.endswith(" s"), line
            assert "] closed after" in line, line
        silent = await wait_for_log(caplog, "intruder silent:")
        assert "the listener closed before this connection authenticated" in silent
        assert time.monotonic() - started < 8
        # Failures are logged in aggregate (one line with the count by kind), not one each.
        summaries = [r.getMessage() for r in caplog.records
                     if r.name == "spear.channel.listener" and "failed auth" in r.getMessage()]
        assert 1 <= len(summaries) <= 2, summaries
        text = " ".join(summaries)
        assert "wrong token: 1" in text
        assert "bad handshake: 2" in text  # the garbage and the huge length
        assert "first frame must be a Handshake" in text
        assert sum(int(m.split(": ", 1)[1].split()[0]) for m in summaries) == 4
        assert instance.alive
    finally:
        await runtime.close()


@pytest.mark.parametrize(
    ("frame_hex", "complaint"),
    [("ffffffff", "4294967295 bytes exceeds"), ("00000003c1c1c1", "not a msgpack message")],
)
async def test_a_bad_frame_after_authentication_closes_that_channel(
    runtime: ProcessRuntime, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    frame_hex: str, complaint: str,
) -> None:
    caplog.set_level(logging.INFO)
    instance = await runtime.start_instance(
        "liar", command=[*script(tmp_path, "liar", BAD_FRAME_AFTER_AUTH), frame_hex])
    with pytest.raises(ChannelClosed, match="invalid message"):
        await call(instance, "echo", b"hello")
    warning = await wait_for_log(caplog, "invalid message")
    assert complaint in warning
    # A worker that speaks garbage is useless: the runtime kills it.
    await wait_until_gone(runtime, instance)
    assert instance.returncode == -signal.SIGKILL


# -- channel choice and fallback ------------------------------------------------------------


async def test_tcp_when_the_config_asks_for_it(runtime: ProcessRuntime) -> None:
    instance = await runtime.start_instance(
        "tcp1", command=ROUTE, config=CONFIG.with_changes(channel_type="tcp"))
    assert instance.channel_type == "tcp" and instance.endpoint.startswith("tcp:127.0.0.1:")
    assert (await call(instance, "upper", b"tcp")).output_data == b"TCP"


async def test_the_channel_order_is_a_runtime_parameter() -> None:
    runtime = ProcessRuntime(channel_order=("tcp", "unix"), config=CONFIG)
    try:
        instance = await runtime.start_instance("order", command=ROUTE)
        assert instance.channel_type == "tcp"
        second = await runtime.start_instance("order2", command=ROUTE)
        assert instance.endpoint != second.endpoint  # ephemeral ports never collide
    finally:
        await runtime.close()
    with pytest.raises(UnsupportedChannel, match="grpc"):
        ProcessRuntime(channel_order=("grpc",))


async def test_an_unusable_socket_directory_falls_back_to_tcp(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    runtime = ProcessRuntime(config=CONFIG, base_dir=str(tmp_path / "does-not-exist"))
    try:
        instance = await runtime.start_instance("fallback", command=ROUTE)
        assert instance.channel_type == "tcp"
        assert (await call(instance, "echo", b"via tcp")).output_data == b"via tcp"
        assert "unix: " in await wait_for_log(caplog, "No such file or directory")
    finally:
        await runtime.close()


async def test_a_socket_path_over_the_platform_limit_falls_back_to_tcp(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    deep = tmp_path
    while len(str(deep)) < UNIX_PATH_MAX + 10:
        deep = deep / ("d" * 40)
    deep.mkdir(parents=True)
    runtime = ProcessRuntime(config=CONFIG, base_dir=str(deep))
    try:
        instance = await runtime.start_instance("toolong", command=ROUTE)
        assert instance.channel_type == "tcp"
        await wait_for_log(caplog, "over the platform limit")
        assert (await call(instance, "echo", b"ok")).ok
    finally:
        await runtime.close()


async def test_a_child_that_never_dials_the_unix_socket_falls_back_to_tcp(
    tmp_path: Path,
) -> None:
    runtime = ProcessRuntime(config=CONFIG.with_changes(connect_timeout_ms=1000))
    try:
        instance = await runtime.start_instance("picky",
                                                command=script(tmp_path, "picky", UNIX_REFUSER))
        assert instance.channel_type == "tcp"
        assert (await call(instance, "echo", b"ok")).ok
    finally:
        await runtime.close()


async def test_channel_creation_failed_lists_every_attempt_and_its_cause(tmp_path: Path) -> None:
    runtime = ProcessRuntime(config=CONFIG.with_changes(connect_timeout_ms=300),
                             base_dir=str(tmp_path / "missing"))
    try:
        with pytest.raises(ChannelCreationFailed) as failure:
            await runtime.start_instance(
                "mute", command=[sys.executable, "-c", "import time; time.sleep(60)"])
    finally:
        await runtime.close()
    error = failure.value
    assert error.attempted_types == ["unix", "tcp"]
    assert isinstance(error.causes[0], FileNotFoundError)
    assert isinstance(error.causes[1], Timeout)
    assert "unix: FileNotFoundError" in str(error) and "tcp: Timeout" in str(error)


async def test_a_worker_that_dies_at_startup_reports_its_stderr(runtime: ProcessRuntime) -> None:
    with pytest.raises(ChannelCreationFailed, match="cannot import handler module") as failure:
        await runtime.start_instance("broken", command=worker_command("no_such_module:f"))
    assert failure.value.attempted_types == ["unix", "tcp"]
    assert "exited with code 2" in str(failure.value)
    assert runtime.instances() == []


async def test_an_unsupported_channel_type_is_refused(runtime: ProcessRuntime) -> None:
    with pytest.raises(UnsupportedChannel):
        await runtime.start_instance("g", command=ROUTE,
                                     config=CONFIG.with_changes(channel_type="grpc"))
