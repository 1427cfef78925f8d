"""What pyproject.toml cannot say statically: the native helper and the `dev` extra.

Metadata lives in pyproject.toml; this file adds
- the fast-call helper, a cffi extension compiled with the build machine's C compiler.
  It is optional: without a compiler the package still builds and runs on the slower
  pure-Python call path (which says so once, at WARNING).
- the wire codec's hot path (`spear.protocol._wire`), a small CPython extension, optional in
  the same way: without it the pure-Python codec does everything (and says so once).
- the HTTP front door's response heads (`spear.invocation._http_head`), the same kind of
  extension, optional in the same way.
- the `dev` extra's guest SDK. An editable install is a checkout, so `spear-guest` comes from
  the `guest_sdk/` folder beside this file (see build_support/spear_build_backend.py); a
  built wheel cannot point at a folder and leaves it out.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
NATIVE = ROOT / "host" / "spear" / "transport" / "wasm" / "native"
WIRE = Path("host") / "spear" / "protocol" / "native" / "wire.c"
HTTP_HEAD = Path("host") / "spear" / "invocation" / "native" / "http_head.c"


def native_extensions() -> list[Extension]:
    if os.environ.get("SPEAR_BUILD_NO_NATIVE"):
        return []
    sys.path.insert(0, str(NATIVE))
    try:
        from build_fastcall import make_builder
    finally:
        sys.path.remove(str(NATIVE))
    extension = make_builder().distutils_extension(tmpdir=str(ROOT / "build" / "cffi"))
    extension.optional = True  # no compiler: build anyway, run on the Python path
    wire = Extension("spear.protocol._wire", sources=[str(WIRE)], extra_compile_args=["-O2"],
                     optional=True)
    http_head = Extension("spear.invocation._http_head", sources=[str(HTTP_HEAD)],
                          extra_compile_args=["-O2"], optional=True)
    return [extension, wire, http_head]


def extras() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    groups: dict[str, list[str]] = project["tool"]["spear"]["extras"]
    resolved = {name: list(requirements) for name, requirements in groups.items()}
    guest_sdk = ROOT / "guest_sdk"
    if os.environ.get("SPEAR_BUILD_EDITABLE") and (guest_sdk / "pyproject.toml").exists():
        resolved["dev"].append(f"spear-guest @ {guest_sdk.as_uri()}")
    return resolved


setup(ext_modules=native_extensions(), extras_require=extras())
