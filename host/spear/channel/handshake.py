"""The handshake that opens an authenticated socket channel.

Whoever dials sends one `Handshake(instance_id, token, protocol_version)` frame first; the
listening side answers `Ack(instance_id)` or, for anything else, an `Error` with code
`auth_failed`, and then closes. Both halves live here because both ends use both: the
process runtime listens and its workers dial, while a Kubernetes host dials a pod that listens.

Tokens are compared with `hmac.compare_digest` and never logged or put in an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging

from spear import codec
from spear.errors import (
    AuthenticationFailed,
    ChannelClosed,
    CommunicationError,
    InvalidMessage,
    Timeout,
)
from spear.messages import Ack, Error, Handshake
from spear.transport.framing import frame, read_frame

PROTOCOL_VERSION = 1
AUTH_FAILED = "auth_failed"

log = logging.getLogger(__name__)


async def _read_message(
    reader: asyncio.StreamReader, max_message_size: int, timeout: float, what: str
) -> object:
    try:
        async with asyncio.timeout(timeout):
            payload = await read_frame(reader, max_message_size)
    except TimeoutError:
        raise Timeout(f"no {what} within {timeout:.3g} s") from None
    except asyncio.IncompleteReadError:
        raise ChannelClosed(f"peer closed the connection before the {what}") from None
    except ConnectionError as exc:
        raise ChannelClosed(f"connection lost before the {what}: {exc}") from exc
    return codec.decode(payload)


async def send_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    instance_id: str,
    token: str,
    timeout: float,
    max_message_size: int,
) -> None:
    """Dialling side: present the token and wait for the `Ack`.

    Raises `AuthenticationFailed` when the peer refuses, `Timeout` when it stays silent and
    `ChannelClosed` when it hangs up.
    """
    writer.write(frame(codec.encode(Handshake(instance_id, token, PROTOCOL_VERSION))))
    await writer.drain()
    reply = await _read_message(reader, max_message_size, timeout, "handshake reply")
    if isinstance(reply, Ack):
        return
    if isinstance(reply, Error):
        raise AuthenticationFailed(f"peer refused the handshake: {reply.message} ({reply.code})")
    raise AuthenticationFailed(f"expected Ack to the handshake, got {type(reply).__name__}")


async def accept_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    token: str,
    timeout: float,
    max_message_size: int,
    instance_id: str | None = None,
) -> Handshake:
    """Listening side: the first frame must be a `Handshake` with `token` within `timeout`.

    On success the peer gets `Ack(instance_id)` and the handshake is returned. On failure
    the peer gets an `auth_failed` `Error` (best effort) and `AuthenticationFailed` is raised
    (its cause says why: wrong token, silence, garbage); the caller closes the connection.
    """
    try:
        message = await _read_message(reader, max_message_size, timeout, "handshake")
        if not isinstance(message, Handshake):
            raise AuthenticationFailed(
                f"first frame must be a Handshake, got {type(message).__name__}"
            )
        if message.protocol_version != PROTOCOL_VERSION:
            raise AuthenticationFailed(
                f"unsupported protocol version {message.protocol_version} "
                f"(this host speaks {PROTOCOL_VERSION})"
            )
        token_ok = hmac.compare_digest(message.token.encode(), token.encode())
        if not token_ok:
            raise AuthenticationFailed("wrong token")
        if instance_id is not None and message.instance_id != instance_id:
            raise AuthenticationFailed(
                f"handshake names instance {message.instance_id!r}, expected {instance_id!r}"
            )
    except (AuthenticationFailed, InvalidMessage, Timeout) as exc:
        _refuse(writer, instance_id, exc)
        if isinstance(exc, AuthenticationFailed):
            raise
        raise AuthenticationFailed(str(exc)) from exc
    except CommunicationError as exc:
        raise AuthenticationFailed(str(exc)) from exc
    writer.write(frame(codec.encode(Ack(message.instance_id))))
    return message


def _refuse(writer: asyncio.StreamWriter, instance_id: str | None, reason: Exception) -> None:
    if writer.is_closing():
        return
    error = Error(instance_id or "", f"authentication failed: {reason}", AUTH_FAILED)
    with contextlib.suppress(ConnectionError, RuntimeError):
        writer.write(frame(codec.encode(error)))
