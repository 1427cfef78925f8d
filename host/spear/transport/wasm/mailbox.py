"""Messages between the host and one guest, bounded in count and bytes in both directions.

- outbox: what the guest sent with `spear.send`, until the host takes it (`take_sent`, or the
  channel's `receive()`). Bounded across calls: when it is full, `spear.send` returns -2 and
  the guest has to wait for the host (back-pressure), so host memory stays bounded however
  often it is called.
- inbox: what the host queued for the guest (`push`), until the guest pulls it (`spear.recv`).

Each call into the guest is a transaction: messages it sends become visible to the host when
the call ends (`commit`). An attempt that the host aborts to run again elsewhere (the event
loop's budget, see docs/wasm-abi.md) is rolled back: its sent messages are dropped and the
messages it pulled go back to the front of the inbox, so the re-run sees them again.
"""

from __future__ import annotations

import collections
import threading

from spear.transport.wasm import abi
from spear.transport.wasm.limits import GuestLimits

Message = tuple[str, bytes]


class Mailbox:
    def __init__(self, limits: GuestLimits, max_message_size: int) -> None:
        self.limits = limits
        self.max_message_size = max_message_size
        self._lock = threading.Lock()  # the host side runs on the loop, calls on a thread
        self._outbox: collections.deque[Message] = collections.deque()
        self._outbox_bytes = 0
        self.sent_count = 0  # messages in the outbox (read on every call: a plain attribute)
        self._inbox: collections.deque[Message] = collections.deque()
        self._inbox_bytes = 0
        self._pending: list[Message] = []  # sent during the current call
        self._pending_bytes = 0
        self._taken: list[Message] = []  # pulled during the current call
        self.touched = False  # the current call used the mailbox: commit or roll back

    # ------------------------------------------------------------------ host side

    def push(self, topic: str, data: bytes) -> bool:
        """Queue a message for the guest; False when the inbox is full."""
        size = len(topic.encode()) + len(data)
        with self._lock:
            if (len(self._inbox) >= self.limits.inbox_messages
                    or self._inbox_bytes + size > self.limits.inbox_bytes):
                return False
            self._inbox.append((topic, data))
            self._inbox_bytes += size
            return True

    def take_sent(self) -> list[Message]:
        """Messages the guest sent (in calls that have ended) since the last take."""
        with self._lock:
            taken = list(self._outbox)
            self._outbox.clear()
            self._outbox_bytes = 0
            self.sent_count = 0
            return taken

    def pop_sent(self) -> Message | None:
        with self._lock:
            if not self._outbox:
                return None
            message = self._outbox.popleft()
            self._outbox_bytes -= len(message[0].encode()) + len(message[1])
            self.sent_count = len(self._outbox)
            return message

    @property
    def queued_count(self) -> int:
        """Messages waiting for the guest."""
        return len(self._inbox)

    def queued(self) -> list[Message]:
        with self._lock:
            return list(self._inbox)

    # ------------------------------------------------------------------ guest side

    def has_room(self, size: int) -> bool:
        """Whether the outbox could take a message of `size` bytes now."""
        limits = self.limits
        return (len(self._outbox) + len(self._pending) < limits.outbox_messages
                and self._outbox_bytes + self._pending_bytes + size <= limits.outbox_bytes)

    def guest_send(self, topic: bytes, data: bytes) -> int:
        size = len(topic) + len(data)
        if size > self.max_message_size:
            return abi.ERR_TOO_LARGE
        limits = self.limits
        with self._lock:
            if (len(self._outbox) + len(self._pending) >= limits.outbox_messages
                    or self._outbox_bytes + self._pending_bytes + size > limits.outbox_bytes):
                return abi.ERR_FULL
            self._pending.append((topic.decode("utf-8", "replace"), data))
            self._pending_bytes += size
            self.touched = True
        return abi.OK

    def guest_peek(self) -> Message | None:
        return self._inbox[0] if self._inbox else None

    def guest_took(self) -> None:
        with self._lock:
            message = self._inbox.popleft()
            self._inbox_bytes -= len(message[0].encode()) + len(message[1])
            self._taken.append(message)
            self.touched = True

    # ------------------------------------------------------------------ transactions

    def commit(self) -> None:
        with self._lock:
            for message in self._pending:
                self._outbox.append(message)
                self._outbox_bytes += len(message[0].encode()) + len(message[1])
            self._pending.clear()
            self._pending_bytes = 0
            self._taken.clear()
            self.sent_count = len(self._outbox)
            self.touched = False

    def rollback(self) -> None:
        with self._lock:
            self._pending.clear()
            self._pending_bytes = 0
            for message in reversed(self._taken):
                self._inbox.appendleft(message)
                self._inbox_bytes += len(message[0].encode()) + len(message[1])
            self._taken.clear()
            self.touched = False
