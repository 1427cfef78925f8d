"""How a call into a guest can end other than with output, and what the caller sees of it.

`GuestTrap` is raised internally when guest code traps (or wasmtime reports an error) during
any entry into the guest; the session turns it into a `CallFailure`. `CallFailure` is what a
call returns instead of output (no exception on the channel's hot path); `exception()` makes
the error an embedder sees.
"""

from __future__ import annotations

from spear.errors import CommunicationError, ExecutionFailed, Timeout
from spear.transport.wasm.capi import TRAP_INTERRUPT, TRAP_NAMES, one_line


class GuestTrap(Exception):
    """Guest code entered at `where` trapped (code None: a wasmtime error or a host call)."""

    def __init__(self, where: str, code: int | None, message: str) -> None:
        self.where = where
        self.code = code
        self.raw = message
        super().__init__(f"{where}: {message}")

    @property
    def interrupted(self) -> bool:
        """Stopped at its epoch deadline (or by a host call at that deadline)."""
        return self.code == TRAP_INTERRUPT

    @property
    def kind(self) -> str:
        if self.code is not None:
            return TRAP_NAMES.get(self.code, "trap")
        # Traps raised by our host calls carry no wasmtime code; their message names the call.
        return "bad_host_call" if "spear." in self.raw else "trap"

    @property
    def reason(self) -> str:
        return one_line(self.raw) or self.kind


class CallFailure:
    """Why a guest call produced no output. Success is plain `bytes`, with nothing to build.

    `needs_thread`: the call was not run, or was stopped at the event loop's budget and its
    effects undone; run it again off the loop (the channel does).
    """

    __slots__ = ("code", "message", "needs_thread", "timed_out")

    def __init__(self, timed_out: bool, message: str, code: str | None,
                 needs_thread: bool = False) -> None:
        self.timed_out = timed_out
        self.message = message
        self.code = code
        self.needs_thread = needs_thread

    def exception(self) -> CommunicationError:
        if self.timed_out:
            return Timeout(self.message)
        return ExecutionFailed(self.message, self.code)

    def __repr__(self) -> str:
        return f"CallFailure({self.message!r}, code={self.code!r})"


CallResult = bytes | CallFailure


def needs_thread(why: str) -> CallFailure:
    return CallFailure(False, why, "needs_thread", needs_thread=True)


def signed(err_code: int) -> str:
    """The guest's `err_code` is an i32 (docs/wasm-abi.md); it arrives as a u32."""
    return str(err_code - (1 << 32) if err_code >= 1 << 31 else err_code)
