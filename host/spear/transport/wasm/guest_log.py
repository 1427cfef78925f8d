"""A guest's log output (`spear.log`, WASI stdout and stderr), rate-limited per instance.

Guest lines go to the `spear.guest` logger, one record per line, the line as the message,
with the instance's label (`record.instance`) and, for WASI output, the stream
(`record.stream`) and the function that was running (`record.handler`, when known). A token
bucket bounds
records and bytes per second; what exceeds it is dropped and counted, and the count is
reported in one WARNING line when the guest may log again (at most once a second, and when
it is closed). The
bucket belongs to the instance, not to its store, so trapping and being replaced does not
refill it.
"""

from __future__ import annotations

import logging
import threading
import time

from spear.transport.wasm.limits import GuestLimits

guest_log = logging.getLogger("spear.guest")

MAX_LOG_LINE = 16 * 1024  # longer lines are cut here
LEVELS = {0: 5, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
STDERR_LEVEL = logging.WARNING
STREAM_LEVELS = {"stdout": logging.INFO, "stderr": STDERR_LEVEL}
REPORT_INTERVAL = 1.0  # seconds between two "records dropped" lines of one instance


class GuestLog:
    def __init__(self, label: str, limits: GuestLimits) -> None:
        self.label = label
        self._limits = limits
        self._records = float(limits.log_burst_records)
        self._bytes = float(limits.log_burst_bytes)
        self._refilled = time.monotonic()
        self.dropped_records = 0
        self.dropped_bytes = 0
        self._reported_records = 0
        self._reported_bytes = 0
        self._last_report = -REPORT_INTERVAL
        self._partial = {stream: bytearray() for stream in STREAM_LEVELS}
        self._lock = threading.Lock()

    def _allow(self, size: int) -> bool:
        limits = self._limits
        now = time.monotonic()
        elapsed = now - self._refilled
        self._refilled = now
        self._records = min(float(limits.log_burst_records),
                            self._records + elapsed * limits.log_records_per_s)
        self._bytes = min(float(limits.log_burst_bytes),
                          self._bytes + elapsed * limits.log_bytes_per_s)
        if self._records < 1 or self._bytes < size:
            self.dropped_records += 1
            self.dropped_bytes += size
            return False
        self._records -= 1
        self._bytes -= size
        return True

    def enabled(self, level: int) -> bool:
        return guest_log.isEnabledFor(level)

    def write(self, level: int, text: bytes) -> None:
        """One record; `text` is already cut to MAX_LOG_LINE by the caller."""
        with self._lock:
            if not self._allow(len(text)):
                return
            self._report_dropped(self._refilled)
        guest_log.log(level, "%s", text.decode("utf-8", "replace"),
                      extra={"instance": self.label})

    def write_stderr(self, data: memoryview) -> None:
        self.write_stream("stderr", data, None)

    def write_stream(self, stream: str, data: memoryview, function: str | None) -> None:
        """Bytes the guest wrote to WASI stdout or stderr: logged line by line."""
        lines: list[bytes] = []
        with self._lock:
            buffer = self._partial[stream]
            start = 0
            size = len(data)
            while start < size:
                room = MAX_LOG_LINE - len(buffer)
                chunk = data[start:start + room]
                newline = chunk.tobytes().find(b"\n")
                if newline >= 0:
                    buffer += chunk[:newline]
                    start += newline + 1
                elif len(chunk) == room:
                    buffer += chunk  # a full line without a newline: cut it here
                    start += room
                else:
                    buffer += chunk
                    break
                line = bytes(buffer)
                buffer.clear()
                if not self._allow(len(line)):
                    # The bucket is empty: count the rest of this write without splitting it.
                    rest = data[start:]
                    self.dropped_records += rest.tobytes().count(b"\n")
                    self.dropped_bytes += len(rest)
                    break
                lines.append(line)
            if lines:
                self._report_dropped(self._refilled)
        for line in lines:
            self._emit(stream, line, function)

    def _emit(self, stream: str, line: bytes, function: str | None) -> None:
        guest_log.log(STREAM_LEVELS[stream], "%s", line.decode("utf-8", "replace"),
                      extra={"instance": self.label, "stream": stream, "handler": function})

    def _report_dropped(self, now: float | None = None) -> None:
        records = self.dropped_records - self._reported_records
        if not records:
            return
        if now is not None:
            if now - self._last_report < REPORT_INTERVAL:
                return
            self._last_report = now
        size = self.dropped_bytes - self._reported_bytes
        self._reported_records = self.dropped_records
        self._reported_bytes = self.dropped_bytes
        guest_log.warning("guest %s logged too much: %d records (%d bytes) dropped",
                          self.label, records, size, extra={"instance": self.label})

    def close(self) -> None:
        with self._lock:
            for stream, buffer in self._partial.items():
                if buffer:
                    line = bytes(buffer)
                    buffer.clear()
                    if self._allow(len(line)):
                        self._emit(stream, line, None)
            self._report_dropped()
