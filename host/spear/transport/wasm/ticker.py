"""The epoch ticker of one engine: the clock that preempts guests past their deadline.

Wasmtime checks the engine's epoch at function entries and loop back-edges; a call whose
deadline (in ticks) has passed traps with `interrupt`. The ticker thread advances the epoch
every TICK_SECONDS while guest calls with a deadline run, keeps ticking for IDLE_GRACE after
the last one (so back-to-back calls never wait for it), then parks until a call wakes it.

Calls count themselves in two places: C calls (the native helper) atomically in the shared
`spear_ticker_t`, Python-side entries in `running_calls` under the GIL (or, with the native
helper loaded, through its atomic functions too). A call that starts while the ticker is
parked wakes it with one byte on a pipe. The thread belongs to its engine and stops with it.

With the native helper the thread is a C thread (`spear_ticker_start` in native/fastcall.c,
named `spear-epoch` for the OS): it never takes the GIL. A Python ticker must take the GIL
for every tick, which makes a busy thread (an event loop serving requests) hand the GIL over
and wait to get it back, hundreds of times a second, each time across CPUs. Without the
helper the same loop runs as a Python thread.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from typing import Any

TICK_SECONDS = 0.002
IDLE_GRACE = 0.05  # keep ticking this long after the last call before parking
PARKED_NAP = 1.0  # a parked ticker still looks around this often (stop, missed wakes)


class _PythonCounters:
    """Stand-in for `spear_ticker_t` where the native helper is not loaded."""

    running = 0
    started = 0
    sleeping = 0
    wake_fd = -1


class EpochTicker:
    def __init__(self, lib: Any, engine: Any, native: Any, native_ffi: Any,
                 tick: float = TICK_SECONDS, *, native_engine: Any = None,
                 native_increment: Any = None) -> None:
        """`native_engine` and `native_increment` (the engine and
        wasmtime_engine_increment_epoch as the helper's pointers) run the ticker as a C
        thread; without them (or without the helper) it is a Python thread."""
        self._lib = lib
        self._engine = engine
        self._native = native
        self.tick = tick
        self.tick_ns = int(tick * 1e9)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        if native is not None:
            self.shared: Any = native_ffi.new("spear_ticker_t *")
            self.shared.wake_fd = self._wake_w
        else:
            self.shared = _PythonCounters()
        # Python-side entries without the helper: counted here under the GIL.
        self.running_calls = 0
        self._started = 0
        self.sleeping = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self.in_c = False
        if native is not None and native_engine is not None and native_increment is not None:
            # The ticker as a C thread (native/fastcall.c): it never needs the GIL, so it
            # never makes a busy event loop hand the GIL over every tick.
            rc = native.spear_ticker_start(
                self.shared, native_increment, native_engine, self.tick_ns,
                int(IDLE_GRACE * 1e9), int(PARKED_NAP * 1e9), self._wake_r)
            self.in_c = rc == 0
        if not self.in_c:
            self._thread = threading.Thread(target=self._run, name="spear-epoch", daemon=True)
            self._thread.start()

    def ticks_for(self, seconds: float) -> int:
        # +1: the current tick may be almost over when the deadline is set.
        return max(1, int(seconds / self.tick) + 1)

    def call_started(self) -> None:
        """A guest entry made from Python with a deadline begins."""
        if self._native is not None:
            self._native.spear_ticker_enter(self.shared)
            return
        self.running_calls += 1
        self._started += 1
        if self.sleeping:
            self._wake()

    def call_finished(self) -> None:
        if self._native is not None:
            self._native.spear_ticker_leave(self.shared)
            return
        self.running_calls -= 1

    @property
    def running(self) -> int:
        """Guest calls with a deadline in progress (0 when idle)."""
        return int(self.shared.running) + self.running_calls

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\1")

    def _busy(self) -> tuple[bool, int]:
        started = int(self.shared.started) + self._started
        return (self.running_calls > 0 or self.shared.running > 0), started

    def _try_park(self) -> bool:
        self.sleeping = True  # Python-side entries check this under the GIL
        if self.running_calls > 0:
            self.sleeping = False
            return False
        if self._native is not None and not self._native.spear_ticker_try_sleep(self.shared):
            self.sleeping = False
            return False
        return True

    def _unpark(self) -> None:
        if self._native is not None:
            self._native.spear_ticker_awake(self.shared)
        self.sleeping = False
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass

    def _run(self) -> None:
        increment = self._lib.wasmtime_engine_increment_epoch
        engine = self._engine
        idle_ticks = max(1, int(IDLE_GRACE / self.tick))
        idle = 0
        last_started = -1
        while not self._stop:
            time.sleep(self.tick)
            if self._stop:
                break
            increment(engine)
            busy, started = self._busy()
            if busy or started != last_started:
                idle = 0
                last_started = started
                continue
            idle += 1
            if idle < idle_ticks:
                continue
            if self._try_park():
                if not self._stop:
                    select.select([self._wake_r], [], [], PARKED_NAP)
                self._unpark()
            idle = 0

    def stop(self) -> None:
        """Stop the thread (the engine is going away); waits for it (briefly, in Python)."""
        self._stop = True
        if self.in_c:
            self._native.spear_ticker_stop(self.shared)  # joins: it ticks no more
            self.in_c = False
        else:
            self._wake()
        # C calls must not write to the pipe once it is closed (none should be running now).
        self.shared.sleeping = 0
        self.shared.wake_fd = -1
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
