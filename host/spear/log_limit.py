"""A bound on log lines that callers or workers can cause: failed invocations, refused HTTP
requests, a process worker's output.

Anyone who can reach a front door can make requests fail (a missing function, a draining
server, a full queue, a function that times out) as fast as the server answers; a worker can
print as fast as it likes. One log line per event would let them fill the operator's disk and
drown everything else in the log, so these lines pass through a `LogLimiter`: a token bucket
(`burst` lines at once, then `rate` per second; optionally a byte bucket too). What it holds
back is counted by kind and said in one line (at `level`), at most once per
`summary_interval` seconds: by the first line, written or held back, that comes
`summary_interval` or more after the first line held back (a flood that stops is summarised
by the next line after it, or by `flush()`). The total held back is `suppressed`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

DEFAULT_RATE = 10.0  # lines per second, sustained
DEFAULT_BURST = 50
DEFAULT_SUMMARY_INTERVAL = 10.0  # seconds
# Kinds counted in one summary; beyond, the rest go under "other" (kinds may come from guests).
MAX_KINDS = 32


class LogLimiter:
    """Decides which of a stream of log lines are written; thread-safe."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        summary_interval: float = DEFAULT_SUMMARY_INTERVAL,
        level: int = logging.WARNING,
        bytes_per_s: float | None = None,
        burst_bytes: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._level = level
        self._what = what
        self._rate = rate
        self._burst = float(max(1, burst))
        self._interval = summary_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = self._burst
        # Optionally bytes too (lines of any length): a second bucket, both must have room.
        self._byte_rate = bytes_per_s
        self._byte_burst = float(burst_bytes)
        self._byte_tokens = self._byte_burst
        self._stamp = clock()
        self._held: collections.Counter[str] = collections.Counter()
        self._held_since: float | None = None
        self.suppressed = 0  # over the limiter's life

    def allow(self, kind: str, size: int = 0) -> bool:
        """Whether the next line (of `kind`, `size` bytes) may be written now; False counts
        it as held back. May write the summary of what was held back first."""
        with self._lock:
            now = self._clock()
            passed = now - self._stamp
            self._tokens = min(self._burst, self._tokens + passed * self._rate)
            self._stamp = now
            allowed = self._tokens >= 1.0
            if self._byte_rate is not None:
                self._byte_tokens = min(self._byte_burst,
                                        self._byte_tokens + passed * self._byte_rate)
                allowed = allowed and self._byte_tokens >= size
                if allowed:
                    self._byte_tokens -= size
            if allowed:
                self._tokens -= 1.0
            else:
                self.suppressed += 1
                if kind not in self._held and len(self._held) >= MAX_KINDS:
                    kind = "other"
                self._held[kind] += 1
                if self._held_since is None:
                    self._held_since = now
            summary = (self._take_summary(now) if self._held_since is not None
                       and now - self._held_since >= self._interval else None)
        if summary is not None:
            self._log.log(self._level, "%s", summary, extra={"event": "log_lines_suppressed"})
        return allowed

    def flush(self) -> None:
        """Say what is held back now, whatever the interval (when the stream ends)."""
        with self._lock:
            summary = self._take_summary(self._clock()) if self._held else None
        if summary is not None:
            self._log.log(self._level, "%s", summary, extra={"event": "log_lines_suppressed"})

    def _take_summary(self, now: float) -> str:
        since = self._held_since if self._held_since is not None else now
        counts = ", ".join(f"{kind} {count}" for kind, count in self._held.most_common())
        total = sum(self._held.values())
        self._held.clear()
        self._held_since = None
        bound = f"{self._rate:g} lines/s"
        if self._byte_rate is not None:
            bound += f" or {self._byte_rate / 1024:g} KiB/s"
        return (f"{total} {self._what} not logged in the last {now - since:.0f} s "
                f"(over {bound}): {counts}")
