"""Response heads (`spear.invocation.http_head`): the C helper against its Python twin on
random and hostile headers (the same head, the same framing, the same error), both against
uvicorn's rules on known cases; and without the helper the Python twin renders every head,
saying so once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from spear.invocation import http_head
from spear.invocation.http_head import render_head_python

native = http_head._native
needs_native = pytest.mark.skipif(native is None, reason="the C helper is not active here")

STATUS = b"HTTP/1.1 200 OK\r\n"
DATE = b"date: Wed, 02 Dec 2026 22:00:00 GMT\r\n"

# Names and values near the special ones, in any case, with every kind of byte uvicorn's
# checks refuse, and lengths int() reads in its own ways.
special_names = st.sampled_from([b"content-length", b"Content-Length", b"CONTENT-LENGTH",
                                 b"transfer-encoding", b"Transfer-Encoding", b"connection",
                                 b"Connection", b"content-lengt", b"content-length ",
                                 b"x-spear-request-id", b""])
names = special_names | st.binary(max_size=20)
lengths = st.sampled_from([b"64", b" 64 ", b"6_4", b"+5", b"-1", b"0", b"", b"abc", b"1e3",
                           b"\xd9\xa3", b"99999999999999999999999", b"\t7\t", b"0x10"])
tokens = st.sampled_from([b"close", b"Close", b" CLOSE ", b"keep-alive", b"closed", b"",
                          b"\tclose\t", b"clo se"])
connection_values = st.lists(tokens, max_size=4).map(b",".join)
values = (lengths | connection_values
          | st.sampled_from([b"chunked", b"Chunked", b"chunked ", b"gzip, chunked"])
          | st.binary(max_size=30))
headers = st.lists(st.tuples(names, values) | st.lists(names | values, min_size=2, max_size=2)
                   .map(lambda pair: [pair[0], pair[1]]), max_size=12)


def outcome(render: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return "ok", render(*args)
    except Exception as exc:  # the type and message must agree too
        return type(exc).__name__, str(exc)


@needs_native
@given(headers, st.booleans(), st.booleans())
def test_the_c_helper_renders_as_the_python_twin(
    header_list: list[Any], keep_alive: bool, may_chunk: bool,
) -> None:
    args = (STATUS, DATE, header_list, keep_alive, may_chunk)
    assert outcome(native.render, *args) == outcome(render_head_python, *args)
    assert outcome(native.render, *args[:2], tuple(header_list), *args[3:]) == outcome(
        render_head_python, *args)


@needs_native
def test_the_c_helper_leaves_unusual_shapes_to_python() -> None:
    plain = [(b"content-length", b"2")]
    for unusual in (
        iter(plain),  # any iterable is allowed by ASGI; only lists and tuples are plain
        [("content-length", b"2")],  # str name
        [(b"content-length", "2")],  # str value
        [(b"content-length", bytearray(b"2"))],
        [(b"a", b"b", b"c")],
        [(b"content-length",)],
        [b"content-length: 2"],
        [(b"x-%d" % i, b"v") for i in range(65)],  # more than the C helper holds
    ):
        assert native.render(STATUS, DATE, unusual, True, True) is None
    assert native.render(STATUS, "date", plain, True, True) is None
    many = [(b"x-%d" % i, b"v") for i in range(64)]
    assert native.render(STATUS, DATE, many, True, True) == render_head_python(
        STATUS, DATE, many, True, True)


@pytest.mark.parametrize("render", [render_head_python, native.render] if native else
                         [render_head_python], ids=lambda render: render.__module__)
def test_heads_follow_uvicorns_rules(render: Callable[..., Any]) -> None:
    head, length, chunked, keep_alive = render(
        STATUS, DATE, [(b"Content-Type", b"text/plain"), (b"content-length", b"5"),
                       (b"Content-Length", b"9"), (b"x-tab", b"a\tb")], True, True)
    assert head == (STATUS + DATE + b"content-type: text/plain\r\ncontent-length: 5\r\n"
                    b"content-length: 9\r\nx-tab: a\tb\r\n\r\n")
    assert (length, chunked, keep_alive) == (5, False, True)  # the first length counts
    # Neither a length nor chunked: chunked, when the answer may have a body.
    assert render(STATUS, DATE, [], True, True) == (
        STATUS + DATE + b"transfer-encoding: chunked\r\n\r\n", 0, True, True)
    assert render(STATUS, DATE, (), True, False) == (STATUS + DATE + b"\r\n", 0, None, True)
    # A close asked for by the app is kept as written; one the server wants is added.
    assert render(STATUS, DATE, [(b"Connection", b"keep-alive, Close")], True, False) == (
        STATUS + DATE + b"connection: keep-alive, Close\r\n\r\n", 0, None, False)
    assert render(STATUS, DATE, [(b"content-length", b"0")], False, True) == (
        STATUS + DATE + b"content-length: 0\r\nconnection: close\r\n\r\n", 0, False, False)
    assert render(STATUS, DATE, [(b"content-length", b"3"),
                                 (b"transfer-encoding", b"CHUNKED")], True, True)[1:] == (
        0, True, True)
    for bad in ([(b"x-a\r\nset-cookie", b"1")], [(b"x a", b"1")], [(b"x:", b"1")]):
        with pytest.raises(RuntimeError, match="Invalid HTTP header name"):
            render(STATUS, DATE, bad, True, True)
    for bad in ([(b"x-a", b"1\r\nset-cookie: 1")], [(b"x-a", b"\x00")], [(b"x-a", b"\x7f")]):
        with pytest.raises(RuntimeError, match="Invalid HTTP header value"):
            render(STATUS, DATE, bad, True, True)
    with pytest.raises(ValueError):
        render(STATUS, DATE, [(b"content-length", b"\xd9\xa3")], True, True)  # not ASCII


def test_the_c_helper_in_this_installation_is_active_and_inside_the_package() -> None:
    if os.environ.get("SPEAR_NO_NATIVE"):
        pytest.skip("SPEAR_NO_NATIVE is set: the Python twin is under test")
    assert http_head.native_active(), (
        "the HTTP head's C helper was not built with this installation "
        "(was there a C compiler when it was installed?)")
    assert native is not None and native.__file__ is not None
    assert Path(native.__file__).parent == Path(http_head.__file__).parent
    assert http_head.render_head is native.render


def test_without_the_helper_heads_are_rendered_in_python_and_it_says_so() -> None:
    script = textwrap.dedent("""
        import logging
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        from spear.invocation import http_head
        assert not http_head.native_active()
        assert http_head.render_head is http_head.render_head_python
        print(http_head.render_head(b"S\\r\\n", b"", [(b"content-length", b"1")], True, True))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "SPEAR_NO_NATIVE": "1"}, timeout=60, check=True)
    assert "b'S\\r\\ncontent-length: 1\\r\\n\\r\\n', 1, False, True" in done.stdout
    assert done.stderr.count("rendered in Python") == 1
