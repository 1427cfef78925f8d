"""The handshake on the host's asyncio connections (the rules are in `spear.protocol.handshake`).

`present_token` is the dialling side (the Kubernetes TCP fallback dials a pod);
`await_hello` the listening side (the process runtime's workers dial in). Both work on a fresh
`FrameStream`, whose frame limit is still the handshake limit, and raise it to the channel's
`max_message_size` only when the peer is in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from spear.errors import AuthenticationFailed, ChannelClosed, InvalidMessage, Timeout
from spear.protocol import handshake as rules
from spear.protocol.messages import Handshake
from spear.transport.frame_stream import FrameStream

PROTOCOL_VERSION = rules.PROTOCOL_VERSION
AUTH_FAILED = rules.AUTH_FAILED


async def _first_frame(
    stream: FrameStream, timeout: float, what: str,
    refuse: Callable[[Exception], None] | None = None,
) -> bytes:
    """The next frame on `stream` (which must not have a reader yet), within `timeout`.

    `refuse(error)` runs when the frame itself is bad (oversized, empty), while the
    connection can still carry a last frame.
    """
    loop = asyncio.get_running_loop()
    arrived: asyncio.Future[bytes] = loop.create_future()

    def on_frame(payload: memoryview | bytes) -> None:
        if not arrived.done():
            arrived.set_result(bytes(payload))
            stream.hold()  # whatever follows belongs to the channel

    def on_close(error: Exception | None) -> None:
        if arrived.done():
            return
        if isinstance(error, InvalidMessage):
            failure = AuthenticationFailed(f"bad {what}: {error}")
            if refuse is not None:
                refuse(failure)
            arrived.set_exception(failure)
        elif error is None:
            arrived.set_exception(ChannelClosed(f"peer closed the connection before the {what}"))
        else:
            arrived.set_exception(ChannelClosed(f"connection lost before the {what}: {error}"))

    stream.on_frame = on_frame
    stream.on_close = on_close
    if stream.closed is not None:
        on_close(stream.closed)
    else:
        stream.release()
    try:
        async with asyncio.timeout(timeout if timeout > 0 else None):
            return await arrived
    except TimeoutError:
        raise Timeout(f"no {what} within {timeout:.3g} s") from None
    finally:
        if not arrived.done():
            arrived.cancel()


async def present_token(
    stream: FrameStream, *, instance_id: str, token: str, timeout: float,
    max_message_size: int,
) -> None:
    """Dialling side: send the hello, wait for the `Ack`.

    Raises `AuthenticationFailed` when the peer refuses, `Timeout` when it stays silent and
    `ChannelClosed` when it hangs up.
    """
    stream.write_raw(rules.hello_frame(instance_id, token))
    payload = await _first_frame(stream, timeout, "handshake reply")
    rules.check_reply(payload)
    stream.authenticated(max_message_size)


async def await_hello(
    stream: FrameStream, *, token: str, timeout: float, max_message_size: int,
    instance_id: str | None = None,
) -> Handshake:
    """Listening side: the first frame must be a hello with `token` within `timeout`.

    On success the peer gets `Ack(instance_id)`. On failure it gets an `auth_failed` `Error`
    (best effort) and `AuthenticationFailed` is raised, saying why (wrong token, silence,
    garbage, an oversized frame); the caller closes the connection.
    """
    def refuse(error: Exception) -> None:
        stream.write_raw(rules.refusal_frame(instance_id, error))

    try:
        payload = await _first_frame(stream, timeout, "handshake", refuse)
        hello = rules.check_hello(payload, token, instance_id)
    except (AuthenticationFailed, Timeout) as exc:
        if stream.closed is None:
            refuse(exc)
        if isinstance(exc, AuthenticationFailed):
            raise
        raise AuthenticationFailed(str(exc)) from exc
    except ChannelClosed as exc:
        raise AuthenticationFailed(str(exc)) from exc
    stream.write_raw(rules.accept_frame(hello))
    stream.authenticated(max_message_size)
    return hello
