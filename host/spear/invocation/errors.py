"""Errors of the invocation layer; all are `CommunicationError`s so one `except` catches all."""

from __future__ import annotations

from spear.errors import CommunicationError


class FunctionNotFound(CommunicationError):
    """No function of that name is deployed on this spearlet."""


class QueueFull(CommunicationError):
    """Every instance is at capacity and the function's wait queue is full; retry later."""


class InstanceStartFailed(CommunicationError):
    """A function instance could not be started (bad artifact, command, endpoint...)."""


class ExecutionNotFound(CommunicationError, KeyError):
    """An asynchronous execution id that is unknown, or whose result has expired."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ExecutionCancelled(CommunicationError):
    """The asynchronous execution was cancelled before it finished."""


class InvalidRequest(CommunicationError, ValueError):
    """A request's own options are unusable (a timeout that is not a finite, positive, bounded
    number of seconds; malformed metadata). Refused before any capacity is taken."""


class Unauthenticated(CommunicationError):
    """A front-door request without a valid bearer token."""
