"""Shared test fixtures: guest modules built with the real guest SDK (cached).

Against an installed host wheel (`.ci/run`) the guest SDK may be absent: the modules are then
taken prebuilt from wasm_fixtures/build/ (`just fixtures` builds them).
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_SOURCES = ROOT / "wasm_fixtures"
FIXTURE_BUILD = FIXTURE_SOURCES / "build"


def _guest_sdk() -> ModuleType | None:
    try:
        return importlib.import_module("spear_guest")
    except ModuleNotFoundError:
        return None


GUEST_SUFFIXES = (".c", ".rs", ".zig")


def fixture_source(name: str) -> Path:
    """`echo` -> wasm_fixtures/echo.c; `echo.rs`, `echo.zig` name their language."""
    return FIXTURE_SOURCES / (name if Path(name).suffix in GUEST_SUFFIXES else f"{name}.c")


def prebuilt_fixture(name: str) -> Path:
    """Where `just fixtures` puts it: echo.c -> echo.wasm, echo.rs -> echo.rs.wasm."""
    src = fixture_source(name)
    return FIXTURE_BUILD / (f"{src.stem}.wasm" if src.suffix == ".c" else f"{src.name}.wasm")


def toolchains_required() -> bool:
    """In CI (.ci/run sets it) a missing guest toolchain fails a test instead of skipping it."""
    return os.environ.get("SPEAR_REQUIRE_TOOLCHAINS") == "1"


def build_fixture(name: str) -> Path:
    """Build wasm_fixtures/NAME.c (or NAME.rs, NAME.zig when named so) into
    wasm_fixtures/build/ unless it is current."""
    sdk = _guest_sdk()
    if sdk is None:
        built = prebuilt_fixture(name)
        if not built.is_file():
            pytest.fail(f"{built} is missing and spear-guest is not installed to build it; "
                        "run `just fixtures` first", pytrace=False)
        return built
    try:
        path: Path = sdk.build_cached(fixture_source(name), FIXTURE_BUILD)
    except sdk.ToolchainMissing as exc:
        if toolchains_required():
            raise
        pytest.skip(f"{name}: {exc} ({exc.hint})")
    return path


@pytest.fixture(scope="session")
def wasm_fixture() -> Callable[[str], Path]:
    """`wasm_fixture("echo")` -> path of the built module."""
    return build_fixture


@pytest.fixture(scope="session")
def echo_wasm() -> Path:
    return build_fixture("echo")


@pytest.fixture(scope="session", autouse=True)
def _guest_cache_outside_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """spear-guest keeps its compiled Rust crate in a per-session directory, not in HOME."""
    os.environ.setdefault("SPEAR_GUEST_CACHE_DIR", str(tmp_path_factory.mktemp("guest-cache")))


@pytest.fixture(scope="session", autouse=True)
def _module_cache_outside_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The host's compiled-module cache, for this run and its child processes, not in HOME."""
    os.environ.setdefault("SPEAR_CACHE_DIR", str(tmp_path_factory.mktemp("module-cache")))


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
