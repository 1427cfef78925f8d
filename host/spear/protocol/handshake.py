"""The handshake that opens an authenticated stream connection, without any I/O.

Whoever dials sends one `Handshake(instance_id, token, protocol_version)` frame first; the
listening side answers `Ack(instance_id)` or, for anything else, an `Error` with code
`auth_failed`, and closes. The rules live here once; the asyncio host side
(`spear.channel.handshake`) and the blocking worker side (`spear.worker.handshake`) only move
the frames. Before the handshake no frame may exceed `HANDSHAKE_FRAME_LIMIT`.

Tokens are compared with `hmac.compare_digest` and never logged or put in an error message.
"""

from __future__ import annotations

import hmac

from spear.errors import AuthenticationFailed, InvalidMessage
from spear.protocol import codec
from spear.protocol.framing import frame
from spear.protocol.limits import HANDSHAKE_FRAME_LIMIT
from spear.protocol.messages import Ack, Error, Handshake

PROTOCOL_VERSION = 1
AUTH_FAILED = "auth_failed"

__all__ = [
    "AUTH_FAILED",
    "HANDSHAKE_FRAME_LIMIT",
    "PROTOCOL_VERSION",
    "accept_frame",
    "check_hello",
    "check_reply",
    "hello_frame",
    "refusal_frame",
]


def hello_frame(instance_id: str, token: str) -> bytes:
    """The dialling side's first frame."""
    payload = codec.encode(Handshake(instance_id, token, PROTOCOL_VERSION))
    if len(payload) > HANDSHAKE_FRAME_LIMIT:
        raise InvalidMessage(
            f"handshake of {len(payload)} bytes exceeds the limit of {HANDSHAKE_FRAME_LIMIT} "
            "bytes (is the instance id that long?)"
        )
    return frame(payload)


def check_hello(payload: bytes | memoryview, token: str, instance_id: str | None) -> Handshake:
    """The listening side's check of the first frame; `AuthenticationFailed` says why not."""
    try:
        message = codec.decode(payload)
    except InvalidMessage as exc:
        raise AuthenticationFailed(f"first frame is not a message: {exc}") from None
    if type(message) is not Handshake:
        raise AuthenticationFailed(f"first frame must be a Handshake, got {type(message).__name__}")
    if message.protocol_version != PROTOCOL_VERSION:
        raise AuthenticationFailed(
            f"unsupported protocol version {message.protocol_version} "
            f"(this side speaks {PROTOCOL_VERSION})"
        )
    if not hmac.compare_digest(message.token.encode(), token.encode()):
        raise AuthenticationFailed("wrong token")
    if instance_id is not None and message.instance_id != instance_id:
        raise AuthenticationFailed(
            f"handshake names instance {message.instance_id!r}, expected {instance_id!r}"
        )
    return message


def accept_frame(handshake: Handshake) -> bytes:
    return frame(codec.encode(Ack(handshake.instance_id)))


def refusal_frame(instance_id: str | None, reason: BaseException) -> bytes:
    error = Error(instance_id or "", f"authentication failed: {reason}", AUTH_FAILED)
    return frame(codec.encode(error))


def check_reply(payload: bytes | memoryview) -> None:
    """The dialling side's check of the listener's answer; raises unless it is an `Ack`."""
    try:
        reply = codec.decode(payload)
    except InvalidMessage as exc:
        raise AuthenticationFailed(f"the handshake reply is not a message: {exc}") from None
    if type(reply) is Ack:
        return
    if type(reply) is Error:
        raise AuthenticationFailed(f"peer refused the handshake: {reply.message} ({reply.code})")
    raise AuthenticationFailed(f"expected Ack to the handshake, got {type(reply).__name__}")
