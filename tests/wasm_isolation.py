"""Run a hostile-guest test in a child process, on one of the two WASM call paths.

A test decorated with `@in_child` runs its body in a fresh interpreter (the same test module,
imported there), so a guest that crashes or hangs the host fails that one test with the
signal or the time it took, instead of taking the whole run down. Its arguments must be
plain values (pytest fixtures resolved in the parent: paths, strings, numbers). A test that
takes `call_path` runs once per call path: "native" (the compiled helper) and "python"
(SPEAR_NO_NATIVE=1).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec

import pytest

HERE = Path(__file__).resolve().parent
IN_CHILD = "SPEAR_TEST_IN_CHILD"
CHILD_TIMEOUT = 60.0
CALL_PATHS = ["native", "python"]

P = ParamSpec("P")

_RUNNER = """
import json, sys, importlib
sys.path.insert(0, sys.argv[1])
test = getattr(importlib.import_module(sys.argv[2]), sys.argv[3])
test.__wrapped__(**json.loads(sys.argv[4]))
"""


def run_in_child(module: str, name: str, kwargs: dict[str, Any], *, python_path: bool,
                 timeout: float = CHILD_TIMEOUT) -> None:
    # No compiled-module cache: hostile modules are one-offs, and nothing goes to HOME.
    env = {**os.environ, IN_CHILD: "1", "SPEAR_NO_MODULE_CACHE": "1"}
    if python_path:
        env["SPEAR_NO_NATIVE"] = "1"
    else:
        env.pop("SPEAR_NO_NATIVE", None)
    arguments = json.dumps({key: str(value) if isinstance(value, Path) else value
                            for key, value in kwargs.items()})
    try:
        done = subprocess.run(
            [sys.executable, "-c", _RUNNER, str(HERE), module, name, arguments],
            env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the host process hung: no result after {timeout} s\n"
                    f"{(exc.stderr or b'')[-3000:]!r}", pytrace=False)
    if done.returncode < 0:
        pytest.fail(f"the host process died of {signal.Signals(-done.returncode).name}\n"
                    f"{done.stderr[-3000:]}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"in the child process:\n{done.stderr[-4000:]}", pytrace=False)


def in_child(test: Callable[P, None]) -> Callable[P, None]:
    """Run `test` in a child process; with a `call_path` parameter, once per call path."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        if os.environ.get(IN_CHILD):  # already isolated (e.g. run through run_in_child)
            test(*args, **kwargs)
            return
        run_in_child(test.__module__, test.__name__, dict(kwargs),
                     python_path=kwargs.get("call_path") == "python")

    if "call_path" in inspect.signature(test).parameters:
        marked: Callable[P, None] = pytest.mark.parametrize("call_path", CALL_PATHS)(run)
        return marked
    return run
