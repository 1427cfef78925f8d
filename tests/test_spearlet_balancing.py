"""Balancers and autoscaling over real process instances (plus the pure algorithms)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from dataclasses import dataclass

from spear import FunctionSpec, RuntimeType, Spearlet
from spear.invocation.balancer import LeastOutstanding, RoundRobin, Weighted
from spearlet_support import TESTS_DIR

ENV = {"PYTHONPATH": os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH"))
                                     if p)}


def spec(name: str, **options: object) -> FunctionSpec:
    return FunctionSpec(name, RuntimeType.PROCESS,  # type: ignore[arg-type]
                        command=[sys.executable, "-m", "spear.worker",
                                 "spearlet_handlers:tagged_slow"], env=ENV, **options)


def pid_of(output: bytes) -> bytes:
    return output.split(b":", 1)[0]


# -- the algorithms, on plain load records ----------------------------------------------------


@dataclass(eq=False)
class Load:
    outstanding: int = 0
    capacity: int = 1
    weight: int = 1
    current_weight: int = 0


def test_round_robin_skips_full_instances_and_reports_none_when_all_are() -> None:
    a, b, c = Load(), Load(outstanding=1), Load()
    rr = RoundRobin([a, b, c])  # type: ignore[list-item]
    assert [rr.pick() for _ in range(4)] == [a, c, a, c]
    a.outstanding = c.outstanding = 1
    assert rr.pick() is None
    assert RoundRobin([]).pick() is None


def test_weighted_is_smooth_and_proportional() -> None:
    a, b = Load(weight=3, capacity=9), Load(weight=1, capacity=9)
    balancer = Weighted([a, b])  # type: ignore[list-item]
    picks = [balancer.pick() for _ in range(8)]
    assert Counter(id(p) for p in picks) == {id(a): 6, id(b): 2}
    assert picks[:4].count(b) == 1  # interleaved, not a, a, a, b in bursts of the same one
    a.outstanding = 9  # full: sits out
    assert {balancer.pick() for _ in range(3)} == {b}


def test_least_outstanding_prefers_the_idlest_instance() -> None:
    a, b, c = Load(outstanding=3, capacity=8), Load(outstanding=1, capacity=8), \
        Load(outstanding=2, capacity=8)
    balancer = LeastOutstanding([a, b, c])  # type: ignore[list-item]
    assert balancer.pick() is b
    b.outstanding = 8
    assert balancer.pick() is c


# -- over real instances ----------------------------------------------------------------------


async def test_least_outstanding_steers_around_a_busy_instance() -> None:
    async with Spearlet() as spearlet:
        await spearlet.deploy(spec("f", min_instances=2, max_instances=2,
                                   balancing="least_outstanding"))
        long = asyncio.ensure_future(spearlet.invoke("f", b"800"))
        await asyncio.sleep(0.1)
        assert sorted(spearlet.load("f").values()) == [0, 1]
        quick = [await spearlet.invoke("f", b"0") for _ in range(6)]
        pids = {pid_of(r.output_data) for r in quick}
        assert len(pids) == 1  # all went to the idle one
        assert pid_of((await long).output_data) not in pids


async def test_load_scales_out_to_max_and_idleness_scales_back_in() -> None:
    async with Spearlet(scale_interval_s=0.05) as spearlet:
        await spearlet.deploy(spec("f", min_instances=1, max_instances=3,
                                   concurrency_per_instance=1, scale_in_after_s=0.3))
        replies = await asyncio.gather(*(spearlet.invoke("f", b"600") for _ in range(3)))
        assert all(r.ok for r in replies)
        assert len({pid_of(r.output_data) for r in replies}) == 3  # one per instance
        # Not the instance count now: on a loaded machine the first idle instance may already
        # be scaling back in by the time the last reply arrives.
        assert 'spear_scale_events_total{direction="out",function="f",runtime="process"} 3.0' \
            in spearlet.metrics_text().decode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(spearlet.instances("f")) > 1:
            assert loop.time() < deadline, "did not scale back in"
            await asyncio.sleep(0.05)
        text = spearlet.metrics_text().decode()
        assert 'spear_scale_events_total{direction="in",function="f",runtime="process"} 2.0' \
            in text
        assert (await spearlet.invoke("f", b"1")).ok
