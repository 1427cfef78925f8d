"""The front door's HTTP protocol: uvicorn's httptools protocol, bounded and made cheaper.

uvicorn and httptools do HTTP: request parsing (a malformed request, two `Content-Length`
headers, `Content-Length: ²` or a NUL in a header value get a 400 and the connection is
closed), chunked bodies, `Expect: 100-continue` (answered when the app first reads the
body), keep-alive, HEAD, and `limit_concurrency`. Two things they leave open are closed here:

- the size of a request head: httptools gathers a header of any length in memory, so the
  bytes fed to the parser while a head is incomplete are counted, and a complete head is
  measured (`max_head_bytes`, and at most `max_headers` headers): over the limit the answer
  is 431 and the connection closes;
- time: a head must arrive within `head_timeout_s` of its first byte (or of the connection),
  a body within `body_timeout_s` of its head; otherwise 408 and close. The server's sweep
  calls `check_deadlines` on every connection, so a request costs two timestamps, not a
  timer.

Memory is then bounded: each connection holds at most one head and uvicorn's 64 KiB read
buffer until the app reads; the app bounds the bodies it gathers (`SpearAsgiApp`).

Per-request costs of uvicorn's protocol are taken out, because `spear serve` answers most
requests in tens of microseconds and they showed in its throughput:

- a response's head leaves with its body in one write (`http_response_cycle`);
- uvicorn arms a keep-alive timer after every response and cancels it on the next request;
  here the sweep closes a connection idle for `keep_alive_s`;
- uvicorn runs each request on a task of its own; here one task per connection runs the
  connection's requests one after another (the order HTTP/1.1 answers them in anyway) and
  ends when the connection closes. So requests on one connection share one context: an
  app that sets context variables sees its own earlier values there (the front door's app
  sets none);
- the request's scope is built from a per-connection copy (a bare path, the usual
  request, is not parsed again as a URL), and its body, when already here, is received
  without a wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from spear.invocation.http_response_cycle import HeadHoldingWriter, OneWriteCycle
from spear.log_limit import LogLimiter

log = logging.getLogger("spear.serve.http")
# Malformed or slow requests are the sender's choice: their log lines are bounded.
_refusal_lines = LogLimiter(log, "refused HTTP requests", level=logging.INFO)


def flush_refusal_lines() -> None:
    """Say now what the refusal log held back (a server stopping: no later line would)."""
    _refusal_lines.flush()


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_head_bytes: int = 64 * 1024
    max_headers: int = 100
    head_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: int = 5
    max_connections: int = 1024
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None  # clients must present a certificate signed by it


class _HeadTooLarge(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head and read deadlines, one write
    per small response, and keep-alive by sweep."""

    limits = HttpLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._writer = HeadHoldingWriter(transport)
        self._scope_base: dict[str, Any] = {
            "type": "http", "http_version": "1.1", "server": self.server,
            "client": self.client, "scheme": self.scheme, "root_path": self.root_path}
        self._head_bytes = 0  # bytes read while a head is incomplete (an upper bound)
        self._read_size = 0
        self._head_since: float | None = self.loop.time()
        self._body_since: float | None = None
        self._idle_since: float | None = None  # keep-alive: since the last response
        self._runner: asyncio.Task[None] | None = None
        self._queued: deque[tuple[OneWriteCycle, Any]] = deque()
        self._wake: asyncio.Future[None] | None = None

    def _start_asgi_task(self, cycle: OneWriteCycle, app: Any) -> None:  # type: ignore[override]
        # One task per connection runs its requests one after another (HTTP/1.1 answers
        # them in order anyway), instead of uvicorn's task per request: creating, tracking
        # and finishing a task cost more than most answers here. The task waits for the
        # next request, and ends when the connection closes.
        self._queued.append((cycle, app))
        runner = self._runner
        if runner is None or runner.done():
            self._runner = runner = self.loop.create_task(self._run_requests())
            self.tasks.add(runner)
            runner.add_done_callback(self.tasks.discard)
        else:
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)

    async def _run_requests(self) -> None:
        queued = self._queued
        while True:
            while queued:
                cycle, app = queued.popleft()
                # uvicorn's `run_asgi`, without a coroutine of its own around the app's.
                try:
                    result = await app(cycle.scope, cycle.receive, cycle.send)
                except BaseException as exc:  # as uvicorn: answered with a 500, or logged
                    await cycle.app_failed(exc)
                else:
                    if result is not None or not cycle.response_complete:
                        await cycle.app_returned(result)
                finally:
                    cycle.on_response = _nothing
            if self.transport.is_closing():
                return
            self._wake = wake = self.loop.create_future()
            try:
                await wake
            finally:
                self._wake = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)  # an idle connection's task ends with it

    def on_response_complete(self) -> None:
        # uvicorn's, without the per-response keep-alive timer: the sweep closes idle
        # connections instead.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()  # ours are OneWriteCycles
            self._start_asgi_task(cycle, app)  # type: ignore[arg-type]
        else:
            self._idle_since = self.loop.time()

    def data_received(self, data: bytes) -> None:
        self._idle_since = None
        self._read_size = size = len(data)
        if self._head_since is not None:
            self._head_bytes += size
        try:
            self.parser.feed_data(data)
        except _HeadTooLarge:
            self._refuse(431, "request head too large")
            return
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse(431, "request head too large")
            else:
                self._refuse(400, "malformed request")
            return
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
            return
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed request: {exc}")
            return
        if self._head_since is not None and self._head_bytes > self.limits.max_head_bytes:
            self._refuse(431, "request head too large")

    def on_message_begin(self) -> None:
        # uvicorn's per-request scope, from a copy of what stays the same on a connection.
        self.url = b""
        self.expect_100_continue = False
        headers: list[tuple[bytes, bytes]] = []
        self.headers = headers
        self.scope = scope = self._scope_base.copy()  # type: ignore[assignment]
        scope["asgi"] = {"version": self.asgi_version, "spec_version": "2.3"}
        scope["headers"] = headers
        scope["state"] = self.app_state.copy()
        self._head_bytes = self._read_size  # the read it starts in counts whole: an upper bound
        if self._head_since is None:
            self._head_since = self.loop.time()

    def on_headers_complete(self) -> None:
        """uvicorn's step from a parsed head to a running request, with the head's limits
        checked first, the request's cycle made as a `OneWriteCycle`, and a bounded log
        line for requests refused past `limit_concurrency`."""
        # The raw count covers heads spread over reads; a head that ended within one large
        # read is measured exactly only when that read was large (the common small request
        # pays one comparison).
        headers = self.headers
        limits = self.limits
        if len(headers) > limits.max_headers or (
                self._head_bytes > limits.max_head_bytes
                and len(self.url) + sum(len(k) + len(v) + 4 for k, v in headers)
                > limits.max_head_bytes):
            raise _HeadTooLarge
        self._head_since = None
        self._body_since = self.loop.time()
        parser = self.parser
        scope = self.scope
        http_version = parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        raw_path = self.url
        if raw_path[:1] == b"/" and b"?" not in raw_path and b"#" not in raw_path:
            query = b""  # a bare path (the usual request) is its own path: nothing to split
        else:
            url = httptools.parse_url(raw_path)
            raw_path, query = url.path, url.query or b""
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        root_path = self.root_path
        if root_path:
            path = root_path + path
            raw_path = root_path.encode("ascii") + raw_path
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = query
        app = self.app
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = service_unavailable
            if _refusal_lines.allow("503"):
                log.warning("refused a request from %s: more than %d connections or requests "
                            "at once", _client(self.client), limit,
                            extra={"event": "http_refused", "status": 503})
        previous = self.cycle
        self.cycle = cycle = OneWriteCycle(
            scope, self._writer, self.flow, self.logger, self.access_logger, self.access_log,
            self.server_state.default_headers, self.expect_100_continue,
            http_version != "1.0" and parser.should_keep_alive(), self.on_response_complete)
        if previous is None or previous.response_complete:
            self._start_asgi_task(cycle, app)
        else:  # pipelined: it starts when the one before it has answered
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))

    def check_deadlines(self, now: float) -> None:
        """Called by the sweep: 408 for a head or a body that is too slow."""
        if self.transport is None or self.transport.is_closing():
            return
        idle_since = self._idle_since
        if idle_since is not None and now - idle_since > self.timeout_keep_alive:
            self.transport.close()
            return
        head_since, body_since = self._head_since, self._body_since
        if head_since is not None and now - head_since > self.limits.head_timeout_s:
            if self.cycle is None or self.cycle.response_complete:
                self._refuse(408, "request head not received in time")
        elif body_since is not None and now - body_since > self.limits.body_timeout_s:
            cycle = self.cycle
            if cycle is None or not cycle.more_body or cycle.response_complete:
                self._body_since = None  # the body is complete (or answered): nothing to wait
            else:
                started = cycle.response_started
                self._abandon_cycle()
                if started:
                    self.transport.close()
                else:
                    self._refuse(408, "request body not received in time")

    def _abandon_cycle(self) -> None:
        """Tell the app its client is gone: its `receive()` returns `http.disconnect`, its
        `send()` does nothing (what uvicorn does when a connection is lost)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()

    def _refuse(self, status: int, message: str) -> None:
        if log.isEnabledFor(logging.INFO) and _refusal_lines.allow(str(status)):
            log.info("refused a request from %s: %d %s", _client(self.client), status,
                     message, extra={"event": "http_refused", "status": status})
        self._abandon_cycle()
        self._head_since = self._body_since = None
        body = (message.encode("ascii", "replace") + b"\n")
        reason = {400: b"Bad Request", 408: b"Request Timeout",
                  431: b"Request Header Fields Too Large"}.get(status, b"Error")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, reason, len(body), body))
        self.transport.close()


def _nothing() -> None:
    pass


def _client(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def protocol_class(limits: HttpLimits) -> type[BoundedHttpToolsProtocol]:
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})
