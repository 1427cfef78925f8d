"""Finding the wire codec's C hot path, `spear.protocol._wire` (built from `native/wire.c`
with the package, never at run time).

It is optional: an installation built without a C compiler, or a process started with
`SPEAR_NO_NATIVE=1`, encodes and decodes in pure Python, and says so once. Only the module
inside this very package directory is loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("spear.protocol")

MODULE = "spear.protocol._wire"


def load_wire() -> Any:
    """The C helper module, or None when the pure-Python codec must do everything."""
    if os.environ.get("SPEAR_NO_NATIVE"):
        log.info("SPEAR_NO_NATIVE is set: messages are encoded and decoded in pure Python")
        return None
    try:
        spec = importlib.util.find_spec(MODULE)
        if spec is None or spec.origin is None:
            raise ImportError(f"no module named {MODULE}")
        here = Path(__file__).resolve().parent
        if Path(spec.origin).resolve().parent != here:
            raise ImportError(f"{spec.origin} is not inside {here}")
        return importlib.import_module(MODULE)
    except ImportError as exc:
        log.warning("the wire codec's C helper was not built with this installation (%s); "
                    "messages are encoded and decoded in pure Python, more slowly", exc)
        return None
