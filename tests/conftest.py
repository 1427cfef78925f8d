"""Shared test fixtures: guest modules built with the real guest SDK (cached).

Against an installed host wheel (`.ci/run`) the guest SDK may be absent: the modules are then
taken prebuilt from wasm_fixtures/build/ (`just fixtures` builds them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_SOURCES = ROOT / "wasm_fixtures"
FIXTURE_BUILD = FIXTURE_SOURCES / "build"


def _guest_sdk() -> ModuleType | None:
    try:
        return importlib.import_module("spear_guest")
    except ModuleNotFoundError:
        return None


def build_fixture(name: str) -> Path:
    """Build wasm_fixtures/NAME.c into wasm_fixtures/build/NAME.wasm unless it is current."""
    sdk = _guest_sdk()
    if sdk is None:
        built = FIXTURE_BUILD / f"{name}.wasm"
        if not built.is_file():
            pytest.fail(f"{built} is missing and spear-guest is not installed to build it; "
                        "run `just fixtures` first", pytrace=False)
        return built
    path: Path = sdk.build_cached(FIXTURE_SOURCES / f"{name}.c", FIXTURE_BUILD)
    return path


@pytest.fixture(scope="session")
def wasm_fixture() -> Callable[[str], Path]:
    """`wasm_fixture("echo")` -> path of the built module."""
    return build_fixture


@pytest.fixture(scope="session")
def echo_wasm() -> Path:
    return build_fixture("echo")
