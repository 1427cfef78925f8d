"""TLS settings from PEM files, and the two things built from them: gRPC credentials and
`ssl.SSLContext`s for the TCP channel.

One `TlsConfig` describes one side. On a client, `ca_file` verifies the server (system roots
when absent) and `cert_file`/`key_file` are the client certificate for mutual TLS. On a
server, `cert_file`/`key_file` are required and `ca_file` turns on mutual TLS: clients must
present a certificate signed by it. Files are read when a builder is called, so a rotated
Secret is picked up by the next connection.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spear.errors import InvalidConfiguration

if TYPE_CHECKING:
    import grpc


@dataclass(frozen=True, slots=True)
class TlsConfig:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # Client only: the name to verify in the server's certificate when it differs from the
    # dialled host (pods are dialled by IP; their certificate names the Service).
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise InvalidConfiguration("TLS needs both cert_file and key_file, or neither")

    @property
    def mutual(self) -> bool:
        """On a server: clients must present a certificate signed by `ca_file`."""
        return self.ca_file is not None

    # -- gRPC -------------------------------------------------------------------------------

    def grpc_channel_credentials(self) -> grpc.ChannelCredentials:
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=_read_optional(self.ca_file, "ca_file"),
            private_key=_read_optional(self.key_file, "key_file"),
            certificate_chain=_read_optional(self.cert_file, "cert_file"),
        )

    def grpc_channel_options(self) -> list[tuple[str, str]]:
        if self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []

    def grpc_server_credentials(self) -> grpc.ServerCredentials:
        import grpc

        cert, key = self._server_pair()
        ca = _read_optional(self.ca_file, "ca_file")
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )

    # -- ssl (TCP channel) ----------------------------------------------------------------------

    def client_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file and self.key_file:
            context.load_cert_chain(_existing(self.cert_file, "cert_file"),
                                    _existing(self.key_file, "key_file"))
        return context

    def server_ssl_context(self) -> ssl.SSLContext:
        self._server_pair()  # clear error for missing files
        assert self.cert_file is not None and self.key_file is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.ca_file:
            context.load_verify_locations(cafile=_existing(self.ca_file, "ca_file"))
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _server_pair(self) -> tuple[bytes, bytes]:
        if not self.cert_file or not self.key_file:
            raise InvalidConfiguration("a TLS server needs cert_file and key_file")
        return _read(self.cert_file, "cert_file"), _read(self.key_file, "key_file")


def _existing(path: str, what: str) -> str:
    if not Path(path).is_file():
        raise InvalidConfiguration(f"TLS {what} {path!r} does not exist")
    return path


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidConfiguration(f"cannot read TLS {what} {path!r}: {exc}") from exc


def _read_optional(path: str | None, what: str) -> bytes | None:
    return None if path is None else _read(path, what)
