"""CommunicationFactory: strategies, builder, fallback on real connect failures, the pool."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from spear import (
    ChannelConfig,
    ChannelCreationFailed,
    CommunicationFactory,
    CommunicationStrategy,
    CommunicationStrategyBuilder,
    ConnectionFailed,
    ExecutionRequest,
    ExecutionResponse,
    InvalidConfiguration,
    RuntimeInstanceId,
    RuntimeType,
    Timeout,
    UnsupportedChannel,
    UnsupportedRuntime,
    UnsupportedTransport,
)
from spear.channel.connectors import connector_types, get_connector
from spear.channel.factory import ChannelLimitReached
from spearlet_support import Worker, free_port

TOKEN = "factory-test-token-5d1e"
PROC = RuntimeInstanceId(RuntimeType.PROCESS, "worker-001")
POD = RuntimeInstanceId(RuntimeType.KUBERNETES, "pod-0", "default")


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    with Worker("spearlet_handlers:echo") as started:
        yield started


@pytest.fixture
async def factory() -> AsyncIterator[CommunicationFactory]:
    async with CommunicationFactory() as made:
        yield made


async def roundtrip(channel: object, payload: bytes = b"ping") -> bytes:
    reply = await channel.request_response(  # type: ignore[attr-defined]
        ExecutionRequest("r1", "echo", payload), 10.0)
    assert isinstance(reply, ExecutionResponse), reply
    return reply.output_data


# -- strategies and the builder -------------------------------------------------------------


def test_default_strategies_follow_the_seed() -> None:
    factory = CommunicationFactory()
    assert set(factory.supported_runtimes()) == set(RuntimeType)
    assert factory.get_strategy(RuntimeType.PROCESS).channel_order == ("unix", "tcp")
    assert factory.get_strategy(RuntimeType.KUBERNETES).channel_order == ("grpc", "tcp")
    assert factory.get_strategy(RuntimeType.WASM).channel_order == ("memory",)
    assert factory.is_channel_supported(RuntimeType.PROCESS, "tcp")
    assert not factory.is_channel_supported(RuntimeType.PROCESS, "grpc")
    assert not factory.is_channel_supported(RuntimeType.WASM, "unix")
    assert set(connector_types()) >= {"unix", "tcp", "grpc", "memory"}


def test_builder_refuses_a_strategy_without_runtime_type_or_preferred_channel() -> None:
    with pytest.raises(InvalidConfiguration, match="runtime type"):
        CommunicationStrategyBuilder().prefer("unix").build()
    with pytest.raises(InvalidConfiguration, match="preferred channel"):
        CommunicationStrategyBuilder().runtime(RuntimeType.PROCESS).fallback("tcp").build()
    with pytest.raises(InvalidConfiguration, match="twice"):
        CommunicationStrategyBuilder().runtime(RuntimeType.PROCESS).prefer("tcp") \
            .fallback("tcp").build()
    strategy = (CommunicationStrategyBuilder().runtime(RuntimeType.KUBERNETES).prefer("tcp")
                .fallback("grpc").config(ChannelConfig(connect_timeout_ms=100)).build())
    assert strategy.channel_order == ("tcp", "grpc")
    assert strategy.default_config.connect_timeout_ms == 100


def test_register_strategy_replaces_the_runtimes_strategy() -> None:
    factory = CommunicationFactory()
    factory.register_strategy(CommunicationStrategy(RuntimeType.PROCESS, "tcp"))
    assert factory.is_channel_supported(RuntimeType.PROCESS, "tcp")
    assert not factory.is_channel_supported(RuntimeType.PROCESS, "unix")
    empty = CommunicationFactory(strategies={})
    assert empty.supported_runtimes() == []
    assert not empty.is_channel_supported(RuntimeType.WASM, "memory")


async def test_unknown_runtime_and_disallowed_channel_type_are_refused() -> None:
    with pytest.raises(UnsupportedRuntime):
        await CommunicationFactory(strategies={}).create_channel(RuntimeType.WASM)
    factory = CommunicationFactory()
    with pytest.raises(UnsupportedChannel, match="grpc"):
        await factory.create_channel_for_instance(PROC, ChannelConfig(channel_type="grpc"))
    factory.register_strategy(CommunicationStrategy(RuntimeType.PROCESS, "carrier-pigeon"))
    with pytest.raises(ChannelCreationFailed) as info:
        await factory.create_channel_for_instance(PROC, ChannelConfig(address="/nope"))
    assert isinstance(info.value.causes[0], UnsupportedTransport)
    with pytest.raises(UnsupportedTransport):
        get_connector("carrier-pigeon")


# -- creation and fallback over real transports ---------------------------------------------


async def test_wasm_strategy_creates_a_memory_channel(
    factory: CommunicationFactory, echo_wasm: Path
) -> None:
    channel = await factory.create_channel(RuntimeType.WASM, ChannelConfig(address=str(echo_wasm)))
    assert channel.instance_id.runtime_type is RuntimeType.WASM
    assert await roundtrip(channel, b"in memory") == b"in memory"
    from_bytes = await factory.create_channel_for_instance(
        RuntimeInstanceId(RuntimeType.WASM, "from-bytes"), artifact=echo_wasm.read_bytes())
    assert await roundtrip(from_bytes) == b"ping"


async def test_process_falls_back_to_tcp_when_the_unix_socket_refuses(
    factory: CommunicationFactory, worker: Worker, tmp_path: Path
) -> None:
    missing = tmp_path / "{instance}.sock"
    config = ChannelConfig(extra={"unix_path": str(missing),
                                  "tcp_address": worker.addresses["tcp"]})
    channel = await factory.create_channel_for_instance(PROC, config)
    assert channel.instance_id == PROC
    assert channel.capabilities.transport == "tcp"
    assert await roundtrip(channel, b"via tcp") == b"via tcp"


async def test_process_prefers_the_unix_socket_at_its_per_instance_path(
    factory: CommunicationFactory, tmp_path: Path
) -> None:
    """A Unix-socket worker (the stream worker protocol, served in this process) at the path
    the template gives this instance; the TCP fallback is never tried."""
    from spear.transport.unix import bind_private_socket
    from spear.worker import examples
    from spear.worker.tcp_listener import TcpWorkerListener

    path = tmp_path / "process_worker-001.sock"
    listener = TcpWorkerListener(examples.echo)
    listener.start_on(bind_private_socket(str(path)))
    try:
        config = ChannelConfig(extra={"unix_path": str(tmp_path / "{instance}.sock"),
                                      "tcp_address": f"127.0.0.1:{free_port()}"})
        channel = await factory.create_channel_for_instance(PROC, config)
        assert channel.capabilities.transport == "unix"
        assert getattr(channel, "peer", "") == f"unix:{path}"
        assert await roundtrip(channel, b"over unix") == b"over unix"
    finally:
        await factory.close_all_channels()
        listener.close()


async def test_every_failed_attempt_is_reported_with_its_cause(
    factory: CommunicationFactory, tmp_path: Path
) -> None:
    refused_port = free_port()  # nothing listens there
    config = ChannelConfig(connect_timeout_ms=2000, extra={
        "unix_path": str(tmp_path / "{instance}.sock"),
        "tcp_address": f"127.0.0.1:{refused_port}",
    })
    with pytest.raises(ChannelCreationFailed) as info:
        await factory.create_channel_for_instance(PROC, config)
    error = info.value
    assert error.runtime_type is RuntimeType.PROCESS
    assert error.attempted_types == ["unix", "tcp"]
    assert len(error.causes) == 2
    assert all(isinstance(cause, Exception) for cause in error.causes)
    text = str(error)
    # Each transport got its own address: the per-instance socket path and the TCP port.
    assert "process_worker-001.sock" in text and str(refused_port) in text
    assert factory.pooled_channels(PROC) == []


async def test_kubernetes_falls_back_from_grpc_to_tcp_on_its_own_port(
    factory: CommunicationFactory, worker: Worker
) -> None:
    tcp_port = worker.addresses["tcp"].rpartition(":")[2]
    config = ChannelConfig(address=f"http://127.0.0.1:{free_port()}", connect_timeout_ms=3000,
                           extra={"tcp_port": tcp_port})
    channel = await factory.create_channel_for_instance(POD, config)
    assert await roundtrip(channel, b"pod via tcp") == b"pod via tcp"
    # The preferred transport works when its endpoint answers.
    grpc_channel = await factory.create_channel_for_instance(
        RuntimeInstanceId(RuntimeType.KUBERNETES, "pod-1"),
        ChannelConfig(address=worker.addresses["grpc"], extra={"tcp_port": tcp_port}))
    assert grpc_channel.capabilities.transport == "grpc"
    assert await roundtrip(grpc_channel) == b"ping"


async def test_fallback_never_reuses_the_address_of_another_transport(
    factory: CommunicationFactory,
) -> None:
    config = ChannelConfig(address=f"127.0.0.1:{free_port()}", connect_timeout_ms=2000)
    with pytest.raises(ChannelCreationFailed) as info:
        await factory.create_channel_for_instance(POD, config)
    assert info.value.attempted_types == ["grpc", "tcp"]
    assert isinstance(info.value.causes[0], ConnectionFailed | Timeout)
    assert isinstance(info.value.causes[1], InvalidConfiguration)
    assert "tcp_port" in str(info.value.causes[1])


async def test_a_peer_that_accepts_but_never_authenticates_is_a_connect_failure(
    factory: CommunicationFactory, tmp_path: Path
) -> None:
    """Fallback happens on connect failure (here: no handshake answer within the connect
    timeout), not only when a channel object cannot be built."""
    mute = socket.socket(socket.AF_UNIX)
    path = tmp_path / "mute.sock"
    mute.bind(str(path))
    mute.listen()
    try:
        with Worker("spearlet_handlers:echo", grpc=False, token=TOKEN) as worker:
            config = ChannelConfig(connect_timeout_ms=300, extra={
                "unix_path": str(path), "tcp_address": worker.addresses["tcp"]})
            channel = await factory.create_channel_for_instance(PROC, config, token=TOKEN)
            assert await roundtrip(channel, b"after mute unix") == b"after mute unix"
        alone = ChannelConfig(channel_type="unix", connect_timeout_ms=300,
                              extra={"unix_path": str(path)})
        with pytest.raises(ChannelCreationFailed) as info:
            await factory.create_channel_for_instance(
                RuntimeInstanceId(RuntimeType.PROCESS, "mute"), alone, token=TOKEN)
        assert info.value.attempted_types == ["unix"]
        assert isinstance(info.value.causes[0], Timeout | ConnectionFailed)
    finally:
        mute.close()


# -- the pool ---------------------------------------------------------------------------------


async def test_pool_hands_back_the_live_channel_and_replaces_a_dead_one(
    factory: CommunicationFactory, worker: Worker
) -> None:
    config = ChannelConfig(channel_type="tcp", extra={"tcp_address": worker.addresses["tcp"]})
    first = await factory.get_or_create_channel(PROC, config)
    assert await factory.get_or_create_channel(PROC, config) is first
    await first.close()  # it dies
    second = await factory.get_or_create_channel(PROC, config)
    assert second is not first and second.connected
    assert factory.pooled_channels(PROC) == [second]  # the dead one was evicted
    assert await roundtrip(second) == b"ping"


async def test_pool_enforces_the_maximum_channels_per_instance(worker: Worker) -> None:
    config = ChannelConfig(channel_type="tcp", extra={"tcp_address": worker.addresses["tcp"]})
    async with CommunicationFactory(max_channels_per_instance=2) as factory:
        a = await factory.create_channel_for_instance(PROC, config)
        b = await factory.create_channel_for_instance(PROC, config)
        with pytest.raises(ChannelLimitReached, match="maximum"):
            await factory.create_channel_for_instance(PROC, config)
        handed = {await factory.get_or_create_channel(PROC) for _ in range(4)}
        assert handed == {a, b}  # rotates over the live ones
        await a.close()
        c = await factory.create_channel_for_instance(PROC, config)  # room again: a is dead
        assert set(factory.pooled_channels(PROC)) == {b, c}
        # Concurrent callers of an empty instance share one dial.
        other = RuntimeInstanceId(RuntimeType.PROCESS, "other")
        got = await asyncio.gather(*(factory.get_or_create_channel(other, config)
                                     for _ in range(5)))
        assert len({id(channel) for channel in got}) == 1
    assert not b.connected and not c.connected  # close_all_channels on exit


async def test_close_channel_closes_only_that_instance(
    factory: CommunicationFactory, worker: Worker
) -> None:
    config = ChannelConfig(channel_type="tcp", extra={"tcp_address": worker.addresses["tcp"]})
    mine = await factory.get_or_create_channel(PROC, config)
    other = await factory.get_or_create_channel(RuntimeInstanceId(RuntimeType.PROCESS, "x"),
                                                config)
    assert await factory.close_channel(PROC) == 1
    assert not mine.connected and other.connected
    assert await factory.close_all_channels() == 1
    assert not other.connected and factory.pooled_instances() == []
