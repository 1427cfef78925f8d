"""Worker subprocesses standing in for pods, for the Kubernetes and gRPC tests."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class PodWorker:
    """`spear worker ...` in a child process; `start()` waits for its listening lines."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 prefix: list[str] | None = None) -> None:
        self.args = list(args)
        self.env = env or {}
        self.prefix = prefix or []
        self.proc: subprocess.Popen[str] | None = None
        self.addresses: dict[str, str] = {}
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []

    def start(self, timeout: float = 15.0) -> PodWorker:
        env = {key: value for key, value in os.environ.items() if key != "SPEAR_TOKEN"}
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
        env.update(self.env)
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "spear.cli.main", "worker", *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            cwd=TESTS_DIR,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise TimeoutError(f"worker did not start: {self.output}") from None
            if line is None:
                raise RuntimeError(f"worker exited: {''.join(self.output)}")
            if line.startswith("spear-worker listening "):
                kind, _, address = line.split()[-1].partition("=")
                self.addresses[kind] = address
            if line.strip() == "spear-worker ready":
                return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    @property
    def grpc(self) -> str:
        return self.addresses["grpc"]

    @property
    def tcp(self) -> str:
        return self.addresses["tcp"]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def __enter__(self) -> PodWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
