"""Find a rustc that can really build wasm32-unknown-unknown (its sysroot has the target's
standard library), and say which one and why others were passed over."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from spear_guest.errors import ToolchainMissing

__all__ = ["TARGET", "Rustc", "find_rustc", "rustc_candidates"]

log = logging.getLogger("spear_guest")

TARGET = "wasm32-unknown-unknown"
INSTALL_HINT = (
    "install one: `rustup target add wasm32-unknown-unknown` (rustup), or "
    "`apt-get install rustc libstd-rust-dev-wasm32` (Debian, Ubuntu); "
    "or point SPEAR_GUEST_RUSTC at a rustc that has it"
)
# rustup must never download a toolchain on our behalf (a rust-toolchain file may name one).
_ENV = {**os.environ, "RUSTUP_AUTO_INSTALL": "0"}


@dataclass(frozen=True)
class Rustc:
    path: Path
    version: str  # `rustc -V`, e.g. "rustc 1.63.0"
    sysroot: Path

    def describe(self) -> str:
        return f"{self.version} ({self.path})"


def rustc_candidates() -> list[Path]:
    """``$SPEAR_GUEST_RUSTC`` alone when set; else every ``rustc`` on PATH, in order, then the
    usual places (Debian's /usr/bin, rustup's ~/.cargo/bin)."""
    explicit = os.environ.get("SPEAR_GUEST_RUSTC")
    if explicit:
        return [Path(explicit)]
    seen: list[Path] = []
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    dirs += ["/usr/bin", "/usr/local/bin", str(Path.home() / ".cargo" / "bin")]
    for d in dirs:
        if not d:
            continue
        found = shutil.which("rustc", path=d)
        if found and Path(found) not in seen:
            seen.append(Path(found))
    return seen


def _run(rustc: Path, *args: str) -> str:
    done = subprocess.run([str(rustc), *args], capture_output=True, text=True, timeout=60,
                          env=_ENV, check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise OSError(lines[-1] if lines else f"exit status {done.returncode}")
    return done.stdout.strip()


def _probe(rustc: Path) -> tuple[Rustc | None, str]:
    """The toolchain, or None and why not."""
    try:
        version = _run(rustc, "-V")
        sysroot = Path(_run(rustc, "--print", "sysroot"))
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{rustc}: does not run ({exc})"
    libdir = sysroot / "lib" / "rustlib" / TARGET / "lib"
    if not any(libdir.glob("libcore-*.rlib")):
        return None, f"{rustc}: {version}, but {sysroot} has no {TARGET} standard library"
    return Rustc(rustc, version, sysroot), ""


@cache
def _find(candidates: tuple[Path, ...]) -> Rustc:
    passed_over: list[str] = []
    for rustc in candidates:
        found, why = _probe(rustc)
        if found is not None:
            for reason in passed_over:
                log.info("passed over %s", reason)
            log.info("using %s for %s (sysroot %s)", found.describe(), TARGET, found.sysroot)
            return found
        passed_over.append(why)
    tried = "; ".join(passed_over) if passed_over else "no rustc on PATH"
    raise ToolchainMissing(
        f"no rustc with the {TARGET} standard library (tried: {tried})", hint=INSTALL_HINT
    )


def find_rustc() -> Rustc:
    """The first candidate whose sysroot has the wasm32-unknown-unknown standard library.
    Raises ToolchainMissing listing every rustc tried and why, with how to install one."""
    return _find(tuple(rustc_candidates()))
