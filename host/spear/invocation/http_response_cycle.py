"""The response side of the front door's HTTP protocol: uvicorn's request cycle, with a
response's head held until the first body message, so a small answer leaves in one write
(one syscall, one TCP segment) instead of uvicorn's two, and with the head rendered here
for the common case (header names already checked are remembered, values are checked in
one pass, the server's date header is rendered once per second). The checks are
uvicorn's own expressions; anything unusual (an access log, a paused or lost connection,
a chunked or streamed body) goes through uvicorn's code.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)


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


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request cycle, whose response head leaves together with the first body
    message (see `HeadHoldingWriter`), and is rendered here for the common case: header
    names already checked are remembered (they are mostly the same few), values are checked
    in one pass, and the server's default headers (the date) are rendered once per second,
    not once per response. The checks are uvicorn's own expressions; anything unusual (an
    access log, a paused or lost connection) goes through uvicorn's `send`."""

    transport: HeadHoldingWriter  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        writer = self.transport
        if self.response_started:
            await super().send(message)
            writer.flush()  # a HEAD answer or an empty body: nothing carried the head out
        elif (message["type"] != "http.response.start" or self.access_log
              or self.flow.write_paused or self.disconnected):
            await super().send(message)  # the unusual start: uvicorn writes its head itself
        else:
            writer.head = self._render_head(message)

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
        content = [STATUS_LINE[status], _rendered_defaults(self.default_headers)]
        values = []
        close = False
        for name, value in message.get("headers", ()):
            if name not in _checked_names:
                name = _checked_name(name)
            values.append(value)
            if name == b"content-length":
                if self.chunked_encoding is None:
                    self.expected_content_length = int(value.decode())
                    self.chunked_encoding = False
            elif name == b"transfer-encoding":
                if value.lower() == b"chunked":
                    self.expected_content_length = 0
                    self.chunked_encoding = True
            elif name == b"connection" and b"close" in [
                    token.lower().strip() for token in value.split(b",")]:
                self.keep_alive = False
                close = True
            content += (name, b": ", value, b"\r\n")
        if values and HEADER_VALUE_RE.search(b"\t".join(values)):  # tab is allowed in values
            raise RuntimeError("Invalid HTTP header value.")
        if not self.keep_alive and not close:
            content.append(b"connection: close\r\n")
        if (self.chunked_encoding is None and self.scope["method"] != "HEAD"
                and status not in (204, 304)):
            self.chunked_encoding = True  # neither a length nor chunked: uvicorn's default
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        return b"".join(content)


_MAX_CHECKED_NAMES = 256
_checked_names: set[bytes] = set()  # lower-case header names that passed HEADER_RE
_defaults: tuple[list[tuple[bytes, bytes]], bytes] = ([], b"")


def _checked_name(name: bytes) -> bytes:
    if HEADER_RE.search(name):
        raise RuntimeError("Invalid HTTP header name.")
    lowered = name.lower()
    if lowered == name and len(_checked_names) < _MAX_CHECKED_NAMES:
        _checked_names.add(lowered)
    return lowered


def _rendered_defaults(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The server's default headers as bytes; uvicorn replaces the list each second."""
    global _defaults
    if _defaults[0] is not headers:
        _defaults = (headers, b"".join(name.lower() + b": " + value + b"\r\n"
                                       for name, value in headers))
    return _defaults[1]
