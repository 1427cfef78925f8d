"""Options every `spear` subcommand shares: --version, -v and --log-level anywhere."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys

import pytest
import spear
from spear.cli.logging_options import log_level
from spear.cli.main import build_parser


def test_spear_version_names_the_package_wasmtime_and_the_call_path() -> None:
    done = subprocess.run([sys.executable, "-m", "spear.cli.main", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"spear {spear.__version__} (wasmtime 50.")
    assert "WASM call path: native helper" in done.stdout


def test_the_package_version_is_the_distributions() -> None:
    from importlib.metadata import version

    assert spear.__version__ == version("spear-host")


def parsed(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("command", [
    ["run", "m.wasm", "--function", "f"],
    ["inspect", "m.wasm"],
    ["serve"],
    ["invoke", "echo"],
    ["worker"],
    ["k8s", "manifest", "--function", "f", "--image", "i"],
])
def test_verbosity_and_log_level_are_accepted_after_every_subcommand(command: list[str]) -> None:
    assert log_level(parsed(*command)) == logging.WARNING
    assert log_level(parsed(*command, "-v")) == logging.INFO
    assert log_level(parsed(*command, "-vv")) == logging.DEBUG
    assert log_level(parsed("-v", *command, "-v")) == logging.DEBUG
    assert log_level(parsed(*command, "--log-level", "error")) == logging.ERROR
    assert log_level(parsed("--log-level", "debug", *command)) == logging.DEBUG
    # A subcommand that does not repeat the option leaves the top-level value alone.
    assert log_level(parsed("--log-level", "error", *command, "-v")) == logging.ERROR


def test_an_unknown_log_level_is_refused_with_the_choices(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parsed("inspect", "m.wasm", "--log-level", "loud")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "DEBUG, INFO, WARNING, ERROR, CRITICAL" in err and "'loud'" in err
