"""Timing helpers and the one results table."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass
class Row:
    section: str
    name: str
    median_us: float
    anchor: str | None = None  # name of the anchor row in the same section
    ratio: float | None = None  # this / anchor (lower is faster), or a throughput multiple
    target: str = ""
    met: bool | None = None
    note: str = ""


def median_us(fn: Callable[[], object], *, batch: int, rounds: int = 15) -> float:
    """Median over `rounds` of the mean time per call of `batch` calls, in microseconds."""
    for _ in range(max(1, batch // 10)):
        fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - start) / batch * 1e6)
    return statistics.median(samples)


async def amedian_us(fn: Callable[[], Awaitable[object]], *, batch: int,
                     rounds: int = 15) -> float:
    """`median_us` for a coroutine function."""
    for _ in range(max(1, batch // 10)):
        await fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(batch):
            await fn()
        samples.append((time.perf_counter() - start) / batch * 1e6)
    return statistics.median(samples)


def interleaved_us(
    runners: dict[str, Callable[[int], None]], batches: dict[str, int], *, rounds: int = 21
) -> dict[str, float]:
    """Median microseconds per call for each runner, measured in alternating short batches.

    `runners[name](n)` makes n calls. Taking turns within every round means that load from
    other processes on a shared machine hits every row alike, so their ratios hold even when
    the absolute times drift. The garbage collector is paused while timing.
    """
    for name, run in runners.items():
        run(max(1, batches[name] // 5))
    samples: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    gc.collect()
    gc.disable()
    try:
        for round_no in range(rounds):
            for name in names if round_no % 2 == 0 else reversed(names):
                start = time.perf_counter()
                runners[name](batches[name])
                samples[name].append((time.perf_counter() - start) / batches[name] * 1e6)
    finally:
        gc.enable()
    return {name: statistics.median(values) for name, values in samples.items()}


def render(rows: list[Row], *, markdown: bool = False) -> str:
    header = ["section", "benchmark", "median", "vs anchor", "target", "met"]
    lines = []
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.3f}x"
        if row.anchor and row.ratio is not None:
            ratio += f" of {row.anchor}"
        met = "" if row.met is None else ("yes" if row.met else "NO")
        us = row.median_us
        value = f"{us:,.2f} us" if us < 1e5 else f"{us / 1e3:,.1f} ms"
        name = row.name + (f" ({row.note})" if row.note else "")
        lines.append([row.section, name, value, ratio, row.target, met])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*cells) for cells in lines]
    return "\n".join(out)
