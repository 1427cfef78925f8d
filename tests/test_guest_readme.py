"""The examples in guest_sdk/README.md build and answer as the README says (so the
documentation cannot drift from the SDKs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import spear
from guest_support import build_source
from spear import wasm

pytestmark = pytest.mark.timeout(600)

README = Path(__file__).resolve().parents[1] / "guest_sdk" / "README.md"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def block_with(language: str, needle: str) -> str:
    matches = [b for b in code_blocks(language) if needle in b]
    assert len(matches) == 1, f"expected one {language} block with {needle!r}"
    return matches[0]


@pytest.mark.parametrize(
    ("language", "suffix", "needle"),
    [("c", ".c", "SPEAR_HANDLER(greet)"), ("rust", ".rs", "spear::handler!(greet)"),
     ("zig", ".zig", 'spear.handler("greet", greet)')],
)
def test_the_same_greet_function_in_each_language_answers_alike(
    tmp_path: Path, language: str, suffix: str, needle: str,
) -> None:
    module = build_source(tmp_path, f"greet{suffix}", block_with(language, needle))
    with wasm.load(module).instantiate() as instance:
        assert instance.call("greet", b"abc", metadata={"user": "ann"}) == b"hello, ann (3 bytes)"
        with pytest.raises(spear.ExecutionFailed) as exc:
            instance.call("greet", b"")
        assert (str(exc.value), exc.value.code) == ("missing 'user' metadata", "400")


@pytest.mark.parametrize(("language", "suffix"), [("rust", ".rs"), ("zig", ".zig")])
def test_the_echo_examples_build_and_echo(tmp_path: Path, language: str, suffix: str) -> None:
    source = block_with(language, "echo")
    if language == "rust":  # the example also names handlers it leaves to the reader
        source = source.replace('spear::handler!("get-user" => get_user);', "")
        source = source.replace("spear::dispatch!(route);", "")
    else:
        source = source.replace("spear.dispatch(route);", "")
    module = build_source(tmp_path, f"echo{suffix}", source)
    with wasm.load(module).instantiate() as instance:
        for n in (0, 5, 100_000):
            assert instance.call("echo", b"e" * n) == b"e" * n


def test_the_c_with_libc_example_builds_small_with_wasi_and_answers(tmp_path: Path) -> None:
    module = build_source(tmp_path, "hello.c", block_with("c", "SPEAR_HANDLER(hello)"),
                          wasi=True)
    assert module.stat().st_size < 64 * 1024
    with wasm.load(module).instantiate() as instance:
        assert instance.call("hello", b"world") == b"hello world"


def test_the_host_function_relay_example_passes_results_and_failures_on(tmp_path: Path) -> None:
    source = '#include "spear.h"\n' + block_with("c", "SPEAR_HANDLER(relay)")
    module = build_source(tmp_path, "relay.c", source)

    def transform(data: bytes) -> bytes:
        if data == b"boom":
            raise ValueError("transform failed")
        return data[::-1]

    with wasm.load(module, host_functions={"transform": transform}).instantiate() as instance:
        assert instance.call("relay", b"abc") == b"cba"
        with pytest.raises(spear.ExecutionFailed, match="transform failed") as info:
            instance.call("relay", b"boom")
        assert info.value.code == "host_function"
