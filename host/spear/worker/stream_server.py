"""Serve one authenticated stream connection with blocking threads, not an event loop.

The process worker (and each host connected to a pod's TCP port) is served by threads that
take turns in two roles: *reading* (`recv_into` one reusable buffer, split frames, hand each
message to the `WorkerSession`) and *running* a synchronous handler. A thread that has just
read runs the requests it found itself, right there, and writes their replies in one send:
a round trip costs one `recv` and one `send` on the worker, with no event-loop iteration and
no hand-off between threads. That is the common case, and it is decided per function: one
whose recent calls all finished within `QUICK` runs inline.

When requests overlap the threads work as leader and followers: a request for a function
that is not known to be quick wakes (or starts) another thread, which takes over reading
while the first runs the handler. A sentinel thread is the safety net: when a handler that
was run inline turns slow, within `TAKEOVER` it wakes a thread to read and to take the
requests still waiting, so a slow request never holds up the connection. It also answers
`timeout` on time for requests with a `timeout_ms` (the handler thread cannot be stopped;
its late result is dropped) and ends a drain that runs out of time.

Back-pressure needs no code: a thread reads only when it has nothing queued to run, and at
most `max_threads` run at once, so a host that sends faster than handlers finish fills the
socket buffer and feels it. Async handlers run on an `AsyncBridge` loop thread instead.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from spear.errors import InvalidMessage
from spear.protocol.codec import decode as _decode
from spear.protocol.codec import success_frame as _success_frame
from spear.protocol.framing import HEADER_SIZE, ReceiveBuffer, header
from spear.protocol.limits import WORKER_MAX_IN_FLIGHT
from spear.protocol.messages import ExecutionRequest, ExecutionResponse, Shutdown
from spear.worker.deadlines import DeadlineQueues
from spear.worker.handler import Handler, call_sync, failure, output_response, timed_out
from spear.worker.session import DUPLICATE, Call, WorkerSession
from spear.worker.thread_budget import ThreadBudget

if TYPE_CHECKING:
    from spear.worker.async_bridge import AsyncBridge

log = logging.getLogger(__name__)

DEFAULT_DRAIN_TIMEOUT = 30.0
# A function whose last QUICK_STREAK calls each finished within QUICK_MS runs inline on the
# thread that read its request.
QUICK_MS = 0.5
QUICK_STREAK = 3
# Functions whose speed is remembered (names come from the host; the table stays bounded).
MAX_LEARNED = 1024
# An inline handler running longer than this lets another thread take over reading.
TAKEOVER = 0.002
# How often the sentinel looks while nothing runs (it looks every TAKEOVER while busy).
IDLE_LOOK = 0.05

# One clock for start times, deadlines and the sentinel (handler.py times with it too).
_clock = time.perf_counter
_get_ident = threading.get_ident
_READ = object()
_EXIT = object()


class StreamServer:
    """One connection. `serve()` blocks until it ends; `stop()` (any thread, a signal
    handler too) drains it."""

    def __init__(
        self,
        sock: socket.socket,
        handler: Handler,
        *,
        received: ReceiveBuffer,
        bridge: AsyncBridge | None = None,
        threads: ThreadBudget | None = None,
        max_in_flight: int = WORKER_MAX_IN_FLIGHT,
        allow_shutdown: bool = True,
        on_shutdown: Callable[[Shutdown], None] | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        idle_timeout: float | None = None,
        name: str = "host",
    ) -> None:
        self._sock = sock
        self._handler = handler
        self._rx = received
        self._bridge = bridge
        self._budget = threads or ThreadBudget()
        self._drain_timeout = drain_timeout
        self._idle_timeout = idle_timeout
        self._on_shutdown_hook = on_shutdown
        self.name = name
        self.session = session = WorkerSession(
            self, self._send, max_message_size=received.max_frame, max_in_flight=max_in_flight,
            allow_shutdown=allow_shutdown, on_shutdown=self._on_shutdown, on_idle=self._drained,
        )
        self._calls = session.calls
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # threads wait here for a duty
        self._look = threading.Condition(self._lock)  # the sentinel waits here
        self._write_lock = threading.Lock()
        self._jobs: collections.deque[Call] = collections.deque()  # registered, waiting
        self._batch: list[Call] = []  # registered by the reading thread, queued after its read
        self._reader: int | None = None  # the thread that holds the reading role
        self._idle = 0  # threads parked in _work.wait()
        self._threads = 0
        # Thread -> what it runs now: (request, started, token, its inline queue, inline?).
        # The token decides who answers an inline request: the thread, or (once the
        # sentinel took it) the session.
        self._busy: dict[int, tuple[ExecutionRequest, float, list[bool],
                                    collections.deque[ExecutionRequest], bool]] = {}
        self._adopted: dict[int, Call] = {}
        self._deadlines = DeadlineQueues()
        self._drain_until: float | None = None
        self._quick: dict[str, int] = {}
        # Where quick functions are looked up before running inline (None: async handlers
        # run on the bridge, never inline).
        self._inline_quick = self._quick if bridge is None else None
        self._ended = threading.Event()
        self._leftover = True
        self._closed = False
        self.end_reason = ""

    # -- the Runner interface (called by the session on the reading thread) -------------

    def start(self, call: Call) -> None:
        if self._bridge is not None:
            self._bridge.start(call)
        else:
            self._batch.append(call)

    # -- life cycle ---------------------------------------------------------------------

    def serve(self) -> str:
        """Serve until the connection ends; returns why it ended."""
        self._sock.settimeout(self._idle_timeout)
        with self._lock:
            self._spawn_locked(required=True)
        sentinel = threading.Thread(target=self._sentinel, name=f"spear-sentinel:{self.name}",
                                    daemon=True)
        sentinel.start()
        self._ended.wait()
        with contextlib.suppress(OSError):
            self._sock.close()
        return self.end_reason

    def stop(self, graceful: bool = True, timeout: float | None = None) -> None:
        """Drain (refuse new requests, finish those in flight for up to `timeout` s, then
        close) or, not graceful, close now."""
        if not graceful:
            self._end("stopped")
            return
        if self.session.begin_drain() and not self._busy:
            self._end("drained")
            return
        with self._lock:
            limit = self._drain_timeout if timeout is None else timeout
            until = _clock() + limit
            if self._drain_until is None or until < self._drain_until:
                self._drain_until = until
            self._look.notify()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the connection has ended (or `timeout`); True if it has."""
        return self._ended.wait(timeout)

    def _on_shutdown(self, message: Shutdown) -> None:
        if self._on_shutdown_hook is not None:
            self._on_shutdown_hook(message)
        self.stop(message.graceful, message.timeout_ms / 1000.0)

    def _drained(self) -> None:
        if not self._busy:
            self._end("drained")
        # else: the sentinel ends it once the inline requests still running are answered

    def _end(self, reason: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.end_reason = reason
            self._idle = 0
            self._work.notify_all()
            self._look.notify_all()
        for call in self.session.close():
            if call.on_cancel is not None:
                with contextlib.suppress(Exception):
                    call.on_cancel()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
        self._ended.set()

    # -- threads --------------------------------------------------------------------------

    def _spawn_locked(self, *, required: bool = False) -> bool:
        budgeted = self._budget.take()
        if not budgeted and not required:
            return False
        self._threads += 1
        thread = threading.Thread(target=self._thread_main, args=(budgeted,),
                                  name=f"spear-worker:{self.name}", daemon=True)
        thread.start()
        return True

    def _wake_locked(self, count: int) -> None:
        """Get `count` more threads working: parked ones first, then new ones."""
        woken = min(count, self._idle)
        if woken:
            self._idle -= woken
            self._work.notify(woken)
        for _ in range(count - woken):
            if not self._spawn_locked():
                break

    def _thread_main(self, budgeted: bool) -> None:
        inline: collections.deque[ExecutionRequest] = collections.deque()
        try:
            while True:
                duty = self._next_duty()
                if duty is _EXIT:
                    return
                if duty is _READ:
                    self._read(inline)
                else:
                    self._run(duty)  # type: ignore[arg-type]
        except Exception:  # a bug of ours: end the connection rather than hang the host
            log.exception("worker thread of %s failed", self.name)
            self._end("internal error")
        finally:
            with self._lock:
                self._threads -= 1
                if self._reader == _get_ident():
                    self._reader = None
            if budgeted:
                self._budget.give()

    def _next_duty(self) -> object:
        with self._lock:
            while True:
                if self._jobs:
                    return self._jobs.popleft()
                if self._closed:
                    return _EXIT
                if self._reader is None:
                    self._reader = _get_ident()
                    return _READ
                self._idle += 1  # the waker takes it back off
                self._work.wait()

    # -- reading ------------------------------------------------------------------------

    def _read(self, inline: collections.deque[ExecutionRequest]) -> None:
        """Read and serve until this thread has to give up the reading role."""
        me = _get_ident()
        rx = self._rx
        sock = self._sock
        while True:
            if self._leftover:
                # Frames that arrived with the handshake are already in the buffer.
                self._leftover = False
                count = -1
            else:
                try:
                    count = sock.recv_into(rx.writable())
                except TimeoutError:
                    if not self._calls and not self._busy:
                        log.info("closing %s: idle for %.3g s", self.name,
                                 self._idle_timeout or 0)
                        self._end("idle")
                        return
                    continue
                except OSError as exc:
                    self._end(f"connection lost: {exc}")
                    return
                if count == 0:
                    if not self._closed and self._calls:
                        log.info("%s closed the connection; abandoning %d requests",
                                 self.name, len(self._calls))
                    self._end("closed by the host")
                    return
                rx.commit(count)
            try:
                self._serve_frames(me, inline)
            except InvalidMessage as exc:
                log.warning("closing %s: %s", self.name, exc)
                self._end(f"invalid message: {exc}")
                return
            if self._reader != me or self._jobs or self._closed:
                # The sentinel handed reading to another thread, or registered work waits.
                with self._lock:
                    if self._reader == me:
                        self._reader = None
                return

    def _serve_frames(self, me: int, inline: collections.deque[ExecutionRequest]) -> None:
        """Handle every frame read so far. Requests for quick functions are taken apart
        from the buffer into `inline` and run right here; everything else goes through the
        session (registered, queued for a thread or the bridge)."""
        session = self.session
        calls = self._calls
        quick = self._inline_quick
        ids: set[str] | None = None
        for payload in self._rx.frames():
            try:
                message = _decode(payload)
            except InvalidMessage as exc:
                session.refuse_invalid(exc)
                raise
            if (type(message) is ExecutionRequest and quick is not None
                    and quick.get(message.function_name, 0) >= QUICK_STREAK
                    and not session.draining and message.request_id not in calls):
                if inline:
                    rid = message.request_id
                    if ids is None:
                        ids = {r.request_id for r in inline}
                    if rid in ids:
                        session.refuse(message, f"request id {rid!r} is already in flight",
                                       DUPLICATE)
                        continue
                    ids.add(rid)
                inline.append(message)
            else:
                session.dispatch(message, len(payload))
        if self._batch:
            batch, self._batch = self._batch, []
            self._queue(batch)
        if inline:
            self._run_inline(me, inline)

    def _queue(self, batch: list[Call]) -> None:
        with self._lock:
            self._jobs.extend(batch)
            now = _clock()
            quick = self._quick
            slow = 0
            for call in batch:
                if call.request.timeout_ms > 0:
                    self._deadlines.add(call, now, len(self._calls))
                if quick.get(call.request.function_name, 0) < QUICK_STREAK:
                    slow += 1
            # Someone else must read while this thread runs what may take a while, and the
            # other slow ones deserve threads of their own.
            self._wake_locked(slow)
            if self._deadlines.next_due() is not None:
                self._look.notify()

    # -- running ------------------------------------------------------------------------

    def _run_inline(self, me: int, inline: collections.deque[ExecutionRequest]) -> None:
        """Run the quick requests this thread read, then send their replies in one write.
        The sentinel may take over any of them meanwhile (see `_sentinel`). A handler that
        returns bytes is answered without building an `ExecutionResponse`."""
        handler = self._handler
        busy = self._busy
        frame_limit = self.session.max_message_size + HEADER_SIZE
        out: list[bytes] = []
        while inline:
            try:
                request = inline.popleft()
            except IndexError:
                break  # the sentinel took the rest
            token = [True]
            started = _clock()
            busy[me] = (request, started, token, inline, True)
            try:
                output: Any = handler(request)
            except BaseException as exc:
                output = exc
            elapsed_ms = (_clock() - started) * 1000.0
            del busy[me]
            if elapsed_ms > QUICK_MS:
                self._learn(request.function_name, elapsed_ms)
            try:
                token.pop()
            except IndexError:
                # The sentinel registered it while it ran: the session answers (or drops).
                with self._lock:
                    call = self._adopted.pop(me)
                if out:
                    self._send_frames(out)
                    out = []
                call.finish(_response(request, output, started))
                continue
            if type(output) is bytes:
                reply = _success_frame(request.request_id, output, elapsed_ms)
                if len(reply) <= frame_limit:
                    out.append(reply)
                    continue
            payload = self.session.encoded(_response(request, output, started))
            out.append(header(len(payload)))
            out.append(payload)
        if out:
            self._send_frames(out)
        if self.session.draining and not self._calls and not busy:
            self._end("drained")

    def _run(self, call: Call) -> None:
        if call.answered:
            return  # cancelled or timed out while it waited
        me = _get_ident()
        request: ExecutionRequest = call.request
        self._busy[me] = (request, _clock(), [], _NO_INLINE, False)
        try:
            response = call_sync(self._handler, request)
        except BaseException as exc:  # the caller must get an answer
            response = failure(request.request_id, f"{type(exc).__name__}: {exc}",
                               "internal_error")
        finally:
            del self._busy[me]
        self._learn(request.function_name, response.execution_time_ms)
        call.finish(response)

    def _learn(self, name: str, elapsed_ms: float) -> None:
        quick = self._quick
        streak = quick.get(name)
        if elapsed_ms <= QUICK_MS:
            if streak is None:
                if len(quick) < MAX_LEARNED:
                    quick[name] = 1
            elif streak < QUICK_STREAK:
                quick[name] = streak + 1
        elif streak:
            quick[name] = 0

    # -- writing ------------------------------------------------------------------------

    def _send(self, payload: bytes) -> None:
        if len(payload) < 65536:
            self._send_frames([header(len(payload)) + payload])
        else:
            self._send_frames([header(len(payload)), payload])

    def _send_frames(self, parts: list[bytes]) -> None:
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        try:
            with self._write_lock:
                self._sock.sendall(data)
        except OSError as exc:
            self._end(f"connection lost while writing: {exc}")

    # -- the sentinel ---------------------------------------------------------------------

    def _sentinel(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                now = _clock()
                wait = TAKEOVER if (self._busy or self._jobs) else IDLE_LOOK
                for due in (self._deadlines.next_due(), self._drain_until):
                    if due is not None:
                        wait = min(wait, max(0.0, due - now))
                self._look.wait(wait)
                if self._closed:
                    return
                now = _clock()
                wake = 0
                stuck = False
                for thread, (request, started, token, inline, is_inline) in list(
                        self._busy.items()):
                    if now - started < TAKEOVER:
                        continue
                    stuck = True
                    if is_inline:
                        wake += self._adopt_locked(thread, request, started, token, inline)
                if stuck and self._jobs:
                    wake += len(self._jobs)
                if wake:
                    self._wake_locked(wake)
                expired = self._deadlines.expired(now)
                drain_over = self._drain_until is not None and now >= self._drain_until
                drained = (self._drain_until is not None and self.session.draining
                           and not self._calls and not self._busy)
            for call in expired:
                call.finish(timed_out(call.request, call.request.timeout_ms))
            if drain_over:
                log.warning("drain of %s timed out; abandoning %d requests", self.name,
                            len(self._calls))
                self._end("drain timed out")
                return
            if drained:
                self._end("drained")
                return

    def _adopt_locked(self, thread: int, request: ExecutionRequest, started: float,
                      token: list[bool], inline: collections.deque[ExecutionRequest]) -> int:
        """An inline request runs long: register it (and the quick requests queued behind
        it on that thread) with the session, and take reading away from that thread.
        Returns how many more threads that calls for."""
        try:
            token.pop()
        except IndexError:
            return 0  # it just finished; its thread answers
        call = self.session.adopt(request)
        if call is None:
            call = Call(request, _drop)  # its id was taken meanwhile: answer nobody
        elif request.timeout_ms > 0:
            self._deadlines.add(call, started, len(self._calls))
        self._adopted[thread] = call
        wake = 0
        if self._reader == thread:
            self._reader = None
            wake += 1
        while True:
            try:
                waiting = inline.popleft()
            except IndexError:
                break
            queued = self.session.adopt(waiting)
            if queued is None:
                self.session.refuse(waiting, f"request id {waiting.request_id!r} is already "
                                    "in flight", DUPLICATE)
                continue
            if waiting.timeout_ms > 0:
                self._deadlines.add(queued, started, len(self._calls))
            self._jobs.append(queued)
            wake += 1
        return wake


_NO_INLINE: collections.deque[ExecutionRequest] = collections.deque()


def _drop(call: Call, response: ExecutionResponse) -> None:
    pass


def _response(request: ExecutionRequest, output: Any, started: float) -> ExecutionResponse:
    """The reply for what an inline handler returned or raised."""
    if isinstance(output, Exception):
        return failure(request.request_id, f"{type(output).__name__}: {output}", "handler_error",
                       (_clock() - started) * 1000.0)
    if isinstance(output, BaseException):  # SystemExit and the like: ours to report
        return failure(request.request_id, f"{type(output).__name__}: {output}",
                       "internal_error")
    return output_response(request, output, started)
