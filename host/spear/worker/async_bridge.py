"""`AsyncBridge`: where a blocking server's async handlers run.

The stream server's threads read requests; an async handler's request is handed to an event
loop (uvloop where installed) through `call_soon_threadsafe` and runs there as a task on the
`Dispatcher`. The loop is the pod worker's own when there is one, or a loop thread of the
bridge's own (the process worker with an async handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from spear.worker.dispatcher import Dispatcher
from spear.worker.event_loop import new_event_loop
from spear.worker.handler import failure
from spear.worker.session import Call


class AsyncBridge:
    def __init__(self, dispatcher: Dispatcher,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.dispatcher = dispatcher
        self._thread: threading.Thread | None = None
        if loop is None:
            loop = new_event_loop()
            self._thread = threading.Thread(target=loop.run_forever, name="spear-async-handlers",
                                            daemon=True)
            self._thread.start()
        self.loop = loop

    def start(self, call: Call) -> None:
        """From any thread: run `call` on the loop."""
        try:
            self.loop.call_soon_threadsafe(self._begin, call)
        except RuntimeError:  # the loop is closed: the worker is going away
            call.finish(failure(call.request.request_id, "worker is shutting down",
                                "unavailable"))

    def _begin(self, call: Call) -> None:
        if call.answered:
            return  # cancelled before it started
        self.dispatcher.start(call)
        cancel = call.on_cancel
        if cancel is not None:
            call.on_cancel = _threadsafe(self.loop, cancel)

    def close(self) -> None:
        """Stop the bridge's own loop thread (a borrowed loop stays its owner's)."""
        if self._thread is None:
            return
        loop = self.loop

        def stop() -> None:
            self.dispatcher.close()
            loop.stop()

        try:
            loop.call_soon_threadsafe(stop)
        except RuntimeError:
            return
        self._thread.join(timeout=2.0)
        if not self._thread.is_alive():
            loop.close()


def _threadsafe(loop: asyncio.AbstractEventLoop, fn: Callable[[], object]) -> Callable[[], None]:
    def call() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone, and the work with it
            loop.call_soon_threadsafe(fn)

    return call
