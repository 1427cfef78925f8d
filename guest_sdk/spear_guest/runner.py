"""Run one compiler process: bounded in time, its output kept whole, progress reported."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from spear_guest.errors import BuildError

__all__ = ["COMPILE_TIMEOUT_S", "Finished", "run_compiler"]

log = logging.getLogger("spear_guest")

COMPILE_TIMEOUT_S = 600.0
#: Say "still compiling" after this long, then every PROGRESS_EVERY_S.
PROGRESS_AFTER_S = 3.0
PROGRESS_EVERY_S = 15.0


@dataclass(frozen=True)
class Finished:
    returncode: int
    output: str  # stderr then stdout, whole


def run_compiler(
    command: Sequence[str],
    *,
    src: Path,
    what: str,
    slow_hint: str = "",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = COMPILE_TIMEOUT_S,
) -> Finished:
    """Run ``command``; log progress at INFO while it runs longer than a few seconds (with
    ``slow_hint`` saying why it may be slow). Raises BuildError when it cannot start or
    times out; the caller judges the return code."""
    try:
        proc = subprocess.Popen(
            list(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=None if env is None else {**os.environ, **env},
            cwd=cwd,
        )
    except OSError as exc:
        raise BuildError(f"{src}: cannot run {command[0]}: {exc}", src=src) from exc
    start = time.monotonic()
    wait = min(PROGRESS_AFTER_S, timeout)
    reported = False
    while True:
        try:
            out, err = proc.communicate(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            elapsed = time.monotonic() - start
            if elapsed >= timeout:
                proc.kill()
                proc.communicate()
                raise BuildError(
                    f"{src}: {what} timed out after {timeout:.0f}s", src=src
                ) from None
            if not reported and slow_hint:
                log.info("%s: %s, still running after %.0f s (%s)", src, what, elapsed, slow_hint)
            else:
                log.info("%s: %s, still running after %.0f s", src, what, elapsed)
            reported = True
            wait = min(PROGRESS_EVERY_S, max(0.1, timeout - elapsed))
    if reported:
        log.info("%s: %s finished after %.1f s", src, what, time.monotonic() - start)
    output = (err or "") + (out or "")
    return Finished(proc.returncode, output)
