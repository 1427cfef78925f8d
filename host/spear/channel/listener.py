"""A listener that lets only authenticated connections through, within a pre-auth budget.

Every accepted connection starts as a `FrameStream` limited to handshake-sized frames. It
must present the expected token within the handshake timeout; meanwhile it holds one of
`max_pending` slots (beyond those, new connections are dropped unread) and failures drain
the listener's failure budget (see `spear.protocol.admission`). A connection that gets in is
handed to `on_authenticated`; one that does not is refused and closed without disturbing the
others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from spear.channel.handshake import await_hello
from spear.errors import AuthenticationFailed, ChannelClosed
from spear.protocol.admission import Admission, peer_host
from spear.protocol.handshake import refusal_frame
from spear.protocol.limits import HANDSHAKE_TIMEOUT, MAX_PENDING_HANDSHAKES
from spear.protocol.messages import Handshake
from spear.transport.frame_stream import FrameStream

log = logging.getLogger(__name__)

Authenticated = Callable[[FrameStream, Handshake], None]


class HandshakeListener:
    def __init__(
        self,
        name: str,
        *,
        token: str,
        on_authenticated: Authenticated,
        max_message_size: int,
        instance_id: str | None = None,
        timeout: float = HANDSHAKE_TIMEOUT,
        max_pending: int = MAX_PENDING_HANDSHAKES,
    ) -> None:
        self.admission = Admission(name, log, max_pending=max_pending)
        self._token = token
        self._instance_id = instance_id
        self._on_authenticated = on_authenticated
        self._max_message_size = max_message_size
        self._timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: set[FrameStream] = set()
        self._closed = False

    def protocol(self) -> FrameStream:
        """The protocol factory to give the server."""
        return FrameStream(on_connect=self._connected)

    def _connected(self, stream: FrameStream) -> None:
        peer = peer_host(stream.transport.get_extra_info("peername"))
        if self._closed or not self.admission.try_admit(peer):
            stream.abort()
            return
        self._streams.add(stream)
        task = asyncio.get_running_loop().create_task(self._authenticate(stream, peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _authenticate(self, stream: FrameStream, peer: str) -> None:
        try:
            hello = await await_hello(
                stream, token=self._token, timeout=self._timeout,
                max_message_size=self._max_message_size, instance_id=self._instance_id,
            )
        except AuthenticationFailed as exc:
            self.admission.failed(str(exc), peer)
            stream.close()
            return
        except BaseException:
            self.admission.release()
            stream.abort()
            raise
        finally:
            self._streams.discard(stream)
        self.admission.release()
        if self._closed:
            stream.close()
            return
        self._on_authenticated(stream, hello)

    def close(self) -> None:
        """Stop handing connections over; refuse those still authenticating."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for stream in list(self._streams):
            stream.write_raw(refusal_frame(self._instance_id, ChannelClosed(
                "the listener closed before this connection authenticated")))
            stream.close()
        self.admission.flush_log()
