"""The HTTP front door on uvicorn, tried as users and attackers would: raw sockets for what
well-behaved clients never send, and the spearlet's capacity checked after every bad
request."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from front_door_support import (
    capacity_is_whole,
    exchange,
    functions_table,
    http_port,
    post_request,
    read_response,
    running_server,
)
from spear.invocation.server import FunctionServer


@pytest.fixture
async def server(wasm_fixture: Callable[[str], Path]) -> AsyncIterator[FunctionServer]:
    async with running_server(functions_table(wasm_fixture), max_body_bytes=65536,
                              max_buffered_bytes=200_000, head_timeout_s=1.0,
                              body_timeout_s=1.0) as front:
        yield front


async def test_a_chunked_body_is_echoed(server: FunctionServer) -> None:
    request = (b"POST /functions/echo/invoke HTTP/1.1\r\nHost: t\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n")
    response = await exchange(http_port(server), request)
    assert (response.status, response.body) == (200, b"hello, world")


async def test_expect_100_continue_is_answered_before_the_body_is_sent(
    server: FunctionServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port(server))
    try:
        writer.write(b"POST /functions/echo/invoke HTTP/1.1\r\nHost: t\r\n"
                     b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(b"hello")
        response = await asyncio.wait_for(read_response(reader), 5)
        assert (response.status, response.body) == (200, b"hello")
    finally:
        writer.close()


async def test_an_oversized_body_is_refused_before_it_is_read(server: FunctionServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port(server))
    try:
        writer.write(b"POST /functions/echo/invoke HTTP/1.1\r\nHost: t\r\n"
                     b"Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n")
        response = await asyncio.wait_for(read_response(reader), 5)
        assert response.status == 413  # no 100 Continue first: the body is never asked for
        assert response.headers["connection"] == "close"
        assert response.headers["x-spear-request-id"]
    finally:
        writer.close()
    chunked = (b"POST /functions/echo/invoke HTTP/1.1\r\nHost: t\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"8000\r\n" + b"x" * 0x8000 + b"\r\n" for _ in range(3)))
    assert (await exchange(http_port(server), chunked)).status == 413
    assert await capacity_is_whole(server, "echo")


@pytest.mark.parametrize("head", [
    b"Content-Length: 3\r\nContent-Length: 4\r\n",  # a proxy may honour the other one
    "Content-Length: \u00b2\r\n".encode(),  # isdigit() says yes; it is not a number
    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    b"Content-Length: -3\r\n",
    b"X-Spear-Meta-Tenant: a\x00b\r\nContent-Length: 3\r\n",
    b"X-Folded: a\r\n b\r\nContent-Length: 3\r\n",
])
async def test_malformed_requests_get_a_clean_400_and_lose_nothing(
    server: FunctionServer, head: bytes, caplog: pytest.LogCaptureFixture,
) -> None:
    request = b"POST /functions/meta/invoke HTTP/1.1\r\nHost: t\r\n" + head + b"\r\nabc"
    with caplog.at_level(logging.INFO):
        response = await exchange(http_port(server), request)
    assert response.status == 400
    assert response.headers["connection"] == "close"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert await capacity_is_whole(server, "echo")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e300", "0", "-1", "abc", ""])
async def test_a_bad_timeout_is_a_400_and_capacity_stays_whole(
    server: FunctionServer, value: str
) -> None:
    for _ in range(6):  # more than the function's capacity: a leak would show
        response = await exchange(http_port(server),
                                  post_request("echo", b"x", query=f"?timeout={value}"))
        assert response.status == 400, response.body
        assert b"timeout must be" in response.body
        assert response.headers["x-spear-request-id"]
    assert await capacity_is_whole(server, "echo")
    good = await exchange(http_port(server), post_request("echo", b"ok", query="?timeout=5"))
    assert (good.status, good.body) == (200, b"ok")


async def test_head_answers_like_get_without_a_body(server: FunctionServer) -> None:
    response = await exchange(http_port(server),
                              b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n", head=True)
    assert response.status == 200
    assert int(response.headers["content-length"]) > 0
    assert response.body == b""
    missing = await exchange(http_port(server), b"GET /healthz HTTP/1.0\r\n\r\n")
    assert missing.status == 200 and missing.json()["status"] == "ok"  # no Host is fine


async def test_every_response_carries_a_request_id_and_timeouts_have_one_shape(
    server: FunctionServer,
) -> None:
    port = http_port(server)
    seen = set()
    for request, status in [
        (post_request("echo", b"x"), 200),
        (post_request("fail", b"x"), 500),
        (post_request("missing", b"x"), 404),
        (post_request("spin", b""), 504),  # the function's own limit (0.3 s)
        (post_request("slow", b"3000", query="?timeout=0.25"), 504),  # the request's
        (b"GET /functions/echo/invoke HTTP/1.1\r\nHost: t\r\n\r\n", 405),
        (b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n", 404),
    ]:
        response = await exchange(port, request)
        assert response.status == status, response.body
        seen.add(response.headers["x-spear-request-id"])
        if status == 504:
            assert response.headers["x-spear-error-code"] == "timeout"
            assert b"did not answer within" in response.body
            # the limit that applied, as people write it (never 0.29999999 s)
            assert re.search(rb"within (300|250) ms\n$", response.body), response.body
    assert len(seen) == 7
    assert await capacity_is_whole(server, "echo")


async def test_metadata_headers_reach_the_function(server: FunctionServer) -> None:
    response = await exchange(http_port(server), post_request(
        "meta", b"tenant", headers={"X-Spear-Meta-Tenant": "acme"}))
    assert (response.status, response.body) == (200, b"acme")


async def test_an_oversized_head_is_refused_with_431(server: FunctionServer) -> None:
    huge = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    assert (await exchange(http_port(server), huge)).status == 431
    many = (b"GET /healthz HTTP/1.1\r\nHost: t\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n")
    assert (await exchange(http_port(server), many)).status == 431
    # The same on a kept-alive connection, after a good request.
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port(server))
    try:
        writer.write(post_request("echo", b"first"))
        assert (await asyncio.wait_for(read_response(reader), 5)).body == b"first"
        writer.write(huge)
        assert (await asyncio.wait_for(read_response(reader), 5)).status == 431
    finally:
        writer.close()
    big_body = post_request("echo", b"z" * 60000)  # a large first read that is mostly body
    assert (await exchange(http_port(server), big_body)).status == 200


async def test_a_head_or_body_that_stalls_is_cut_off_with_408(server: FunctionServer) -> None:
    port = http_port(server)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /functions/echo/invoke HTTP/1.1\r\nHost: t\r\n")  # never ends
        response = await asyncio.wait_for(read_response(reader), 10)
        assert response.status == 408
    finally:
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /functions/echo/invoke HTTP/1.1\r\nHost: t\r\n"
                     b"Content-Length: 60000\r\n\r\n" + b"x" * 1000)  # the rest never comes
        response = await asyncio.wait_for(read_response(reader), 10)
        assert response.status == 408
    finally:
        writer.close()
    assert server.app._buffered == 0  # the stalled body's reservation was given back
    assert await capacity_is_whole(server, "echo")


async def test_bodies_in_flight_share_one_byte_budget(server: FunctionServer) -> None:
    """max_buffered_bytes = 200 000: three stalled 60 KB uploads fit, a fourth does not."""
    port = http_port(server)
    writers = []
    try:
        for _ in range(3):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /functions/echo/invoke HTTP/1.1\r\nHost: t\r\n"
                         b"Content-Length: 60000\r\n\r\nxx")
            writers.append(writer)
        await asyncio.sleep(0.2)
        refused = await exchange(port, post_request("echo", b"y" * 60000))
        assert refused.status == 503
        assert refused.headers["x-spear-error-code"] == "server_busy"
    finally:
        for writer in writers:
            writer.close()
    for _ in range(100):
        if server.app._buffered == 0:
            break
        await asyncio.sleep(0.05)
    assert server.app._buffered == 0
    accepted = await exchange(port, post_request("echo", b"y" * 60000))
    assert accepted.status == 200


async def test_many_connections_are_bounded_and_clear(
    wasm_fixture: Callable[[str], Path], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with running_server(functions_table(wasm_fixture)[:1], max_connections=4,
                              grpc=False) as front:
        port = http_port(front)
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(6)]
        try:
            for _ in range(200):  # a flood past the limit: every one refused...
                response = await exchange(port, post_request("echo", b"x"))
                assert response.status == 503
        finally:
            for _, writer in idle:
                writer.close()
        # ...and logged in a bounded number of lines (not one warning per request)
        refused = [r for r in caplog.records if "more than 4 connections" in r.getMessage()]
        assert 1 <= len(refused) <= 60
        await asyncio.sleep(0.2)
        response = await exchange(port, post_request("echo", b"x"))
        assert (response.status, response.body) == (200, b"x")


async def test_pipelined_requests_are_answered_in_order(server: FunctionServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port(server))
    try:
        writer.write(b"".join(post_request("echo", f"n{i}".encode()) for i in range(5)))
        for i in range(5):
            response = await asyncio.wait_for(read_response(reader), 5)
            assert response.body == f"n{i}".encode()
    finally:
        writer.close()
