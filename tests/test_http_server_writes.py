"""The front door's HTTP server (`HttpServer`: uvicorn's httptools protocol with spear's
changes) with small ASGI apps of every shape: the response head leaves with the first body
message, so every shape of answer must still arrive whole and in order; idle keep-alive
connections are closed by the sweep."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from front_door_support import read_response
from spear.invocation.http_response_cycle import MessageSignal
from spear.invocation.http_server import HttpLimits, HttpServer

Send = Callable[[dict[str, Any]], Awaitable[None]]
BIG = bytes(range(256)) * 1024  # 256 KiB: past the size where the head is written alone


async def _answer(scope: dict[str, Any], receive: Any, send: Send) -> None:
    """The path says how to answer."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if path == "/raise":
        raise RuntimeError("the app broke before answering")
    if path == "/silent":
        return  # no answer at all
    if path == "/fail-after-start":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"10")]})
        raise RuntimeError("the app broke after starting its answer")
    if path == "/stream":  # no content-length: chunked, with pauses between pieces
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"one,", b"two,", b"three"):
            await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path in ("/pieces", "/too-long"):  # a length given, the body sent in pieces
        pieces = (b"one,", b"two,", b"three")
        declared = 13 if path == "/pieces" else 5
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % declared)]})
        for piece in pieces:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path in _ODD_HEADERS:
        await send({"type": "http.response.start", "status": 200 if path != "/no-content" else 204,
                    "headers": _ODD_HEADERS[path]})
        await send({"type": "http.response.body", "body": b"" if path == "/no-content" else b"ok"})
        return
    output = {"/big": BIG, "/empty": b""}.get(path, body)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % len(output))]})
    await send({"type": "http.response.body", "body": output})


_ODD_HEADERS: dict[str, list[tuple[bytes, bytes]]] = {
    "/split-value": [(b"content-length", b"2"), (b"x-a", b"1\r\nset-cookie: stolen=1")],
    "/split-name": [(b"content-length", b"2"), (b"x-a\r\nset-cookie", b"stolen=1")],
    "/upper": [(b"Content-Length", b"2"), (b"X-Mixed-Case", b"v\tw")],
    "/close": [(b"content-length", b"2"), (b"connection", b"Keep-Alive, Close")],
    "/no-content": [(b"x-a", b"1")],
}


@asynccontextmanager
async def _serving(limits: HttpLimits | None = None) -> AsyncIterator[int]:
    server = HttpServer(_answer, limits or HttpLimits())
    port = await server.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await server.stop()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return body
        body += data[:-2]


async def test_every_shape_of_answer_arrives_whole_on_one_connection() -> None:
    async with _serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for path, method, body, expected in (
                ("/echo", "POST", b"hello", b"hello"),
                ("/big", "GET", b"", BIG),
                ("/empty", "GET", b"", b""),
                ("/echo", "POST", b"x" * 70000, b"x" * 70000),
                ("/big", "HEAD", b"", b""),
                ("/echo", "POST", b"after head", b"after head"),
            ):
                writer.write(f"{method} {path} HTTP/1.1\r\nHost: t\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                response = await asyncio.wait_for(
                    read_response(reader, head=method == "HEAD"), 5)
                assert response.status == 200, path
                assert response.body == expected, path
                if method == "HEAD":
                    assert response.headers["content-length"] == str(len(BIG))
            writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert b"transfer-encoding: chunked" in head.lower()
            assert await asyncio.wait_for(_read_chunked(reader), 5) == b"one,two,three"
        finally:
            writer.close()


async def test_an_app_that_fails_after_starting_its_answer_closes_the_connection() -> None:
    async with _serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /fail-after-start HTTP/1.1\r\nHost: t\r\n\r\n")
            received = await asyncio.wait_for(reader.read(), 5)  # until the server closes
            # The head was already given to the connection: it goes out, then the close.
            assert received.startswith(b"HTTP/1.1 200 OK\r\n")
            assert received.endswith(b"\r\n\r\n")
        finally:
            writer.close()


async def test_an_app_that_raises_or_returns_without_an_answer_gets_a_500_for_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with _serving() as port:
        for path in ("/raise", "/silent"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                response = await asyncio.wait_for(read_response(reader), 5)
                assert response.status == 500, path
                assert response.body == b"Internal Server Error"
                assert await asyncio.wait_for(reader.read(), 5) == b""  # and it closes
            finally:
                writer.close()
        # The server goes on serving.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok")
            assert (await asyncio.wait_for(read_response(reader), 5)).body == b"ok"
        finally:
            writer.close()
    messages = [record.getMessage() for record in caplog.records]
    assert any("Exception in ASGI application" in message for message in messages)
    assert any("returned without starting response" in message for message in messages)


async def test_an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not() -> None:
    async with _serving(HttpLimits(keep_alive_s=1)) as port:
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            request = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"
            idle_writer.write(request)
            assert (await read_response(idle_reader)).body == b"hi"
            loop = asyncio.get_running_loop()
            started = loop.time()
            for _ in range(5):  # 2.5 s of requests 0.5 s apart: never idle for 1 s
                busy_writer.write(request)
                assert (await asyncio.wait_for(read_response(busy_reader), 5)).body == b"hi"
                await asyncio.sleep(0.5)
            # The idle one was closed after its keep-alive (1 s, swept every 0.5 s).
            assert await asyncio.wait_for(idle_reader.read(), 5) == b""
            assert loop.time() - started < 5
            busy_writer.write(request)
            assert (await asyncio.wait_for(read_response(busy_reader), 5)).body == b"hi"
        finally:
            busy_writer.close()
            idle_writer.close()


async def test_response_headers_are_checked_lowered_and_honoured() -> None:
    async with _serving() as port:
        for path in ("/split-value", "/split-name"):  # response splitting: never written
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                received = await asyncio.wait_for(reader.read(), 5)
                assert b"stolen" not in received
                assert b"HTTP/1.1 200" not in received
            finally:
                writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /upper HTTP/1.1\r\nHost: t\r\n\r\n")
            response = await asyncio.wait_for(read_response(reader), 5)
            assert b"x-mixed-case: v\tw\r\n" in response.raw
            assert b"content-length: 2\r\n" in response.raw and response.body == b"ok"
            writer.write(b"GET /no-content HTTP/1.1\r\nHost: t\r\n\r\n")
            response = await asyncio.wait_for(read_response(reader), 5)
            assert response.status == 204
            assert b"transfer-encoding" not in response.raw.lower()
            writer.write(b"GET /close HTTP/1.1\r\nHost: t\r\n\r\n")
            response = await asyncio.wait_for(read_response(reader), 5)
            assert response.body == b"ok"
            assert await asyncio.wait_for(reader.read(), 5) == b""  # the app asked to close
        finally:
            writer.close()


async def test_stopping_with_idle_connections_leaves_no_task_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each connection's requests run on one task of its own; an idle connection's task ends
    when the server closes it, so stopping cancels nothing."""
    caplog.set_level(logging.INFO)
    server = HttpServer(_answer, HttpLimits())
    port = await server.start("127.0.0.1", 0)
    uvicorn_server = server._server
    assert uvicorn_server is not None
    state = uvicorn_server.server_state
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    try:
        for reader, writer in connections:  # each answers once, then idles
            writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
            assert (await asyncio.wait_for(read_response(reader), 5)).body == b"hi"
        assert len(state.tasks) == 5  # one waiting task per idle connection
        await server.stop()
        assert not state.tasks
        assert not state.connections
        for reader, _ in connections:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        assert not [r for r in caplog.records if "Cancel" in r.getMessage()]
    finally:
        for _, writer in connections:
            writer.close()


async def test_a_body_in_pieces_both_ways_arrives_whole() -> None:
    """A request body that arrives in pieces (the app waits for the rest) and an answer with
    a length sent in pieces; an answer longer than its length closes the connection."""
    async with _serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nfirst")
            await writer.drain()
            await asyncio.sleep(0.05)  # the app is waiting for the rest now
            writer.write(b"-last")
            assert (await asyncio.wait_for(read_response(reader), 5)).body == b"first-last"
            writer.write(b"GET /pieces HTTP/1.1\r\nHost: t\r\n\r\n")
            response = await asyncio.wait_for(read_response(reader), 5)
            assert response.body == b"one,two,three"
            writer.write(b"GET /too-long HTTP/1.1\r\nHost: t\r\n\r\n")
            received = await asyncio.wait_for(reader.read(), 5)  # until the server closes
            assert received.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"content-length: 5\r\n" in received
            assert len(received.split(b"\r\n\r\n", 1)[1]) <= 5
        finally:
            writer.close()


async def test_the_message_signal_wakes_every_waiter_and_survives_a_cancelled_one() -> None:
    signal = MessageSignal()
    first = asyncio.ensure_future(signal.wait())
    second = asyncio.ensure_future(signal.wait())
    third = asyncio.ensure_future(signal.wait())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    assert not second.done() and not signal.is_set()
    signal.set()
    assert await asyncio.wait_for(second, 1) is True
    assert await asyncio.wait_for(third, 1) is True
    assert first.cancelled()
    assert await signal.wait() is True  # set: no wait at all
    signal.clear()
    waiting = asyncio.ensure_future(signal.wait())
    await asyncio.sleep(0.01)
    assert not waiting.done()  # cleared: waits again
    signal.set()
    assert await asyncio.wait_for(waiting, 1) is True
