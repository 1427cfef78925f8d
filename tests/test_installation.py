"""The host as users install it: the native helper inside the package, run by an unprivileged
user with an unwritable HOME (a pod's security context), nothing loaded from writable places."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import spear
import spear.wasm
from installed_host import Installation, demote_to, installation

# What the unprivileged user runs: echo 0 B to 1 MiB, then report what the process mapped.
SCENARIO = textwrap.dedent("""
    import json, os, sys
    import spear, spear.wasm
    from spear.transport.wasm import native_call
    module = spear.wasm.load(sys.argv[1])
    sizes = [0, 1, 63, 64, 4096, 65536, 1 << 20]
    with module.instantiate() as instance:
        echoed = []
        for n in sizes:
            data = os.urandom(n)
            echoed.append(instance.call("echo", data) == data)
    helper = sys.modules.get("spear.transport.wasm._fastcall")
    mapped = sorted({line.split(None, 5)[5].strip() for line in open("/proc/self/maps")
                     if len(line.split(None, 5)) == 6})
    print(json.dumps({
        "version": spear.__version__,
        "native": spear.wasm.native_active(),
        "package": os.path.dirname(spear.__file__),
        "helper": getattr(helper, "__file__", None),
        "echoed": echoed,
        "mapped": mapped,
        "prefixes": [sys.prefix, sys.base_prefix],
    }))
""")


@dataclass
class Sandbox:
    """Directories as a pod sees them: HOME unwritable, only TMPDIR writable."""

    home: Path
    tmpdir: Path
    cwd: Path
    module: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "TMPDIR": str(self.tmpdir),
               "LANG": "C.UTF-8"}
        env.update(extra)
        return env


@pytest.fixture(scope="module")
def installed() -> Iterator[Installation]:
    yield from installation()


@pytest.fixture
def sandbox(echo_wasm: Path, installed: Installation) -> Iterator[Sandbox]:
    top = Path(tempfile.mkdtemp(prefix="spear-sandbox-"))
    try:
        top.chmod(0o755)
        home, tmpdir, cwd = top / "home", top / "tmp", top / "work"
        for directory in (home, tmpdir, cwd):
            directory.mkdir()
        module = cwd / "echo.wasm"
        shutil.copyfile(echo_wasm, module)
        module.chmod(0o644)
        home.chmod(0o555)
        cwd.chmod(0o555)
        tmpdir.chmod(0o777 if installed.user else 0o700)
        yield Sandbox(home, tmpdir, cwd, module)
    finally:
        home.chmod(0o755)
        shutil.rmtree(top, ignore_errors=True)


def run_scenario(installed: Installation, sandbox: Sandbox, **env: str) -> tuple[dict, str]:
    done = subprocess.run(
        [str(installed.python), "-c", SCENARIO, str(sandbox.module)],
        capture_output=True, text=True, cwd=sandbox.cwd, env=sandbox.env(**env), timeout=120,
        **demote_to(installed.user))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_the_installed_host_echoes_0_b_to_1_mib_as_an_unprivileged_user_on_the_native_path(
        installed: Installation, sandbox: Sandbox) -> None:
    report, _ = run_scenario(installed, sandbox)
    assert report["version"] == spear.__version__
    assert report["native"] is True
    assert all(report["echoed"]) and len(report["echoed"]) == 7
    # The helper is the package's own extension module, not a file from anywhere else.
    assert report["helper"] is not None
    assert Path(report["helper"]).parent == Path(report["package"]) / "transport" / "wasm"


def test_nothing_is_mapped_from_home_tmpdir_or_the_working_directory(
        installed: Installation, sandbox: Sandbox) -> None:
    report, _ = run_scenario(installed, sandbox,
                             SPEAR_CACHE_DIR=str(sandbox.tmpdir / "spear-cache"))
    files = [Path(p) for p in report["mapped"] if p.startswith("/")]
    assert files, "no mapped files were reported"
    for forbidden in (sandbox.home, sandbox.tmpdir, sandbox.cwd):
        assert not [f for f in files if f.is_relative_to(forbidden)], forbidden
    # Every shared library comes from the interpreter's installation or the system.
    allowed = [Path(p) for p in report["prefixes"]] + [Path("/usr"), Path("/lib"),
                                                        Path("/lib64")]
    libraries = [f for f in files if ".so" in f.name]
    stray = [f for f in libraries if not any(f.is_relative_to(root) for root in allowed)]
    assert not stray, stray


def test_an_unwritable_home_means_no_cache_one_log_line_and_nothing_written(
        installed: Installation, sandbox: Sandbox) -> None:
    report, stderr = run_scenario(installed, sandbox)
    assert all(report["echoed"])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "compiled-module cache" in lines[0] and "SPEAR_CACHE_DIR" in lines[0]
    assert list(sandbox.home.iterdir()) == []


def test_the_configured_cache_directory_is_used_and_made_private(
        installed: Installation, sandbox: Sandbox) -> None:
    cache = sandbox.tmpdir / "spear-cache"
    for _ in range(2):  # the second run loads the compiled module from the cache
        report, stderr = run_scenario(installed, sandbox, SPEAR_CACHE_DIR=str(cache))
        assert all(report["echoed"]), stderr
        assert stderr == ""
    entries = list(cache.glob("*.cwasm"))
    assert len(entries) == 1
    assert cache.stat().st_mode & 0o777 == 0o700
    assert list(sandbox.home.iterdir()) == []


def test_without_the_compiled_helper_the_python_path_is_used_and_said_once_at_warning(
        echo_wasm: Path) -> None:
    # An sdist installed without a C compiler has no helper; hide ours from the import system.
    script = textwrap.dedent("""
        import importlib.abc, logging, sys
        class NoHelper(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "spear.transport.wasm._fastcall":
                    raise ImportError("not built")
                return None
        sys.meta_path.insert(0, NoHelper())
        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record)
        logging.getLogger().addHandler(Keep())
        import spear.wasm
        module = spear.wasm.load(sys.argv[1])
        with module.instantiate() as instance:
            for _ in range(3):
                assert instance.call("echo", b"abc") == b"abc"
        native = [r for r in records if r.name == "spear.wasm.native"]
        assert not spear.wasm.native_active()
        assert len(native) == 1, native
        assert native[0].levelno == logging.WARNING, native[0].levelno
        assert "pure-Python" in native[0].getMessage()
    """)
    done = subprocess.run([sys.executable, "-c", script, str(echo_wasm)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_helper_in_this_installation_is_active_and_inside_the_package() -> None:
    if os.environ.get("SPEAR_NO_NATIVE"):
        pytest.skip("SPEAR_NO_NATIVE is set: the Python path is under test")
    helper = sys.modules.get("spear.transport.wasm._fastcall")
    assert spear.wasm.native_active(), (
        "the native fast-call helper was not built with this installation "
        "(was there a C compiler when it was installed?)")
    assert helper is not None and helper.__file__ is not None
    assert Path(helper.__file__).parent == Path(spear.__file__).parent / "transport" / "wasm"


def test_mypy_in_a_consumer_project_sees_the_package_types(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is a dev tool, not in the test extra")
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent("""
        import spear.wasm

        module = spear.wasm.load("echo.wasm")
        with module.instantiate() as instance:
            output: int = instance.call("echo", b"hi")
    """))
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--strict", str(app)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    # Typed: the only error is ours (bytes into int), not a missing-stub complaint.
    assert done.returncode == 1, done.stdout
    assert 'expression has type "bytes", variable has type "int"' in done.stdout
    assert "import-untyped" not in done.stdout and "import-not-found" not in done.stdout
