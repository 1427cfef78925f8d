"""The handshake on a worker's blocking socket (the rules are in `spear.protocol.handshake`).

`present_token` is the process worker dialling its host; `await_hello` a pod's TCP listener
accepting a host. Both read into the `ReceiveBuffer` the connection will keep using, limited
to handshake-sized frames until the peer is in, so bytes that arrive right behind the
handshake are not lost.
"""

from __future__ import annotations

import socket

from spear.errors import AuthenticationFailed, ChannelClosed, InvalidMessage, Timeout
from spear.protocol import handshake as rules
from spear.protocol.framing import DEFAULT_CAPACITY, ReceiveBuffer
from spear.protocol.limits import HANDSHAKE_FRAME_LIMIT
from spear.protocol.messages import Handshake

PREAUTH_BUFFER = 2 * HANDSHAKE_FRAME_LIMIT


def _first_frame(sock: socket.socket, received: ReceiveBuffer, timeout: float, what: str
                 ) -> bytes:
    sock.settimeout(timeout if timeout > 0 else None)
    try:
        while True:
            frames = received.frames()
            if frames:
                first = bytes(frames[0])
                # Frames behind it stay in the buffer for the connection to read.
                received.unread(sum(len(f) + 4 for f in frames[1:]))
                return first
            count = sock.recv_into(received.writable())
            if count == 0:
                raise ChannelClosed(f"peer closed the connection before the {what}")
            received.commit(count)
    except TimeoutError:
        raise Timeout(f"no {what} within {timeout:.3g} s") from None
    except InvalidMessage as exc:
        raise AuthenticationFailed(f"bad {what}: {exc}") from None
    except OSError as exc:
        raise ChannelClosed(f"connection lost before the {what}: {exc}") from exc
    finally:
        sock.settimeout(None)


def present_token(sock: socket.socket, *, instance_id: str, token: str, timeout: float,
                  max_message_size: int) -> ReceiveBuffer:
    """Dialling side: send the hello, wait for the `Ack`; returns the connection's buffer."""
    received = ReceiveBuffer(HANDSHAKE_FRAME_LIMIT, PREAUTH_BUFFER)
    try:
        sock.sendall(rules.hello_frame(instance_id, token))
    except OSError as exc:
        raise ChannelClosed(f"connection lost before the handshake: {exc}") from exc
    rules.check_reply(_first_frame(sock, received, timeout, "handshake reply"))
    received.limit(max_message_size, DEFAULT_CAPACITY)
    return received


def await_hello(sock: socket.socket, *, token: str, timeout: float, max_message_size: int
                ) -> tuple[Handshake, ReceiveBuffer]:
    """Listening side: the first frame must be a hello with `token` within `timeout`.

    Answers `Ack` and returns the handshake and the connection's buffer, or answers an
    `auth_failed` error (best effort) and raises `AuthenticationFailed`.
    """
    received = ReceiveBuffer(HANDSHAKE_FRAME_LIMIT, PREAUTH_BUFFER)
    try:
        hello = rules.check_hello(_first_frame(sock, received, timeout, "handshake"), token,
                                  None)
    except (AuthenticationFailed, Timeout) as exc:
        _best_effort(sock, rules.refusal_frame(None, exc))
        if isinstance(exc, AuthenticationFailed):
            raise
        raise AuthenticationFailed(str(exc)) from exc
    except ChannelClosed as exc:
        raise AuthenticationFailed(str(exc)) from exc
    try:
        sock.sendall(rules.accept_frame(hello))
    except OSError as exc:
        raise AuthenticationFailed(f"connection lost after the handshake: {exc}") from exc
    received.limit(max_message_size, DEFAULT_CAPACITY)
    return hello, received


def _best_effort(sock: socket.socket, data: bytes) -> None:
    try:
        sock.settimeout(1.0)
        sock.sendall(data)
    except OSError:
        pass
    finally:
        sock.settimeout(None)
