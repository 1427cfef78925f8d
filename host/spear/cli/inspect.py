"""`spear inspect MODULE.wasm`: what any WebAssembly module is.

Its kind (spear ABI vN, WASI command, WASI reactor, plain module), handlers, imports, exports
and memory limits. Spear guests and WASI commands are also loaded (checked and linked, and a
spear guest's handshake run), so a module that would not load says why, after its
description, with exit status 1. Nothing else of the module runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from spear.errors import CommunicationError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect", help="describe a WASM module: kind, handlers, imports, exports, memory")
    parser.add_argument("module", type=Path)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def _pages(pages: int | None) -> str:
    if pages is None:
        return "no maximum"
    size = pages * 65536
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{pages} pages ({size / scale:g} {unit})"
    return f"{pages} pages"


def run(args: argparse.Namespace) -> int:
    from spear import wasm
    from spear.transport.wasm.module_info import KIND_NAMES

    data = Path(args.module).read_bytes()
    info = wasm.describe(data)
    abi_version = None
    problem = None
    if info.kind in ("spear", "wasi_command"):
        try:
            module = wasm.load(data)
            abi_version = module.abi_version
        except CommunicationError as exc:
            problem = str(exc)
    kind = KIND_NAMES[info.kind]
    if info.kind == "spear" and abi_version is not None:
        kind = f"spear ABI v{abi_version}"
    exports = {item.name for item in info.exports}
    if args.json:
        described = {
            "module": str(args.module),
            "sha256": hashlib.sha256(data).hexdigest(),
            "kind": info.kind,
            "kind_name": kind,
            "abi_version": abi_version,
            "handlers": info.handlers,
            "dispatch": info.kind == "spear" and "spear_dispatch" in exports,
            "uses_wasi": info.uses_wasi,
            **{key: value for key, value in info.to_dict().items() if key != "kind"},
            "problem": problem,
        }
        print(json.dumps(described, indent=2))
    else:
        print(f"module:      {args.module}")
        print(f"sha256:      {hashlib.sha256(data).hexdigest()}")
        print(f"kind:        {kind}")
        if info.kind == "spear":
            print(f"abi version: {abi_version if abi_version is not None else '(not loaded)'}")
        if info.kind in ("spear", "wasi_command"):
            print(f"handlers:    {', '.join(info.handlers) or '(none)'}")
        if "spear_dispatch" in exports and info.kind == "spear":
            print("dispatch:    yes (spear_dispatch catches other names)")
        print(f"wasi:        {'yes' if info.uses_wasi else 'no'}")
        for memory in info.memories:
            where = "imported" if memory.imported else "exported"
            print(f"memory:      {memory.name} ({where}{', 64-bit' if memory.memory64 else ''}"
                  f"{', shared' if memory.shared else ''}): at least {_pages(memory.min_pages)},"
                  f" at most {_pages(memory.max_pages)}")
        print(f"imports:     {len(info.imports)}")
        for item in info.imports:
            print(f"  {item.module}.{item.name:<28} {item.kind} {item.type}")
        print(f"exports:     {len(info.exports)}")
        for export in info.exports:
            print(f"  {export.name:<34} {export.kind} {export.type}")
    if problem is not None:
        print(f"spear: error: {problem}", file=sys.stderr)
        return 1
    return 0
