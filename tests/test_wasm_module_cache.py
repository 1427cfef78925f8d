"""The on-disk cache of compiled modules ($SPEAR_CACHE_DIR): written once, private, reused,
self-healing when damaged, and never used from a directory others can write."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from spear import wasm

Fixture = Callable[[str], Path]

HOST: list[wasm.WasmHost] = []


@pytest.fixture(autouse=True)
def host() -> Iterator[wasm.WasmHost]:
    """A host of its own per test, so every load starts with no compiled module in memory."""
    owned = wasm.WasmHost()
    HOST.append(owned)
    yield owned
    HOST.remove(owned)
    owned.close()


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache directory (not yet created)."""
    directory = tmp_path / "cache" / "modules"
    monkeypatch.setenv("SPEAR_CACHE_DIR", str(directory))
    monkeypatch.delenv("SPEAR_NO_MODULE_CACHE", raising=False)
    return directory


def forget_compiled() -> None:
    """Drop the compiled modules kept in memory so the next load has to use the disk."""
    HOST[-1].modules.clear()


def entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.cwasm")) if directory.exists() else []


def load(path_or_bytes: Path | bytes, **kw: int) -> wasm.WasmModule:
    return HOST[-1].load(path_or_bytes, **kw)


def works(path_or_bytes: Path | bytes, **kw: int) -> bool:
    with load(path_or_bytes, **kw).instantiate() as instance:
        return instance.call("echo", b"cached?") == b"cached?"


def test_first_load_writes_one_compiled_file_in_a_private_directory(
    cache_dir: Path, echo_wasm: Path
) -> None:
    assert works(echo_wasm)
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    [entry] = entries(cache_dir)
    assert entry.stat().st_size > 0
    assert stat.S_IMODE(entry.stat().st_mode) & 0o077 == 0
    assert not list(cache_dir.glob(".tmp-*"))  # written atomically, nothing left behind


def test_second_load_deserialises_the_cached_file(cache_dir: Path, echo_wasm: Path) -> None:
    assert works(echo_wasm)
    [entry] = entries(cache_dir)
    before = entry.stat()
    forget_compiled()
    assert works(echo_wasm)
    assert entries(cache_dir) == [entry]
    after = entry.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino, before.st_mtime_ns, before.st_size)


def test_loading_from_bytes_uses_the_same_entry_as_loading_from_the_path(
    cache_dir: Path, echo_wasm: Path
) -> None:
    assert works(echo_wasm)
    forget_compiled()
    assert works(echo_wasm.read_bytes())
    assert len(entries(cache_dir)) == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_damaged_cache_entry_is_recompiled_and_replaced(
    cache_dir: Path, echo_wasm: Path, damage: str
) -> None:
    assert works(echo_wasm)
    [entry] = entries(cache_dir)
    good = entry.read_bytes()
    bad = {
        "garbage": b"\x7fELF this is not a compiled module" * 100,
        "truncated": good[: len(good) // 2],
        "empty": b"",
    }[damage]
    entry.write_bytes(bad)
    forget_compiled()
    assert works(echo_wasm)
    [replaced] = entries(cache_dir)
    assert replaced == entry
    assert entry.read_bytes() != bad
    assert len(entry.read_bytes()) > 0
    # The replacement is a good entry: the next load uses it as is.
    written = entry.stat()
    forget_compiled()
    assert works(echo_wasm)
    assert entry.stat().st_mtime_ns == written.st_mtime_ns


def test_cache_dir_writable_by_others_is_not_used(
    cache_dir: Path, echo_wasm: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache_dir.mkdir(parents=True)
    cache_dir.chmod(0o777)
    caplog.set_level(logging.WARNING, logger="spear.wasm.cache")
    assert works(echo_wasm)
    assert entries(cache_dir) == []
    warnings = [r for r in caplog.records
                if r.name == "spear.wasm.cache" and r.levelno >= logging.WARNING]
    assert warnings and "not private" in warnings[0].getMessage()


def test_planted_entry_in_a_cache_dir_writable_by_others_is_never_loaded(
    cache_dir: Path, echo_wasm: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert works(echo_wasm)
    [entry] = entries(cache_dir)
    cache_dir.chmod(0o777)
    entry.write_bytes(b"planted by someone else")
    forget_compiled()
    caplog.set_level(logging.WARNING, logger="spear.wasm.cache")
    assert works(echo_wasm)
    assert entry.read_bytes() == b"planted by someone else"  # neither read nor rewritten
    assert any("not private" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the directory to another user")
def test_cache_dir_owned_by_another_user_is_not_used(
    cache_dir: Path, echo_wasm: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache_dir.mkdir(parents=True, mode=0o700)
    os.chown(cache_dir, 65534, -1)
    caplog.set_level(logging.WARNING, logger="spear.wasm.cache")
    assert works(echo_wasm)
    assert entries(cache_dir) == []
    assert any("not private" in r.getMessage() for r in caplog.records)


def test_unusable_cache_location_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, echo_wasm: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    monkeypatch.setenv("SPEAR_CACHE_DIR", str(blocker / "modules"))
    caplog.set_level(logging.WARNING, logger="spear.wasm.cache")
    assert works(echo_wasm)
    assert any("unusable" in r.getMessage() for r in caplog.records)


def test_no_module_cache_setting_writes_nothing(
    cache_dir: Path, echo_wasm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPEAR_NO_MODULE_CACHE", "1")
    assert works(echo_wasm)
    assert not cache_dir.exists()


def test_each_module_and_engine_configuration_gets_its_own_entry(
    cache_dir: Path, echo_wasm: Path, wasm_fixture: Fixture
) -> None:
    assert works(echo_wasm)
    assert works(echo_wasm, fuel=1_000_000)  # fuel metering changes the compiled code
    assert works(echo_wasm, memory_limit=4 << 20)  # a store limit: same code, same entry
    assert len(entries(cache_dir)) == 2
    load(wasm_fixture("multi"))
    assert len(entries(cache_dir)) == 3
    forget_compiled()
    assert works(echo_wasm, fuel=1_000_000)
    assert len(entries(cache_dir)) == 3
