"""Asynchronous invocation: submit, result, cancel, bounded retention."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from spear import FunctionSpec, RuntimeType, Spearlet, Timeout
from spear.invocation.errors import (
    ExecutionCancelled,
    ExecutionNotFound,
    FunctionNotFound,
    QueueFull,
)
from spearlet_support import TESTS_DIR

SLOW = FunctionSpec(
    "slow", RuntimeType.PROCESS,
    command=[sys.executable, "-m", "spear.worker", "spearlet_handlers:slow"],
    env={"PYTHONPATH": os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH"))
                                       if p)},
)


@pytest.fixture
async def spearlet() -> AsyncIterator[Spearlet]:
    async with Spearlet(result_ttl_s=5.0, max_results=3) as made:
        await made.deploy(SLOW)
        yield made


async def test_submit_then_collect_the_result(spearlet: Spearlet) -> None:
    execution = spearlet.submit("slow", b"100")
    assert spearlet.execution_state(execution) == "pending"
    response = await spearlet.result(execution, timeout=5)
    assert response.ok and response.output_data == b"100"
    assert spearlet.execution_state(execution) == "succeeded"
    assert (await spearlet.result(execution)).output_data == b"100"  # can be read again


async def test_waiting_less_than_the_execution_takes_leaves_it_running(
    spearlet: Spearlet,
) -> None:
    execution = spearlet.submit("slow", b"300")
    with pytest.raises(Timeout, match="did not finish"):
        await spearlet.result(execution, timeout=0.05)
    assert spearlet.execution_state(execution) == "pending"
    assert (await spearlet.result(execution, timeout=5)).output_data == b"300"


async def test_cancel_stops_a_running_execution(spearlet: Spearlet) -> None:
    execution = spearlet.submit("slow", b"5000")
    await asyncio.sleep(0.05)
    assert spearlet.cancel(execution) is True
    with pytest.raises(ExecutionCancelled):
        await spearlet.result(execution, timeout=2)
    assert spearlet.execution_state(execution) == "cancelled"
    assert spearlet.cancel(execution) is False  # already over
    # The instance is free again at once: the worker was told to cancel.
    assert (await spearlet.invoke("slow", b"1", timeout=2)).ok


async def test_an_executions_own_failure_is_raised_by_result(spearlet: Spearlet) -> None:
    execution = spearlet.submit("slow", b"2000", timeout=0.1)
    with pytest.raises(Timeout):
        await spearlet.result(execution, timeout=5)
    assert spearlet.execution_state(execution) == "failed"


async def test_unknown_and_expired_executions_are_not_found(echo_wasm: Path) -> None:
    async with Spearlet(result_ttl_s=0.2) as spearlet:
        await spearlet.deploy(FunctionSpec("echo", RuntimeType.WASM, artifact=echo_wasm))
        with pytest.raises(ExecutionNotFound):
            await spearlet.result("nope")
        with pytest.raises(FunctionNotFound):
            spearlet.submit("missing", b"")
        execution = spearlet.submit("echo", b"1")
        assert (await spearlet.result(execution, timeout=5)).output_data == b"1"
        await asyncio.sleep(0.3)  # past result_ttl_s
        with pytest.raises(ExecutionNotFound, match="expired"):
            await spearlet.result(execution)


async def test_retention_is_bounded_in_count(spearlet: Spearlet) -> None:
    running = [spearlet.submit("slow", b"300") for _ in range(3)]
    with pytest.raises(QueueFull, match="still running"):
        spearlet.submit("slow", b"1")
    for execution in running:
        await spearlet.result(execution, timeout=5)
    newest = spearlet.submit("slow", b"1")  # makes room by dropping the oldest finished one
    with pytest.raises(ExecutionNotFound):
        await spearlet.result(running[0])
    assert (await spearlet.result(running[2])).ok
    assert (await spearlet.result(newest, timeout=5)).ok
