"""`spear run MODULE.wasm [--function F] (--input TEXT | --input-file PATH|-)`.

Runs one call of a spear guest's handler, or of a WASI command (`_start`, the default for
one: the input is its stdin, its stdout is printed; a non-zero exit status becomes this
command's exit status). `--env`, `--arg`, `--dir` and `--read-write` grant WASI access;
`--config` sets what the guest reads with `spear.config_get`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from spear.errors import ExecutionFailed, InvalidConfiguration


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="load a WASM function (spear guest or WASI command) and call it once")
    parser.add_argument("module", type=Path, help="the .wasm module")
    parser.add_argument("--function", "-f",
                        help="handler name (default for a WASI command: _start)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", "-i", help="input text (UTF-8)")
    source.add_argument("--input-file", help="read the input bytes from a file ('-': stdin)")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="metadata pair (repeatable)")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="configuration the guest reads (repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="WASI environment variable (repeatable)")
    parser.add_argument("--arg", action="append", default=[], metavar="ARG",
                        help="WASI argument after argv[0] (repeatable)")
    parser.add_argument("--dir", action="append", default=[], metavar="[GUEST=]HOST",
                        help="preopen a host directory for WASI (read-only unless "
                             "--read-write), as GUEST in the guest (default: its host path)")
    parser.add_argument("--read-write", action="store_true",
                        help="let the guest write in the --dir directories")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--memory-limit", type=int, help="bytes of linear memory per instance")
    parser.add_argument("--fuel", type=int, help="bound the work of the call")
    parser.set_defaults(func=run)


def parse_pairs(pairs: list[str], what: str = "metadata") -> dict[str, str]:
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidConfiguration(f"{what} must look like KEY=VALUE, got {pair!r}")
        parsed[key] = value
    return parsed


def parse_metadata(pairs: list[str]) -> dict[str, str]:
    return parse_pairs(pairs, "metadata")


def _preopens(dirs: list[str]) -> dict[str, str]:
    preopens = {}
    for entry in dirs:
        guest, sep, host = entry.partition("=")
        if not sep:
            guest = host = entry
        preopens[guest] = os.path.abspath(host)
    return preopens


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
    config = parse_pairs(args.config, "--config")
    wasi = wasm.WasiConfig(env=parse_pairs(args.env, "--env"), args=args.arg,
                           preopens=_preopens(args.dir), read_only=not args.read_write)
    if args.input_file == "-":
        data = sys.stdin.buffer.read()
    elif args.input_file is not None:
        data = Path(args.input_file).read_bytes()
    else:
        data = (args.input or "").encode()
    module = wasm.load(args.module, memory_limit=args.memory_limit, fuel=args.fuel,
                       config=config, wasi=wasi)
    function = args.function
    if function is None:
        if module.kind != "wasi_command":
            raise InvalidConfiguration(
                f"--function is required: the module's handlers are "
                f"{', '.join(module.handlers) or '(none)'}")
        function = "_start"
    with module.instantiate() as instance:
        try:
            output = instance.call(function, data, timeout=args.timeout, metadata=metadata)
        except ExecutionFailed as exc:
            status = exc.error_code
            if not str(exc.code).startswith("exit:") or status is None:
                raise
            print(f"spear: error: {exc}", file=sys.stderr)
            return status if 0 < status < 256 else 1
    sys.stdout.buffer.write(output)
    if sys.stdout.isatty() and not output.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()
    return 0
