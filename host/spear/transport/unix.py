"""Unix domain sockets: private directories, socket path naming, listening and dialling.

Only the socket level lives here; what travels on the socket is the channel's business.
A socket file is only as private as its directory, so each runtime makes its own 0700
directory and each socket is chmod-ed to 0600 before it starts listening.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from spear.errors import ConnectionFailed, Timeout

if TYPE_CHECKING:
    # Imported where it is used: a worker that only needs the blocking helpers here starts
    # without loading asyncio or ssl.
    import asyncio
    import ssl as ssl_module

# sizeof(sockaddr_un.sun_path) minus the terminating NUL: 108 on Linux, 104 on the BSDs.
UNIX_PATH_MAX = 107 if sys.platform.startswith("linux") else 103

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

P = TypeVar("P", bound="asyncio.BaseProtocol")


def default_base_dir() -> str:
    """$XDG_RUNTIME_DIR when it is usable, else /tmp (short, so socket paths stay short)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return xdg
    return "/tmp"


def make_private_dir(base_dir: str | None = None, prefix: str = "spear-") -> str:
    """Create a fresh 0700 directory under `base_dir` (mkdtemp already creates it 0700)."""
    path = tempfile.mkdtemp(prefix=prefix, dir=base_dir or default_base_dir())
    os.chmod(path, 0o700)
    return path


def socket_name(name: str) -> str:
    """A file name for `name`: unsafe characters replaced, plus a short hash when any were,
    so two names that differ only in unsafe characters never share a socket."""
    safe = _UNSAFE.sub("_", name).lstrip(".") or "_"
    if safe != name:
        safe = f"{safe}-{_digest(name, 8)}"
    return f"{safe}.sock"


def socket_path(directory: str, name: str) -> str:
    """`directory/NAME.sock`, or a hash-based short name when that would be too long."""
    path = os.path.join(directory, socket_name(name))
    if len(os.fsencode(path)) <= UNIX_PATH_MAX:
        return path
    return os.path.join(directory, f"s-{_digest(name, 16)}.sock")


def _digest(name: str, length: int) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:length]


def bind_private_socket(path: str, *, mode: int = 0o600, backlog: int = 16) -> socket.socket:
    """Bind and listen on `path` with `mode` set before the first connection can arrive.

    Raises `OSError` when the path is too long, the directory is missing or not writable,
    or the file exists.
    """
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise OSError(
            f"Unix socket path is {len(os.fsencode(path))} bytes, over the platform limit "
            f"of {UNIX_PATH_MAX}: {path}"
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return sock


async def listen_unix(path: str, protocol_factory: Callable[[], asyncio.BaseProtocol], *,
                      mode: int = 0o600) -> asyncio.Server:
    """Serve connections on a private socket at `path`, one protocol object each."""
    import asyncio

    sock = bind_private_socket(path, mode=mode)
    try:
        return await asyncio.get_running_loop().create_unix_server(protocol_factory, sock=sock)
    except BaseException:
        sock.close()
        remove_socket(path)
        raise


def remove_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def dial_unix(
    path: str, protocol_factory: Callable[[], P], *, timeout: float,
    ssl: ssl_module.SSLContext | None = None,
) -> P:
    """Connect to `path`; `ConnectionFailed` (or `Timeout`) names the path and the cause."""
    import asyncio

    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout if timeout > 0 else None):
            _, protocol = await loop.create_unix_connection(
                protocol_factory, path, ssl=ssl,
                server_hostname="localhost" if ssl is not None else None,
            )
    except TimeoutError:
        raise Timeout(f"connecting to unix:{path} took longer than {timeout:.3g} s") from None
    except OSError as exc:  # ssl.SSLError is an OSError too
        raise ConnectionFailed(f"cannot connect to unix:{path}: {exc}") from exc
    return protocol


def connect_unix_socket(path: str, *, timeout: float) -> socket.socket:
    """A blocking connection to `path` (the worker side); errors as for `dial_unix`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout if timeout > 0 else None)
        sock.connect(path)
    except TimeoutError:
        sock.close()
        raise Timeout(f"connecting to unix:{path} took longer than {timeout:.3g} s") from None
    except OSError as exc:
        sock.close()
        raise ConnectionFailed(f"cannot connect to unix:{path}: {exc}") from exc
    sock.settimeout(None)
    return sock
