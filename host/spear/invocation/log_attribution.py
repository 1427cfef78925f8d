"""Puts `function` (and `instance_id`) on log records that name only an instance.

A process worker's stdout and stderr lines (`spear_instance` on the record) and a WASM
guest's `spear.log` lines (`instance`) are logged below the invocation layer, which knows
instances, not functions. This filter, installed on the root logger's handlers while a
server runs, looks the instance up among the spearlet's pools, so every such line says
which function it came from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from spear.invocation.spearlet import Spearlet


class InstanceAttribution(logging.Filter):
    def __init__(self, spearlet: Spearlet) -> None:
        super().__init__()
        self._spearlet = spearlet
        self._known: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        instance = getattr(record, "spear_instance", None) or getattr(record, "instance", None)
        if isinstance(instance, str) and getattr(record, "function", None) is None:
            record.instance_id = instance
            function = self._function_of(instance)
            if function is not None:
                record.function = function
        return True

    def _function_of(self, instance: str) -> str | None:
        known = self._known.get(instance)
        if known is not None:
            return known
        for pool in list(self._spearlet.pools()):
            for slot in list(pool.slots):
                self._known[slot.instance.instance_id.full_id] = pool.spec.name
        if len(self._known) > 10_000:  # instances come and go: keep the map bounded
            self._known.clear()
        found = self._known.get(instance)
        if found is not None:
            return found
        # Not in service yet (a worker's first lines): instance names are "<function>-<n>".
        name = instance.rpartition(":")[2].rpartition("-")[0]
        names = {spec.name for spec in self._spearlet.functions()}
        return name if name in names else None


def attribute_instance_logs(spearlet: Spearlet) -> Callable[[], None]:
    """Install the filter on the root logger's handlers; returns the function that removes
    it."""
    attribution = InstanceAttribution(spearlet)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(attribution)

    def detach() -> None:
        for handler in handlers:
            handler.removeFilter(attribution)

    return detach
