"""One instance per ready pod of a Kubernetes function deployed by Service name.

The follower re-resolves the Service (`DnsDiscovery`: a headless Service has one DNS record
per ready pod) every `interval_s` and reconciles the function's pool through its public
operations: a pod that appears gets an instance (`start_one`; the launcher asks the follower
which endpoint to dial), a pod that is gone has its instance retired (its requests finish
first). The pool's floor (`target`) and ceiling follow the pod count, so the pool neither
replaces an instance whose pod left nor scales past the pods there are. When discovery fails
the current instances are kept.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging

from spear.errors import CommunicationError
from spear.invocation.function_spec import ServiceRef
from spear.invocation.pool import InstancePool, Slot
from spear.runtime.discovery import DiscoveryFailed, DnsDiscovery, Endpoint

log = logging.getLogger("spear.invocation")


class NoPodToStart(CommunicationError):
    """Every ready pod already has an instance."""


class PodFollower:
    def __init__(self, pool: InstancePool, service: ServiceRef) -> None:
        self.pool = pool
        self.service = service
        self.discovery = DnsDiscovery(service.dns_name, service.port,
                                      tcp_port=service.tcp_port, resolver=service.resolver)
        self.assigned: dict[Endpoint, Slot] = {}
        self._offered: collections.deque[Endpoint] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._set_ceiling(0)

    def take_endpoint(self) -> Endpoint:
        """The endpoint the next instance dials (called by the launcher)."""
        if not self._offered:
            raise NoPodToStart(f"function {self.pool.spec.name!r}: every ready pod of "
                               f"{self.service.dns_name} already has an instance")
        return self._offered.popleft()

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._loop(),
                                                            name="spear-pod-follower")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.service.interval_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following the pods of %s failed", self.pool.spec.name)

    async def refresh(self) -> None:
        async with self._lock:
            try:
                current = set(await self.discovery.endpoints())
            except DiscoveryFailed as exc:
                log.warning("discovery of %s failed, keeping %d instance(s): %s",
                            self.service.dns_name, len(self.assigned), exc,
                            extra={"function": self.pool.spec.name,
                                   "event": "discovery_failed"})
                return
            pool = self.pool
            gone = [endpoint for endpoint in self.assigned if endpoint not in current]
            leaving = [self.assigned.pop(endpoint) for endpoint in gone]
            self._set_ceiling(len(current))
            pool.target = len(self.assigned)
            for endpoint, slot in zip(gone, leaving, strict=True):
                log.info("pod %s left; retiring its instance", endpoint.address,
                         extra={"function": pool.spec.name, "event": "pod_gone",
                                "instance_id": slot.instance.instance_id.full_id})
                pool.spawn(pool.retire(slot, grace=30.0))
            new = sorted((e for e in current if e not in self.assigned),
                         key=lambda e: (e.host, e.port))
            for endpoint in new:
                self._offered.append(endpoint)
                try:
                    slot = await pool.start_one()
                except CommunicationError as exc:
                    log.info("pod %s not reachable yet: %s", endpoint.address, exc,
                             extra={"function": pool.spec.name, "event": "pod_unreachable"})
                    with contextlib.suppress(ValueError):
                        self._offered.remove(endpoint)
                    continue
                self.assigned[endpoint] = slot
                pool.target = len(self.assigned)

    def _set_ceiling(self, pods: int) -> None:
        spec = self.pool.spec
        ceiling = max(pods, 1)
        if spec.max_instances != ceiling or spec.min_instances != 0:
            self.pool.spec = dataclasses.replace(spec, min_instances=0, max_instances=ceiling)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
