"""Load balancers: choose the instance for the next request among those with spare capacity.

Each balancer holds the pool's live slot list (shared, mutated in place by the pool) and
answers `pick()` with a slot whose `outstanding < capacity`, or None when all are full. They
run on every invocation, so they are plain loops over a short list with no allocation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spear.errors import InvalidConfiguration

if TYPE_CHECKING:
    from spear.invocation.pool import Slot


class Balancer:
    name = "base"
    __slots__ = ("slots",)

    def __init__(self, slots: list[Slot]) -> None:
        self.slots = slots

    def pick(self) -> Slot | None:
        raise NotImplementedError


class RoundRobin(Balancer):
    """Each instance in turn, skipping full ones."""

    name = "round_robin"
    __slots__ = ("_next",)

    def __init__(self, slots: list[Slot]) -> None:
        super().__init__(slots)
        self._next = 0

    def pick(self) -> Slot | None:
        slots = self.slots
        i = self._next
        if i >= len(slots):
            i = 0
        try:
            slot = slots[i]
        except IndexError:  # no instance at all
            return None
        if slot.outstanding < slot.capacity:  # the usual case: the next one has room
            self._next = i + 1
            return slot
        return self._scan()

    def _scan(self) -> Slot | None:
        slots = self.slots
        n = len(slots)
        i = self._next
        for _ in range(n):
            if i >= n:
                i = 0
            slot = slots[i]
            i += 1
            if slot.outstanding < slot.capacity:
                self._next = i
                return slot
        return None


class LeastOutstanding(Balancer):
    """The instance with the fewest requests in flight; ties go round robin."""

    name = "least_outstanding"
    __slots__ = ("_start",)

    def __init__(self, slots: list[Slot]) -> None:
        super().__init__(slots)
        self._start = 0

    def pick(self) -> Slot | None:
        slots = self.slots
        n = len(slots)
        if n == 0:
            return None
        start = self._start = (self._start + 1) % n
        best: Slot | None = None
        least = 1 << 62
        for k in range(n):
            slot = slots[(start + k) % n]
            load = slot.outstanding
            if load < least and load < slot.capacity:
                best, least = slot, load
                if load == 0:
                    break
        return best


class Weighted(Balancer):
    """Smooth weighted round robin (as nginx does it): weight 3 gets 3 of every 4 picks
    against weight 1, interleaved rather than in bursts. Full instances sit out a round."""

    name = "weighted"
    __slots__ = ()

    def pick(self) -> Slot | None:
        best: Slot | None = None
        total = 0
        for slot in self.slots:
            if slot.outstanding >= slot.capacity:
                continue
            slot.current_weight += slot.weight
            total += slot.weight
            if best is None or slot.current_weight > best.current_weight:
                best = slot
        if best is not None:
            best.current_weight -= total
        return best


BALANCERS: dict[str, type[Balancer]] = {
    cls.name: cls for cls in (RoundRobin, LeastOutstanding, Weighted)
}


def make_balancer(name: str, slots: list[Slot]) -> Balancer:
    cls = BALANCERS.get(name)
    if cls is None:
        raise InvalidConfiguration(f"unknown balancing {name!r}; use one of {sorted(BALANCERS)}")
    return cls(slots)
