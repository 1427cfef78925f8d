"""The worker's shared-secret token: where it comes from and how a presented one is checked.

A pod gets its token from a Kubernetes Secret, either as the `SPEAR_TOKEN` environment
variable or as a mounted file (`--token-file`). Tokens are compared with
`hmac.compare_digest` and never logged.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from spear.errors import InvalidConfiguration

TOKEN_ENV = "SPEAR_TOKEN"
BEARER = "bearer "


def load_token(
    token_file: str | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The token from `token_file` if given, else `$SPEAR_TOKEN`, else None (no auth)."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise InvalidConfiguration(f"cannot read token file {token_file!r}: {exc}") from exc
        if not token:
            raise InvalidConfiguration(f"token file {token_file!r} is empty")
        return token
    token = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
    return token or None


def token_matches(presented: str | None, expected: str) -> bool:
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def token_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token a gRPC client sent as `authorization: Bearer T` or `x-spear-token: T`."""
    for key, value in metadata or ():
        if isinstance(value, bytes):
            continue
        if key == "x-spear-token":
            return value
        if key == "authorization" and value[: len(BEARER)].lower() == BEARER:
            return value[len(BEARER):].strip()
    return None
