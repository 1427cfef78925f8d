"""The ``spear-guest`` command: build C guests into spear ABI v1 WebAssembly modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from spear_guest.build import DEFAULT_OPT, OPT_LEVELS, BuildError, build, build_all, include_dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spear-guest",
        description="Build C guests (using spear.h) into spear ABI v1 WebAssembly modules.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-O",
            dest="opt",
            default=DEFAULT_OPT,
            metavar="LEVEL",
            help=f"optimisation: {', '.join(OPT_LEVELS)} (default: {DEFAULT_OPT}, i.e. -O2)",
        )
        p.add_argument(
            "--stack-size",
            type=int,
            default=None,
            metavar="BYTES",
            help="shadow-stack size in bytes (multiple of 16; default 1 MiB)",
        )

    p_build = sub.add_parser("build", help="compile one C file into a .wasm module")
    p_build.add_argument("src", type=Path, metavar="SRC.c")
    p_build.add_argument("-o", dest="out", type=Path, required=True, metavar="OUT.wasm")
    common(p_build)

    p_all = sub.add_parser("build-all", help="compile every *.c in DIR into OUTDIR/NAME.wasm")
    p_all.add_argument("src_dir", type=Path, metavar="DIR")
    p_all.add_argument("-o", dest="out_dir", type=Path, required=True, metavar="OUTDIR")
    p_all.add_argument("--force", action="store_true", help="rebuild up-to-date modules too")
    common(p_all)

    sub.add_parser("include-dir", help="print the directory that holds spear.h")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            out = build(args.src, args.out, opt=args.opt, stack_size=args.stack_size)
            print(f"built {out} ({out.stat().st_size} bytes)")
        elif args.command == "build-all":
            for out in build_all(
                args.src_dir,
                args.out_dir,
                opt=args.opt,
                stack_size=args.stack_size,
                force=args.force,
            ):
                print(f"built {out} ({out.stat().st_size} bytes)")
        else:
            print(include_dir())
    except BuildError as exc:
        print(f"spear-guest: error: {exc.summary}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
