"""Python handlers the factory, spearlet and serve tests run in worker subprocesses."""

from __future__ import annotations

import asyncio
import os

from spear.messages import ExecutionRequest


async def echo(request: ExecutionRequest) -> bytes:
    return request.input_data


async def tagged_echo(request: ExecutionRequest) -> bytes:
    """The input prefixed with this worker's pid, so tests can tell instances apart."""
    return f"{os.getpid()}:".encode() + request.input_data


async def slow(request: ExecutionRequest) -> bytes:
    """Sleeps for the number of milliseconds given as input, then answers it back."""
    await asyncio.sleep(int(request.input_data or b"0") / 1000.0)
    return request.input_data


async def fail(request: ExecutionRequest) -> bytes:
    raise RuntimeError("failed on purpose")


async def tagged_slow(request: ExecutionRequest) -> bytes:
    """Sleeps for the milliseconds given as input, then answers `pid:input`."""
    await asyncio.sleep(int(request.input_data or b"0") / 1000.0)
    return f"{os.getpid()}:".encode() + request.input_data


async def chatty(request: ExecutionRequest) -> bytes:
    """Prints a line to stdout and one to stderr (the host logs them), then echoes."""
    print(f"chatty says {request.input_data.decode(errors='replace')}", flush=True)
    print("chatty warns", file=__import__("sys").stderr, flush=True)
    return request.input_data


def flood_output(request: ExecutionRequest) -> bytes:
    """Writes one long line to stderr, then as many lines as the input says, as fast as it
    can."""
    import sys
    count = int(request.input_data or b"0")
    sys.stderr.write("L" * 40_000 + "\n")
    sys.stderr.write("flood line\n" * count)
    sys.stderr.flush()
    return b"%d" % count
