"""Native code is loaded only from files no other user can have written: libwasmtime from the
wasmtime package, the fast-call helper from this package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import spear
import wasmtime
from spear.native_trust import UntrustedFile, check_native_library
from spear.transport.wasm import capi


def fake_package(root: Path) -> tuple[Path, Path]:
    package = root / "pkg"
    (package / "native").mkdir(parents=True)
    library = package / "native" / "lib.so"
    library.write_bytes(b"\x7fELF not really")
    for path in (root, package, package / "native"):
        path.chmod(0o755)
    library.chmod(0o644)
    return package, library


def test_the_loaded_libwasmtime_is_the_wasmtime_packages_own_and_passes() -> None:
    package = Path(wasmtime.__file__).resolve().parent
    assert capi._LIBRARY.is_relative_to(package)
    assert check_native_library(capi._LIBRARY, package, "libwasmtime") == capi._LIBRARY


def test_a_trusted_library_passes(tmp_path: Path) -> None:
    package, library = fake_package(tmp_path)
    assert check_native_library(library, package, "lib") == library.resolve()


@pytest.mark.parametrize("where", ["file", "its directory", "the package", "above it"])
@pytest.mark.parametrize("mode", [0o020, 0o002])
def test_a_library_others_could_have_written_is_refused(
    tmp_path: Path, where: str, mode: int
) -> None:
    package, library = fake_package(tmp_path)
    target = {"file": library, "its directory": library.parent, "the package": package,
              "above it": tmp_path}[where]
    target.chmod(target.stat().st_mode | mode)
    with pytest.raises(UntrustedFile, match="writable by other users"):
        check_native_library(library, package, "lib")


def test_a_library_outside_the_package_or_linked_out_of_it_is_refused(tmp_path: Path) -> None:
    package, library = fake_package(tmp_path)
    outside = tmp_path / "elsewhere.so"
    shutil.copyfile(library, outside)
    outside.chmod(0o644)
    with pytest.raises(UntrustedFile, match="outside"):
        check_native_library(outside, package, "lib")
    link = package / "native" / "link.so"
    link.symlink_to(outside)
    with pytest.raises(UntrustedFile, match="outside"):
        check_native_library(link, package, "lib")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the file to another user")
def test_a_library_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    package, library = fake_package(tmp_path)
    os.chown(library, 65534, -1)
    with pytest.raises(UntrustedFile, match="uid 65534"):
        check_native_library(library, package, "lib")


def test_a_helper_found_outside_the_package_is_not_loaded(tmp_path: Path, echo_wasm: Path) -> None:
    # A finder that offers a copy of the helper from a temporary directory: the host must
    # refuse it and take the Python path, saying why.
    helper = Path(spear.__file__).parent / "transport" / "wasm"
    built = next(helper.glob("_fastcall*.so"), None)
    if built is None:
        pytest.skip("the native helper is not built in this installation")
    copy = tmp_path / built.name
    shutil.copyfile(built, copy)
    script = textwrap.dedent(f"""
        import importlib.abc, importlib.util, logging, sys
        class Elsewhere(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "spear.transport.wasm._fastcall":
                    return importlib.util.spec_from_file_location(name, {str(copy)!r})
                return None
        sys.meta_path.insert(0, Elsewhere())
        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record.getMessage())
        logging.getLogger().addHandler(Keep())
        import spear.wasm
        assert not spear.wasm.native_active()
        assert "spear.transport.wasm._fastcall" not in sys.modules
        assert any("is not inside" in message for message in records), records
        with spear.wasm.load(sys.argv[1]).instantiate() as instance:
            assert instance.call("echo", b"python path") == b"python path"
    """)
    done = subprocess.run([sys.executable, "-c", script, str(echo_wasm)], capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "SPEAR_NO_MODULE_CACHE": "1"})
    assert done.returncode == 0, done.stderr
