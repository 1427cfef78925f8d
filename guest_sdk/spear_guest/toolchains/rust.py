"""Rust guests: plain rustc for wasm32-unknown-unknown with the spear crate (no Cargo).

The crate (guest_sdk/rust) is compiled once per rustc and flags into the spear-guest cache,
then each guest is one ``rustc --crate-type cdylib --extern spear=...`` call.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from spear_guest.cache_dir import cache_dir
from spear_guest.errors import BuildError
from spear_guest.options import BuildOptions
from spear_guest.runner import run_compiler
from spear_guest.sdk_files import rust_crate_dir
from spear_guest.toolchains.base import Toolchain
from spear_guest.toolchains.rustc import TARGET, Rustc, find_rustc

__all__ = ["RustToolchain", "rust_flags"]

_OPT = {"0": "0", "1": "1", "2": "2", "3": "3", "s": "s", "z": "z", "safe": "2"}
_HINTS = [
    (re.compile(r"`#\[panic_handler\]` function required"),
     "a #![no_std] guest needs a panic handler: add `spear::panic_handler!();`"),
    (re.compile(r"can't find crate for `std`"),
     f"this rustc has no standard library for {TARGET}: use #![no_std] with "
     "`spear::panic_handler!();`, or install libstd-rust-dev-wasm32"),
    (re.compile(r"cannot find macro `handler`|failed to resolve: .*`spear`"),
     "guests use the crate as `spear`: `spear::handler!(name);`"),
]


def rust_flags(options: BuildOptions) -> list[str]:
    """rustc flags shared by the crate and the guest: the target, panic=abort (no unwinding
    in wasm32-unknown-unknown), optimisation, checks for Debug/ReleaseSafe, debug info off
    and stripped unless ``debug``."""
    flags = ["--edition", "2021", "--target", TARGET, "--color", "never",
             "-C", "panic=abort", "-C", f"opt-level={_OPT[options.level]}"]
    if options.level in ("0", "safe"):
        flags += ["-C", "debug-assertions=on", "-C", "overflow-checks=on"]
    else:
        flags += ["-C", "codegen-units=1"]
    flags += ["-C", "debuginfo=2"] if options.debug else ["-C", "debuginfo=0",
                                                           "-C", "strip=debuginfo"]
    return flags


def _crate_name(src: Path) -> str:
    name = re.sub(r"\W", "_", src.stem) or "guest"
    if name[0].isdigit():
        name = f"guest_{name}"
    return f"{name}_guest" if name == "spear" else name


class RustToolchain(Toolchain):
    language = "Rust"
    suffix = ".rs"

    def __init__(self) -> None:
        self._rustc: Rustc | None = None

    @property
    def rustc(self) -> Rustc:
        if self._rustc is None:
            self._rustc = find_rustc()
        return self._rustc

    def identity(self) -> str:
        return f"{self.rustc.version} {self.rustc.path} {self.rustc.sysroot}"

    def describe(self) -> str:
        return self.rustc.describe()

    def flags(self, options: BuildOptions) -> list[str]:
        if options.wasi:
            raise BuildError("--wasi is for C guests; Rust guests can use std on "
                             f"{TARGET} (or #![no_std])")
        return [*rust_flags(options), "-C", f"link-arg=-zstack-size={options.stack_size}",
                *options.extra_flags]

    def sdk_files(self) -> list[Path]:
        crate = rust_crate_dir()
        return [crate / "Cargo.toml", *sorted((crate / "src").glob("*.rs"))]

    def crate_rlib(self, options: BuildOptions) -> Path:
        """The spear crate compiled for this rustc and ``options``, from the cache (compiled
        into it the first time)."""
        rustc = self.rustc
        flags = rust_flags(options)
        h = hashlib.sha256()
        for part in [self.identity(), *flags]:
            h.update(part.encode() + b"\0")
        for path in self.sdk_files():
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        key = h.hexdigest()[:24]
        final_dir = cache_dir() / "rust" / key
        rlib = final_dir / "libspear.rlib"
        if rlib.is_file():
            return rlib
        final_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build.", dir=final_dir))
        try:
            lib = rust_crate_dir() / "src" / "lib.rs"
            done = run_compiler(
                [str(rustc.path), *flags, "--crate-type", "rlib", "--crate-name", "spear",
                 "--out-dir", str(work), str(lib)],
                src=lib,
                what=f"compiling the spear crate with {rustc.version}",
                slow_hint="once per rustc and optimisation level; cached afterwards",
            )
            built = work / "libspear.rlib"
            if done.returncode != 0 or not built.is_file():
                raise BuildError(f"the spear crate failed to compile with {rustc.describe()}",
                                 src=lib, stderr=done.output)
            os.replace(built, rlib)  # atomic: concurrent builders each rename a whole file
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return rlib

    def compile(self, src: Path, out: Path, options: BuildOptions) -> str:
        flags = self.flags(options)
        rlib = self.crate_rlib(options)
        done = run_compiler(
            [str(self.rustc.path), *flags, "--crate-type", "cdylib",
             "--crate-name", _crate_name(src), "-L", f"dependency={rlib.parent}",
             "--extern", f"spear={rlib}", "-o", str(out), str(src)],
            src=src,
            what=f"compiling with {self.rustc.version}",
            cwd=out.parent,
        )
        if done.returncode != 0:
            hint = next((h for pattern, h in _HINTS if pattern.search(done.output)), "")
            raise BuildError(f"{src}: compile failed", src=src, stderr=done.output, hint=hint)
        return done.output
