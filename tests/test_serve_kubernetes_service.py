"""Kubernetes functions deployed by Service name: one instance per ready pod, following the
pods as they come and go. Pods are `spear worker` subprocesses on 127.0.0.x, all on one port
as behind a headless Service; the DNS answers come from a resolver the test edits."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from k8s_support import PodWorker, free_port
from spear import FunctionSpec, RuntimeType, Spearlet
from spear.errors import InvalidConfiguration
from spear.invocation.function_spec import ServiceRef
from spear.invocation.serve_config import parse_config
from test_kubernetes_discovery import FakeDns

SERVICE = "whoami.default.svc.cluster.local"
POD_IPS = ["127.0.0.6", "127.0.0.7", "127.0.0.8"]


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


async def answering_pids(spearlet: Spearlet, calls: int = 12) -> set[int]:
    replies = await asyncio.gather(*(spearlet.invoke("whoami", b"") for _ in range(calls)))
    return {int(reply.output_data) for reply in replies}


async def test_instances_follow_the_ready_pods_of_the_service(
    pods: tuple[int, dict[str, PodWorker]],
) -> None:
    port, workers = pods
    dns = FakeDns()
    dns.records[SERVICE] = POD_IPS[:2]
    spec = FunctionSpec("whoami", RuntimeType.KUBERNETES, min_instances=0,
                        service=ServiceRef(SERVICE, port, interval_s=3600, resolver=dns),
                        balancing="round_robin", concurrency_per_instance=1)
    async with Spearlet() as spearlet:
        await spearlet.deploy(spec)
        follower = spearlet._followers["whoami"]
        assert len(spearlet.instances("whoami")) == 2
        assert await answering_pids(spearlet) == {workers[ip].pid for ip in POD_IPS[:2]}

        # One pod leaves, another becomes ready.
        dns.records[SERVICE] = POD_IPS[1:]
        await follower.refresh()
        for _ in range(100):
            if len(spearlet.instances("whoami")) == 2 and not any(
                    slot.draining for slot in follower.pool.slots):
                break
            await asyncio.sleep(0.02)
        assert await answering_pids(spearlet) == {workers[ip].pid for ip in POD_IPS[1:]}

        # Scaling out stops at the pods there are: requests queue, nothing fails to start.
        assert follower.pool.spec.max_instances == 2
        # No ready pods at all: the instances go, requests wait in the queue or time out.
        del dns.records[SERVICE]
        await follower.refresh()
        for _ in range(100):
            if not spearlet.instances("whoami"):
                break
            await asyncio.sleep(0.02)
        assert spearlet.instances("whoami") == []
        dns.records[SERVICE] = POD_IPS[:1]
        await follower.refresh()
        assert await answering_pids(spearlet, 3) == {workers[POD_IPS[0]].pid}


async def test_dns_trouble_keeps_the_instances(pods: tuple[int, dict[str, PodWorker]]) -> None:
    import socket

    port, _ = pods
    dns = FakeDns()
    dns.records[SERVICE] = POD_IPS[:1]
    spec = FunctionSpec("whoami", RuntimeType.KUBERNETES, min_instances=0,
                        service=ServiceRef(SERVICE, port, interval_s=3600, resolver=dns))
    async with Spearlet() as spearlet:
        await spearlet.deploy(spec)
        dns.failure = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        await spearlet._followers["whoami"].refresh()
        assert len(spearlet.instances("whoami")) == 1
        assert len(await answering_pids(spearlet, 2)) == 1


def test_the_config_names_the_service() -> None:
    config = parse_config({"functions": [{
        "name": "thumb", "runtime": "kubernetes",
        "service": {"name": "thumb", "namespace": "media", "port": 50051, "tcp_port": 50052},
    }]}, base_dir=Path("/"), source="x")
    spec = config.functions[0]
    assert spec.service is not None
    assert spec.service.dns_name == "thumb.media.svc.cluster.local"
    assert (spec.service.port, spec.service.tcp_port) == (50051, 50052)
    with pytest.raises(InvalidConfiguration, match="endpoints or service"):
        parse_config({"functions": [{"name": "t", "runtime": "kubernetes"}]},
                     base_dir=Path("/"), source="x")
    with pytest.raises(InvalidConfiguration, match=r"service\.name"):
        parse_config({"functions": [{"name": "t", "runtime": "kubernetes",
                                     "service": {"name": "Not_A_Label"}}]},
                     base_dir=Path("/"), source="x")
