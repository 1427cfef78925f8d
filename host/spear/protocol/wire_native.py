"""Finding the wire codec's C hot path, `spear.protocol._wire` (built from `native/wire.c`
with the package, never at run time).

It is optional: an installation built without a C compiler, or a process started with
`SPEAR_NO_NATIVE=1`, encodes and decodes in pure Python, and says so once. Only the module
inside this very package directory is loaded, and only if no other user could have written
it (`spear.native_trust`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from spear.native_trust import load_optional_extension

log = logging.getLogger("spear.protocol")

MODULE = "spear.protocol._wire"


def load_wire() -> Any:
    """The C helper module, or None when the pure-Python codec must do everything."""
    return load_optional_extension(MODULE, Path(__file__).parent, "the wire codec's C helper",
                                   log, "messages are encoded and decoded in pure Python")
