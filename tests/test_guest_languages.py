"""The fixtures written in C, Rust and Zig (wasm_fixtures/echo.*, greet.*) give the same
answers through the embedding API (`spear.wasm`), through `spear.WasmRuntime`, and through
the oracle host (wasmtime-py, independent of ours)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import spear
from guest_oracle import Host, new_engine
from spear import ExecutionRequest, ExecutionStatus, wasm

pytestmark = pytest.mark.timeout(300)

Fixture = Callable[[str], Path]
FIXTURES = Path(__file__).resolve().parents[1] / "wasm_fixtures"
LANGUAGES = {"c": "", "rust": ".rs", "zig": ".zig"}
# 0 B to 1 MiB, around the initial 16 KiB request buffer and the 64 KiB page
SIZES = [0, 1, 63, 64, 4095, 4096, 16 * 1024 - 4, 16 * 1024, 65535, 65536, 65537,
         (1 << 20) - 1, 1 << 20]


def fixture_name(stem: str, language: str) -> str:
    return f"{stem}{LANGUAGES[language]}"


def payload(n: int) -> bytes:
    return bytes((i * 7 + 3) % 256 for i in range(n))


@pytest.fixture(params=list(LANGUAGES))
def language(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
async def runtime() -> AsyncIterator[Any]:
    async with spear.WasmRuntime() as rt:
        yield rt


# -- echo --------------------------------------------------------------------------------------


def test_echo_returns_every_size_exactly_through_the_embedding_api(
    wasm_fixture: Fixture, language: str
) -> None:
    module = wasm.load(wasm_fixture(fixture_name("echo", language)))
    with module.instantiate() as instance:
        for n in SIZES:
            assert instance.call("echo", payload(n)) == payload(n), n
        for n in reversed(SIZES):  # shrinking again after the buffer grew
            assert instance.call("echo", payload(n)) == payload(n), n


async def test_echo_returns_every_size_exactly_through_the_wasm_runtime(
    runtime: Any, wasm_fixture: Fixture, language: str
) -> None:
    instance = await runtime.start_instance(
        f"echo-{language}", artifact=wasm_fixture(fixture_name("echo", language))
    )
    for i, n in enumerate(SIZES):
        response = await instance.channel.request_response(
            ExecutionRequest(f"r{i}", "echo", payload(n)), timeout=30
        )
        assert response.status == ExecutionStatus.SUCCESS
        assert response.output_data == payload(n), n


def test_echo_is_zero_copy_for_every_size_in_the_oracle_host(
    wasm_fixture: Fixture, language: str
) -> None:
    h = Host(new_engine(), wasm_fixture(fixture_name("echo", language)))
    for n in SIZES:
        assert h.call("echo", payload(n)) == (0, payload(n), 0), n
        assert h.last["out_ptr"] == h.last["input_ptr"], n


# -- greet: metadata, errors, host calls -------------------------------------------------------


def test_greet_answers_the_same_in_every_language_through_the_embedding_api(
    wasm_fixture: Fixture, language: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="spear.guest")
    with wasm.load(wasm_fixture(fixture_name("greet", language))).instantiate() as instance:
        assert instance.call("greet", b"abc", metadata={"user": "ann"}) == b"hello, ann (3 bytes)"
        assert [r.getMessage() for r in caplog.records if r.name == "spear.guest"] == [
            "greeting ann"
        ]
        with pytest.raises(spear.ExecutionFailed) as missing:
            instance.call("greet", b"abc")
        assert (str(missing.value), missing.value.code) == ("missing 'user' metadata", "400")
        meta = {"a": "1", "trace-id": "xyz", "empty": "", "ü": "ß"}
        expected = "a=1\ntrace-id=xyz\nempty=\nü=ß\n".encode()
        assert instance.call("meta", b"", metadata=meta) == expected
        assert instance.call("meta", b"") == b""
        with pytest.raises(spear.ExecutionFailed) as failed:
            instance.call("fail", b"boom")
        assert (str(failed.value), failed.value.code) == ("failed on purpose: boom", "42")
        assert int(instance.call("clock", b"")) > 0


async def test_greet_messages_go_both_ways_through_the_wasm_runtime(
    runtime: Any, wasm_fixture: Fixture, language: str
) -> None:
    instance = await runtime.start_instance(
        f"greet-{language}", artifact=wasm_fixture(fixture_name("greet", language))
    )
    channel = instance.channel
    response = await channel.request_response(
        ExecutionRequest("g1", "greet", b"hi", metadata={"user": "bo"}), timeout=30
    )
    assert response.status == ExecutionStatus.SUCCESS
    assert response.output_data == b"hello, bo (2 bytes)"
    sent = await asyncio.wait_for(channel.receive(), 5)
    assert isinstance(sent, ExecutionRequest)
    assert (sent.function_name, sent.input_data) == ("greeted", b"bo")
    await channel.send(ExecutionRequest("m1", "news", b"fresh"))
    await channel.send(ExecutionRequest("m2", "big", b"z" * 5000))  # past the first buffers
    pulled = await channel.request_response(ExecutionRequest("p", "pull", b""), timeout=30)
    assert pulled.output_data == b"news=fresh;big=" + b"z" * 5000 + b";"
    failed = await channel.request_response(ExecutionRequest("f", "fail", b"x"), timeout=30)
    assert failed.status == ExecutionStatus.ERROR
    assert (failed.error_message, failed.error_code) == ("failed on purpose: x", "42")
    missing = await channel.request_response(ExecutionRequest("m", "greet", b""), timeout=30)
    assert (missing.status, missing.error_code) == (ExecutionStatus.ERROR, "400")


def test_greet_answers_the_same_in_the_oracle_host(
    wasm_fixture: Fixture, language: str
) -> None:
    h = Host(new_engine(), wasm_fixture(fixture_name("greet", language)), outbox_limit=1)
    assert h.call("greet", b"x", [("user", "zé")]) == (0, "hello, zé (1 bytes)".encode(), 0)
    assert h.logs == [(2, "greeting zé")]
    assert h.outbox == [(b"greeted", "zé".encode())]
    # the outbox is full now: the host call's error becomes an application error
    assert h.call("greet", b"", [("user", "al")]) == (1, b"send failed: code -2", 2)
    h.inbox = [(b"t" * 100, b"d" * 3000), (b"", b"")]
    assert h.call("pull") == (0, b"t" * 100 + b"=" + b"d" * 3000 + b";=;", 0)
    h.clock = 2**63 - 1
    assert h.call("clock") == (0, str(2**63 - 1).encode(), 0)


@pytest.mark.parametrize("opt", ["Debug", "ReleaseSafe", "ReleaseSmall", "3"])
def test_every_optimisation_level_gives_the_same_answers(
    tmp_path: Path, language: str, opt: str
) -> None:
    from guest_support import build_source

    greet = FIXTURES / f"greet{LANGUAGES[language] or '.c'}"
    module = build_source(tmp_path, greet.name, greet.read_text(), opt=opt)
    h = Host(new_engine(), module)
    assert h.call("greet", b"abc", [("user", "ann")]) == (0, b"hello, ann (3 bytes)", 0)
    assert h.call("fail", b"x") == (1, b"failed on purpose: x", 42)
    assert h.call("meta", b"", [("k", "v")]) == (0, b"k=v\n", 0)
    value = "v" * 100_000  # past the first request buffer: spear_reserve grows it
    assert h.call("meta", b"", [("big", value)]) == (0, f"big={value}\n".encode(), 0)


def test_debug_info_is_stripped_by_default_and_kept_with_debug(
    tmp_path: Path, language: str
) -> None:
    from guest_support import build_source, wasm_sections

    greet = FIXTURES / f"greet{LANGUAGES[language] or '.c'}"
    plain = build_source(tmp_path, greet.name, greet.read_text())
    sections = wasm_sections(plain.read_bytes())
    assert "name" in sections  # traps name their functions
    assert not [s for s in sections if s.startswith(".debug")]
    debug = build_source(tmp_path, greet.name, greet.read_text(), debug=True)
    assert ".debug_info" in wasm_sections(debug.read_bytes())


def test_build_all_builds_the_fixtures_of_every_language(tmp_path: Path) -> None:
    import subprocess
    import sys

    from guest_support import toolchains_required

    proc = subprocess.run(
        [sys.executable, "-m", "spear_guest", "build-all", str(FIXTURES), "-o", str(tmp_path),
         *([] if toolchains_required() else ["--skip-unavailable"])],
        capture_output=True, text=True, check=False, timeout=280,
    )
    assert proc.returncode == 0, proc.stderr
    built = {p.name for p in tmp_path.glob("*.wasm")}
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("skipped ")]
    expected = {"echo.wasm", "echo.zig.wasm", "greet.wasm", "greet.zig.wasm"}
    if not skipped:
        expected |= {"echo.rs.wasm", "greet.rs.wasm"}
    assert expected <= built
    assert proc.stdout.splitlines()[-1].startswith(f"{len(built)} built, 0 up to date")


# -- host_call: Python host functions and configuration ----------------------------------------


def test_host_functions_and_config_answer_the_same_in_every_language(
    wasm_fixture: Fixture, language: str
) -> None:
    def transform(data: bytes) -> bytes:
        if data == b"boom":
            raise ValueError("transform says boom")
        return data.upper()

    module = wasm.load(wasm_fixture(fixture_name("host_call", language)),
                       host_functions={"transform": transform},
                       config={"k": "value", "empty": ""})
    with module.instantiate() as instance:
        assert instance.call("relay", b"abc") == b"ABC"
        big = payload(300_000)  # past the first buffer: held and fetched again
        assert instance.call("relay", big) == big.upper()
        with pytest.raises(spear.ExecutionFailed, match="transform says boom") as failed:
            instance.call("relay", b"boom")
        assert failed.value.code == "host_function"
        assert isinstance(failed.value.__cause__, ValueError)
        assert instance.call("relay", b"next") == b"NEXT"
        assert instance.call("config", b"k") == b"value"
        assert instance.call("config", b"empty") == b""
        with pytest.raises(spear.ExecutionFailed) as absent:
            instance.call("config", b"absent")
        assert absent.value.error_code == 404
    bare = wasm.load(wasm_fixture(fixture_name("host_call", language)))
    with bare.instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed) as missing:
            instance.call("relay", b"x")
        assert missing.value.error_code == 404
