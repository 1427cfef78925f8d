"""Log lines that callers cause are bounded: a flood of failing requests (or of malformed
ones) writes at most a burst plus a steady trickle, and what was held back is counted and
said in one summary line."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from front_door_support import (
    functions_table,
    http_port,
    post_request,
    read_response,
    running_server,
)
from spear.invocation import error_mapping
from spear.log_limit import DEFAULT_BURST, DEFAULT_RATE, LogLimiter

FLOOD = 600
CONNECTIONS = 6


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _records(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


def test_a_limiter_writes_a_burst_then_its_rate_and_counts_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    logger = logging.getLogger("spear.test.log_limit")
    limiter = LogLimiter(logger, "test lines", rate=2.0, burst=5, summary_interval=10.0,
                         clock=clock)
    with caplog.at_level(logging.INFO, logger=logger.name):
        allowed = [limiter.allow("a" if i % 2 else "b") for i in range(20)]
        assert allowed == [True] * 5 + [False] * 15
        assert limiter.suppressed == 15
        assert not _records(caplog, "log_lines_suppressed")  # not yet: interval not over
        clock.now += 1.0  # two tokens back: lines pass again; still no summary
        assert limiter.allow("a") and limiter.allow("a") and not limiter.allow("a")
        assert not _records(caplog, "log_lines_suppressed")
        clock.now += 9.0  # the interval since the first held line is over
        assert limiter.allow("a")
        (summary,) = _records(caplog, "log_lines_suppressed")
        assert summary.levelno == logging.WARNING
        assert summary.getMessage() == ("16 test lines not logged in the last 10 s "
                                        "(over 2 lines/s): a 9, b 7")
        clock.now += 10.0  # refilled to the burst, no more
        assert [limiter.allow("c") for _ in range(6)] == [True] * 5 + [False]
        assert len(_records(caplog, "log_lines_suppressed")) == 1  # nothing held since


def test_a_long_flood_is_summarised_every_interval_while_it_lasts(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    logger = logging.getLogger("spear.test.log_limit")
    limiter = LogLimiter(logger, "test lines", rate=1.0, burst=1, summary_interval=5.0,
                         clock=clock, level=logging.INFO)
    with caplog.at_level(logging.INFO, logger=logger.name):
        written = 0
        for _ in range(3000):  # 100 lines a second for 30 s
            clock.now += 0.01
            written += limiter.allow("flood")
        summaries = _records(caplog, "log_lines_suppressed")
        assert 28 <= written <= 32
        assert 5 <= len(summaries) <= 7  # one per 5 s, not one per line
        assert all(s.levelno == logging.INFO for s in summaries)
        counted = sum(int(s.getMessage().split(" ", 1)[0]) for s in summaries)
        assert counted <= limiter.suppressed == 3000 - written


def test_a_byte_bound_holds_back_long_lines_as_well(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    limiter = LogLimiter(logging.getLogger("spear.test.log_limit"), "test lines", rate=1000.0,
                         burst=1000, bytes_per_s=1000.0, burst_bytes=4000, clock=clock)
    assert [limiter.allow("long", 1500) for _ in range(3)] == [True, True, False]
    assert limiter.allow("short", 900) and not limiter.allow("short", 200)
    clock.now += 0.2  # 200 bytes back
    assert limiter.allow("short", 200) and not limiter.allow("short", 101)
    assert limiter.suppressed == 3


def test_guest_chosen_kinds_cannot_grow_the_summary(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    limiter = LogLimiter(logging.getLogger("spear.test.log_limit"), "test lines", rate=1.0,
                         burst=1, summary_interval=1.0, clock=clock)
    limiter.allow("first")
    for i in range(10_000):
        limiter.allow(f"kind-{i}")
    clock.now += 1.5
    with caplog.at_level(logging.INFO, logger="spear.test.log_limit"):
        limiter.allow("last")
    (summary,) = _records(caplog, "log_lines_suppressed")
    assert len(summary.getMessage()) < 1000
    assert "other" in summary.getMessage()


async def _flood(port: int, name: str, count: int) -> list[int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    statuses = []
    try:
        for _ in range(count):
            writer.write(post_request(name, b"x"))
            statuses.append((await asyncio.wait_for(read_response(reader), 10)).status)
    finally:
        writer.close()
    return statuses


async def test_a_flood_of_failing_requests_writes_a_bounded_number_of_lines(
        wasm_fixture: Callable[[str], Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spear.serve")
    async with running_server(functions_table(wasm_fixture)[:3]) as front:
        port = http_port(front)
        limiter = error_mapping._failure_lines[logging.WARNING]
        suppressed_before = limiter.suppressed
        started = time.monotonic()
        results = await asyncio.gather(*(_flood(port, "fail", FLOOD // CONNECTIONS)
                                         for _ in range(CONNECTIONS)))
        took = time.monotonic() - started
        assert [s for statuses in results for s in statuses] == [500] * FLOOD
        failed = [r for r in _records(caplog, "invoke_failed")
                  if getattr(r, "function", None) == "fail"]
        assert len(failed) <= DEFAULT_BURST + DEFAULT_RATE * took + 1, took
        assert len(failed) < FLOOD
        # What was held back is counted (and summarised once the interval is over).
        assert limiter.suppressed - suppressed_before == FLOOD - len(failed)
        summaries_before = len(_records(caplog, "log_lines_suppressed"))
    # The server said what it held back when it stopped, without waiting for the interval.
    summaries = _records(caplog, "log_lines_suppressed")[summaries_before:]
    assert [s for s in summaries if "failed invocations (server side)" in s.getMessage()], [
        s.getMessage() for s in summaries]


async def test_a_flood_of_malformed_requests_writes_a_bounded_number_of_lines(
        wasm_fixture: Callable[[str], Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spear.serve.http")
    async with running_server(functions_table(wasm_fixture)[:1]) as front:
        port = http_port(front)

        async def malformed() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"POST /functions/echo/invoke HTTP/1.1\r\nContent-Length: 1\r\n"
                             b"Content-Length: 2\r\n\r\nxy")
                assert (await asyncio.wait_for(read_response(reader), 10)).status == 400
            finally:
                writer.close()

        started = time.monotonic()
        for _ in range(10):
            await asyncio.gather(*(malformed() for _ in range(30)))
        took = time.monotonic() - started
        refused = _records(caplog, "http_refused")
        assert 0 < len(refused) <= DEFAULT_BURST + DEFAULT_RATE * took + 1, took
