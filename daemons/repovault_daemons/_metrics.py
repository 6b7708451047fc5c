"""A few Prometheus metrics, rendered in the text exposition format."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
Labels = tuple[tuple[str, str], ...]


class Metrics:
    """Counters, gauges and histograms keyed by name and labels; thread-safe."""

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, Labels], float] = defaultdict(float)
        self._gauges: dict[tuple[str, Labels], float] = {}
        self._histograms: dict[tuple[str, Labels], list[float]] = {}
        self._before_render: list[Callable[[], None]] = []

    def before_render(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (typically setting gauges) each time the metrics are read."""
        self._before_render.append(callback)

    def count(self, name: str, amount: float = 1, **labels: str) -> None:
        with self._lock:
            self._counters[(name, tuple(sorted(labels.items())))] += amount

    def gauge(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._gauges[(name, tuple(sorted(labels.items())))] = value

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            slots = self._histograms.setdefault(key, [0.0] * (len(_BUCKETS) + 2))
            for index, bound in enumerate(_BUCKETS):
                if seconds <= bound:
                    slots[index] += 1
            slots[-2] += 1  # count
            slots[-1] += seconds  # sum

    def render(self) -> str:
        for callback in self._before_render:
            callback()
        lines: list[str] = []
        with self._lock:
            for (name, labels), value in sorted(self._counters.items()):
                lines.append(f"{self._name(name)}_total{_labels(labels)} {value}")
            for (name, labels), value in sorted(self._gauges.items()):
                lines.append(f"{self._name(name)}{_labels(labels)} {value}")
            for (name, labels), slots in sorted(self._histograms.items()):
                full = self._name(name)
                for bound, count in zip(_BUCKETS, slots, strict=False):
                    lines.append(f"{full}_bucket{_labels((*labels, ('le', str(bound))))} {count}")
                lines.append(f"{full}_bucket{_labels((*labels, ('le', '+Inf')))} {slots[-2]}")
                lines.append(f"{full}_count{_labels(labels)} {slots[-2]}")
                lines.append(f"{full}_sum{_labels(labels)} {slots[-1]}")
        return "\n".join(lines) + "\n"

    def _name(self, name: str) -> str:
        return f"{self._namespace}_{name}"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{value}"' for key, value in labels)
    return "{" + inner + "}"
