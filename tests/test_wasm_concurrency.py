"""WASM instances on many threads: separate stores run in parallel (wasm releases the GIL),
one epoch ticker serves every deadline, and new instances are cheap."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import spear
from spear import wasm

Fixture = Callable[[str], Path]


def expected_large(n: int) -> bytes:
    return (bytes(range(251)) * (n // 251 + 1))[:n]


@pytest.fixture(scope="module")
def large_module(wasm_fixture: Fixture) -> wasm.WasmModule:
    return wasm.load(wasm_fixture("large_output"))


@pytest.fixture(scope="module")
def spin_module(wasm_fixture: Fixture) -> wasm.WasmModule:
    return wasm.load(wasm_fixture("spin"))


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads as often as possible, to shake out races between Python threads."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_four_instances_on_four_threads_all_get_correct_answers(
    large_module: wasm.WasmModule,
) -> None:
    def work(worker: int) -> int:
        done = 0
        with large_module.instantiate() as instance:
            for i in range(40):
                data = b"w%d-i%d-" % (worker, i) * (1 + 37 * i)
                assert instance.call("echo", data) == data
                n = 1000 * (i + 1) + worker
                assert instance.call("large", b"%d" % n) == expected_large(n)
                done += 1
        return done

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(work, range(4))) == [40] * 4


def test_one_instance_shared_by_threads_serialises_its_calls(
    large_module: wasm.WasmModule,
) -> None:
    with large_module.instantiate() as instance:

        def work(worker: int) -> None:
            for i in range(100):
                data = b"%d:%d" % (worker, i) * 10
                assert instance.call("echo", data) == data

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(work, range(4)))


def test_two_spinning_guests_on_two_threads_both_time_out(
    spin_module: wasm.WasmModule,
) -> None:
    # Thread a enters its spinning guest; thread b waits until a is in, then enters its own.
    # Both calls are interrupted (a spinning guest never returns by itself), neither before
    # its deadline, and b entered while a was still spinning: b ran Python code while a's
    # guest ran, which only happens because wasm runs without the GIL (holding it, a would
    # have kept b from even waking up until a's call returned). Only lower bounds and an
    # order of events are checked, so a busy machine cannot fail the test.
    timeout = 1.0
    results: dict[str, tuple[type[BaseException] | None, float, float]] = {}
    a_calling = threading.Event()

    def spin(worker: str) -> None:
        with spin_module.instantiate() as instance:
            if worker == "b":
                assert a_calling.wait(30)
                time.sleep(0.05)  # a is in its guest by now
            entered = time.monotonic()
            if worker == "a":
                a_calling.set()
            try:
                instance.call("spin", b"", timeout=timeout)
                outcome: type[BaseException] | None = None
            except spear.Timeout as exc:
                outcome = type(exc)
            results[worker] = (outcome, entered, time.monotonic())
            assert instance.call("echo", b"ok") == b"ok"

    threads = [threading.Thread(target=spin, args=(w,)) for w in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert set(results) == {"a", "b"}
    for kind, entered, returned in results.values():
        assert kind is spear.Timeout
        assert returned - entered >= timeout
    assert results["b"][1] < results["a"][2]  # b entered before a's guest was interrupted


def test_many_concurrent_timeouts_with_different_deadlines_each_fire_on_time(
    spin_module: wasm.WasmModule,
) -> None:
    timeouts = [0.05, 0.1, 0.15, 0.2]
    elapsed: dict[float, float] = {}

    def spin(timeout: float) -> None:
        with spin_module.instantiate() as instance:
            started = time.monotonic()
            with pytest.raises(spear.Timeout):
                instance.call("spin", b"", timeout=timeout)
            elapsed[timeout] = time.monotonic() - started

    with ThreadPoolExecutor(len(timeouts)) as pool:
        list(pool.map(spin, timeouts))
    for timeout, took in elapsed.items():
        assert timeout <= took < timeout + 0.25, (timeout, took)


def test_ticker_accounting_returns_to_idle_after_concurrent_timed_calls(
    spin_module: wasm.WasmModule, fast_switching: None
) -> None:
    ticker = spin_module.engine.ticker

    def work(_: int) -> None:
        with spin_module.instantiate() as instance:
            for _ in range(3000):
                instance.call("echo", b"x", timeout=1.0)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))
    assert ticker.running == 0
    # And the ticker still preempts: a lost update would leave it asleep.
    with spin_module.instantiate() as instance:
        started = time.monotonic()
        with pytest.raises(spear.Timeout):
            instance.call("spin", b"", timeout=0.05)
        assert time.monotonic() - started < 0.2


def test_timeouts_on_one_thread_do_not_interrupt_untimed_calls_on_another(
    spin_module: wasm.WasmModule, large_module: wasm.WasmModule
) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []
    n = 2 << 20

    def untimed() -> None:
        with large_module.instantiate() as instance:
            while not stop.is_set():
                try:
                    assert instance.call("large", b"%d" % n) == expected_large(n)
                except BaseException as exc:
                    errors.append(exc)
                    return

    worker = threading.Thread(target=untimed)
    worker.start()
    try:
        with spin_module.instantiate() as instance:
            for _ in range(5):
                with pytest.raises(spear.Timeout):
                    instance.call("spin", b"", timeout=0.03)
    finally:
        stop.set()
        worker.join(5)
    assert not errors, errors


def test_a_new_instance_from_a_compiled_module_is_cheap(wasm_fixture: Fixture) -> None:
    module = wasm.load(wasm_fixture("echo"))
    module.instantiate().close()  # warm
    count = 200
    started = time.perf_counter()
    for _ in range(count):
        module.instantiate().close()
    mean = (time.perf_counter() - started) / count
    # A sanity bound, not a benchmark: the target is well under 1 ms.
    assert mean < 0.005, f"{mean * 1e3:.3f} ms per instantiation"


def test_instantiating_on_many_threads_at_once_is_safe(wasm_fixture: Fixture) -> None:
    module = wasm.load(wasm_fixture("multi"))

    def work(worker: int) -> None:
        for i in range(50):
            with module.instantiate() as instance:
                data = b"t%d-%d" % (worker, i)
                assert instance.call("reverse", data) == data[::-1]

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))


def test_loading_the_same_module_on_many_threads_at_once_is_safe(wasm_fixture: Fixture) -> None:
    path = wasm_fixture("metadata")

    def work(_: int) -> bytes:
        with wasm.load(path).instantiate() as instance:
            return instance.call("get", b"k", metadata={"k": "v"})

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(work, range(8))) == [b"v"] * 8
