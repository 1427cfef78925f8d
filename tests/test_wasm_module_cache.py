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
from wasm_isolation import in_child

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


# ------------------------------------------------------------------ entries that must not run
#
# Each case runs in a child process: were a damaged entry deserialized, the host could crash.


def _entry_pair(directory: Path) -> tuple[Path, Path]:
    [code] = entries(directory)
    return code, code.with_suffix(".digest")


DAMAGES = ["flipped_bytes", "other_modules_entry", "other_modules_code_only", "symlink",
           "hard_link", "fifo", "readable_by_others", "no_digest", "directory",
           "digest_of_another_engine"] + (["owned_by_another_user"] if os.geteuid() == 0 else [])


@in_child
@pytest.mark.parametrize("damage", DAMAGES)
def test_an_entry_that_is_not_exactly_ours_is_never_deserialized_and_is_replaced(
    damage: str, echo_wasm: str, multi_wasm: str, tmp_dir: str,
) -> None:
    import logging
    import shutil

    logging.basicConfig(level=logging.WARNING)
    directory = Path(tmp_dir) / "modules"
    os.environ["SPEAR_CACHE_DIR"] = str(directory)
    os.environ.pop("SPEAR_NO_MODULE_CACHE", None)
    other_dir = Path(tmp_dir) / "other"
    with wasm.WasmHost() as host:
        host.load(Path(multi_wasm), cache_dir=other_dir)
        host.load(Path(multi_wasm), fuel=1000, cache_dir=other_dir / "fuel")
    [other_code] = entries(other_dir)
    other_digest = other_code.with_suffix(".digest")
    with wasm.WasmHost() as host:
        host.load(Path(echo_wasm))
    code, digest = _entry_pair(directory)
    if damage == "flipped_bytes":
        data = bytearray(code.read_bytes())
        for offset in range(64, len(data), 97):
            data[offset] ^= 0xFF
        code.write_bytes(bytes(data))
    elif damage == "other_modules_entry":
        shutil.copyfile(other_code, code)
        shutil.copyfile(other_digest, digest)
    elif damage == "other_modules_code_only":
        shutil.copyfile(other_code, code)
    elif damage == "symlink":
        code.unlink()
        code.symlink_to(other_code)
        digest.unlink()
        digest.symlink_to(other_digest)
    elif damage == "hard_link":
        code.unlink()
        os.link(other_code, code)
    elif damage == "fifo":
        code.unlink()
        os.mkfifo(code, 0o600)
    elif damage == "readable_by_others":
        code.chmod(0o644)
    elif damage == "no_digest":
        digest.unlink()
    elif damage == "directory":
        code.unlink()
        code.mkdir()
    elif damage == "owned_by_another_user":
        os.chown(code, 65534, -1)
    elif damage == "digest_of_another_engine":
        [fuel_code] = entries(other_dir / "fuel")
        shutil.copyfile(fuel_code.with_suffix(".digest"), digest)
    with wasm.WasmHost() as host:
        module = host.load(Path(echo_wasm))
        assert module.handlers == ["echo"]  # this module's code, not the planted one
        with module.instantiate() as instance:
            assert instance.call("echo", b"the right code") == b"the right code"
    if damage != "directory":  # a directory is not ours to remove; the entry stays unused
        code, digest = _entry_pair(directory)
        assert code.is_file() and not code.is_symlink() and code.stat().st_nlink == 1
        assert stat.S_IMODE(code.stat().st_mode) == 0o600
    assert other_code.read_bytes() and other_code.stat().st_nlink >= 1  # the other one intact
    # And the next load of the (re)written entry uses it.
    with wasm.WasmHost() as host, host.load(Path(echo_wasm)).instantiate() as instance:
        assert instance.call("echo", b"again") == b"again"


@pytest.fixture
def multi_wasm(wasm_fixture: Fixture) -> Path:
    return wasm_fixture("multi")


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Path:
    return tmp_path


def test_the_cache_stays_within_its_byte_bound(cache_dir: Path, wasm_fixture: Fixture) -> None:
    names = ["echo", "multi", "metadata", "sender", "logger", "trap", "spin", "recursion"]
    with wasm.WasmHost(cache_max_bytes=60_000) as host:
        for name in names:
            host.load(wasm_fixture(name))
        total = sum(p.stat().st_size for p in cache_dir.iterdir())
        assert total <= 60_000 + 4096, total
        assert 1 <= len(entries(cache_dir)) < len(names)
        # Pruned or not, every module still loads (from the cache or compiled again).
        for name in names:
            assert host.load(wasm_fixture(name)).handlers
