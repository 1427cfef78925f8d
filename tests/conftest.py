"""Shared test fixtures: guest modules built with the real guest SDK (cached)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_loops: run each async test on asyncio's loop and on uvloop")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item
                                  ) -> dict[str, Callable[[], Any]]:
    """asyncio's own loop for every test; uvloop as well for tests marked `both_loops`."""
    factories: dict[str, Callable[[], Any]] = {"asyncio": asyncio.new_event_loop}
    if item.get_closest_marker("both_loops") is not None:
        import uvloop

        factories["uvloop"] = uvloop.new_event_loop
    return factories
