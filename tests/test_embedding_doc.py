"""The Python examples of docs/embedding.md run as written (so the page cannot drift from the
API): every block, in order, in one namespace, from the checkout's root."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "embedding.md"


def test_every_python_example_of_the_embedding_page_runs(
    wasm_fixture: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    wasm_fixture("echo")
    wasm_fixture("host_call")
    monkeypatch.chdir(ROOT)
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) >= 7
    namespace: dict[str, object] = {}
    for number, block in enumerate(blocks, 1):
        code = compile(block, f"{PAGE.name} example {number}", "exec")
        exec(code, namespace)
