"""`spear inspect MODULE.wasm`: the handlers and ABI version of a guest module."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("inspect", help="list a WASM module's handlers and ABI")
    parser.add_argument("module", type=Path)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spear import wasm

    module = wasm.load(args.module)
    info = {
        "module": str(args.module),
        "sha256": module.sha256,
        "abi_version": module.abi_version,
        "handlers": module.handlers,
        "dispatch": module.has_dispatch,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"module:      {args.module}")
    print(f"sha256:      {module.sha256}")
    print(f"abi version: {module.abi_version}")
    print(f"handlers:    {', '.join(module.handlers) or '(none)'}")
    if module.has_dispatch:
        print("dispatch:    yes (spear_dispatch catches other names)")
    return 0
