"""The gRPC front door, and both doors' security: TLS (mutual on request), bearer tokens,
server reflection, validated options, and a port that cannot be shared."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from front_door_support import (
    capacity_is_whole,
    exchange,
    functions_table,
    http_port,
    post_request,
    read_response,
    running_server,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from socket_probes import closed_by_peer
from spear.errors import InvalidConfiguration
from spear.invocation.generated import function_service_pb2 as pb
from spear.invocation.generated import function_service_pb2_grpc as pb_grpc
from test_grpc_tls import _ca, _leaf, _write_cert, _write_key

TOKEN = "front-door-token-0123456789"


def _stub(channel: grpc.aio.Channel) -> pb_grpc.FunctionServiceStub:
    return pb_grpc.FunctionServiceStub(channel)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("timeout_s", [float("inf"), float("nan"), -1.0, 1e300])
async def test_a_bad_grpc_timeout_is_invalid_argument_and_capacity_stays_whole(
    wasm_fixture: Callable[[str], Path], timeout_s: float,
) -> None:
    async with running_server(functions_table(wasm_fixture)[:1], http=False) as front:
        assert front.grpc_address is not None
        async with grpc.aio.insecure_channel(front.grpc_address) as channel:
            for _ in range(4):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await _stub(channel).Invoke(
                        pb.InvokeRequest(function="echo", input=b"x", timeout_s=timeout_s))
                assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                assert "timeout must be" in (refused.value.details() or "")
                trailers = dict(refused.value.trailing_metadata() or ())
                assert trailers["x-spear-request-id"]
            with pytest.raises(grpc.aio.AioRpcError) as bad_metadata:
                await _stub(channel).Invoke(pb.InvokeRequest(
                    function="echo", input=b"x", metadata={"tenant": "a\x00b"}))
            assert bad_metadata.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert await capacity_is_whole(front, "echo")
            reply = await _stub(channel).Invoke(pb.InvokeRequest(function="echo", input=b"ok"))
            assert reply.output == b"ok"


async def test_grpc_timeouts_have_one_shape_whichever_side_is_first(
    wasm_fixture: Callable[[str], Path],
) -> None:
    async with running_server(functions_table(wasm_fixture), http=False) as front:
        assert front.grpc_address is not None
        async with grpc.aio.insecure_channel(front.grpc_address) as channel:
            stub = _stub(channel)
            for request, deadline in [
                (pb.InvokeRequest(function="spin"), 10.0),  # the function's limit
                (pb.InvokeRequest(function="slow", input=b"3000", timeout_s=0.3), 10.0),
                (pb.InvokeRequest(function="slow", input=b"3000"), 0.3),  # the call's deadline
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as late:
                    await stub.Invoke(request, timeout=deadline)
                assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            failed = await stub.Invoke(pb.InvokeRequest(function="fail", input=b"!"))
            assert failed.status == pb.InvokeResponse.ERROR and failed.error_code == "42"
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.Invoke(pb.InvokeRequest(function="missing"))
            assert missing.value.code() is grpc.StatusCode.NOT_FOUND


async def test_grpc_connections_beyond_max_connections_or_silent_are_closed(
        wasm_fixture: Callable[[str], Path]) -> None:
    async with running_server(functions_table(wasm_fixture)[:1], max_connections=4,
                              head_timeout_s=1.0) as front:
        assert front.grpc_address is not None
        host, port = front.grpc_address.rsplit(":", 1)
        socks = [socket.create_connection((host, int(port))) for _ in range(10)]
        try:
            await asyncio.sleep(0.5)
            closed = {i for i, sock in enumerate(socks) if closed_by_peer(sock)}
            assert len(closed) >= 6  # beyond max_connections, at once
            deadline = asyncio.get_running_loop().time() + 10
            while len(closed) < len(socks):  # the rest never spoke HTTP/2: head_timeout_s
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.1)
                closed |= {i for i, sock in enumerate(socks) if closed_by_peer(sock)}
        finally:
            for sock in socks:
                sock.close()
        async with grpc.aio.insecure_channel(front.grpc_address) as channel:
            reply = await _stub(channel).Invoke(pb.InvokeRequest(function="echo", input=b"ok"))
        assert reply.output == b"ok"


async def test_grpc_reflection_lists_the_services(wasm_fixture: Callable[[str], Path]) -> None:
    async with running_server(functions_table(wasm_fixture)[:1], http=False) as front:
        assert front.grpc_address is not None
        async with grpc.aio.insecure_channel(front.grpc_address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)

            async def ask() -> object:
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            async for reply in stub.ServerReflectionInfo(ask()):
                names = {s.name for s in reply.list_services_response.service}
                assert "spear.invocation.v1.FunctionService" in names
                assert "grpc.health.v1.Health" in names
                break


async def test_a_taken_grpc_port_fails_loudly(wasm_fixture: Callable[[str], Path]) -> None:
    async with running_server(functions_table(wasm_fixture)[:1], http=False) as first:
        assert first.grpc_address is not None
        with pytest.raises(InvalidConfiguration, match="cannot listen for gRPC"):
            async with running_server(functions_table(wasm_fixture)[:1], http=False,
                                      grpc=first.grpc_address):
                pass
        async with running_server(functions_table(wasm_fixture)[:1], grpc=False) as second:
            with pytest.raises(InvalidConfiguration, match="cannot listen for HTTP"):
                async with running_server(functions_table(wasm_fixture)[:1], grpc=False,
                                          http=second.http_address):
                    pass


# -- bearer tokens ----------------------------------------------------------------------------


async def test_tokens_guard_invoke_and_listing_but_not_health(
    wasm_fixture: Callable[[str], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"an-old-token-that-is-long\n{TOKEN}\n")
    async with running_server(functions_table(wasm_fixture)[:1],
                              auth={"token_file": str(tokens)}) as front:
        port = http_port(front)
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert (await exchange(port, post_request("echo", b"x"))).status == 401
        wrong = await exchange(port, post_request(
            "echo", b"x", headers={"Authorization": "Bearer not-the-token-at-all"}))
        assert wrong.status == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
        ok = await exchange(port, post_request("echo", b"x", headers=good))
        assert (ok.status, ok.body) == (200, b"x")
        old = await exchange(port, post_request(
            "echo", b"x", headers={"Authorization": "Bearer an-old-token-that-is-long"}))
        assert old.status == 200  # two tokens during a rotation
        listing = b"GET /functions HTTP/1.1\r\nHost: t\r\n\r\n"
        assert (await exchange(port, listing)).status == 401
        assert (await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")).status == 200
        assert (await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")).status == 200
        assert front.grpc_address is not None
        async with grpc.aio.insecure_channel(front.grpc_address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _stub(channel).Invoke(pb.InvokeRequest(function="echo", input=b"x"))
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            reply = await _stub(channel).Invoke(
                pb.InvokeRequest(function="echo", input=b"x"),
                metadata=(("authorization", f"Bearer {TOKEN}"),))
            assert reply.output == b"x"
            health = health_pb2_grpc.HealthStub(channel)
            status = await health.Check(health_pb2.HealthCheckRequest(service="echo"))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert TOKEN not in caplog.text and "not-the-token" not in caplog.text


async def test_metrics_can_be_protected_too(
    wasm_fixture: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPEAR_TEST_TOKENS", TOKEN)
    async with running_server(functions_table(wasm_fixture)[:1], grpc=False,
                              auth={"token_env": "SPEAR_TEST_TOKENS",
                                    "protect_metrics": True}) as front:
        port = http_port(front)
        assert (await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")).status == 401
        allowed = await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: t\r\n"
                                       b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
        assert allowed.status == 200 and b"spear_instances" in allowed.body


async def test_a_short_or_missing_token_source_is_refused(
    wasm_fixture: Callable[[str], Path], tmp_path: Path,
) -> None:
    short = tmp_path / "short"
    short.write_text("abc\n")
    for auth in ({"token_file": str(short)}, {"token_env": "SPEAR_NO_SUCH_VARIABLE"}, {}):
        with pytest.raises(InvalidConfiguration):
            async with running_server(functions_table(wasm_fixture)[:1], auth=auth):
                pass


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("front-pki")
    ca = _ca("front door test CA")
    server = _leaf(ca, "spear", [x509.DNSName("localhost"),
                                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                   ExtendedKeyUsageOID.SERVER_AUTH)
    client = _leaf(ca, "caller", [x509.DNSName("caller")], ExtendedKeyUsageOID.CLIENT_AUTH)
    return {
        "ca": _write_cert(root / "ca.crt", ca[0]),
        "cert": _write_cert(root / "server.crt", server[0]),
        "key": _write_key(root / "server.key", server[1]),
        "client_cert": _write_cert(root / "client.crt", client[0]),
        "client_key": _write_key(root / "client.key", client[1]),
    }


async def test_https_and_grpc_over_tls(
    wasm_fixture: Callable[[str], Path], certificates: dict[str, str],
) -> None:
    tls = {"cert_file": certificates["cert"], "key_file": certificates["key"]}
    async with running_server(functions_table(wasm_fixture)[:1], tls=tls) as front:
        context = ssl.create_default_context(cafile=certificates["ca"])
        reader, writer = await asyncio.open_connection("127.0.0.1", http_port(front),
                                                       ssl=context)
        try:
            writer.write(post_request("echo", b"secret"))
            response = await asyncio.wait_for(read_response(reader), 10)
            assert (response.status, response.body) == (200, b"secret")
        finally:
            writer.close()
        with pytest.raises(ssl.SSLError):  # a client that cannot verify the server
            await asyncio.open_connection("127.0.0.1", http_port(front),
                                          ssl=ssl.create_default_context())
        assert front.grpc_address is not None
        credentials = grpc.ssl_channel_credentials(Path(certificates["ca"]).read_bytes())
        async with grpc.aio.secure_channel(front.grpc_address, credentials) as channel:
            reply = await _stub(channel).Invoke(pb.InvokeRequest(function="echo", input=b"s"))
            assert reply.output == b"s"
        assert any("https://" in line for line in front.banner())


async def test_mutual_tls_refuses_clients_without_a_certificate(
    wasm_fixture: Callable[[str], Path], certificates: dict[str, str],
) -> None:
    tls = {"cert_file": certificates["cert"], "key_file": certificates["key"],
           "client_ca_file": certificates["ca"]}
    async with running_server(functions_table(wasm_fixture)[:1], http=False,
                              tls=tls) as front:
        assert front.grpc_address is not None
        root = Path(certificates["ca"]).read_bytes()
        anonymous = grpc.ssl_channel_credentials(root)
        async with grpc.aio.secure_channel(front.grpc_address, anonymous) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _stub(channel).Invoke(pb.InvokeRequest(function="echo", input=b"x"),
                                            timeout=10)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        known = grpc.ssl_channel_credentials(
            root, Path(certificates["client_key"]).read_bytes(),
            Path(certificates["client_cert"]).read_bytes())
        async with grpc.aio.secure_channel(front.grpc_address, known) as channel:
            reply = await _stub(channel).Invoke(pb.InvokeRequest(function="echo", input=b"m"))
            assert reply.output == b"m"
