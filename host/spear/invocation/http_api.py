"""The HTTP front door of `spear serve`, on asyncio streams (no web framework needed).

    POST /functions/{name}/invoke   raw request body in, raw output out
    GET  /functions                 the deployed functions (JSON)
    GET  /metrics                   Prometheus text exposition
    GET  /healthz                   200 while serving (JSON with instance counts)

Invoke options: `?timeout=SECONDS`; request headers `X-Spear-Meta-KEY: VALUE` become
metadata `KEY: VALUE` (key lower-cased). The reply carries `X-Spear-Request-Id` and
`X-Spear-Execution-Time-Ms`. Status codes: 200 success; 500 the function failed (body: its
error message, `X-Spear-Error-Code`); 504 timed out; 429 queue full (`Retry-After`); 404 no
such function; 413 body over the limit; 503 its instance died or the server is stopping;
400/405/411 malformed requests.

HTTP/1.1 with keep-alive and `Content-Length` bodies (chunked request bodies are refused
with 411). Header size, body size and idle time are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

from spear.errors import (
    ChannelClosed,
    CommunicationError,
    ExecutionFailed,
    InvalidConfiguration,
)
from spear.errors import Timeout as SpearTimeout
from spear.invocation.errors import FunctionNotFound, QueueFull
from spear.invocation.spearlet import Spearlet
from spear.messages import ExecutionStatus

log = logging.getLogger("spear.serve.http")

MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_BODY = 64 * 1024 * 1024
IDLE_TIMEOUT_S = 60.0
META_PREFIX = "x-spear-meta-"


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class HttpApi:
    """Serves one `Spearlet` over HTTP. `start()` binds; `port` is the bound port."""

    def __init__(self, spearlet: Spearlet, *, max_body_bytes: int = DEFAULT_MAX_BODY) -> None:
        self.spearlet = spearlet
        self.max_body_bytes = max_body_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(
            self._serve_connection, host, port, limit=MAX_HEADER_BYTES)
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let requests being served finish briefly, close idle connections."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._connections:
            _, pending = await asyncio.wait(self._connections, timeout=5.0)
            for task in pending:
                task.cancel()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while not self._stopping:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT_S):
                        head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await self._write(writer, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                      b"headers too large\n", close=True)
                    return
                keep_alive = await self._serve_request(head, reader, writer)
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_request(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        try:
            method, target, version, headers = _parse_head(head)
        except _HttpError as exc:
            await self._write(writer, exc.status, f"{exc}\n".encode(), close=True)
            return False
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        try:
            body = await self._read_body(headers, reader)
            status, payload, extra, content_type = await self._route(method, target, headers,
                                                                     body)
        except _HttpError as exc:
            status, payload, extra = exc.status, f"{exc}\n".encode(), exc.headers
            content_type = "text/plain; charset=utf-8"
            if status in (HTTPStatus.LENGTH_REQUIRED, HTTPStatus.REQUEST_ENTITY_TOO_LARGE):
                keep_alive = False  # the body was not read; the stream is out of step
        await self._write(writer, status, payload, headers=extra, content_type=content_type,
                          close=not keep_alive or self._stopping)
        return keep_alive

    async def _read_body(self, headers: dict[str, str], reader: asyncio.StreamReader) -> bytes:
        if "transfer-encoding" in headers:
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED,
                             "chunked bodies are not supported; send Content-Length")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise _HttpError(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        length = int(length_text)
        if length > self.max_body_bytes:
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             f"body of {length} bytes exceeds {self.max_body_bytes} bytes")
        return await reader.readexactly(length) if length else b""

    async def _route(
        self, method: str, target: str, headers: dict[str, str], body: bytes,
    ) -> tuple[HTTPStatus, bytes, dict[str, str], str]:
        url = urlsplit(target)
        path = url.path
        if path.startswith("/functions/") and path.endswith("/invoke"):
            if method != "POST":
                raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "use POST",
                                 {"Allow": "POST"})
            name = unquote(path[len("/functions/"):-len("/invoke")])
            return await self._invoke(name, parse_qs(url.query), headers, body)
        if method != "GET":
            raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "use GET", {"Allow": "GET"})
        if path == "/metrics":
            return HTTPStatus.OK, self.spearlet.metrics_text(), {}, CONTENT_TYPE_LATEST
        if path == "/healthz":
            status = HTTPStatus.SERVICE_UNAVAILABLE if self._stopping else HTTPStatus.OK
            report = {"status": "stopping" if self._stopping else "ok",
                      "functions": {spec.name: len(self.spearlet.instances(spec.name))
                                    for spec in self.spearlet.functions()}}
            return status, _json(report), {}, "application/json"
        if path in ("/functions", "/functions/"):
            listing = [{"name": spec.name, "runtime": spec.runtime.value,
                        "instances": len(self.spearlet.instances(spec.name)),
                        "min_instances": spec.min_instances,
                        "max_instances": spec.max_instances}
                       for spec in self.spearlet.functions()]
            return HTTPStatus.OK, _json({"functions": listing}), {}, "application/json"
        raise _HttpError(HTTPStatus.NOT_FOUND, f"no route for {path}")

    async def _invoke(
        self, name: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes,
    ) -> tuple[HTTPStatus, bytes, dict[str, str], str]:
        timeout: float | None = None
        if "timeout" in query:
            try:
                timeout = float(query["timeout"][0])
            except ValueError:
                raise _HttpError(HTTPStatus.BAD_REQUEST, "timeout must be seconds") from None
            if timeout <= 0:
                raise _HttpError(HTTPStatus.BAD_REQUEST, "timeout must be positive")
        metadata = {key[len(META_PREFIX):]: value for key, value in headers.items()
                    if key.startswith(META_PREFIX)}
        if self._stopping:
            raise _HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "server is stopping")
        try:
            response = await self.spearlet.invoke(name, body, timeout=timeout,
                                                  metadata=metadata)
        except FunctionNotFound as exc:
            raise _HttpError(HTTPStatus.NOT_FOUND, str(exc)) from None
        except QueueFull as exc:
            raise _HttpError(HTTPStatus.TOO_MANY_REQUESTS, str(exc), {"Retry-After": "1"}) \
                from None
        except SpearTimeout as exc:
            raise _HttpError(HTTPStatus.GATEWAY_TIMEOUT, str(exc)) from None
        except ChannelClosed as exc:
            raise _HttpError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from None
        except ExecutionFailed as exc:
            if exc.code == "input_too_large":
                raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc)) from None
            raise _HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc),
                             {"X-Spear-Error-Code": str(exc.code or "execution_failed")}) \
                from None
        except InvalidConfiguration as exc:
            raise _HttpError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        except CommunicationError as exc:
            raise _HttpError(HTTPStatus.BAD_GATEWAY, f"{type(exc).__name__}: {exc}") from None
        extra = {"X-Spear-Request-Id": response.request_id,
                 "X-Spear-Execution-Time-Ms": f"{response.execution_time_ms:.3f}"}
        if response.status is ExecutionStatus.SUCCESS:
            return HTTPStatus.OK, response.output_data, extra, "application/octet-stream"
        extra["X-Spear-Error-Code"] = response.error_code or "error"
        message = (response.error_message or "function failed").encode() + b"\n"
        status = (HTTPStatus.GATEWAY_TIMEOUT if response.status is ExecutionStatus.TIMEOUT
                  else HTTPStatus.INTERNAL_SERVER_ERROR)
        return status, message, extra, "text/plain; charset=utf-8"

    async def _write(
        self, writer: asyncio.StreamWriter, status: HTTPStatus, body: bytes, *,
        headers: dict[str, str] | None = None, content_type: str = "text/plain; charset=utf-8",
        close: bool = False,
    ) -> None:
        lines = [f"HTTP/1.1 {status.value} {status.phrase}",
                 f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}"]
        if close:
            lines.append("Connection: close")
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {_header_safe(value)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body)
        await writer.drain()


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        raise _HttpError(HTTPStatus.BAD_REQUEST, "undecodable request head") from None
    request_line, *header_lines = text[:-4].split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in header_lines:
        key, sep, value = line.partition(":")
        if not sep or not key or key != key.strip():
            raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed header line")
        headers[key.lower()] = value.strip()
    return method, target, version, headers


def _header_safe(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"
