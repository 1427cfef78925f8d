"""A response head, rendered by uvicorn's rules: the C helper `spear.invocation._http_head`
(built from `native/http_head.c` with the package) or its Python twin here.

`render_head(status_line, defaults, headers, keep_alive, may_chunk)` returns the head's bytes
and what the request cycle must know about the answer: `(head, expected_content_length,
chunked_encoding, keep_alive)`. As in uvicorn's `send`, each header name must pass
`HEADER_RE` and each value `HEADER_VALUE_RE` (else `RuntimeError`, so a header can never
split the response), names are lowered, the first Content-Length (read by `int`) or a
`Transfer-Encoding: chunked` decides the framing, `Connection: close` ends keep-alive, and
an answer with neither a length nor chunked framing is chunked when it may have a body
(`may_chunk`). One difference, on purpose: a Content-Length is read from its bytes, so
digits of other scripts are refused (uvicorn decodes first and would take them).

Rendering was a fifth of the front door's Python per request, hence the C twin. It is
optional: an installation built without a C compiler, or a process started with
`SPEAR_NO_NATIVE=1`, renders in Python, and says so once. The C helper answers None for any
unusual shape of `headers` (a generator, str names, more than 64 headers), which the caller
then renders with the Python twin; tests/test_http_head.py checks that both give the same
answer on random and hostile input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE

from spear.native_trust import load_optional_extension

log = logging.getLogger("spear.serve.http")

MODULE = "spear.invocation._http_head"

Rendered = tuple[bytes, int, bool | None, bool]

_MAX_CHECKED_NAMES = 256
_checked_names: set[bytes] = set()  # lower-case header names that passed HEADER_RE


def render_head_python(status_line: bytes, defaults: bytes, headers: Iterable[Any],
                       keep_alive: bool, may_chunk: bool) -> Rendered:
    """The head by uvicorn's rules, in Python (the reference the C helper is tested
    against)."""
    content = [status_line, defaults]
    expected = 0
    chunked: bool | None = None
    close = False
    for name, value in headers:
        if name not in _checked_names:
            name = _checked_name(name)
        if HEADER_VALUE_RE.search(value):
            raise RuntimeError("Invalid HTTP header value.")
        if name == b"content-length":
            if chunked is None:
                expected = int(value)
                chunked = False
        elif name == b"transfer-encoding":
            if value.lower() == b"chunked":
                expected = 0
                chunked = True
        elif name == b"connection" and b"close" in [
                token.lower().strip() for token in value.split(b",")]:
            keep_alive = False
            close = True
        content += (name, b": ", value, b"\r\n")
    if not keep_alive and not close:
        content.append(b"connection: close\r\n")
    if chunked is None and may_chunk:
        chunked = True  # neither a length nor chunked: uvicorn's default
        content.append(b"transfer-encoding: chunked\r\n")
    content.append(b"\r\n")
    return b"".join(content), expected, chunked, keep_alive


def _checked_name(name: bytes) -> bytes:
    if HEADER_RE.search(name):
        raise RuntimeError("Invalid HTTP header name.")
    lowered = name.lower()
    if lowered == name and len(_checked_names) < _MAX_CHECKED_NAMES:
        _checked_names.add(lowered)
    return lowered


_native = load_optional_extension(MODULE, Path(__file__).parent,
                                  "the HTTP response head's C helper", log,
                                  "HTTP response heads are rendered in Python")


# The C helper's `render`, or the Python twin. The C helper answers None for a shape of
# `headers` it leaves to Python: the caller then calls `render_head_python`.
render_head: Callable[[bytes, bytes, Iterable[Any], bool, bool], Rendered | None] = (
    render_head_python if _native is None else _native.render)


def native_active() -> bool:
    """Whether heads are rendered by the C helper."""
    return _native is not None
