"""`spear.asgi_app(spearlet)` as a plain ASGI application: called directly with no server,
and mounted inside another ASGI application."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import spear
from spear import FunctionSpec, RuntimeType, Spearlet


async def call(app: Any, method: str, path: str, body: bytes = b"", *,
               headers: list[tuple[bytes, bytes]] | None = None,
               query: bytes = b"", root_path: str = "") -> tuple[int, dict[bytes, bytes], bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "path": path, "raw_path": path.encode(), "root_path": root_path,
             "query_string": query, "headers": headers or [], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 2), "scheme": "http"}
    sent: list[dict[str, Any]] = []
    pieces = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return pieces.pop(0) if pieces else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    assert start["type"] == "http.response.start"
    return (start["status"], dict(start["headers"]),
            b"".join(m.get("body", b"") for m in sent[1:]))


@pytest.fixture
async def spearlet(wasm_fixture: Callable[[str], Path]) -> Any:
    async with Spearlet() as spearlet:
        await spearlet.deploy(FunctionSpec("echo", RuntimeType.WASM,
                                           artifact=str(wasm_fixture("echo"))))
        yield spearlet


async def test_a_plain_asgi_call_invokes_the_function(spearlet: Spearlet) -> None:
    app = spear.asgi_app(spearlet)
    status, headers, body = await call(app, "POST", "/functions/echo/invoke", b"plain",
                                       headers=[(b"content-length", b"5")])
    assert (status, body) == (200, b"plain")
    assert headers[b"x-spear-request-id"]
    status, _, body = await call(app, "GET", "/healthz")
    assert status == 200 and b'"echo":1' in body
    status, _, _ = await call(app, "POST", "/functions/echo/invoke", b"x",
                              query=b"timeout=nan")
    assert status == 400
    assert spearlet.load("echo") == {next(iter(spearlet.load("echo"))): 0}


async def test_the_app_answers_lifespan_events_without_touching_the_spearlet(
    spearlet: Spearlet,
) -> None:
    app = spear.asgi_app(spearlet)
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete",
                                         "lifespan.shutdown.complete"]
    assert (await spearlet.invoke("echo", b"still")).output_data == b"still"


async def test_mounted_under_a_prefix_in_starlette(spearlet: Spearlet) -> None:
    starlette = pytest.importorskip("starlette.applications")
    routing = pytest.importorskip("starlette.routing")
    outer = starlette.Starlette(routes=[routing.Mount("/spear", app=spear.asgi_app(spearlet))])
    status, _, body = await call(outer, "POST", "/spear/functions/echo/invoke", b"mounted",
                                 headers=[(b"content-length", b"7")])
    assert (status, body) == (200, b"mounted")
    status, _, _ = await call(outer, "GET", "/spear/healthz")
    assert status == 200


async def test_control_characters_never_reach_metadata(spearlet: Spearlet) -> None:
    """uvicorn's parser refuses a NUL in a header; another server might pass it on."""
    app = spear.asgi_app(spearlet)
    for value in (b"a\x00b", b"a\x1bb", b"a\x7fb"):
        status, headers, body = await call(
            app, "POST", "/functions/echo/invoke", b"x",
            headers=[(b"content-length", b"1"), (b"x-spear-meta-tenant", value)])
        assert status == 400 and b"control characters" in body
        assert headers[b"x-spear-error-code"] == b"invalid_request"
    status, _, _ = await call(app, "POST", "/functions/echo/invoke", b"x",
                              headers=[(b"content-length", b"\xc2\xb2")])
    assert status == 400
