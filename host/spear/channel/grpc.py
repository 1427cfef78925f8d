"""The gRPC channel to one pod: one bidirectional stream, many requests in flight.

Requests and replies are spear.codec messages carried in `Envelope` batches
(`transport/grpc/proto/spear_runtime.proto`), correlated by `request_id` with
`PendingRequests`. A single writer task owns the stream's send side (gRPC allows one write in
flight) and sends everything queued since its last write as one batch; a reader task resolves
replies and queues everything else for `receive()`.

When the stream breaks (the pod died, keepalive found a cut link, the worker drained) every
pending request fails at once with `ChannelClosed` and the channel stays closed; reconnecting
is the runtime's job (`spear.channel.reconnecting`), which swaps in a fresh channel.

Bounded before trusted, as the stream channel: requests queued for the writer are bounded in
bytes (`HOST_OUTBOX_BYTES`; callers wait for room), unsolicited messages in `receive()`'s
inbox too (`HOST_INBOX_BYTES`; beyond, dropped and counted), and a reply nobody waits for is
dropped and counted, never queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Any

import grpc

from spear.channel.base import CommunicationChannel
from spear.channel.capabilities import ChannelCapabilities
from spear.channel.correlation import PendingRequests
from spear.channel.inbox import Inbox
from spear.config import ChannelConfig
from spear.errors import (
    AuthenticationFailed,
    ChannelClosed,
    CommunicationError,
    ConnectionFailed,
    InvalidMessage,
    Timeout,
)
from spear.instance_id import RuntimeInstanceId
from spear.protocol.codec import decode, encode
from spear.protocol.limits import HOST_INBOX_BYTES, HOST_OUTBOX_BYTES
from spear.protocol.messages import (
    REPLY_TYPES,
    Cancel,
    Error,
    ExecutionResponse,
    ExecutionStatus,
    RuntimeMessage,
)
from spear.stats import ChannelStats, StatsRecorder
from spear.transport.grpc.batching import Outbox, batch_limit, receive_limit, write_batches
from spear.transport.grpc.generated import spear_runtime_pb2 as pb
from spear.transport.grpc.generated import spear_runtime_pb2_grpc as pb_grpc
from spear.transport.tls import TlsConfig

log = logging.getLogger(__name__)

# Ids of requests given up on recently; their late replies are expected (dropped quietly).
_ABANDONED_MEMORY = 1024
_CAPABILITIES = ChannelCapabilities("grpc")
# The worker's initial metadata on an accepted stream (see spear.worker.grpc_server).
ACCEPT_KEY = "spear-protocol"


def channel_options(config: ChannelConfig, tls: TlsConfig | None) -> list[tuple[str, Any]]:
    limit = receive_limit(config.max_message_size)
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        # Keepalive is how a cut link (no FIN, no RST) is noticed: a ping unanswered for
        # keepalive_timeout_ms fails the stream, and with it every pending request.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 0),
        # Each channel object gets its own connection; pooled subchannels would make two
        # channels to one pod share (and lose) one TCP connection.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if config.keepalive_interval_ms > 0:
        timeout_ms = int(config.extra.get("keepalive_timeout_ms", 0)) or max(
            1000, config.keepalive_interval_ms // 2
        )
        options.append(("grpc.keepalive_time_ms", config.keepalive_interval_ms))
        options.append(("grpc.keepalive_timeout_ms", timeout_ms))
    if tls is not None:
        options.extend(tls.grpc_channel_options())
    return options


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class GrpcChannel(CommunicationChannel):
    """Use `open_grpc_channel`; the constructor does not connect."""

    def __init__(
        self,
        instance_id: RuntimeInstanceId,
        address: str,
        config: ChannelConfig,
        *,
        token: str | None = None,
        tls: TlsConfig | None = None,
    ) -> None:
        self._instance_id = instance_id
        self._address = address
        self._config = config
        self._token = token
        self._tls = tls
        self._stats = StatsRecorder()
        self._pending = PendingRequests()
        self._inbox = Inbox(HOST_INBOX_BYTES)
        self._outbox = Outbox(HOST_OUTBOX_BYTES)
        self._abandoned: OrderedDict[str, None] = OrderedDict()
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.StreamStreamCall[pb.Envelope, pb.Envelope] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed: CommunicationError | None = None
        self._connected = False

    def __repr__(self) -> str:
        state = "connected" if self._connected else "closed"
        return f"<GrpcChannel {self._instance_id.full_id} {self._address} {state}>"

    @property
    def instance_id(self) -> RuntimeInstanceId:
        return self._instance_id

    @property
    def address(self) -> str:
        return self._address

    @property
    def capabilities(self) -> ChannelCapabilities:
        return _CAPABILITIES

    @property
    def connected(self) -> bool:
        return self._connected

    # -- connecting -----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Dial, open the stream and wait for the worker to accept it (past authentication)."""
        options = channel_options(self._config, self._tls)
        if self._tls is not None:
            channel = grpc.aio.secure_channel(
                self._address, self._tls.grpc_channel_credentials(), options=options
            )
        else:
            channel = grpc.aio.insecure_channel(self._address, options=options)
        self._channel = channel
        loop = asyncio.get_running_loop()
        # connect_timeout_ms=0 means no limit, as everywhere in spear.
        limit = self._config.connect_timeout
        deadline = loop.time() + limit if limit > 0 else None
        try:
            await _wait_ready(channel, self._address, deadline)
            stub = pb_grpc.SpearRuntimeStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Channel(metadata=call_metadata(self._token))
            self._call = call
            rejection: CommunicationError | None = None
            try:
                async with asyncio.timeout_at(deadline):
                    accepted = await call.initial_metadata()
                    # A worker that accepts the stream says so in its initial metadata; one
                    # that rejects it ends the call instead (UNAUTHENTICATED for a bad token).
                    if not any(key == ACCEPT_KEY for key, _ in accepted or ()):
                        rejection = _call_error(await call.code(), await call.details(),
                                                self._address)
            except TimeoutError:
                call.cancel()
                raise ConnectionFailed(
                    f"gRPC worker at {self._address} did not accept the stream within "
                    f"{self._config.connect_timeout_ms} ms"
                ) from None
            if isinstance(rejection, AuthenticationFailed):
                raise rejection
            if rejection is not None:
                raise ConnectionFailed(f"stream not accepted: {rejection}")
        except BaseException:
            self._stats.connection_errors += 1
            await channel.close()
            self._channel = None
            raise
        self._connected = True
        self._tasks = [
            asyncio.create_task(self._read_loop(call), name=f"grpc-read {self._address}"),
            asyncio.create_task(self._write_loop(call), name=f"grpc-write {self._address}"),
        ]

    async def _read_loop(self, call: grpc.aio.StreamStreamCall[pb.Envelope, pb.Envelope]) -> None:
        reason: CommunicationError
        try:
            while True:
                envelope = await call.read()
                if envelope is grpc.aio.EOF:
                    code = await call.code()
                    if code is grpc.StatusCode.OK:
                        reason = ChannelClosed(f"gRPC worker at {self._address} ended the stream")
                    else:
                        reason = _call_error(code, await call.details(), self._address)
                    break
                for payload in envelope.messages:
                    self._dispatch(payload)
        except grpc.aio.AioRpcError as exc:
            reason = _call_error(exc.code(), exc.details(), self._address)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must still fail the callers, not hang them
            log.exception("gRPC reader for %s failed", self._address)
            reason = ChannelClosed(f"gRPC reader failed: {exc}")
        self._fail(reason)

    def _dispatch(self, payload: bytes) -> None:
        self._stats.received(len(payload))
        try:
            message = decode(payload)
        except InvalidMessage as exc:
            log.warning("dropping an invalid message from %s: %s", self._address, exc)
            return
        limit = self._config.max_message_size
        if len(payload) > limit:
            # Allowed by the worker's limit, not by ours: the caller gets an error reply.
            message = ExecutionResponse(
                getattr(message, "request_id", ""), b"", ExecutionStatus.ERROR,
                f"reply of {len(payload)} bytes exceeds this channel's maximum of {limit} bytes",
                "response_too_large",
            )
        cls = type(message)
        if cls in REPLY_TYPES:
            rid: str = message.request_id  # type: ignore[union-attr]
            if self._pending.resolve(rid, message):
                return
            if rid in self._abandoned:
                del self._abandoned[rid]
                self._stats.messages_dropped += 1
                return
            if cls is not Error:
                # A reply nobody asked for (or asked for long ago): dropped, never queued.
                self._stats.messages_dropped += 1
                return
        if not self._inbox.put(message, len(payload)):
            self._stats.messages_dropped += 1

    async def _write_loop(self, call: grpc.aio.StreamStreamCall[pb.Envelope, pb.Envelope]) -> None:
        try:
            await write_batches(self._outbox, call.write,
                                batch_limit(self._config.max_message_size))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream is gone; the reader reports why
            self._fail(ChannelClosed(f"gRPC stream to {self._address} broke: {exc}"))

    def _fail(self, reason: CommunicationError) -> None:
        """The stream is over: fail everything pending at once and wake `receive()`."""
        if self._closed is not None:
            return
        self._closed = reason
        if self._connected and not isinstance(reason, AuthenticationFailed):
            self._stats.connection_errors += 1
        self._connected = False
        self._pending.fail_all(reason)
        self._outbox.close()
        self._inbox.close(reason)
        if self._call is not None:
            self._call.cancel()

    # -- CommunicationChannel -------------------------------------------------------------------

    def _enqueue(self, message: RuntimeMessage) -> None:
        payload = encode(message)
        if len(payload) > self._config.max_message_size:
            raise InvalidMessage(
                f"message of {len(payload)} bytes exceeds the maximum of "
                f"{self._config.max_message_size} bytes"
            )
        self._outbox.put(payload)
        self._stats.sent(len(payload))

    async def send(self, message: RuntimeMessage) -> None:
        if self._closed is not None:
            raise ChannelClosed(str(self._closed))
        await self._outbox.wait_for_room()
        if self._closed is not None:
            raise ChannelClosed(str(self._closed))
        self._enqueue(message)

    async def receive(self) -> RuntimeMessage:
        return await self._inbox.get()

    async def request_response(
        self, request: RuntimeMessage, timeout: float | None = None
    ) -> RuntimeMessage:
        rid = getattr(request, "request_id", None)
        if not isinstance(rid, str):
            raise InvalidMessage(f"{type(request).__name__} has no request_id to correlate by")
        if timeout is None:
            timeout = self._config.request_timeout or None
        if self._outbox.size >= HOST_OUTBOX_BYTES:
            await self._outbox.wait_for_room()  # the stream is not keeping up: wait, not pile up
        future = self._pending.register(rid)
        try:
            self._enqueue(request)
        except BaseException:
            self._pending.discard(rid)
            raise
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout) as scope:
                reply = await future
        except TimeoutError:
            if not scope.expired():
                raise
            self._give_up(rid)
            self._stats.timeout_errors += 1
            raise Timeout(
                f"no reply to {rid!r} from {self._address} within {timeout:.3f} s"
            ) from None
        except asyncio.CancelledError:
            self._give_up(rid)
            raise
        self._stats.completed(time.perf_counter() - started)
        return reply

    def _give_up(self, rid: str) -> None:
        """The caller stopped waiting: forget the request and tell the worker to stop it."""
        self._pending.discard(rid)
        if self._closed is None:
            self._abandoned[rid] = None
            if len(self._abandoned) > _ABANDONED_MEMORY:
                self._abandoned.popitem(last=False)
            with contextlib.suppress(CommunicationError):
                self._enqueue(Cancel(rid))

    async def close(self) -> None:
        self._fail(ChannelClosed(f"channel to {self._address} was closed"))
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def get_stats(self) -> ChannelStats:
        return self._stats.snapshot()

    @property
    def in_flight(self) -> int:
        return len(self._pending)


async def _wait_ready(channel: grpc.aio.Channel, address: str, deadline: float | None) -> None:
    """Wait for the connection, failing at once when it fails (refused, TLS handshake).

    `channel_ready()` alone would sit through gRPC's reconnect backoff until the deadline; a
    refused port should hand over to the fallback transport immediately.
    """
    loop = asyncio.get_running_loop()
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            raise ConnectionFailed(
                f"gRPC worker at {address} is unreachable (refused, no route or TLS failed)"
            )
        if state is grpc.ChannelConnectivity.SHUTDOWN:
            raise ConnectionFailed(f"gRPC channel to {address} was shut down")
        if deadline is not None and deadline <= loop.time():
            raise ConnectionFailed(f"gRPC worker at {address} did not answer in time")
        try:
            async with asyncio.timeout_at(deadline):
                await channel.wait_for_state_change(state)
        except TimeoutError:
            raise ConnectionFailed(f"gRPC worker at {address} did not answer in time") from None
        state = channel.get_state(try_to_connect=True)


def _call_error(code: grpc.StatusCode, details: str | None, address: str) -> CommunicationError:
    text = f"gRPC worker at {address}: {code.name}: {details or 'no details'}"
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationFailed(text)
    return ChannelClosed(text)


async def open_grpc_channel(
    instance_id: RuntimeInstanceId,
    address: str,
    config: ChannelConfig,
    *,
    token: str | None = None,
    tls: TlsConfig | None = None,
) -> GrpcChannel:
    """Connect to the pod worker at `address` ("host:port"); raises `ConnectionFailed` when it
    does not answer and `AuthenticationFailed` when it rejects `token`."""
    channel = GrpcChannel(instance_id, address, config, token=token, tls=tls)
    try:
        await channel.connect()
    except grpc.aio.AioRpcError as exc:
        error = _call_error(exc.code(), exc.details(), address)
        if isinstance(error, AuthenticationFailed):
            raise error from exc
        raise ConnectionFailed(str(error)) from exc
    except OSError as exc:
        raise ConnectionFailed(f"gRPC worker at {address}: {exc}") from exc
    return channel
