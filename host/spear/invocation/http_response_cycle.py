"""The response side of the front door's HTTP protocol: uvicorn's request cycle, with a
response's head held until the first body message, so a small answer leaves in one write
(one syscall, one TCP segment) instead of uvicorn's two, and with the head rendered by
uvicorn's rules in one C call (`http_head`; the server's date header is rendered once per
second). Anything unusual (an access log, a paused or lost connection, a chunked or
streamed body) goes through uvicorn's code. A cycle is made per request, so
it is made cheaply: its fields set without uvicorn's eleven keyword arguments, and a
`MessageSignal` in place of an `asyncio.Event`; a body with a length is sent by its own
short step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from spear.invocation.http_head import render_head, render_head_python


class HeadHoldingWriter:
    """What a request cycle writes to: a response head put in `head` goes out with the next
    write (the first piece of the body), on `flush`, or when the connection closes. One per
    connection: its cycles answer one after another."""

    __slots__ = ("head", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self.head
        if head is not None:
            self.head = None
            if len(data) < _JOIN_BELOW:
                data = head + data
            else:  # a large body: no copy of it just to save one syscall
                self.transport.write(head)
        self.transport.write(data)

    def flush(self) -> None:
        head = self.head
        if head is not None:
            self.head = None
            self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)


_JOIN_BELOW = 64 * 1024


class MessageSignal:
    """What uvicorn's cycle keeps in an `asyncio.Event` (the request body arrived, or the
    connection ended), made without a deque or a loop check: one is made per request, and
    its waiters (the app's `receive`, rarely) are listed only when there are any."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            waiters = self._waiters
            if waiters:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter  # one future per waiter: cancelling one leaves the others waiting
            return True
        finally:
            self._waiters.remove(waiter)


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request cycle, whose response head leaves together with the first body
    message (see `HeadHoldingWriter`), and is rendered by `http_head.render_head` (uvicorn's
    rules), with the server's default headers (the date) rendered once per second, not once
    per response. Anything unusual (an access log, a paused or lost connection) goes through
    uvicorn's `send`."""

    transport: HeadHoldingWriter  # type: ignore[assignment]
    message_event: MessageSignal  # type: ignore[assignment]

    def __init__(
        self, scope: Any, transport: HeadHoldingWriter, flow: FlowControl,
        logger: logging.Logger, access_logger: logging.Logger, access_log: bool,
        default_headers: list[tuple[bytes, bytes]], expect_100_continue: bool,
        keep_alive: bool, on_response: Callable[..., None],
    ) -> None:
        # The state uvicorn's __init__ sets (its send, receive and protocol read it), set
        # without its eleven keyword arguments.
        self.scope = scope
        self.transport = transport
        self.flow = flow
        self.logger = logger
        self.access_logger = access_logger
        self.access_log = access_log
        self.default_headers = default_headers
        self.message_event = MessageSignal()
        self.on_response = on_response
        self.disconnected = False
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.body = bytearray()
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.chunked_encoding: bool | None = None
        self.expected_content_length = 0

    async def send(self, message: Any) -> None:
        writer = self.transport
        if self.response_started:
            if (self.chunked_encoding is False and not self.response_complete
                    and message["type"] == "http.response.body" and not self.disconnected
                    and not self.flow.write_paused and self.scope["method"] != "HEAD"):
                self._send_body(message)  # the common body: a length was given
                return
            await super().send(message)
            writer.flush()  # a HEAD answer or an empty body: nothing carried the head out
        elif (message["type"] != "http.response.start" or self.access_log
              or self.flow.write_paused or self.disconnected):
            await super().send(message)  # the unusual start: uvicorn writes its head itself
        else:
            writer.head = self._render_head(message)

    async def app_failed(self, exc: BaseException) -> None:
        """uvicorn's answer to an app that raised: a 500 if nothing was sent yet, else the
        connection closes."""
        self.logger.error("Exception in ASGI application\n", exc_info=exc)
        if not self.response_started:
            await self.send_500_response()
        else:
            self.transport.close()

    async def app_returned(self, result: Any) -> None:
        """uvicorn's checks of an app that returned something, or returned before its
        answer was complete."""
        if result is not None:
            self.logger.error("ASGI callable should return None, but returned '%s'.", result)
            self.transport.close()
        elif not self.response_started and not self.disconnected:
            self.logger.error("ASGI callable returned without starting response.")
            await self.send_500_response()
        elif not self.response_complete and not self.disconnected:
            self.logger.error("ASGI callable returned without completing response.")
            self.transport.close()

    def _send_body(self, message: Any) -> None:
        """uvicorn's body step for a response with a Content-Length, written out."""
        body = message.get("body", b"")
        size = len(body)
        if size > self.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        self.expected_content_length -= size
        if size:
            self.transport.write(body)
        else:
            self.transport.flush()
        if not message.get("more_body", False):
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    async def receive(self) -> Any:
        # uvicorn's, without a wait (a coroutine) for a body that is already here, and
        # without resuming reads that were never paused: the common small request.
        if self.waiting_for_100_continue or self.flow.read_paused:
            return await super().receive()
        if not self.disconnected and not self.response_complete:
            event = self.message_event
            if not event.is_set():
                await event.wait()
            event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        message = {"type": "http.request", "body": bytes(self.body),
                   "more_body": self.more_body}
        self.body = bytearray()
        return message

    def _render_head(self, message: Any) -> bytes:
        self.response_started = True
        self.waiting_for_100_continue = False
        status = message["status"]
        status_line = STATUS_LINE[status]
        defaults = _rendered_defaults(self.default_headers)
        headers = message.get("headers", ())
        may_chunk = self.scope["method"] != "HEAD" and status not in (204, 304)
        rendered = render_head(status_line, defaults, headers, self.keep_alive, may_chunk)
        if rendered is None:  # a shape the C helper leaves to Python
            rendered = render_head_python(status_line, defaults, headers, self.keep_alive,
                                          may_chunk)
        head, self.expected_content_length, self.chunked_encoding, self.keep_alive = rendered
        return head


_defaults: tuple[list[tuple[bytes, bytes]], bytes] = ([], b"")


def _rendered_defaults(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The server's default headers as bytes; uvicorn replaces the list each second."""
    global _defaults
    if _defaults[0] is not headers:
        _defaults = (headers, b"".join(name.lower() + b": " + value + b"\r\n"
                                       for name, value in headers))
    return _defaults[1]
