"""How a call into a guest can end other than with output, and what the caller sees of it.

`GuestTrap` is raised internally when guest code traps (or wasmtime reports an error) during
any entry into the guest; the session turns it into a `CallFailure`. `CallFailure` is what a
call returns instead of output (no exception on the channel's hot path); `exception()` makes
the error an embedder sees.
"""

from __future__ import annotations

from spear.errors import CommunicationError, ExecutionFailed, Timeout
from spear.transport.wasm.abi import CODE_HOST_FUNCTION
from spear.transport.wasm.capi import TRAP_INTERRUPT, TRAP_NAMES, one_line

MAX_STDERR_IN_MESSAGE = 2048  # characters of a failed command's stderr in its error


class GuestTrap(Exception):
    """Guest code entered at `where` trapped (code None: a wasmtime error or a host call).

    `exit_status` is set when the guest ended itself with WASI `proc_exit(status)`.
    """

    def __init__(self, where: str, code: int | None, message: str,
                 exit_status: int | None = None) -> None:
        self.where = where
        self.code = code
        self.raw = message
        self.exit_status = exit_status
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

    __slots__ = ("cause", "code", "error_code", "message", "needs_thread", "timed_out")

    def __init__(self, timed_out: bool, message: str, code: str | None,
                 needs_thread: bool = False, *, error_code: int | None = None,
                 cause: BaseException | None = None) -> None:
        self.timed_out = timed_out
        self.message = message
        self.code = code
        self.needs_thread = needs_thread
        self.error_code = error_code  # the guest's own integer code, if it gave one
        self.cause = cause  # what a Python host function raised, if that is why

    def exception(self) -> CommunicationError:
        error: CommunicationError
        if self.timed_out:
            error = Timeout(self.message)
        else:
            error = ExecutionFailed(self.message, self.code, error_code=self.error_code)
        error.__cause__ = self.cause
        return error

    def __repr__(self) -> str:
        return f"CallFailure({self.message!r}, code={self.code!r})"


CallResult = bytes | CallFailure


def needs_thread(why: str) -> CallFailure:
    return CallFailure(False, why, "needs_thread", needs_thread=True)


def signed(err_code: int) -> int:
    """The guest's `err_code` is an i32 (docs/wasm-abi.md); it arrives as a u32."""
    return err_code - (1 << 32) if err_code >= 1 << 31 else err_code


def application_error(message: bytes, err_code: int,
                      host_failure: BaseException | None) -> CallFailure:
    """A handler's status 1: the guest's message and code. Code `CODE_HOST_FUNCTION` means
    the guest passed a host function's failure on (code "host_function", caused by it)."""
    text = message.decode("utf-8", "replace")
    code = signed(err_code)
    if code == CODE_HOST_FUNCTION:
        return CallFailure(False, text, "host_function", cause=host_failure)
    return CallFailure(False, text, str(code), error_code=code)


def exit_failure(status: int, where: str, stderr_tail: str = "") -> CallFailure:
    """The guest ended itself with a non-zero WASI exit status."""
    message = f"{where!r} exited with code {status}"
    if stderr_tail:
        message += f": {stderr_tail[-MAX_STDERR_IN_MESSAGE:]}"
    return CallFailure(False, message, f"exit:{status}", error_code=status)


def reentrant_call(label: str) -> CallFailure:
    return CallFailure(False, f"re-entrant call refused: a host function of WASM instance "
                       f"{label} called back into the same instance, which is busy running "
                       "the guest that called it (call another instance instead)", "reentrant")
