"""`spear serve` runs WASI commands and hands WASM functions their configuration and WASI
options from its config file (a real server process, real HTTP)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import wasi_commands
from test_serve import ServeProcess, post


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           wasm_fixture: Callable[[str], Path]) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("serve-bindings")
    (root / "tool.wasm").write_bytes(wasi_commands.ENV_AND_STDIN)
    (root / "data").mkdir()
    (root / "spear.toml").write_text(f"""
[server]
http = "127.0.0.1:0"
grpc = false

[[functions]]
name = "tool"
runtime = "wasm"
artifact = "tool.wasm"
[functions.wasi]
env = {{ WHO = "serve" }}

[[functions]]
name = "failing-tool"
runtime = "wasm"
artifact = "tool.wasm"
wasi = {{ args = ["1", "2", "3"], stderr = "discard" }}

[[functions]]
name = "config"
runtime = "wasm"
artifact = {json.dumps(str(wasm_fixture("host_call")))}
config = {{ region = "eu", empty = "" }}
[functions.limits]
loop_budget_ms = 2.5
""")
    process = ServeProcess("--config", str(root / "spear.toml")).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, "".join(process.output)


def test_serve_runs_a_wasi_command_with_its_wasi_options(server: ServeProcess) -> None:
    status, body, _ = post(server, "tool", b"over http")
    assert (status, body) == (200, b"WHO=serve\nover http")


def test_serve_reports_a_command_exit_status(server: ServeProcess) -> None:
    status, body, headers = post(server, "failing-tool", b"")
    assert status == 500 and b"exited with code 3" in body
    assert headers["X-Spear-Error-Code"] == "exit:3"


def test_serve_hands_functions_their_configuration(server: ServeProcess) -> None:
    assert post(server, "config", b"region")[:2] == (200, b"eu")
    assert post(server, "config", b"empty")[:2] == (200, b"")
    status, body, headers = post(server, "config", b"absent")
    assert status == 500 and b"no such configuration key" in body
    assert headers["X-Spear-Error-Code"] == "404"
