"""One epoch ticker thread per engine: the clock that preempts guests past their deadline.

Wasmtime checks the engine's epoch at function entries and loop back-edges; a call whose
deadline (in ticks) has passed traps with `interrupt`. The ticker sleeps in long naps while
no guest is running with a deadline, so an idle host costs nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Any

TICK_SECONDS = 0.002
IDLE_NAP = 0.01


class EpochTicker:
    def __init__(self, lib: Any, engine: Any, shared: Any, tick: float = TICK_SECONDS) -> None:
        self._lib = lib
        # Native calls count themselves in `shared.running` (atomically, without the GIL) and
        # cannot wake us, so while idle we nap only IDLE_NAP: a deadline starts at most that late.
        self.shared = shared
        self._engine = engine
        self.tick = tick
        # Guest calls in progress with a deadline. Callers bump it, then wake the ticker if
        # `sleeping`; the ticker sets `sleeping`, then re-checks it. Both under the GIL.
        self.running_calls = 0
        self.sleeping = False
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="spear-epoch", daemon=True)
        self._thread.start()

    def ticks_for(self, seconds: float) -> int:
        # +1: the current tick may be almost over when the deadline is set.
        return max(1, int(seconds / self.tick) + 1)

    def call_started(self) -> None:
        """A Python-side call with a deadline begins (native calls count in `shared`)."""
        self.running_calls += 1
        if self.sleeping:
            self._wake.set()

    def call_finished(self) -> None:
        self.running_calls -= 1

    def _run(self) -> None:
        increment = self._lib.wasmtime_engine_increment_epoch
        engine = self._engine
        shared = self.shared
        while not self._stop:
            if self.running_calls <= 0 and shared.running <= 0:
                self._wake.clear()
                self.sleeping = True
                if self.running_calls <= 0:
                    self._wake.wait(IDLE_NAP)
                self.sleeping = False
                continue
            time.sleep(self.tick)
            increment(engine)

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
