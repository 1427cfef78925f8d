"""The ``spear-guest`` command: build C, Rust and Zig guests into spear ABI v1 modules."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from spear_guest.build import BuildResult, build_all, build_module
from spear_guest.errors import BuildError
from spear_guest.options import DEFAULT_OPT, OPT_LEVELS
from spear_guest.sdk_files import sdk_path
from spear_guest.toolchains import SUFFIXES, for_source

log = logging.getLogger("spear_guest")


class _Format(logging.Formatter):
    """Compiler output verbatim (it names its own files and lines); our lines prefixed."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno == logging.WARNING and "\n" in message.strip():
            return message
        return f"spear-guest: {message}"


def _setup_logging(verbose: bool) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    return handler


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spear-guest",
        description="Build C, Rust and Zig guests into spear ABI v1 WebAssembly modules.",
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
        p.add_argument(
            "--wasi",
            action="store_true",
            help="C: build against wasi-libc (stdio, malloc, ...); the first build compiles "
            "wasi-libc, about a minute",
        )
        p.add_argument(
            "--debug", action="store_true", help="keep debug info (stripped by default)"
        )
        p.add_argument("-v", "--verbose", action="store_true", help="say more")

    kinds = ", ".join(SUFFIXES)
    p_build = sub.add_parser("build", help=f"compile one guest ({kinds}) into a .wasm module")
    p_build.add_argument("src", type=Path, metavar="SRC")
    p_build.add_argument("-o", dest="out", type=Path, required=True, metavar="OUT.wasm")
    common(p_build)

    p_all = sub.add_parser(
        "build-all", help=f"compile every guest ({kinds}) in DIR into OUTDIR, skipping "
        "up-to-date ones"
    )
    p_all.add_argument("src_dir", type=Path, metavar="DIR")
    p_all.add_argument("-o", dest="out_dir", type=Path, required=True, metavar="OUTDIR")
    p_all.add_argument("--force", action="store_true", help="rebuild up-to-date modules too")
    p_all.add_argument(
        "--skip-unavailable",
        action="store_true",
        help="skip (and name) guests whose toolchain is missing instead of failing",
    )
    common(p_all)

    sub.add_parser("include-dir", help="print the directory that holds spear.h")
    p_sdk = sub.add_parser("sdk-path", help="print where a language's SDK lives (for Cargo, "
                           "zig build, other compilers)")
    p_sdk.add_argument("language", choices=["c", "rust", "zig"])
    sub.add_parser("toolchains", help="say which compiler builds each language (exit 1 when "
                   "one is missing)")
    return parser


def _report(result: BuildResult) -> None:
    if result.skipped:
        print(f"skipped {result.source}: {result.skipped}")
    elif result.built:
        print(f"built {result.path} ({result.size} bytes) with {result.toolchain} "
              f"in {result.seconds:.1f} s")
    else:
        print(f"up to date {result.path} ({result.size} bytes)")


def _toolchains() -> int:
    missing = 0
    for suffix in SUFFIXES:
        toolchain = for_source(Path(f"x{suffix}"))
        try:
            print(f"{toolchain.language:5} {toolchain.describe()}")
        except BuildError as exc:
            missing += 1
            print(f"{toolchain.language:5} missing: {exc}" + (f"; {exc.hint}" if exc.hint else ""))
    return 1 if missing else 0


def _fail(exc: BuildError) -> int:
    if exc.stderr.strip():
        print(exc.stderr.rstrip(), file=sys.stderr)
    print(f"spear-guest: error: {exc.summary}", file=sys.stderr)
    if exc.hint:
        print(f"spear-guest: hint: {exc.hint}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = _setup_logging(getattr(args, "verbose", False))
    try:
        if args.command == "build":
            _report(build_module(args.src, args.out, opt=args.opt, stack_size=args.stack_size,
                                 wasi=args.wasi, debug=args.debug))
        elif args.command == "build-all":
            results = build_all(args.src_dir, args.out_dir, opt=args.opt,
                                stack_size=args.stack_size, wasi=args.wasi, debug=args.debug,
                                force=args.force, skip_unavailable=args.skip_unavailable,
                                on_result=_report)
            counts = {s: sum(r.status == s for r in results)
                      for s in ("built", "up to date", "skipped")}
            print(", ".join(f"{n} {s}" for s, n in counts.items() if n or s != "skipped"))
        elif args.command == "include-dir":
            print(sdk_path("c"))
        elif args.command == "sdk-path":
            print(sdk_path(args.language))
        else:
            return _toolchains()
    except BuildError as exc:
        return _fail(exc)
    finally:
        log.removeHandler(handler)
        log.propagate = True
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
