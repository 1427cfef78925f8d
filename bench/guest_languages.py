"""Guest rows: what a module costs in each SDK language (C, C with --wasi, Rust, Zig).

For each language, the same two guests (wasm_fixtures/echo.* and greet.*; C --wasi builds the
C sources against wasi-libc):
- module size, in the row notes;
- first build, as a new user meets it: a fresh process with empty zig and spear-guest caches
  (zig compiles compiler-rt, wasi-libc or its std; spear-guest compiles the Rust crate); one
  sample each, skipped with --quick;
- rebuild with warm caches (median of 7, the languages taking turns);
- call time through `spear.wasm` (the sync embedding API): `echo` with 64 B and `meta` with
  two metadata pairs (SDK work: metadata parsing, an arena buffer), interleaved so the
  languages share the machine's noise.
Anchors: the C (freestanding) row of the same kind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import spear_guest

from bench.table import Row, interleaved_us

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "wasm_fixtures"
SECTION = "guest"
META = {"user": "ann", "trace-id": "0123456789abcdef"}


@dataclass(frozen=True)
class Language:
    label: str
    suffix: str
    wasi: bool = False

    def source(self, stem: str) -> Path:
        return FIXTURES / f"{stem}{self.suffix}"


LANGUAGES = [Language("C", ".c"), Language("C --wasi", ".c", wasi=True),
             Language("Rust", ".rs"), Language("Zig", ".zig")]


def _cold_build_s(lang: Language, out_dir: Path) -> float:
    """Seconds for `spear-guest build` of echo in a new process with empty caches."""
    with tempfile.TemporaryDirectory(prefix="spear-bench-cold-") as tmp:
        env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": str(Path(tmp) / "zig"),
               "SPEAR_GUEST_CACHE_DIR": str(Path(tmp) / "spear-guest")}
        cmd = [sys.executable, "-m", "spear_guest", "build", str(lang.source("echo")),
               "-o", str(out_dir / "cold.wasm"), *(["--wasi"] if lang.wasi else [])]
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=900)
        return time.perf_counter() - start


def _warm_builds_s(languages: list[Language], out_dir: Path, rounds: int) -> dict[str, float]:
    """Median seconds of `spear_guest.build` of echo per language, the languages taking turns
    in every round so load from other processes hits them alike."""
    samples: dict[str, list[float]] = {lang.label: [] for lang in languages}
    for _ in range(rounds):
        for lang in languages:
            start = time.perf_counter()
            spear_guest.build(lang.source("echo"), out_dir / "warm.wasm", wasi=lang.wasi)
            samples[lang.label].append(time.perf_counter() - start)
    return {label: statistics.median(values) for label, values in samples.items()}


def _repeat(fn: Callable[[], object]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            fn()
    return run


def run(args: argparse.Namespace) -> list[Row]:
    from spear import wasm

    work = Path(tempfile.mkdtemp(prefix="spear-bench-guest-"))
    try:
        available: list[Language] = []
        modules: dict[str, tuple[Path, Path]] = {}
        for lang in LANGUAGES:
            out = work / lang.label.replace(" ", "_").replace("-", "")
            try:
                echo = spear_guest.build(lang.source("echo"), out / "echo.wasm", wasi=lang.wasi)
                greet = spear_guest.build(lang.source("greet"), out / "greet.wasm",
                                          wasi=lang.wasi)
            except spear_guest.ToolchainMissing as exc:
                print(f"guest: skipping {lang.label}: {exc}", file=sys.stderr)
                continue
            available.append(lang)
            modules[lang.label] = (echo, greet)

        rows: list[Row] = []
        # calls, interleaved across languages
        data = b"x" * 64
        runners: dict[str, Callable[[int], None]] = {}
        instances = []
        for lang in available:
            echo, greet = modules[lang.label]
            echo_instance = wasm.load(echo).instantiate()
            greet_instance = wasm.load(greet).instantiate()
            instances += [echo_instance, greet_instance]
            assert echo_instance.call("echo", data) == data
            assert greet_instance.call("meta", b"", metadata=META).startswith(b"user=ann\n")
            runners[f"echo {lang.label}"] = _repeat(
                lambda i=echo_instance: i.call("echo", data))
            runners[f"meta {lang.label}"] = _repeat(
                lambda i=greet_instance: i.call("meta", b"", metadata=META))
        batch = 250 if args.quick else 1000
        timed = interleaved_us(runners, dict.fromkeys(runners, batch),
                               rounds=9 if args.quick else 21)
        for instance in instances:
            instance.close()
        for kind, what in [("echo", "call echo 64 B"), ("meta", "call meta, 2 pairs")]:
            anchor = f"C: {what}"
            for lang in available:
                us = timed[f"{kind} {lang.label}"]
                echo, greet = modules[lang.label]
                size = (echo if kind == "echo" else greet).stat().st_size
                name = f"{lang.label}: {what}"
                rows.append(Row(SECTION, name, us, None if name == anchor else anchor,
                                None if name == anchor else us / timed[f"{kind} C"],
                                note=f"module {size:,} B"))
        # builds
        cold_anchor, warm_anchor = "C: first build (cold caches)", "C: rebuild (warm caches)"
        cold: dict[str, float] = {}
        if not args.quick:
            for lang in available:
                cold[lang.label] = _cold_build_s(lang, work)
        rounds = 3 if args.quick else 7
        warm = _warm_builds_s(available, work, rounds)
        for lang in available:
            if lang.label in cold and "C" in cold:
                name = f"{lang.label}: first build (cold caches)"
                rows.append(Row(SECTION, name, cold[lang.label] * 1e6,
                                None if name == cold_anchor else cold_anchor,
                                None if name == cold_anchor else cold[lang.label] / cold["C"],
                                note="1 run, new process"))
        for lang in available:
            if "C" in warm:
                name = f"{lang.label}: rebuild (warm caches)"
                rows.append(Row(SECTION, name, warm[lang.label] * 1e6,
                                None if name == warm_anchor else warm_anchor,
                                None if name == warm_anchor else warm[lang.label] / warm["C"],
                                note=f"median of {rounds}"))
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)
