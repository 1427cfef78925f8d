"""Handlers the Kubernetes/gRPC tests serve from worker subprocesses standing in for pods."""

from __future__ import annotations

import asyncio
import os

from spear.messages import ExecutionRequest


async def echo(request: ExecutionRequest) -> bytes:
    return request.input_data


async def slow(request: ExecutionRequest) -> bytes:
    """Sleeps for the number of milliseconds given as input, then answers `done`."""
    await asyncio.sleep(int(request.input_data or b"0") / 1000.0)
    return b"done"


async def whoami(request: ExecutionRequest) -> bytes:
    """Which worker answered: its pid, so tests can tell pods apart."""
    return str(os.getpid()).encode()


async def fail(request: ExecutionRequest) -> bytes:
    raise RuntimeError("handler failed on purpose")


def sync_echo(request: ExecutionRequest) -> bytes:
    return request.input_data


async def double(request: ExecutionRequest) -> bytes:
    """Twice the input: a reply larger than its request."""
    return request.input_data * 2
