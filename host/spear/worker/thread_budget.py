"""How many handler threads a worker may run, shared by all its connections."""

from __future__ import annotations

import threading

from spear.protocol.limits import WORKER_MAX_THREADS


class ThreadBudget:
    """Handler threads a worker may run, shared by all its connections."""

    def __init__(self, limit: int = WORKER_MAX_THREADS) -> None:
        self.limit = max(1, limit)
        self._used = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._used >= self.limit:
                return False
            self._used += 1
            return True

    def give(self) -> None:
        with self._lock:
            self._used -= 1
