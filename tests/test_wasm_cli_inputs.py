"""`spear run` refuses loose options with one error line naming the option, before it compiles
anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(("option", "value"), [
    ("--timeout", "nan"), ("--timeout", "inf"), ("--timeout", "-1"), ("--timeout", "0"),
    ("--timeout", "1e11"), ("--memory-limit", "0"), ("--memory-limit", "99999999999"),
    ("--fuel", "0"), ("--fuel", "-3"),
])
def test_run_refuses_a_loose_option_naming_it(
    echo_wasm: Path, tmp_path: Path, option: str, value: str
) -> None:
    env = {**os.environ, "SPEAR_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "spear.cli.main", "run", str(echo_wasm), "--function", "echo",
         "--input", "x", option, value],
        capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("spear: error:") and option in line, line
    assert not (tmp_path / "cache").exists()  # refused before compiling
