"""TLS and mutual TLS for pod workers, over gRPC and the TCP fallback, with certificates made
in the test (a private CA, a server certificate for 127.0.0.1, a client certificate)."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from k8s_support import PodWorker
from spear import (
    ChannelClosed,
    ChannelConfig,
    ChannelCreationFailed,
    ConnectionFailed,
    ExecutionRequest,
    ExecutionResponse,
    RuntimeInstanceId,
    RuntimeType,
)
from spear.channel.grpc import open_grpc_channel
from spear.runtime.kubernetes import KubernetesRuntime
from spear.transport.tls import TlsConfig

POD = RuntimeInstanceId(RuntimeType.KUBERNETES, "tls-pod")
TOKEN = "tls-token-77"


@dataclass
class Pki:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    named_cert: str  # names only the Service's DNS name, no IP
    named_key: str
    other_ca: str  # a CA nobody's certificate chains to


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> str:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return str(path)


def _write_cert(path: Path, cert: x509.Certificate) -> str:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name))
            .issuer_name(_name(common_name)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], common_name: str,
    names: list[x509.GeneralName], usage: x509.ObjectIdentifier,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = _ca("spear test CA")
    server = _leaf(ca, "echo", [x509.DNSName("localhost"),
                                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                   ExtendedKeyUsageOID.SERVER_AUTH)
    named = _leaf(ca, "echo", [x509.DNSName("echo.default.svc")],
                  ExtendedKeyUsageOID.SERVER_AUTH)
    client = _leaf(ca, "spearlet", [x509.DNSName("spearlet")], ExtendedKeyUsageOID.CLIENT_AUTH)
    other = _ca("some other CA")
    return Pki(
        ca=_write_cert(root / "ca.crt", ca[0]),
        server_cert=_write_cert(root / "server.crt", server[0]),
        server_key=_write_key(root / "server.key", server[1]),
        client_cert=_write_cert(root / "client.crt", client[0]),
        client_key=_write_key(root / "client.key", client[1]),
        named_cert=_write_cert(root / "named.crt", named[0]),
        named_key=_write_key(root / "named.key", named[1]),
        other_ca=_write_cert(root / "other-ca.crt", other[0]),
    )


@pytest.fixture(scope="module")
def tls_worker(pki: Pki) -> Iterator[PodWorker]:
    with PodWorker("--grpc", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--health-port", "0",
                   "--tls-cert", pki.server_cert, "--tls-key", pki.server_key,
                   "k8s_handlers:echo", env={"SPEAR_TOKEN": TOKEN}) as worker:
        yield worker


@pytest.fixture(scope="module")
def mtls_worker(pki: Pki) -> Iterator[PodWorker]:
    with PodWorker("--grpc", "127.0.0.1:0", "--tcp", "127.0.0.1:0",
                   "--tls-cert", pki.server_cert, "--tls-key", pki.server_key,
                   "--tls-client-ca", pki.ca, "k8s_handlers:echo") as worker:
        yield worker


async def echo_once(channel: object) -> None:
    from spear.channel.base import CommunicationChannel

    assert isinstance(channel, CommunicationChannel)
    reply = await channel.request_response(ExecutionRequest("e", "echo", b"secret bytes"))
    assert isinstance(reply, ExecutionResponse) and reply.output_data == b"secret bytes"


async def test_grpc_over_tls(tls_worker: PodWorker, pki: Pki) -> None:
    tls = TlsConfig(ca_file=pki.ca)
    async with await open_grpc_channel(POD, tls_worker.grpc, ChannelConfig(), token=TOKEN,
                                       tls=tls) as channel:
        await echo_once(channel)


@pytest.mark.parametrize("client", ["plaintext", "untrusted CA"])
async def test_grpc_tls_refuses_clients_that_cannot_verify(
    tls_worker: PodWorker, pki: Pki, client: str,
) -> None:
    tls = None if client == "plaintext" else TlsConfig(ca_file=pki.other_ca)
    with pytest.raises(ConnectionFailed):
        await open_grpc_channel(POD, tls_worker.grpc, ChannelConfig(connect_timeout_ms=3000),
                                token=TOKEN, tls=tls)


async def test_server_name_override_verifies_the_service_name(pki: Pki) -> None:
    with PodWorker("--grpc", "127.0.0.1:0", "--tls-cert", pki.named_cert,
                   "--tls-key", pki.named_key, "k8s_handlers:echo") as worker:
        with pytest.raises(ConnectionFailed):  # dialled by IP; the certificate names the Service
            await open_grpc_channel(POD, worker.grpc, ChannelConfig(),
                                    tls=TlsConfig(ca_file=pki.ca))
        tls = TlsConfig(ca_file=pki.ca, server_name="echo.default.svc")
        async with await open_grpc_channel(POD, worker.grpc, ChannelConfig(),
                                           tls=tls) as channel:
            await echo_once(channel)


async def test_health_is_plaintext_on_its_own_port_for_kubelet_probes(
    tls_worker: PodWorker,
) -> None:
    async with grpc.aio.insecure_channel(tls_worker.addresses["health"]) as raw:
        answer = await health_pb2_grpc.HealthStub(raw).Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError):  # only health lives on that port
            from spear.transport.grpc.generated import spear_runtime_pb2 as pb
            from spear.transport.grpc.generated import spear_runtime_pb2_grpc as pb_grpc

            await pb_grpc.SpearRuntimeStub(raw).Execute(pb.ExecuteRequest(function_name="x"))


async def test_tcp_fallback_over_tls(tls_worker: PodWorker, pki: Pki) -> None:
    async with KubernetesRuntime(channel_order=("tcp",), token=TOKEN,
                                 tls=TlsConfig(ca_file=pki.ca)) as runtime:
        instance = await runtime.start_instance(
            "tls-tcp", config=ChannelConfig(extra={"tcp_address": tls_worker.tcp}))
        await echo_once(instance.channel)


async def test_mutual_tls_over_grpc_and_tcp(mtls_worker: PodWorker, pki: Pki) -> None:
    tls = TlsConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    async with await open_grpc_channel(POD, mtls_worker.grpc, ChannelConfig(),
                                       tls=tls) as channel:
        await echo_once(channel)
    async with KubernetesRuntime(channel_order=("tcp",), tls=tls) as runtime:
        instance = await runtime.start_instance(
            "mtls-tcp", config=ChannelConfig(extra={"tcp_address": mtls_worker.tcp}))
        await echo_once(instance.channel)


async def test_mutual_tls_refuses_clients_without_a_certificate(
    mtls_worker: PodWorker, pki: Pki,
) -> None:
    no_cert = TlsConfig(ca_file=pki.ca)
    with pytest.raises(ConnectionFailed):
        await open_grpc_channel(POD, mtls_worker.grpc, ChannelConfig(connect_timeout_ms=3000),
                                tls=no_cert)
    async with KubernetesRuntime(channel_order=("tcp",), tls=no_cert) as runtime:
        # TLS 1.3 reports a rejected client certificate after the client's handshake is
        # done, so without a token (whose handshake needs a reply) it shows on first use.
        with pytest.raises((ChannelCreationFailed, ChannelClosed)):
            instance = await runtime.start_instance("mtls-nocert", config=ChannelConfig(
                connect_timeout_ms=3000, extra={"tcp_address": mtls_worker.tcp}))
            await echo_once(instance.channel)


def test_tls_config_validates_its_files(tmp_path: Path) -> None:
    from spear import InvalidConfiguration

    with pytest.raises(InvalidConfiguration):
        TlsConfig(cert_file="only-cert.pem")
    with pytest.raises(InvalidConfiguration):
        TlsConfig(ca_file=str(tmp_path / "missing.pem")).grpc_channel_credentials()
    with pytest.raises(InvalidConfiguration):
        TlsConfig(ca_file=str(tmp_path / "missing.pem")).server_ssl_context()
