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


def token_probe(request: ExecutionRequest) -> bytes:
    """What a handler (and a child it starts) can see of SPEAR_TOKEN: `env=...`,
    `proc=...` (the value in /proc/self/environ) and `child=...` (in a child's environment).
    """
    import subprocess
    import sys

    seen = os.environ.get("SPEAR_TOKEN", "")
    with open("/proc/self/environ", "rb") as raw:
        entries = raw.read().split(b"\0")
    in_proc = b"".join(e.partition(b"=")[2] for e in entries if e.startswith(b"SPEAR_TOKEN="))
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('SPEAR_TOKEN', ''))"],
        capture_output=True, text=True, check=True).stdout.strip()
    return f"env={seen}|proc={in_proc.decode(errors='replace')}|child={child}".encode()
