"""Prometheus metrics for the invocation layer, with nothing but integer bumps on the hot path.

prometheus-client's own `Counter.inc()`/`Histogram.observe()` take a lock each, a cost of
the same order as a whole in-process WASM call. So `invoke` bumps plain attributes of a
`TransportStats` (one per function and transport), and `InvocationCollector` turns them into
metric families only when `/metrics` is scraped. Each `Spearlet` has its own
`CollectorRegistry`, so two spearlets (or two tests) never share series.

Series (labels `function`, `runtime`, `transport`; errors add `kind`; a request refused
before reaching any instance, e.g. `queue_full`, counts under `transport="none"`):

- `spear_invocations_total`            requests completed (any outcome)
- `spear_invocation_errors_total`      failures by kind (timeout, channel_closed, queue_full,
                                       execution_failed, a guest/handler error code...)
- `spear_invocation_duration_seconds`  latency histogram (request sent to reply received)
- `spear_invocation_retries_total`     idempotent requests retried after an instance died
- `spear_in_flight`                    requests being executed now (function, runtime)
- `spear_queue_depth`                  requests waiting for capacity (function, runtime)
- `spear_instances`                    live instances
- `spear_scale_events_total`           instances started / stopped, by `direction`
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from spear.invocation.pool import InstancePool

# Upper bounds in seconds: from a few microseconds (in-process WASM) to seconds (slow handlers).
LATENCY_BOUNDS: tuple[float, ...] = (
    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
# The same bounds in milliseconds: the hot path records milliseconds (the unit replies carry).
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(bound * 1000.0 for bound in LATENCY_BOUNDS)


class TransportStats:
    """Counters of one function over one transport. Bumped inline by `Spearlet.invoke`.

    The request count is not kept separately: every completed request lands in exactly one
    latency bucket, so it is their sum (one increment fewer per call).
    """

    __slots__ = ("buckets", "errors", "latency_sum_ms", "retries", "transport")

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.retries = 0
        self.latency_sum_ms = 0.0
        # buckets[i] counts latencies <= LATENCY_BOUNDS[i]; the last one counts the rest (+Inf).
        self.buckets = [0] * (len(LATENCY_BOUNDS) + 1)
        self.errors: dict[str, int] = {}

    @property
    def requests(self) -> int:
        """Requests completed: every one lands in exactly one latency bucket."""
        return sum(self.buckets)

    def observe_ms(self, milliseconds: float) -> None:
        self.latency_sum_ms += milliseconds
        self.buckets[bisect_left(LATENCY_BOUNDS_MS, milliseconds)] += 1

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class InvocationCollector(Collector):
    """Reads the pools' counters at scrape time."""

    def __init__(self, pools: Callable[[], Iterable[InstancePool]]) -> None:
        self._pools = pools

    def collect(self) -> Iterator[Metric]:
        labels = ["function", "runtime", "transport"]
        requests = CounterMetricFamily(
            "spear_invocations", "Invocations completed, any outcome.", labels=labels)
        errors = CounterMetricFamily(
            "spear_invocation_errors", "Failed invocations by kind.", labels=[*labels, "kind"])
        retries = CounterMetricFamily(
            "spear_invocation_retries",
            "Idempotent invocations retried on another instance after theirs died.",
            labels=labels)
        latency = HistogramMetricFamily(
            "spear_invocation_duration_seconds",
            "Time from dispatch to an instance until its reply.", labels=labels, unit="seconds")
        instances = GaugeMetricFamily("spear_instances", "Live instances.", labels=labels)
        in_flight = GaugeMetricFamily(
            "spear_in_flight", "Invocations executing now.", labels=["function", "runtime"])
        queued = GaugeMetricFamily(
            "spear_queue_depth", "Invocations waiting for a free instance.",
            labels=["function", "runtime"])
        scaled = CounterMetricFamily(
            "spear_scale_events", "Instances started and stopped.",
            labels=["function", "runtime", "direction"])
        for pool in list(self._pools()):
            name, runtime = pool.spec.name, pool.spec.runtime.value
            live: dict[str, int] = {}
            for slot in pool.slots:
                live[slot.stats.transport] = live.get(slot.stats.transport, 0) + 1
            for stats in list(pool.stats.values()):
                key = [name, runtime, stats.transport]
                requests.add_metric(key, stats.requests)
                retries.add_metric(key, stats.retries)
                for kind, count in list(stats.errors.items()):
                    errors.add_metric([*key, kind], count)
                cumulative, buckets = 0, []
                for bound, count in zip((*LATENCY_BOUNDS, float("inf")), stats.buckets,
                                        strict=True):
                    cumulative += count
                    buckets.append((_le(bound), float(cumulative)))
                latency.add_metric(key, buckets, stats.latency_sum_ms / 1000.0)
                instances.add_metric(key, live.get(stats.transport, 0))
            in_flight.add_metric([name, runtime], pool.in_flight())
            queued.add_metric([name, runtime], len(pool.waiting))
            scaled.add_metric([name, runtime, "out"], pool.started_total)
            scaled.add_metric([name, runtime, "in"], pool.stopped_total)
        yield from (requests, errors, retries, latency, instances, in_flight, queued, scaled)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
