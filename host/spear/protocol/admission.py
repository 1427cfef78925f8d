"""Who may even try to authenticate: the pre-authentication budget of one listener.

A listener admits at most `max_pending` connections that have not authenticated yet; others
are closed at once, without reading a byte. Failed authentications drain a token bucket per
peer host (`burst`, refilled at `rate` per second); while a peer's bucket is empty its new
connections are refused the same way, so guessing tokens costs the guesser, and only the
guesser. Failures are logged in aggregate, at most one WARNING line per `log_interval`
seconds with the counts by reason, never one line per attempt (and never a token).

Thread-safe: the blocking pod listener and the asyncio host listeners both use it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from spear.protocol.limits import (
    AUTH_FAILURE_BURST,
    AUTH_FAILURE_LOG_INTERVAL,
    AUTH_FAILURE_RATE,
    MAX_PENDING_HANDSHAKES,
)

_clock = time.monotonic
# Peers whose failure buckets are remembered; beyond, the fullest (least suspicious) go.
MAX_TRACKED_PEERS = 4096


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class Admission:
    """Counts pending handshakes and failed authentications for one listener."""

    def __init__(
        self,
        name: str,
        logger: logging.Logger,
        *,
        max_pending: int = MAX_PENDING_HANDSHAKES,
        rate: float = AUTH_FAILURE_RATE,
        burst: int = AUTH_FAILURE_BURST,
        log_interval: float = AUTH_FAILURE_LOG_INTERVAL,
    ) -> None:
        self.name = name
        self._log = logger
        self.max_pending = max(1, max_pending)
        self._rate = rate
        self._burst = float(max(1, burst))
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        self._log_interval = log_interval
        self._lock = threading.Lock()
        self.pending = 0
        # Totals over the listener's life, for tests and metrics.
        self.failures = 0
        self.refused = 0
        self._window: collections.Counter[str] = collections.Counter()
        self._window_refused = 0
        self._window_started: float | None = None

    def try_admit(self, peer: str = "") -> bool:
        """Take a pending-handshake slot for a new connection from `peer` (its host); False
        means close it unread."""
        with self._lock:
            if self.pending >= self.max_pending or self._spent(peer):
                self.refused += 1
                self._window_refused += 1
                self._maybe_log()
                return False
            self.pending += 1
            return True

    def release(self) -> None:
        """The connection got in (or the listener dropped it): give its slot back."""
        with self._lock:
            self.pending -= 1

    def failed(self, reason: str, peer: str = "") -> None:
        """The connection failed to authenticate (wrong token, garbage, silence): give its
        slot back and charge `peer`'s failure budget."""
        with self._lock:
            self.pending -= 1
            self._charge(reason, peer)

    def charge(self, reason: str, peer: str = "") -> None:
        """A failed authentication that held no slot (a gRPC call with a wrong token)."""
        with self._lock:
            self._charge(reason, peer)

    def throttled(self, peer: str = "") -> bool:
        """True while `peer`'s failure budget is spent."""
        with self._lock:
            return self._spent(peer)

    def flush_log(self) -> None:
        """Log what the current window has collected now (at close)."""
        with self._lock:
            self._emit()

    # -- internals (lock held) ------------------------------------------------------------

    def _bucket(self, peer: str) -> _Bucket:
        now = _clock()
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_PEERS:
                self._forget_one()
            bucket = self._buckets[peer] = _Bucket(self._burst, now)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.stamp) * self._rate)
            bucket.stamp = now
        return bucket

    def _forget_one(self) -> None:
        # The oldest-touched peer goes, unless it is still throttled and another is not.
        for peer, bucket in self._buckets.items():
            if bucket.tokens >= 1.0:
                del self._buckets[peer]
                return
        self._buckets.popitem(last=False)

    def _spent(self, peer: str) -> bool:
        bucket = self._buckets.get(peer)
        if bucket is None:
            return False
        return self._bucket(peer).tokens < 1.0

    def _charge(self, reason: str, peer: str) -> None:
        bucket = self._bucket(peer)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)
        self._buckets.move_to_end(peer)
        self.failures += 1
        self._window[_short(reason)] += 1
        self._maybe_log()

    def _maybe_log(self) -> None:
        now = _clock()
        if self._window_started is None:
            # The first event of a quiet period is logged at once, the rest in aggregate.
            self._window_started = now
            self._emit()
            self._window_started = now
        elif now - self._window_started >= self._log_interval:
            self._emit()
            self._window_started = now

    def _emit(self) -> None:
        failed = sum(self._window.values())
        if not failed and not self._window_refused:
            self._window_started = None
            return
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self._window.most_common(5))
        self._log.warning(
            "%s: %d failed authentication(s)%s, %d connection(s) refused unread "
            "(pending cap %d, failure budget %.3g/s per peer)",
            self.name, failed, f" ({reasons})" if reasons else "", self._window_refused,
            self.max_pending, self._rate,
        )
        self._window.clear()
        self._window_refused = 0


def peer_host(peer: object) -> str:
    """The host part of a socket peer address (`('1.2.3.4', 5678)`, `ipv4:1.2.3.4:5678`),
    which failure budgets are kept by; "" for a Unix socket."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    if isinstance(peer, str):
        kind, _, rest = peer.partition(":")
        if kind in ("ipv4", "ipv6"):
            return rest.rsplit(":", 1)[0].strip("[]")
    return ""


def _short(reason: str) -> str:
    """The kind of a failure, without details a peer chose (ids, sizes)."""
    text = reason.split(":", 1)[0].strip()
    return text[:60] or "unknown"
