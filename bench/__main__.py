"""Run every benchmark section in one process, in one run, and print one table.

Each section module exposes `run(args) -> list[Row]`. Sections are measured in the same run
so ratios against their anchors are meaningful on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path

from bench.table import Row, render

SECTIONS = [
    "bench.wasm",
    "bench.embedding",
    "bench.process",
    "bench.grpc",
    "bench.invocation",
    "bench.http",
    "bench.guest_languages",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", action="append", help="run only these sections (e.g. wasm)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--write", metavar="PATH",
                        help="also write the markdown table into PATH between the markers "
                             "<!-- bench:begin --> and <!-- bench:end -->")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    for name in SECTIONS:
        short = name.rsplit(".", 1)[-1]
        if args.only and short not in args.only:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # section not written yet
            raise
        print(f"running {short} ...", file=sys.stderr, flush=True)
        rows.extend(module.run(args))
    print(render(rows, markdown=args.markdown))
    if args.write:
        write_table(Path(args.write), render(rows, markdown=True))
    return 0


def write_table(path: Path, table: str) -> None:
    """Replace the table between the markers, with when and where it was measured."""
    stamp = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
             f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.")
    block = f"<!-- bench:begin -->\n{stamp}\n\n{table}\n<!-- bench:end -->"
    text = path.read_text() if path.exists() else ""
    begin, end = text.find("<!-- bench:begin -->"), text.find("<!-- bench:end -->")
    if begin >= 0 and end > begin:
        text = text[:begin] + block + text[end + len("<!-- bench:end -->"):]
    else:
        text = text + ("\n" if text else "") + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
