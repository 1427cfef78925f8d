"""The HTTP front door: an ASGI application over one `Spearlet`.

    POST /functions/{name}/invoke   raw request body in, raw output out
    GET  /functions                 the deployed functions (JSON)
    GET  /metrics                   Prometheus text exposition
    GET  /healthz                   200 while serving, 503 while draining (JSON)

`spear.asgi_app(spearlet)` returns it; `spear serve` runs it on uvicorn (httptools, uvloop),
and it mounts in any ASGI application (Starlette, FastAPI). HTTP itself (parsing, chunked
bodies, `Expect: 100-continue`, keep-alive, malformed requests) is the server's job; this
app bounds what it buffers: a body over `max_body_bytes` is refused with 413 before it is
read (from `Content-Length`, or as soon as a chunked body passes the limit), and all bodies
being read at once share `max_buffered_bytes` (beyond it: 503). Every option is checked
before any capacity is taken (`request_limits`); every response carries
`X-Spear-Request-Id`; errors map through `error_mapping`, the same table as gRPC.

This is the hot path of `spear serve`: one pass over the headers, no framework, no per-request
task, headers built from prepared bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from prometheus_client import CONTENT_TYPE_LATEST

from spear.invocation.error_mapping import (
    Failure,
    draining_failure,
    failure_of,
    failure_of_reply,
    log_failure,
)
from spear.invocation.errors import InvalidRequest
from spear.invocation.front_door_auth import BearerTokens
from spear.invocation.request_limits import check_metadata, parse_timeout
from spear.invocation.spearlet import Spearlet
from spear.messages import ExecutionResponse, ExecutionStatus

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

access_log = logging.getLogger("spear.access")

DEFAULT_MAX_BODY = 64 * 1024 * 1024
DEFAULT_MAX_BUFFERED = 256 * 1024 * 1024

_INVOKE_PREFIX = "/functions/"
_INVOKE_SUFFIX = "/invoke"
_INVOKE_PREFIX_LEN = len(_INVOKE_PREFIX)
_INVOKE_SUFFIX_LEN = len(_INVOKE_SUFFIX)
_META_PREFIX = b"x-spear-meta-"
_META_PREFIX_LEN = len(_META_PREFIX)
_OCTET = (b"content-type", b"application/octet-stream")
_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")
_RETRY = (b"retry-after", b"1")
_BEARER_CHALLENGE = (b"www-authenticate", b'Bearer realm="spear"')
_SUCCESS = ExecutionStatus.SUCCESS
_perf_counter = time.perf_counter
_INFO = logging.INFO


class SpearAsgiApp:
    """The ASGI callable. `draining` makes `/healthz` answer 503 and refuses new invocations
    (503, `Connection: close`); `in_flight` counts invocations running now, so a server can
    wait for them to finish."""

    def __init__(
        self,
        spearlet: Spearlet,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED,
        tokens: BearerTokens | None = None,
        protect_metrics: bool = False,
    ) -> None:
        self.spearlet = spearlet
        self.max_body_bytes = max_body_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self.tokens = tokens
        self.protect_metrics = protect_metrics
        self.draining = False
        self.in_flight = 0
        self._buffered = 0
        self._prefix = secrets.token_hex(4) + "-"
        self._ids = itertools.count(1)

    def new_request_id(self) -> str:
        return self._prefix + str(next(self._ids))

    # -- ASGI entry: POST /functions/{name}/invoke is the hot path, written out here ----------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return  # websocket and anything else: not ours; the server closes the connection
        path: str = scope["path"]
        root = scope.get("root_path")
        if root and path.startswith(root):
            path = path[len(root):]
        if not (path.startswith(_INVOKE_PREFIX) and path.endswith(_INVOKE_SUFFIX)):
            await self._other(scope, send, path)
            return
        started = _perf_counter()
        request_id = self._prefix + str(next(self._ids))
        name = path[_INVOKE_PREFIX_LEN:-_INVOKE_SUFFIX_LEN]  # ASGI paths come decoded
        if scope["method"] != "POST":
            await _send(send, 405, b"use POST\n", request_id,
                        [_TEXT, (b"allow", b"POST")], scope)
            return
        length = -1
        authorization: bytes | None = None
        meta: list[tuple[str, str]] | None = None
        timeout: float | None = None
        metadata: dict[str, str] | None = None
        try:
            for key, value in scope["headers"]:
                if key == b"content-length":
                    # uvicorn's parser has checked it already (one header, digits only);
                    # another server might not have.
                    if not value.isdigit():
                        raise InvalidRequest("Content-Length must be a number of bytes")
                    length = int(value)
                elif key.startswith(_META_PREFIX):
                    if meta is None:
                        meta = []
                    meta.append((key[_META_PREFIX_LEN:].decode("latin-1"),
                                 value.decode("latin-1")))
                elif key == b"authorization":
                    authorization = value
            if self.tokens is not None and not self.tokens.accepts_header(authorization):
                await self._unauthenticated(send, request_id, scope, close=length != 0)
                return
            query: bytes = scope["query_string"]
            if query:
                timeout = _timeout_option(query)
            if meta is not None:
                metadata = check_metadata(meta)
        except InvalidRequest as exc:
            # A body we did not read would be taken for the next request: close unless empty.
            await self._refuse(send, failure_of(exc, name, None), name, request_id, scope,
                               close=length != 0, started=started)
            return
        if self.draining:
            await self._refuse(send, draining_failure(), name, request_id, scope, close=True,
                               started=started)
            return
        if length > self.max_body_bytes:
            await self._refuse(send, _too_large(length, self.max_body_bytes), name, request_id,
                               scope, close=True, started=started)
            return
        # Reserve the whole declared body (a chunked body reserves as it arrives).
        reserved = length if length > 0 else 0
        if self._buffered + reserved > self.max_buffered_bytes:
            await self._refuse(send, _busy(), name, request_id, scope, close=True,
                               started=started)
            return
        self._buffered += reserved
        try:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body: bytes = message["body"]
            if message.get("more_body"):
                # Several pieces (a large or chunked body): gather them within the limits.
                chunks = bytearray()
                limit = self.max_body_bytes
                piece = body
                while True:
                    if len(chunks) + len(piece) > limit:
                        await self._refuse(send, _too_large_chunked(limit), name, request_id,
                                           scope, close=True, started=started)
                        return
                    chunks += piece
                    grow = len(chunks) - reserved
                    if grow > 0:  # chunked: reserve as it arrives
                        if self._buffered + grow > self.max_buffered_bytes:
                            await self._refuse(send, _busy(), name, request_id, scope,
                                               close=True, started=started)
                            return
                        self._buffered += grow
                        reserved += grow
                    if not message.get("more_body"):
                        break
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    piece = message["body"]
                body = bytes(chunks)
            self.in_flight += 1
            try:
                result = self.spearlet.begin(name, body, timeout=timeout, metadata=metadata,
                                             request_id=request_id)
                response = result if isinstance(result, ExecutionResponse) else await result
            except Exception as exc:
                failure = failure_of(exc, name, self._effective_timeout(name, timeout))
                await self._refuse(send, failure, name, request_id, scope,
                                   close=self.draining, started=started, exc=exc)
                return
            except asyncio.CancelledError:
                # The server is stopping past its drain time (this task is the request's own):
                # the client still gets an answer, and nobody gets a traceback.
                with contextlib.suppress(Exception):
                    await self._refuse(send, _stopped(), name, request_id, scope, close=True,
                                       started=started)
                return
            finally:
                self.in_flight -= 1
            if response.status is not _SUCCESS:
                failure = failure_of_reply(response, name, self._effective_timeout(name, timeout))
                await self._refuse(send, failure, name, request_id, scope, close=self.draining,
                                   started=started)
                return
            output = response.output_data
            headers = [_OCTET, (b"content-length", b"%d" % len(output)),
                       (b"x-spear-request-id", request_id.encode()),
                       (b"x-spear-execution-time-ms", b"%.3f" % response.execution_time_ms)]
            if self.draining:
                headers.append(_CLOSE)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": output})
            if access_log.isEnabledFor(_INFO):
                _log_access(scope, 200, name, request_id, started)
        finally:
            self._buffered -= reserved

    def _effective_timeout(self, name: str, timeout: float | None) -> float | None:
        if timeout is not None:
            return timeout
        try:
            return self.spearlet.function(name).limits.timeout_s
        except Exception:
            return None

    async def _refuse(
        self, send: Send, failure: Failure, name: str, request_id: str, scope: Scope, *,
        close: bool, started: float, exc: BaseException | None = None,
    ) -> None:
        headers = [_TEXT, (b"x-spear-error-code", _header_value(failure.kind))]
        if failure.retry_after:
            headers.append(_RETRY)
        if close:
            headers.append(_CLOSE)
        await _send(send, failure.http_status, failure.message.encode() + b"\n", request_id,
                    headers, scope)
        log_failure(failure, name, request_id, "http", exc)
        if access_log.isEnabledFor(logging.INFO):
            _log_access(scope, failure.http_status, name, request_id, started)

    async def _unauthenticated(self, send: Send, request_id: str, scope: Scope, *,
                               close: bool = False) -> None:
        headers = [_TEXT, _BEARER_CHALLENGE, (b"x-spear-error-code", b"unauthenticated")]
        if close:
            headers.append(_CLOSE)
        await _send(send, 401, b"a valid bearer token is required "
                               b"(Authorization: Bearer TOKEN)\n", request_id, headers, scope)
        if access_log.isEnabledFor(logging.INFO):
            _log_access(scope, 401, None, request_id, None)

    # -- everything else ------------------------------------------------------------------------

    async def _other(self, scope: Scope, send: Send, path: str) -> None:
        request_id = self.new_request_id()
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            status, body, headers = 405, b"use GET\n", [_TEXT, (b"allow", b"GET, HEAD")]
        elif path == "/healthz":
            report = {"status": "draining" if self.draining else "ok",
                      "functions": {spec.name: len(self.spearlet.instances(spec.name))
                                    for spec in self.spearlet.functions()}}
            status = 503 if self.draining else 200
            body, headers = _json(report), [_JSON]
        elif path in ("/functions", "/functions/", "/metrics"):
            protected = path != "/metrics" or self.protect_metrics
            if protected and self.tokens is not None and not self.tokens.accepts_header(
                    _header(scope, b"authorization")):
                await self._unauthenticated(send, request_id, scope)
                return
            if path == "/metrics":
                status, body = 200, self.spearlet.metrics_text()
                headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
            else:
                listing = [{"name": spec.name, "runtime": spec.runtime.value,
                            "instances": len(self.spearlet.instances(spec.name)),
                            "min_instances": spec.min_instances,
                            "max_instances": spec.max_instances}
                           for spec in self.spearlet.functions()]
                status, body, headers = 200, _json({"functions": listing}), [_JSON]
        else:
            status, body, headers = 404, f"no route for {path[:200]}\n".encode(), [_TEXT]
        await _send(send, status, body, request_id, headers, scope)
        if access_log.isEnabledFor(logging.INFO):
            _log_access(scope, status, None, request_id, None)


def asgi_app(
    spearlet: Spearlet,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED,
    tokens: BearerTokens | None = None,
    protect_metrics: bool = False,
) -> SpearAsgiApp:
    """The HTTP front door of `spearlet` as an ASGI application (see the module docstring).

    Mount it anywhere, e.g. `Mount("/spear", app=spear.asgi_app(spearlet))` in Starlette.
    The spearlet's lifecycle stays the caller's: the app answers `lifespan` events without
    starting or stopping anything."""
    return SpearAsgiApp(spearlet, max_body_bytes=max_body_bytes,
                        max_buffered_bytes=max_buffered_bytes, tokens=tokens,
                        protect_metrics=protect_metrics)


# -- helpers -------------------------------------------------------------------------------------


async def _send(send: Send, status: int, body: bytes, request_id: str,
                headers: list[tuple[bytes, bytes]], scope: Scope) -> None:
    headers.append((b"content-length", b"%d" % len(body)))
    headers.append((b"x-spear-request-id", request_id.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body",
                "body": b"" if scope["method"] == "HEAD" else body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _timeout_option(query: bytes) -> float | None:
    """`?timeout=SECONDS` from a query string (the last one wins), checked."""
    timeout = None
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key == "timeout":
            timeout = parse_timeout(value)
    return timeout


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _header_value(text: str) -> bytes:
    """A header-safe rendering of a guest-chosen string (error codes): printable ASCII."""
    cleaned = "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in text[:128])
    return cleaned.encode("ascii")


def _too_large(length: int, limit: int) -> Failure:
    return Failure(413, "INVALID_ARGUMENT", "body_too_large",
                   f"body of {length} bytes exceeds the limit of {limit} bytes")


def _too_large_chunked(limit: int) -> Failure:
    return Failure(413, "INVALID_ARGUMENT", "body_too_large",
                   f"body exceeds the limit of {limit} bytes")


def _stopped() -> Failure:
    return Failure(503, "UNAVAILABLE", "unavailable",
                   "the server stopped before the function answered", retry_after=True)


def _busy() -> Failure:
    return Failure(503, "UNAVAILABLE", "server_busy",
                   "too many request bodies are being received at once; retry shortly",
                   retry_after=True)


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def _log_access(scope: Scope, status: int, function: str | None, request_id: str,
                started: float | None) -> None:
    duration_ms = None if started is None else round((_perf_counter() - started) * 1000.0, 3)
    client = scope.get("client")
    access_log.info(
        "%s %s %d%s", scope["method"], scope["path"][:200], status,
        "" if duration_ms is None else f" {duration_ms:g} ms",
        extra={"event": "access", "method": scope["method"], "path": scope["path"][:200],
               "status": status, "function": function, "request_id": request_id,
               "duration_ms": duration_ms,
               "client": f"{client[0]}:{client[1]}" if client else None})
