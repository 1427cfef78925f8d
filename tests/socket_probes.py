"""Looking at raw sockets from the client's side, for tests of what servers refuse."""

from __future__ import annotations

import socket


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server has closed this connection (reads what is waiting, never blocks)."""
    try:
        return sock.recv(4096, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
