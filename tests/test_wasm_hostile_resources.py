"""A guest can make the host hold only what its limits allow: tables, memories and instances
per store, the messages it sends (across calls, with back-pressure) and the ones queued for
it, its log volume, and the compiled modules a long-running host has loaded. Each test runs
in a child process, on both call paths.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from pathlib import Path

import pytest
import spear
from hostile_guests import OUT_LEN, OUT_PTR, SPEAR_IMPORTS, guest
from spear import ChannelConfig, ExecutionRequest, wasm
from wasm_isolation import in_child

MiB = 1 << 20

FLOOD = f"""
  ;; send 60 000-byte messages until `send` refuses; output: (count, last code)
  (func (export "spear.handler.flood") (result i32)
    (local $n i32) (local $rc i32)
    (block $done (loop $l
      (local.set $rc (call $send (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 60000)))
      (br_if $done (i32.ne (local.get $rc) (i32.const 0)))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $l)))
    (i32.store (i32.const 100) (local.get $n))
    (i32.store (i32.const 104) (local.get $rc))
    (i32.store (i32.const {OUT_PTR}) (i32.const 100))
    (i32.store (i32.const {OUT_LEN}) (i32.const 8))
    (i32.const 0))
"""
LOG_LOOP = """
  (func (export "spear.handler.logloop") (result i32)
    (local $i i32)
    (loop $l
      (call $log (i32.const 2) (i32.const 0) (i32.const 4))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 50000))))
    (i32.const 0))
  (func (export "spear.handler.trap") (result i32) (unreachable))
"""
STDERR_LINE = "a line written to stderr by the guest"
STDERR_LOOP = f"""
  (func (export "spear.handler.errloop") (result i32)
    (local $i i32)
    (i32.store (i32.const 9000) (i32.const 300))
    (i32.store (i32.const 9004) (i32.const {len(STDERR_LINE) + 1}))
    (loop $l
      (drop (call $fd_write (i32.const 2) (i32.const 9000) (i32.const 1) (i32.const 9008)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 30000))))
    (i32.const 0))
"""
FD_WRITE = """
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
"""


def rss() -> int:
    """Resident memory now, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def counts(output: bytes) -> tuple[int, int]:
    return (int.from_bytes(output[:4], "little"),
            int.from_bytes(output[4:8], "little", signed=True))


# ------------------------------------------------------------------ store limits


@in_child
def test_table_growth_past_the_limit_fails_in_the_guest_and_costs_the_host_nothing(
    call_path: str,
) -> None:
    module = wasm.load(guest(
        '(table $t 1 funcref) (func (export "spear.handler.grow") (result i32) '
        "(call $out_rc (table.grow $t (ref.null func) (i32.const 0x2000000))))"))
    with module.instantiate() as instance:
        before = rss()
        for _ in range(8):
            assert int.from_bytes(instance.call("grow", b""), "little", signed=True) == -1
        assert rss() - before < 32 * MiB
        assert instance.call("echo", b"fine") == b"fine"


@in_child
def test_modules_declaring_more_than_the_store_allows_fail_to_load_clearly(
    call_path: str,
) -> None:
    for body, reason in (
        ("(table 33554432 funcref)", "table limits"),
        ("(memory 1)", "memory count"),
        ("(table 1 funcref)" * 17, "table count"),
    ):
        with pytest.raises(spear.ExecutionFailed, match=reason) as info:
            wasm.load(guest(body))
        assert info.value.code == "instantiate"
    with wasm.load(guest()).instantiate() as instance:
        assert instance.call("echo", b"ok") == b"ok"


# ------------------------------------------------------------------ messages


@in_child
def test_the_outbox_is_bounded_across_calls_and_pushes_back_on_the_guest(
    call_path: str,
) -> None:
    module = wasm.load(guest(FLOOD))
    with module.instantiate() as instance:
        before = rss()
        sent = [counts(instance.call("flood", b"")) for _ in range(16)]
        # The first call fills the outbox; the next ones are refused (-2) until the host
        # takes what is there. The host holds at most the outbox's limits.
        assert sent[0] == (1024, -2)
        assert all(result == (0, -2) for result in sent[1:]), sent
        assert rss() - before < 128 * MiB
        assert len(instance.mailbox.take_sent()) == 1024
        assert counts(instance.call("flood", b"")) == (1024, -2)
    limits = wasm.GuestLimits(outbox_messages=10_000, outbox_bytes=1 * MiB)
    with module.instantiate(limits=limits) as instance:
        assert counts(instance.call("flood", b"")) == (17, -2)  # 17 x 60 000 < 1 MiB
        assert counts(instance.call("flood", b"")) == (0, -2)


@in_child
def test_the_channels_receive_side_is_bounded_until_someone_receives(call_path: str) -> None:
    async def main() -> None:
        async with spear.WasmRuntime() as runtime:
            channel = (await runtime.start_instance("f", artifact=guest(FLOOD))).channel
            before = rss()
            for i in range(16):
                response = await channel.request_response(ExecutionRequest("r", "flood", b""))
                assert counts(response.output_data) == ((1024 if i == 0 else 0), -2)
            assert rss() - before < 128 * MiB
            health = await channel.request_response(spear.HealthCheck("h"))
            assert health.metrics["queued_for_host"] == 1024
            for _ in range(1024):
                message = await channel.receive()
                assert message.function_name == "tick" and len(message.input_data) == 60000
            response = await channel.request_response(ExecutionRequest("r", "flood", b""))
            assert counts(response.output_data) == (1024, -2)

    asyncio.run(main())


@in_child
def test_sending_to_a_guest_whose_inbox_is_full_waits_then_times_out(call_path: str) -> None:
    async def main() -> None:
        limits = wasm.GuestLimits(inbox_messages=3)
        async with spear.WasmRuntime(limits=limits) as runtime:
            config = ChannelConfig(request_timeout_ms=200)
            channel = (await runtime.start_instance("i", artifact=guest(), config=config)).channel
            for n in range(3):
                await channel.send(ExecutionRequest("m", "t", b"%d" % n))
            with pytest.raises(spear.Timeout, match="inbox"):
                await channel.send(ExecutionRequest("m", "t", b"one too many"))
            with pytest.raises(spear.InvalidMessage, match="exceeds"):
                await channel.send(ExecutionRequest("m", "t", bytes(65 * MiB)))
            health = await channel.request_response(spear.HealthCheck("h"))
            assert health.metrics["queued_for_guest"] == 3

    asyncio.run(main())


# ------------------------------------------------------------------ logs


class Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(1)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def size(self) -> int:
        return sum(len(record.getMessage()) for record in self.records)


def counting(logger: str = "spear.guest") -> Counter:
    counter = Counter()
    target = logging.getLogger(logger)
    target.addHandler(counter)
    target.setLevel(1)
    target.propagate = False
    return counter


@in_child
def test_a_guest_log_loop_is_rate_limited_and_the_drops_are_counted(call_path: str) -> None:
    counter = counting()
    module = wasm.load(guest(LOG_LOOP))
    # A bucket that does not refill during the test: exactly the burst gets through.
    limits = wasm.GuestLimits(log_burst_records=150, log_records_per_s=0.001)
    with module.instantiate(limits=limits) as instance:
        assert instance.call("logloop", b"", timeout=60) == b""
        lines = [r for r in counter.records if r.getMessage() == "tick"]
        assert len(lines) == 150
        assert instance.dropped_log_records == 50_000 - 150
        # Trapping (and being replaced) does not refill the bucket.
        with pytest.raises(spear.ExecutionFailed):
            instance.call("trap", b"")
        assert instance.call("logloop", b"", timeout=60) == b""
        assert len([r for r in counter.records if r.getMessage() == "tick"]) == 150
        assert instance.dropped_log_records == 100_000 - 150
    reports = [r.getMessage() for r in counter.records if "dropped" in r.getMessage()]
    assert reports[-1] == "guest module logged too much: 99850 records (399400 bytes) dropped"
    assert counter.size() < 16 * 1024


@in_child
def test_the_default_log_limit_lets_a_log_loop_through_only_at_its_rate(call_path: str) -> None:
    counter = counting()
    module = wasm.load(guest(LOG_LOOP))
    with module.instantiate() as instance:
        started = time.monotonic()
        assert instance.call("logloop", b"", timeout=60) == b""
        took = time.monotonic() - started
    defaults = wasm.DEFAULT_LIMITS
    lines = [r for r in counter.records if r.getMessage() == "tick"]
    allowed = defaults.log_burst_records + took * defaults.log_records_per_s
    assert defaults.log_burst_records <= len(lines) <= allowed + 1
    # The drop reports themselves come at most once a second (plus one when closed).
    reports = [r for r in counter.records if "dropped" in r.getMessage()]
    assert 1 <= len(reports) <= took + 2


@in_child
def test_a_guest_stderr_loop_is_rate_limited_too(call_path: str) -> None:
    counter = counting()
    data = f'(data (i32.const 300) "{STDERR_LINE}\\0a")'
    module = wasm.load(guest(STDERR_LOOP, imports=SPEAR_IMPORTS + FD_WRITE, data=data))
    limits = wasm.GuestLimits(log_burst_records=150, log_records_per_s=0.001)
    with module.instantiate(limits=limits) as instance:
        assert instance.call("errloop", b"", timeout=60) == b""
        lines = [r for r in counter.records if r.getMessage() == STDERR_LINE]
        assert len(lines) == 150
        assert all(r.levelno == logging.WARNING for r in lines)
        assert instance.dropped_log_records == 30_000 - 150
    assert counter.size() < 16 * 1024


# ------------------------------------------------------------------ compiled modules


def distinct_module(n: int) -> bytes:
    return guest(f'(func (export "spear.handler.n{n}") (result i32) (i32.const {n}))')


@in_child
def test_loading_ever_new_modules_keeps_fds_and_memory_flat(call_path: str) -> None:
    host = wasm.WasmHost(max_modules=16)
    warm = 100
    for n in range(warm):
        with host.load(distinct_module(n)).instantiate() as instance:
            assert instance.call("echo", b"x") == b"x"
    fds, memory = open_fds(), rss()
    for n in range(warm, warm + 500):
        with host.load(distinct_module(n)).instantiate() as instance:
            assert instance.call("echo", b"x") == b"x"
    assert len(host.modules) == 16
    assert open_fds() - fds <= 2, (fds, open_fds())
    assert rss() - memory < 48 * MiB, (memory, rss())
    host.close()


@in_child
def test_closing_a_host_closes_its_instances_and_stops_its_tickers(call_path: str) -> None:
    import threading

    def ticker_threads() -> set[str]:
        # The native path's tickers are C threads (named for the OS); the Python path's are
        # Python threads.
        native = {task.name for task in Path("/proc/self/task").iterdir()
                  if (task / "comm").read_text().strip() == "spear-epoch"}
        python = {str(t.ident) for t in threading.enumerate() if t.name == "spear-epoch"}
        return native | python

    tickers = ticker_threads()
    host = wasm.WasmHost()
    instance = host.load(guest()).instantiate()
    fuelled = host.load(guest(), fuel=10_000).instantiate()
    assert instance.call("echo", b"x", timeout=1.0) == b"x"
    assert fuelled.call("echo", b"x", timeout=1.0) == b"x"
    mine = ticker_threads() - tickers
    assert len(mine) == 2  # one engine per configuration (fuel on and off)
    host.close()
    assert instance.closed and fuelled.closed
    with pytest.raises(spear.ChannelClosed):
        instance.call("echo", b"x")
    deadline = time.monotonic() + 2
    while ticker_threads() & mine:
        assert time.monotonic() < deadline, "a ticker thread outlived its engine"
        time.sleep(0.01)
    with pytest.raises(spear.ChannelClosed):
        host.load(guest())
    # The process-wide host is unaffected.
    with wasm.load(guest()).instantiate() as other:
        assert other.call("echo", b"y") == b"y"


def test_the_process_wide_host_is_replaced_after_it_is_closed(echo_wasm: Path) -> None:
    first = wasm.default_host()
    assert wasm.default_host() is first
    with wasm.WasmHost() as own:
        assert own is not first
    assert not first.closed
    with wasm.load(echo_wasm).instantiate() as instance:
        assert instance.call("echo", b"z") == b"z"


@in_child
def test_function_names_a_caller_makes_up_do_not_accumulate_in_the_host(call_path: str) -> None:
    dispatching = guest('(func (export "spear_dispatch") (result i32) (i32.const 0))')

    async def main() -> None:
        async with spear.WasmRuntime() as runtime:
            channel = (await runtime.start_instance("d", artifact=dispatching)).channel
            for n in range(3000):
                response = await channel.request_response(ExecutionRequest("r", f"f{n}", b""))
                assert response.ok
            session = channel.session
            assert len(session._guest.handlers) <= 1024  # type: ignore[union-attr]
            assert len(channel._fast_streak) <= 2048 and len(channel._needed) <= 1024

    asyncio.run(main())
    # A module without dispatch answers unknown names without listing thousands of handlers.
    many = "".join(f'(func (export "spear.handler.h{n}") (result i32) (i32.const 0))'
                   for n in range(500))
    with wasm.load(guest(many)).instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed, match=r"502 in all") as info:
            instance.call("nope" * 1000, b"")
        assert len(str(info.value)) < 2000
