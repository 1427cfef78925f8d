"""The front doors in the test's own event loop: a real `FunctionServer` (uvicorn, grpc.aio)
on loopback ports, and raw-socket HTTP for what well-behaved clients never send."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spear.invocation.serve_config import parse_config
from spear.invocation.server import FunctionServer
from spearlet_support import TESTS_DIR


def functions_table(wasm_fixture: Any) -> list[dict[str, Any]]:
    """echo (WASM), spin (times out at 0.3 s), fail (WASM error 42), meta, slow (a Python
    worker sleeping for the input's milliseconds)."""
    return [
        {"name": "echo", "runtime": "wasm", "artifact": str(wasm_fixture("echo"))},
        {"name": "spin", "runtime": "wasm", "artifact": str(wasm_fixture("spin")),
         "limits": {"timeout_s": 0.3}},
        {"name": "fail", "runtime": "wasm", "artifact": str(wasm_fixture("multi")),
         "handler": "fail"},
        {"name": "meta", "runtime": "wasm", "artifact": str(wasm_fixture("metadata")),
         "handler": "get"},
        {"name": "slow", "runtime": "process",
         "command": [sys.executable, "-m", "spear.worker", "spearlet_handlers:slow"],
         "env": {"PYTHONPATH": str(TESTS_DIR)}},
    ]


@asynccontextmanager
async def running_server(
    functions: list[dict[str, Any]], *, base_dir: Path | None = None, **server: Any,
) -> AsyncIterator[FunctionServer]:
    settings = {"http": "127.0.0.1:0", "grpc": "127.0.0.1:0", **server}
    config = parse_config({"server": settings, "functions": functions},
                          base_dir=base_dir or TESTS_DIR, source="test")
    front = FunctionServer(config)
    await front.start()
    try:
        yield front
    finally:
        await front.stop()


def http_port(server: FunctionServer) -> int:
    assert server.http_address is not None
    return int(server.http_address.rsplit(":", 1)[1])


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> RawResponse:
    """One HTTP/1.1 response (Content-Length bodies, which is all the server sends)."""
    raw_head = await reader.readuntil(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = b"" if head or status in (100, 204, 304) else await reader.readexactly(length)
    return RawResponse(status, headers, body, raw_head + body)


async def exchange(port: int, data: bytes, *, head: bool = False,
                   timeout: float = 10.0) -> RawResponse:
    """Send `data` on a new connection, read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader, head=head), timeout)
    finally:
        writer.close()


def post_request(name: str, body: bytes, *, query: str = "",
                 headers: dict[str, str] | None = None) -> bytes:
    lines = [f"POST /functions/{name}/invoke{query} HTTP/1.1", "Host: test",
             f"Content-Length: {len(body)}"]
    lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def capacity_is_whole(server: FunctionServer, name: str) -> bool:
    """No capacity held by anyone, and the function still answers."""
    spearlet = server.spearlet
    if any(spearlet.load(name).values()):
        return False
    response = await spearlet.invoke(name, b"still here")
    return response.output_data == b"still here"
