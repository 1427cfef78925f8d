"""A channel that survives its peer restarting: it redials with backoff and swaps the new
connection in behind the same object.

Pods restart, get rescheduled, and lose links. The channels themselves stay simple: when a
connection breaks, everything pending on it fails at once with `ChannelClosed` and that
channel object is finished. `ReconnectingChannel` wraps one such channel, notices the break
(its `receive()` raises, or `connected` turns false), and redials with exponential backoff
and jitter, re-running the whole strategy (gRPC again first, then TCP). While it is
redialling, requests fail fast with `ChannelClosed`; they are never parked until a timeout.
Callers keep one object for the instance's whole life; `wait_connected()` waits for the
next connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from spear.channel.base import CommunicationChannel
from spear.channel.capabilities import ChannelCapabilities
from spear.errors import ChannelClosed, CommunicationError, Timeout
from spear.instance_id import RuntimeInstanceId
from spear.protocol.messages import RuntimeMessage
from spear.stats import ChannelStats

log = logging.getLogger(__name__)

Dial = Callable[[], Awaitable[CommunicationChannel]]
_CLOSED = object()


class ReconnectingChannel(CommunicationChannel):
    def __init__(
        self,
        instance_id: RuntimeInstanceId,
        dial: Dial,
        first: CommunicationChannel,
        *,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        poll_interval: float = 0.5,
    ) -> None:
        self._instance_id = instance_id
        self._dial = dial
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._poll = poll_interval
        self._inner: CommunicationChannel | None = None
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._closed = False
        self._connected_event = asyncio.Event()
        self._monitor: asyncio.Task[None] | None = None
        self._redial: asyncio.Task[None] | None = None
        self._retired = _StatsTotal()
        self._redial_failures = 0
        self.reconnects = 0
        self._capabilities = ChannelCapabilities(first.capabilities.transport, reconnects=True)
        self._install(first)

    def __repr__(self) -> str:
        return f"<ReconnectingChannel {self._instance_id.full_id} inner={self._inner!r}>"

    @property
    def instance_id(self) -> RuntimeInstanceId:
        return self._instance_id

    @property
    def capabilities(self) -> ChannelCapabilities:
        """The current connection's transport (the last one's while redialling); redials."""
        return self._capabilities

    @property
    def connected(self) -> bool:
        inner = self._inner
        return inner is not None and inner.connected

    @property
    def current(self) -> CommunicationChannel | None:
        """The connection in use now (None while redialling)."""
        return self._inner

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until a connection is up; `Timeout` if none within `timeout`."""
        if self._closed:
            raise ChannelClosed(f"channel to {self._instance_id.full_id} was closed")
        try:
            async with asyncio.timeout(timeout):
                while not self.connected:
                    self._connected_event.clear()
                    await self._connected_event.wait()
                    if self._closed:
                        raise ChannelClosed(f"channel to {self._instance_id.full_id} was closed")
        except TimeoutError:
            raise Timeout(
                f"{self._instance_id.full_id} did not reconnect within {timeout} s"
            ) from None

    # -- connection lifecycle -------------------------------------------------------------------

    def _install(self, inner: CommunicationChannel) -> None:
        self._inner = inner
        self._capabilities = ChannelCapabilities(inner.capabilities.transport, reconnects=True)
        self._monitor = asyncio.create_task(self._watch(inner))
        self._connected_event.set()

    async def _watch(self, inner: CommunicationChannel) -> None:
        """Forward the connection's unsolicited messages; notice when it dies."""
        receiving: asyncio.Future[RuntimeMessage] | None = None
        try:
            while True:
                if receiving is None:
                    receiving = asyncio.ensure_future(inner.receive())
                done, _ = await asyncio.wait({receiving}, timeout=self._poll)
                if receiving in done:
                    message = receiving.result()
                    receiving = None
                    self._inbox.put_nowait(message)
                elif not inner.connected:
                    break
        except CommunicationError:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # a connection's bug must not stop reconnection
            log.exception("watching %s failed", inner)
        finally:
            if receiving is not None:
                if receiving.done():
                    if not receiving.cancelled():
                        receiving.exception()  # retrieved: the break is handled below
                else:
                    receiving.cancel()
        await self._broken(inner)

    async def _broken(self, inner: CommunicationChannel) -> None:
        if inner is not self._inner or self._closed:
            return
        log.warning("connection to %s broke; reconnecting", self._instance_id.full_id)
        self._inner = None
        self._redial = asyncio.create_task(self._redial_loop())
        try:
            self._retired.add(await inner.get_stats())
            await asyncio.shield(inner.close())
        except CommunicationError as exc:  # it is gone either way
            log.debug("closing a broken connection failed: %s", exc)

    async def _redial_loop(self) -> None:
        delay = self._backoff_initial
        while not self._closed:
            try:
                inner = await self._dial()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._redial_failures += 1
                log.info("reconnecting %s failed: %s", self._instance_id.full_id, exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self._backoff_max)
                continue
            if self._closed:
                await inner.close()
                return
            self.reconnects += 1
            log.info("reconnected %s", self._instance_id.full_id)
            self._install(inner)
            return

    def _require(self) -> CommunicationChannel:
        if self._closed:
            raise ChannelClosed(f"channel to {self._instance_id.full_id} was closed")
        inner = self._inner
        if inner is None or not inner.connected:
            raise ChannelClosed(f"{self._instance_id.full_id} is disconnected (reconnecting)")
        return inner

    # -- CommunicationChannel -------------------------------------------------------------------

    async def send(self, message: RuntimeMessage) -> None:
        await self._require().send(message)

    async def receive(self) -> RuntimeMessage:
        if self._closed and self._inbox.empty():
            raise ChannelClosed(f"channel to {self._instance_id.full_id} was closed")
        item = await self._inbox.get()
        if item is _CLOSED:
            self._inbox.put_nowait(_CLOSED)
            raise ChannelClosed(f"channel to {self._instance_id.full_id} was closed")
        message: RuntimeMessage = item
        return message

    async def request_response(
        self, request: RuntimeMessage, timeout: float | None = None
    ) -> RuntimeMessage:
        return await self._require().request_response(request, timeout)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._connected_event.set()
        self._inbox.put_nowait(_CLOSED)
        tasks = [task for task in (self._monitor, self._redial) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        inner, self._inner = self._inner, None
        if inner is not None:
            self._retired.add(await inner.get_stats())
            await inner.close()

    async def get_stats(self) -> ChannelStats:
        """Totals over every connection this channel has had."""
        current = await self._inner.get_stats() if self._inner is not None else None
        return self._retired.snapshot(current, self._redial_failures)


class _StatsTotal:
    """Sums the stats of connections that are gone, so reconnects do not reset counters."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        self._parts: list[ChannelStats] = []

    def add(self, stats: ChannelStats) -> None:
        self._parts.append(stats)

    def snapshot(self, current: ChannelStats | None, extra_errors: int) -> ChannelStats:
        parts = [*self._parts, *([current] if current is not None else [])]
        done = sum(p.requests_completed for p in parts)
        latency = sum(p.mean_latency_ms * p.requests_completed for p in parts)
        return ChannelStats(
            messages_sent=sum(p.messages_sent for p in parts),
            messages_received=sum(p.messages_received for p in parts),
            bytes_sent=sum(p.bytes_sent for p in parts),
            bytes_received=sum(p.bytes_received for p in parts),
            connection_errors=sum(p.connection_errors for p in parts) + extra_errors,
            timeout_errors=sum(p.timeout_errors for p in parts),
            requests_completed=done,
            mean_latency_ms=latency / done if done else 0.0,
            uptime_s=asyncio.get_running_loop().time() - self._started,
            messages_dropped=sum(p.messages_dropped for p in parts),
        )
