"""Bearer tokens for the front doors (HTTP `Authorization: Bearer T`, gRPC metadata
`authorization: Bearer T`).

Tokens come from a file (one per line, so a new one can be added before the old one is
removed) or an environment variable, never from the config file itself. Each presented token
is compared with every accepted one with `hmac.compare_digest` (no early exit, so the time
does not tell which one nearly matched). Tokens never appear in logs or reprs.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from spear.errors import InvalidConfiguration

MIN_TOKEN_LENGTH = 16
_BEARER = b"bearer "


class BearerTokens:
    __slots__ = ("_tokens",)

    def __init__(self, tokens: list[str]) -> None:
        cleaned = [token.strip() for token in tokens if token.strip()]
        if not cleaned:
            raise InvalidConfiguration("no bearer token given (the source is empty)")
        for token in cleaned:
            if len(token) < MIN_TOKEN_LENGTH:
                raise InvalidConfiguration(
                    f"bearer tokens must be at least {MIN_TOKEN_LENGTH} characters "
                    "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
            if any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in token):
                raise InvalidConfiguration("bearer tokens must be printable ASCII without spaces")
        self._tokens = [token.encode("ascii") for token in cleaned]

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> BearerTokens:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise InvalidConfiguration(f"cannot read the token file {path}: "
                                       f"{exc.strerror or exc}") from None
        return cls(text.splitlines())

    @classmethod
    def from_env(cls, name: str) -> BearerTokens:
        value = os.environ.get(name)
        if not value:
            raise InvalidConfiguration(f"the token variable ${name} is not set")
        return cls(value.split(","))

    def __repr__(self) -> str:
        return f"<BearerTokens ({len(self._tokens)} token(s))>"

    def accepts_header(self, header: bytes | str | None) -> bool:
        """Whether an `Authorization` value (`Bearer TOKEN`) carries an accepted token."""
        if header is None:
            return False
        raw = header.encode("latin-1", "replace") if isinstance(header, str) else header
        if len(raw) <= len(_BEARER) or raw[:len(_BEARER)].lower() != _BEARER:
            return False
        presented = raw[len(_BEARER):].strip()
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented, token)
        return matched
