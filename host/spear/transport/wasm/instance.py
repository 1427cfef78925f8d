"""`WasmInstance`: the embedding surface of one guest instance (`call`, `close`, `with`).

The request goes straight into the guest's memory (one copy in), the handler is entered once,
and the response is copied straight out (one copy out); see docs/wasm-abi.md. What happens
behind `call` (the store's life cycle, replacement after a trap or timeout, the call paths,
the mailbox) lives in `GuestSession` and the objects it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spear.errors import InvalidConfiguration
from spear.transport.wasm.arguments import check_positive_int
from spear.transport.wasm.bindings import make_bindings
from spear.transport.wasm.command_session import CommandSession
from spear.transport.wasm.limits import DEFAULT_LIMITS, DEFAULT_MAX_MESSAGE, GuestLimits
from spear.transport.wasm.mailbox import Mailbox
from spear.transport.wasm.session import GuestSession, open_session
from spear.transport.wasm.traps import CallFailure, CallResult

if TYPE_CHECKING:
    from spear.transport.wasm.module import WasmModule

__all__ = ["DEFAULT_MAX_MESSAGE", "CallFailure", "CallResult", "WasmInstance"]


class WasmInstance:
    """A live instance of a `WasmModule`. Calls from several threads are serialised."""

    def __init__(self, module: WasmModule, *, label: str | None = None,
                 max_message_size: int = DEFAULT_MAX_MESSAGE,
                 limits: GuestLimits | None = None, setup_timeout: float | None = None,
                 host_functions: Any = None, config: Any = None, wasi: Any = None) -> None:
        check_positive_int(max_message_size, "max_message_size")
        if limits is not None and not isinstance(limits, GuestLimits):
            raise TypeError(f"limits must be a GuestLimits, not {type(limits).__name__}")
        if label is not None and type(label) is not str:
            raise TypeError(f"label must be a str, not {type(label).__name__}")
        if setup_timeout is not None and setup_timeout <= 0:
            raise InvalidConfiguration(f"setup_timeout must be positive, got {setup_timeout}")
        bindings = make_bindings(module.bindings, host_functions=host_functions, config=config,
                                 wasi=wasi, max_output=max_message_size)
        self._session: GuestSession | CommandSession = open_session(
            module, label=label or module.name, max_message_size=max_message_size,
            limits=limits or DEFAULT_LIMITS, setup_timeout=setup_timeout or module.setup_timeout,
            bindings=bindings)
        self._execute = self._session.execute

    @classmethod
    def _wrap(cls, session: GuestSession | CommandSession) -> WasmInstance:
        """The embedding surface over a session the channel already runs."""
        instance = cls.__new__(cls)
        instance._session = session
        instance._execute = session.execute
        return instance

    def call(self, function: str, input: bytes, *, timeout: float | None = None,
             metadata: dict[str, str] | None = None) -> bytes:
        """Run handler `function` on `input`; raises `ExecutionFailed` or `Timeout`.

        `timeout` (seconds) bounds the whole call, including a replacement instance's start
        when the previous call trapped.
        """
        result = self._execute(function, input, timeout, metadata)
        if type(result) is bytes:
            return result
        raise result.exception()  # type: ignore[union-attr]

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> WasmInstance:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ read-only state

    @property
    def module(self) -> WasmModule:
        return self._session.module

    @property
    def label(self) -> str:
        return self._session.label

    @property
    def max_message_size(self) -> int:
        return self._session.max_message_size

    @property
    def limits(self) -> GuestLimits:
        return self._session.limits

    @property
    def mailbox(self) -> Mailbox:
        """Messages to and from the guest (`push`, `take_sent`; see docs/wasm-abi.md)."""
        return self._session.mailbox

    @property
    def config(self) -> dict[str, str]:
        """The configuration the guest reads (`spear.config_get`)."""
        return dict(self._session.bindings.config)

    @property
    def closed(self) -> bool:
        return self._session.closed

    @property
    def call_count(self) -> int:
        """Calls made into the guest's handlers so far."""
        return self._session.calls

    @property
    def replacements(self) -> int:
        """Times the guest was dropped for a fresh one (after traps, timeouts)."""
        return self._session.replacements

    @property
    def dropped_log_records(self) -> int:
        """Guest log records dropped by the rate limit so far."""
        return self._session.log.dropped_records

    @property
    def memory_size(self) -> int:
        """Size of the guest's linear memory in bytes (0 when closed or being replaced).

        Never waits: while a call is running it reports the size last seen.
        """
        return self._session.memory_size()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.memory_size} bytes of memory"
        return f"<WasmInstance {self.label} ({state})>"
