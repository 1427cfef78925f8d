"""Pending-request bookkeeping shared by the stream and gRPC channels.

Each in-flight request owns a future keyed by its `request_id`; the reader resolves it when
the reply arrives, and `fail_all` fails every one at once when the peer dies, so no caller
waits out its timeout on a dead channel. A duplicate id in flight is refused with
`DuplicateRequestId`, one request over the cap with `TooManyInFlight`, on every channel.
"""

from __future__ import annotations

import asyncio

from spear.errors import ChannelClosed, CommunicationError, DuplicateRequestId, TooManyInFlight
from spear.protocol.limits import HOST_MAX_IN_FLIGHT
from spear.protocol.messages import RuntimeMessage


class PendingRequests:
    __slots__ = ("_closed_reason", "_futures", "max_in_flight")

    def __init__(self, max_in_flight: int = HOST_MAX_IN_FLIGHT) -> None:
        self._futures: dict[str, asyncio.Future[RuntimeMessage]] = {}
        self._closed_reason: CommunicationError | None = None
        self.max_in_flight = max_in_flight

    def __len__(self) -> int:
        return len(self._futures)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._futures

    def register(self, request_id: str) -> asyncio.Future[RuntimeMessage]:
        """Reserve `request_id`; a duplicate in flight, one request over `max_in_flight` or a
        closed channel is refused."""
        if self._closed_reason is not None:
            raise ChannelClosed(str(self._closed_reason))
        if request_id in self._futures:
            raise DuplicateRequestId(f"request id {request_id!r} is already in flight")
        if len(self._futures) >= self.max_in_flight:
            raise TooManyInFlight(
                f"the channel already has {len(self._futures)} requests in flight, its maximum"
            )
        future: asyncio.Future[RuntimeMessage] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = future
        return future

    def discard(self, request_id: str) -> None:
        self._futures.pop(request_id, None)

    def resolve(self, request_id: str, reply: RuntimeMessage) -> bool:
        """Complete a pending request; False if nobody waits for it (late or unknown reply)."""
        future = self._futures.pop(request_id, None)
        if future is None or future.done():
            return False
        future.set_result(reply)
        return True

    def fail_all(self, reason: CommunicationError) -> None:
        """Fail everything in flight with `reason`, and refuse new requests from now on."""
        if self._closed_reason is None:
            self._closed_reason = reason
        futures, self._futures = self._futures, {}
        for future in futures.values():
            if not future.done():
                future.set_exception(reason)
                # The waiter may have gone already; do not warn about an unretrieved error.
                future.exception()
