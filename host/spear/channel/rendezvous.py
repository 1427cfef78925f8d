"""Listen and accept: the way the process runtime gets its channels from the factory.

Instead of dialling an address, a connector in this mode opens a private endpoint of its own
(a 0600 Unix socket in a 0700 directory, or TCP on loopback with an ephemeral port), makes a
fresh token, and *invites* the peer: the caller's `start_peer(endpoint, token)` starts the
worker that will dial in. The first connection that presents the token within the handshake
timeout becomes the channel; others are refused without disturbing the wait. The listener
is closed (and the socket file removed) as soon as the peer is in, or the attempt failed.

If the peer can no longer come (its process exited), the attempt fails at once with its
reason instead of waiting out the connect timeout, and the factory moves on to the next
channel type, which invites a fresh peer.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from spear.channel.listener import HandshakeListener
from spear.channel.stream import StreamChannel
from spear.config import ChannelConfig
from spear.errors import ConnectionFailed, Timeout, UnsupportedChannel
from spear.instance_id import RuntimeInstanceId
from spear.protocol.environment import Endpoint
from spear.protocol.limits import HANDSHAKE_TIMEOUT
from spear.transport.frame_stream import FrameStream
from spear.transport.tcp import listen_tcp
from spear.transport.unix import listen_unix, remove_socket, socket_path

log = logging.getLogger(__name__)

# A listener for one expected worker needs few pending slots.
PENDING_PER_INVITATION = 4


class InvitedPeer(Protocol):
    """What `start_peer` returns: a way to notice the peer cannot come, and to send it away."""

    @property
    def gone(self) -> asyncio.Future[str]:
        """Resolves (with the reason) when the peer can no longer connect."""

    async def abandon(self) -> None:
        """The connection did not happen: stop the peer."""


StartPeer = Callable[[Endpoint, str], Awaitable[InvitedPeer]]


@dataclass(frozen=True, slots=True)
class Invitation:
    """How to invite a peer: the `accept=` option of the factory's channel creation."""

    start_peer: StartPeer
    # Where Unix sockets go: a private (0700) directory, made on first use by the callable.
    socket_dir: Callable[[], str]
    # The socket file's name (made safe and short by `socket_path`).
    name: str
    auth_timeout: float = HANDSHAKE_TIMEOUT


async def accept_channel(
    kind: str, instance_id: RuntimeInstanceId, config: ChannelConfig, invitation: Invitation,
) -> StreamChannel:
    """Listen on a fresh `kind` endpoint, invite the peer, return its authenticated channel."""
    if kind not in ("unix", "tcp"):
        raise UnsupportedChannel(f"cannot listen for a {kind!r} channel")
    loop = asyncio.get_running_loop()
    token = secrets.token_urlsafe(32)
    accepted: asyncio.Future[FrameStream] = loop.create_future()

    def on_authenticated(stream: FrameStream, _hello: object) -> None:
        if accepted.done():
            stream.close()  # only one connection per invitation
        else:
            accepted.set_result(stream)

    label = f"{kind} listener of {instance_id.full_id}"
    listener = HandshakeListener(
        label, token=token, on_authenticated=on_authenticated,
        max_message_size=config.max_message_size, instance_id=instance_id.full_id,
        timeout=invitation.auth_timeout, max_pending=PENDING_PER_INVITATION,
    )
    socket_file: str | None = None
    if kind == "unix":
        socket_file = socket_path(invitation.socket_dir(), invitation.name)
        remove_socket(socket_file)  # a leftover from an earlier launch of this instance
        server = await listen_unix(socket_file, listener.protocol)
        endpoint = Endpoint("unix", socket_file)
    else:
        server, address = await listen_tcp(listener.protocol)
        endpoint = Endpoint("tcp", address)
    try:
        peer = await invitation.start_peer(endpoint, token)
        try:
            timeout = config.connect_timeout or None
            waiting: set[asyncio.Future[Any]] = {accepted, peer.gone}
            await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not accepted.done():
                if peer.gone.done():
                    raise ConnectionFailed(
                        f"{peer.gone.result()} before connecting over {endpoint}")
                raise Timeout(f"worker did not connect over {endpoint} within "
                              f"{config.connect_timeout_ms} ms")
        except BaseException:
            await peer.abandon()
            raise
    finally:
        server.close()
        listener.close()
        if socket_file is not None:
            remove_socket(socket_file)
        if not accepted.done():
            accepted.cancel()
    return StreamChannel(instance_id, accepted.result(), config, transport=kind,
                         peer=str(endpoint))


async def accept_unix_channel(
    instance_id: RuntimeInstanceId, config: ChannelConfig, invitation: Invitation,
) -> StreamChannel:
    return await accept_channel("unix", instance_id, config, invitation)


async def accept_tcp_channel(
    instance_id: RuntimeInstanceId, config: ChannelConfig, invitation: Invitation,
) -> StreamChannel:
    return await accept_channel("tcp", instance_id, config, invitation)
