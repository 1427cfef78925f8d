"""Run every benchmark section in one process, in one run, and print one table.

Each section module exposes `run(args) -> list[Row]`. Sections are measured in the same run
so ratios against their anchors are meaningful on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bench.table import Row, render

SECTIONS = ["bench.wasm", "bench.process", "bench.grpc", "bench.invocation"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", action="append", help="run only these sections (e.g. wasm)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
