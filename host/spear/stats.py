"""Channel statistics: a cheap mutable recorder and the immutable snapshot callers see."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChannelStats:
    messages_sent: int
    messages_received: int
    bytes_sent: int
    bytes_received: int
    connection_errors: int
    timeout_errors: int
    requests_completed: int
    mean_latency_ms: float
    uptime_s: float
    # Messages received and thrown away: replies nobody waits for (a late reply to a request
    # that timed out, an id never sent) and unsolicited messages beyond the inbox's limit.
    messages_dropped: int = 0


class StatsRecorder:
    """Counters a channel bumps on its hot path; `snapshot()` computes a true mean latency."""

    __slots__ = (
        "_started",
        "bytes_received",
        "bytes_sent",
        "connection_errors",
        "latency_total",
        "messages_dropped",
        "messages_received",
        "messages_sent",
        "requests_completed",
        "timeout_errors",
    )

    def __init__(self) -> None:
        self._started = time.monotonic()
        self.messages_sent = 0
        self.messages_received = 0
        self.messages_dropped = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.connection_errors = 0
        self.timeout_errors = 0
        self.requests_completed = 0
        self.latency_total = 0.0

    def sent(self, nbytes: int) -> None:
        self.messages_sent += 1
        self.bytes_sent += nbytes

    def received(self, nbytes: int) -> None:
        self.messages_received += 1
        self.bytes_received += nbytes

    def completed(self, latency_s: float) -> None:
        self.requests_completed += 1
        self.latency_total += latency_s

    def snapshot(self) -> ChannelStats:
        done = self.requests_completed
        return ChannelStats(
            messages_sent=self.messages_sent,
            messages_received=self.messages_received,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            connection_errors=self.connection_errors,
            timeout_errors=self.timeout_errors,
            requests_completed=done,
            mean_latency_ms=(self.latency_total / done * 1000.0) if done else 0.0,
            uptime_s=time.monotonic() - self._started,
            messages_dropped=self.messages_dropped,
        )
