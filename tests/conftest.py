"""Shared test fixtures: guest modules built with the real guest SDK (cached)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import spear_guest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_SOURCES = ROOT / "wasm_fixtures"
FIXTURE_BUILD = FIXTURE_SOURCES / "build"


def build_fixture(name: str) -> Path:
    """Build wasm_fixtures/NAME.c into wasm_fixtures/build/NAME.wasm unless it is current."""
    return spear_guest.build_cached(FIXTURE_SOURCES / f"{name}.c", FIXTURE_BUILD)


@pytest.fixture(scope="session")
def wasm_fixture() -> Callable[[str], Path]:
    """`wasm_fixture("echo")` -> path of the built module."""
    return build_fixture


@pytest.fixture(scope="session")
def echo_wasm() -> Path:
    return build_fixture("echo")
