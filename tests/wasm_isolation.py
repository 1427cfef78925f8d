"""Run a hostile-guest test in a child process, on one of the two WASM call paths.

A test decorated with `@in_child` runs its body in a separate process, so a guest that
crashes or hangs the host fails that one test with the signal or the time it took, instead of
taking the whole run down. Its arguments must be plain values (pytest fixtures resolved in the
parent: paths, strings, numbers). A test that takes `call_path` runs once per call path:
"native" (the compiled helper) and "python" (SPEAR_NO_NATIVE=1).

Starting an interpreter and importing wasmtime, spear and pytest takes most of a second, so
each call path has a fork server: a process that imports them once (and starts no thread, no
engine) and forks one child per test.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, ParamSpec

import pytest

HERE = Path(__file__).resolve().parent
IN_CHILD = "SPEAR_TEST_IN_CHILD"
CHILD_TIMEOUT = 60.0
CALL_PATHS = ["native", "python"]

P = ParamSpec("P")

# The fork server: one JSON request per line in, one JSON answer per line out.
_SERVER = r"""
import importlib, json, os, signal, sys, tempfile, time, traceback
sys.path.insert(0, sys.argv[1])
import pytest, wasmtime, spear, spear.wasm, hostile_guests  # imported once, before any fork

def child(request, output):
    os.dup2(output.fileno(), 1)
    os.dup2(output.fileno(), 2)
    code = 0
    try:
        test = getattr(importlib.import_module(request["module"]), request["name"])
        test.__wrapped__(**request["kwargs"])
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

for line in sys.stdin:
    request = json.loads(line)
    with tempfile.TemporaryFile() as output:
        pid = os.fork()
        if pid == 0:
            child(request, output)
        deadline = time.monotonic() + request["timeout"]
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                answer = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) \
                    else {"code": os.WEXITSTATUS(status)}
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                answer = {"hung": True}
                break
            time.sleep(0.005)
        output.seek(0)
        answer["output"] = output.read()[-6000:].decode("utf-8", "replace")
    print(json.dumps(answer), flush=True)
"""


class _ForkServer:
    def __init__(self, python_path: bool) -> None:
        # No compiled-module cache: hostile modules are one-offs, and nothing goes to HOME.
        env = {**os.environ, IN_CHILD: "1", "SPEAR_NO_MODULE_CACHE": "1"}
        if python_path:
            env["SPEAR_NO_NATIVE"] = "1"
        else:
            env.pop("SPEAR_NO_NATIVE", None)
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(HERE)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env, text=True)

    def run(self, module: str, name: str, kwargs: dict[str, Any],
            timeout: float) -> dict[str, Any]:
        stdin: IO[str] = self._process.stdin  # type: ignore[assignment]
        stdout: IO[str] = self._process.stdout  # type: ignore[assignment]
        stdin.write(json.dumps({"module": module, "name": name, "kwargs": kwargs,
                                "timeout": timeout}) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError("the test fork server died")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()


_servers: dict[bool, _ForkServer] = {}


def _server(python_path: bool) -> _ForkServer:
    server = _servers.get(python_path)
    if server is None or server._process.poll() is not None:
        server = _servers[python_path] = _ForkServer(python_path)
    return server


@atexit.register
def _stop_servers() -> None:
    for server in _servers.values():
        server.close()
    _servers.clear()


def run_in_child(module: str, name: str, kwargs: dict[str, Any], *, python_path: bool,
                 timeout: float = CHILD_TIMEOUT) -> None:
    arguments = {key: str(value) if isinstance(value, Path) else value
                 for key, value in kwargs.items()}
    answer = _server(python_path).run(module, name, arguments, timeout)
    output = answer["output"]
    if answer.get("hung"):
        pytest.fail(f"the host process hung: no result after {timeout} s\n{output}",
                    pytrace=False)
    if "signal" in answer:
        pytest.fail(f"the host process died of {signal.Signals(answer['signal']).name}\n"
                    f"{output}", pytrace=False)
    if answer["code"] != 0:
        pytest.fail(f"in the child process:\n{output}", pytrace=False)


def in_child(test: Callable[P, None]) -> Callable[P, None]:
    """Run `test` in a child process; with a `call_path` parameter, once per call path."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        if os.environ.get(IN_CHILD):  # already isolated
            test(*args, **kwargs)
            return
        run_in_child(test.__module__, test.__name__, dict(kwargs),
                     python_path=kwargs.get("call_path") == "python")

    if "call_path" in inspect.signature(test).parameters:
        marked: Callable[P, None] = pytest.mark.parametrize("call_path", CALL_PATHS)(run)
        return marked
    return run
