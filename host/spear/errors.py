"""The error hierarchy. Every failure a caller can see is a `CommunicationError`."""

from __future__ import annotations

from collections.abc import Sequence


class CommunicationError(Exception):
    """Base of every error raised by spear's channels, runtimes and invocation layer."""


class ChannelClosed(CommunicationError):
    """The channel (or its peer) is gone; requests in flight fail with this at once."""


class Timeout(CommunicationError, TimeoutError):
    """A request or connect did not finish in time. Also a builtin `TimeoutError`."""


class UnsupportedTransport(CommunicationError):
    """A transport name nobody registered."""


class UnsupportedRuntime(CommunicationError):
    """A runtime type with no strategy."""


class UnsupportedChannel(CommunicationError):
    """A channel type the runtime's strategy does not allow."""


class ChannelCreationFailed(CommunicationError):
    """Every channel type in a strategy failed; each attempt's cause is kept."""

    def __init__(
        self,
        runtime_type: object,
        attempted_types: Sequence[str],
        causes: Sequence[BaseException],
    ) -> None:
        self.runtime_type = runtime_type
        self.attempted_types = list(attempted_types)
        self.causes = list(causes)
        detail = "; ".join(
            f"{kind}: {type(cause).__name__}: {cause}"
            for kind, cause in zip(self.attempted_types, self.causes, strict=False)
        )
        super().__init__(f"could not create a channel for {runtime_type}: {detail}")


class ConnectionFailed(CommunicationError):
    """Connecting to a peer failed."""


class AuthenticationFailed(CommunicationError):
    """The peer presented a wrong or no credential."""


class TooManyInFlight(CommunicationError):
    """A channel (or a worker connection) already has its maximum of requests in flight."""


class DuplicateRequestId(CommunicationError):
    """A request id that is already in flight on the same channel or stream."""


class InvalidMessage(CommunicationError):
    """Bytes that are not a valid message: malformed, oversized, wrong types."""


class InvalidConfiguration(CommunicationError):
    """A configuration that cannot work, named precisely."""


class ExecutionFailed(CommunicationError):
    """The function ran and failed (or could not run): trap, guest error, handler exception.

    `code` says what failed, as a string: a kind the host names (`"timeout"`,
    `"trap:unreachable"`, `"exit:3"`, `"host_function"`, ...), or, for an application error,
    the function's own code in decimal (`"42"`), as it travels in
    `ExecutionResponse.error_code`. `error_code` is that application code as an int (a WASM
    guest's `err_code`, a WASI command's exit status), or None when the function gave none;
    it is read from an integer `code` when not given.
    """

    def __init__(self, message: str, code: str | int | None = None, *,
                 error_code: int | None = None) -> None:
        self.code = code
        if error_code is None:
            error_code = _integer(code)
        self.error_code = error_code
        super().__init__(message)


def _integer(code: str | int | None) -> int | None:
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    if (isinstance(code, str) and code.isascii() and code.lstrip("-").isdigit()
            and len(code) <= 20):
        return int(code)
    return None
