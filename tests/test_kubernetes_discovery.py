"""Discovery: instances follow the pods a headless Service's DNS (or a static list, or
EndpointSlices) reports. Pods are worker subprocesses on 127.0.0.x loopback addresses, all on
one port as in a headless Service; DNS answers come from a resolver the test controls."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator, Sequence
from types import SimpleNamespace

import pytest
from k8s_support import PodWorker, free_port
from spear import ChannelConfig, ExecutionRequest, ExecutionResponse, InvalidConfiguration
from spear.runtime.base import RuntimeInstance
from spear.runtime.discovery import (
    DiscoveryFailed,
    DnsDiscovery,
    Endpoint,
    EndpointSliceDiscovery,
    StaticDiscovery,
)
from spear.runtime.kubernetes import KubernetesRuntime

SERVICE = "echo.default.svc.cluster.local"
POD_IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


class FakeDns:
    """A resolver whose records the test edits, like pods becoming ready or going away."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.failure: OSError | None = None
        self.lookups = 0

    async def __call__(self, name: str, port: int) -> Sequence[str]:
        self.lookups += 1
        if self.failure is not None:
            raise self.failure
        if name not in self.records:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.records[name])


@pytest.fixture(scope="module")
def pods() -> Iterator[tuple[int, dict[str, PodWorker]]]:
    port = free_port(POD_IPS[0])
    workers: dict[str, PodWorker] = {}
    try:
        for ip in POD_IPS:
            workers[ip] = PodWorker("--grpc", f"{ip}:{port}", "k8s_handlers:whoami").start()
        yield port, workers
    finally:
        for worker in workers.values():
            worker.kill()


async def pid_of(instance: RuntimeInstance) -> int:
    reply = await instance.channel.request_response(ExecutionRequest("who", "whoami", b""))
    assert isinstance(reply, ExecutionResponse) and reply.ok
    return int(reply.output_data)


async def test_dns_discovery_adds_and_removes_instances_as_pods_come_and_go(
    pods: tuple[int, dict[str, PodWorker]],
) -> None:
    port, workers = pods
    dns = FakeDns()
    dns.records[SERVICE] = POD_IPS[:2]
    changes: list[tuple[int, int]] = []
    async with KubernetesRuntime() as runtime:
        watcher = await runtime.watch(
            DnsDiscovery(SERVICE, port, resolver=dns), interval=3600,
            on_change=lambda added, removed: changes.append((len(added), len(removed))),
        )
        assert sorted(e.host for e in watcher.endpoints) == POD_IPS[:2]
        pids = {await pid_of(instance) for instance in watcher.instances}
        assert pids == {workers[ip].pid for ip in POD_IPS[:2]}
        assert {i.instance_id.instance_id for i in watcher.instances} == {
            f"{ip}:{port}" for ip in POD_IPS[:2]}

        # A pod goes away and another becomes ready.
        dns.records[SERVICE] = [POD_IPS[1], POD_IPS[2]]
        added, removed = await watcher.refresh()
        assert [i.instance_id.instance_id for i in added] == [f"{POD_IPS[2]}:{port}"]
        assert [i.instance_id.instance_id for i in removed] == [f"{POD_IPS[0]}:{port}"]
        assert not removed[0].alive
        assert await pid_of(added[0]) == workers[POD_IPS[2]].pid
        assert sorted(e.host for e in watcher.endpoints) == POD_IPS[1:]
        assert len(runtime.instances()) == 2

        # The Service has no ready pods: the name does not resolve at all.
        del dns.records[SERVICE]
        added, removed = await watcher.refresh()
        assert (len(added), len(removed)) == (0, 2)
        assert watcher.instances == [] and runtime.instances() == []
        assert changes == [(2, 0), (1, 1), (0, 2)]
        await watcher.close()


async def test_dns_trouble_keeps_the_instances_we_have(
    pods: tuple[int, dict[str, PodWorker]],
) -> None:
    port, _ = pods
    dns = FakeDns()
    dns.records[SERVICE] = POD_IPS[:1]
    async with KubernetesRuntime() as runtime:
        watcher = await runtime.watch(DnsDiscovery(SERVICE, port, resolver=dns), interval=3600)
        assert len(watcher.instances) == 1
        dns.failure = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        assert await watcher.refresh() == ([], [])
        assert len(watcher.instances) == 1 and watcher.instances[0].alive


async def test_watcher_re_resolves_periodically(pods: tuple[int, dict[str, PodWorker]]) -> None:
    port, _ = pods
    dns = FakeDns()
    dns.records[SERVICE] = POD_IPS[:1]
    async with KubernetesRuntime() as runtime:
        watcher = await runtime.watch(DnsDiscovery(SERVICE, port, resolver=dns), interval=0.05)
        dns.records[SERVICE] = POD_IPS
        for _ in range(100):
            if len(watcher.instances) == 3:
                break
            await asyncio.sleep(0.05)
        assert len(watcher.instances) == 3
        assert dns.lookups >= 2


async def test_pod_that_is_not_listening_yet_is_retried(
    pods: tuple[int, dict[str, PodWorker]],
) -> None:
    port, _ = pods
    dns = FakeDns()
    late_ip = "127.0.0.5"
    dns.records[SERVICE] = [POD_IPS[0], late_ip]
    async with KubernetesRuntime() as runtime:
        watcher = await runtime.watch(DnsDiscovery(SERVICE, port, resolver=dns), interval=3600)
        assert [e.host for e in watcher.endpoints] == [POD_IPS[0]]
        with PodWorker("--grpc", f"{late_ip}:{port}", "k8s_handlers:whoami") as late:
            added, _ = await watcher.refresh()
            assert len(added) == 1 and await pid_of(added[0]) == late.pid
        await watcher.close()
        assert runtime.instances() == []


async def test_default_resolver_uses_the_system_resolver() -> None:
    endpoints = await DnsDiscovery("localhost", 50051, tcp_port=50052).endpoints()
    assert Endpoint("127.0.0.1", 50051, 50052) in endpoints
    assert endpoints[0].tcp_address is not None


async def test_static_discovery(pods: tuple[int, dict[str, PodWorker]]) -> None:
    port, workers = pods
    discovery = StaticDiscovery([f"{POD_IPS[0]}:{port}", Endpoint(POD_IPS[1], port)])
    async with KubernetesRuntime() as runtime:
        watcher = await runtime.watch(discovery, interval=3600, namespace="prod")
        assert {await pid_of(i) for i in watcher.instances} == {
            workers[POD_IPS[0]].pid, workers[POD_IPS[1]].pid}
        assert all(i.instance_id.namespace == "prod" for i in watcher.instances)
    with pytest.raises(InvalidConfiguration):
        StaticDiscovery(["no-port"])


def test_endpoint_config_points_each_transport_at_its_own_address() -> None:
    base = ChannelConfig(address="ignored:1", extra={"tcp_port": "9", "other": "kept"})
    config = Endpoint("10.0.0.7", 50051, 50052).channel_config(base)
    assert config.address == "10.0.0.7:50051"
    assert config.extra == {"tcp_address": "10.0.0.7:50052", "other": "kept"}
    v6 = Endpoint("fd00::7", 50051).channel_config(base)
    assert v6.address == "[fd00::7]:50051" and "tcp_address" not in v6.extra


# -- EndpointSlices (the kubernetes client is not installed here: a stand-in API object) ------


def _slice(ports: dict[str, int], endpoints: list[tuple[list[str], bool | None, str]]) -> object:
    return SimpleNamespace(
        ports=[SimpleNamespace(name=name, port=port) for name, port in ports.items()],
        endpoints=[
            SimpleNamespace(addresses=addresses, conditions=SimpleNamespace(ready=ready),
                            target_ref=SimpleNamespace(name=pod))
            for addresses, ready, pod in endpoints
        ],
    )


class FakeDiscoveryApi:
    def __init__(self, items: list[object]) -> None:
        self.items = items
        self.calls: list[tuple[str, str]] = []

    def list_namespaced_endpoint_slice(self, namespace: str, *, label_selector: str) -> object:
        self.calls.append((namespace, label_selector))
        return SimpleNamespace(items=self.items)


async def test_endpoint_slices_give_ready_pods_with_names_and_ports() -> None:
    api = FakeDiscoveryApi([
        _slice({"grpc": 50051, "tcp": 50052}, [
            (["10.1.0.5"], True, "echo-7d9-abc"),
            (["10.1.0.6"], False, "echo-7d9-def"),  # not ready: left out
            (["10.1.0.7"], None, "echo-7d9-ghi"),  # unknown readiness counts as ready
        ]),
        _slice({"metrics": 9090}, [(["10.1.0.5"], True, "echo-7d9-abc")]),  # no grpc port
    ])
    discovery = EndpointSliceDiscovery("echo", "prod", api=api)
    endpoints = await discovery.endpoints()
    assert endpoints == [
        Endpoint("10.1.0.5", 50051, 50052, "echo-7d9-abc"),
        Endpoint("10.1.0.7", 50051, 50052, "echo-7d9-ghi"),
    ]
    assert api.calls == [("prod", "kubernetes.io/service-name=echo")]


async def test_endpoint_slice_api_errors_are_discovery_failures() -> None:
    class Broken:
        def list_namespaced_endpoint_slice(self, namespace: str, **_: object) -> object:
            raise ConnectionRefusedError("apiserver down")

    with pytest.raises(DiscoveryFailed):
        await EndpointSliceDiscovery("echo", api=Broken()).endpoints()


async def test_endpoint_slices_without_the_kubernetes_package_say_what_to_install() -> None:
    try:
        import kubernetes  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidConfiguration, match="kubernetes"):
            await EndpointSliceDiscovery("echo").endpoints()
    else:
        pytest.skip("the kubernetes package is installed")
