"""`spear run MODULE.wasm --function F (--input TEXT | --input-file PATH)`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from spear.errors import InvalidConfiguration


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="load a WASM function and call it once")
    parser.add_argument("module", type=Path, help="the .wasm module")
    parser.add_argument("--function", "-f", required=True, help="handler name")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", "-i", help="input text (UTF-8)")
    source.add_argument("--input-file", type=Path, help="read the input bytes from a file")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="metadata pair (repeatable)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--memory-limit", type=int, help="bytes of linear memory per instance")
    parser.add_argument("--fuel", type=int, help="bound the work of the call")
    parser.set_defaults(func=run)


def parse_metadata(pairs: list[str]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidConfiguration(f"metadata must look like KEY=VALUE, got {pair!r}")
        metadata[key] = value
    return metadata


def run(args: argparse.Namespace) -> int:
    from spear import wasm
    from spear.transport.wasm.arguments import check_positive_int, check_timeout

    # Refuse bad options before compiling anything.
    check_timeout(args.timeout, "--timeout")
    if args.memory_limit is not None:
        check_positive_int(args.memory_limit, "--memory-limit", 65536, 4 << 30)
    if args.fuel is not None:
        check_positive_int(args.fuel, "--fuel")
    metadata = parse_metadata(args.meta)
    if args.input_file is not None:
        data = args.input_file.read_bytes()
    else:
        data = (args.input or "").encode()
    module = wasm.load(args.module, memory_limit=args.memory_limit, fuel=args.fuel)
    with module.instantiate() as instance:
        output = instance.call(args.function, data, timeout=args.timeout, metadata=metadata)
    sys.stdout.buffer.write(output)
    if sys.stdout.isatty() and not output.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()
    return 0
