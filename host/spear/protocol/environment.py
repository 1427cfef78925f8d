"""The environment contract between the process runtime and the worker it starts.

The host passes everything a worker needs through environment variables, so a worker can be
written in any language (see docs/wire-protocol.md):

    SPEAR_ENDPOINT           where to dial: `unix:/path/to/socket` or `tcp:127.0.0.1:PORT`
    SPEAR_INSTANCE_ID        the instance's full id, echoed back in the Handshake
    SPEAR_TOKEN              the one-time secret the Handshake presents
    SPEAR_MAX_MESSAGE_SIZE   optional: the largest frame payload the host accepts (bytes)

Both sides build and parse these here, so the names exist once. The worker takes the token
out of its environment (`spear.worker.scrub`) before any handler code runs, so neither the handler
nor its children can read it there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from spear.errors import InvalidConfiguration
from spear.protocol.address import HostPort
from spear.protocol.limits import DEFAULT_MAX_MESSAGE_SIZE

ENV_ENDPOINT = "SPEAR_ENDPOINT"
ENV_INSTANCE_ID = "SPEAR_INSTANCE_ID"
ENV_TOKEN = "SPEAR_TOKEN"
ENV_MAX_MESSAGE_SIZE = "SPEAR_MAX_MESSAGE_SIZE"

ENDPOINT_KINDS = ("unix", "tcp")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """`unix:/path` or `tcp:host:port`."""

    kind: str
    address: str

    def __post_init__(self) -> None:
        if self.kind not in ENDPOINT_KINDS:
            raise InvalidConfiguration(
                f"endpoint kind must be one of {ENDPOINT_KINDS}, got {self.kind!r}"
            )
        if not self.address:
            raise InvalidConfiguration(f"{self.kind} endpoint needs an address")
        if self.kind == "tcp":
            HostPort.parse(self.address)

    def __str__(self) -> str:
        return f"{self.kind}:{self.address}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        kind, sep, address = text.partition(":")
        if not sep or kind not in ENDPOINT_KINDS:
            raise InvalidConfiguration(
                f"{ENV_ENDPOINT} must look like unix:/path or tcp:HOST:PORT, got {text!r}"
            )
        return cls(kind, address)


@dataclass(frozen=True, slots=True)
class WorkerEnvironment:
    endpoint: Endpoint
    instance_id: str
    token: str = field(repr=False)
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> WorkerEnvironment:
        """Read the contract; a missing or malformed variable is named in the error."""
        env = os.environ if environ is None else environ
        missing = [name for name in (ENV_ENDPOINT, ENV_INSTANCE_ID, ENV_TOKEN)
                   if not env.get(name)]
        if missing:
            raise InvalidConfiguration(
                f"missing environment variable(s) {', '.join(missing)}: a spear worker is "
                "started by the process runtime, which sets them"
            )
        size_text = env.get(ENV_MAX_MESSAGE_SIZE) or str(DEFAULT_MAX_MESSAGE_SIZE)
        try:
            max_size = int(size_text)
        except ValueError:
            max_size = 0
        if max_size <= 0:
            raise InvalidConfiguration(
                f"{ENV_MAX_MESSAGE_SIZE} must be a positive integer, got {size_text!r}"
            )
        return cls(
            Endpoint.parse(env[ENV_ENDPOINT]), env[ENV_INSTANCE_ID], env[ENV_TOKEN], max_size
        )

    @staticmethod
    def token_variables() -> tuple[str, ...]:
        """The variables that carry a secret and must not outlive start-up."""
        return (ENV_TOKEN,)

    def to_environ(self) -> dict[str, str]:
        """The variables to give a child process."""
        return {
            ENV_ENDPOINT: str(self.endpoint),
            ENV_INSTANCE_ID: self.instance_id,
            ENV_TOKEN: self.token,
            ENV_MAX_MESSAGE_SIZE: str(self.max_message_size),
        }
