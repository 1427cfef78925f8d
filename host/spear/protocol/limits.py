"""Every limit of the wire protocol, with its default, in one place (docs/wire-protocol.md
lists them too).

Before a peer has authenticated it can make us hold only a few kilobytes and one of a few
connection slots, for a few seconds. After, bytes (not only counts) bound every queue on both
sides, so a misbehaving but authenticated peer can cost at most these amounts.
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB

# -- before authentication -------------------------------------------------------------------

# The largest frame accepted before the handshake completes: a hello (instance id, token,
# version) or its reply. Anything larger is refused before its payload is read.
HANDSHAKE_FRAME_LIMIT = 4 * KIB
# How long a new connection may take to complete the handshake.
HANDSHAKE_TIMEOUT = 5.0
# Connections accepted but not yet authenticated, per listener. Beyond this, new connections
# are closed at once, without reading a byte.
MAX_PENDING_HANDSHAKES = 16
# Failed authentications a listener tolerates: a bucket of AUTH_FAILURE_BURST refilled at
# AUTH_FAILURE_RATE per second. While it is empty, new connections are closed unread.
AUTH_FAILURE_RATE = 10.0
AUTH_FAILURE_BURST = 20
# Failed authentications are logged once per interval, with counts, not one line each.
AUTH_FAILURE_LOG_INTERVAL = 10.0

# -- after authentication --------------------------------------------------------------------

# The default maximum frame payload (ChannelConfig.max_message_size, SPEAR_MAX_MESSAGE_SIZE).
DEFAULT_MAX_MESSAGE_SIZE = 64 * MIB
# Host: unsolicited messages waiting for `receive()`, in payload bytes. Beyond, new ones are
# dropped and counted (`ChannelStats.messages_dropped`).
HOST_INBOX_BYTES = 8 * MIB
# Host: requests waiting in one channel; one more fails at once with `TooManyInFlight`.
HOST_MAX_IN_FLIGHT = 16_384
# Host (gRPC): encoded requests queued for the stream's writer, in bytes; callers wait for
# room beyond it (their requests are not dropped).
HOST_OUTBOX_BYTES = 16 * MIB
# Worker: requests one connection (or gRPC stream) may have in flight; one more is answered
# at once with error_code "too_many_requests".
WORKER_MAX_IN_FLIGHT = 1024
# Worker: bytes of request input one connection (or gRPC stream) may have in flight; a request
# that would pass it is answered "too_many_requests" (one request of any allowed size is
# always taken when nothing else is in flight). Requests read but not yet started are at
# most one read's worth: a thread reads only when it has nothing queued to run.
WORKER_IN_FLIGHT_BYTES = 64 * MIB
# Worker (gRPC): encoded replies waiting for the stream's writer; beyond, the worker stops
# reading that stream until the host has taken some.
WORKER_OUTBOX_BYTES = 16 * MIB
# Worker: threads that run synchronous handlers (per worker, shared by its connections).
WORKER_MAX_THREADS = 32
# Pod worker: authenticated hosts connected over TCP at once, and gRPC connections of any
# kind at once; more are refused.
WORKER_MAX_CONNECTIONS = 64
# Pod worker: a connection with no traffic at all for this long is closed (hosts send a
# heartbeat every 10 s by default, so a live host is never idle this long).
IDLE_TIMEOUT = 120.0
