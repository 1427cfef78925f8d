"""Helpers for the factory/spearlet/serve tests: worker subprocesses and free ports."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env() -> dict[str, str]:
    """The environment for a child that must import the tests' handler modules."""
    env = {key: value for key, value in os.environ.items() if key != "SPEAR_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH")) if p)
    return env


class Worker:
    """`spear worker --grpc ... --tcp ... HANDLER` in a child: a pod stand-in."""

    def __init__(self, handler: str, *, grpc: bool | str = True, tcp: bool = True,
                 token: str | None = None) -> None:
        self.token = token
        args = [sys.executable, "-m", "spear.cli.main", "worker"]
        if grpc:
            args += ["--grpc", grpc if isinstance(grpc, str) else "127.0.0.1:0"]
        if tcp:
            args += ["--tcp", "127.0.0.1:0"]
        self.args = [*args, handler]
        self.addresses: dict[str, str] = {}
        self.output: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 20.0) -> Worker:
        env = child_env()
        if self.token is not None:
            env["SPEAR_TOKEN"] = self.token
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, cwd=TESTS_DIR)
        ready = threading.Event()
        started = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                if line.startswith("spear-worker listening "):
                    kind, _, address = line.split()[-1].partition("=")
                    self.addresses[kind] = address
                if line.strip() == "spear-worker ready":
                    started.set()
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or not started.is_set():
            self.stop()
            raise RuntimeError(f"worker did not start: {''.join(self.output)}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `predicate` on the event loop until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


