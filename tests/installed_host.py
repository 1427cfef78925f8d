"""An installation of the host that an unprivileged user can run: what the pod image holds.

Where the suite already runs from such an installation (`.ci/run` tests the built wheel in a
world-readable venv), that one is used. Otherwise, as root (whose checkout and interpreter
user `nobody` usually cannot read), the host wheel is built from this checkout and installed
in a fresh venv made from a system Python that `nobody` can run.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNPRIVILEGED = "nobody"


@dataclass(frozen=True)
class Installation:
    python: Path  # an interpreter whose `import spear` is the host under test
    user: str | None  # who runs it: `nobody` where the suite runs as root, else ourselves


def demote_to(user: str | None) -> dict[str, object]:
    """subprocess keyword arguments that run a child as `user` (None: as ourselves)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _runs_as(python: Path, user: str | None) -> bool:
    try:
        done = subprocess.run(
            [str(python), "-c", "import spear.wasm"], capture_output=True, cwd="/",
            env={"PATH": "/usr/bin:/bin", "HOME": "/"}, timeout=60, **demote_to(user))
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _system_python() -> Path | None:
    """A Python of our version that other users can run (the base of the fresh venv)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (Path(sys._base_executable), Path(f"/usr/bin/python{version}"),
                      Path(f"/usr/local/bin/python{version}")):
        if not candidate.is_file():
            continue
        try:
            done = subprocess.run(
                [str(candidate), "-c", "import sys, venv; print(sys.version_info[:2])"],
                capture_output=True, text=True, timeout=60, **demote_to(UNPRIVILEGED))
        except OSError:  # not executable by that user
            continue
        if done.returncode == 0 and done.stdout.strip() == str(sys.version_info[:2]):
            return candidate
    return None


def _build_installation(workdir: Path) -> Path:
    wheels = workdir / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(ROOT)], check=True, capture_output=True, timeout=600)
    base = _system_python()
    if base is None:
        raise RuntimeError(f"no Python {sys.version_info[:2]} that user {UNPRIVILEGED} can run")
    venv = workdir / "venv"
    subprocess.run([str(base), "-m", "venv", str(venv)], check=True, capture_output=True,
                   timeout=300)
    wheel = next(wheels.glob("spear_host-*.whl"))
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=900)
    return venv / "bin" / "python"


def installation() -> Iterator[Installation]:
    """Yield an installation runnable as `nobody` (as root) or as ourselves; clean up after."""
    if os.geteuid() != 0:
        yield Installation(Path(sys.executable), None)
        return
    if _runs_as(Path(sys.executable), UNPRIVILEGED):
        yield Installation(Path(sys.executable), UNPRIVILEGED)
        return
    workdir = Path(tempfile.mkdtemp(prefix="spear-installed-"))
    try:
        workdir.chmod(0o755)
        yield Installation(_build_installation(workdir), UNPRIVILEGED)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
