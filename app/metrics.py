"""In-process counters, gauges and histograms exposed in Prometheus text format at ``/metrics``.

Deliberately tiny (no client library): a counter is a dict increment on the hot path. Each
worker process has its own counters; scrape every worker or run one worker per container.
Metric and label names share the reason codes used in the logs.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict


#: Request latency buckets (seconds): the token endpoint's normal range is 0.5-20 ms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(lambda: defaultdict(float))
        self._help: dict[str, str] = {}
        self._gauges: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        self._histograms: dict[str, dict[tuple[tuple[str, str], ...], _Histogram]] = {}
        self._bounds: dict[str, tuple[float, ...]] = {}

    def describe(self, name: str, help_text: str) -> None:
        self._help[name] = help_text

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self._counters[name][tuple(sorted(labels.items()))] += amount

    def value(self, name: str, **labels: str) -> float:
        key = tuple(sorted(labels.items()))
        if name in self._gauges:
            return self._gauges[name].get(key, 0.0)
        return self._counters.get(name, {}).get(key, 0.0)

    def set(self, name: str, value: float, **labels: str) -> None:
        """A gauge: the current value of something (key rotation state, ...)."""
        self._gauges[name][tuple(sorted(labels.items()))] = value

    def clear_gauge(self, name: str) -> None:
        self._gauges.pop(name, None)

    def histogram(self, name: str, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        """Declare a histogram's bucket upper bounds (seconds); ``observe`` then feeds it."""
        self._bounds[name] = tuple(sorted(bounds))
        self._histograms.setdefault(name, {})

    def observe(self, name: str, value: float, **labels: str) -> None:
        """One bisect and three additions: cheap enough for every request."""
        series = self._histograms[name]
        key = tuple(sorted(labels.items()))
        hist = series.get(key)
        if hist is None:
            hist = series[key] = _Histogram(self._bounds[name])
        hist.counts[bisect_left(hist.bounds, value)] += 1
        hist.sum += value
        hist.count += 1

    def histogram_count(self, name: str, **labels: str) -> int:
        hist = self._histograms.get(name, {}).get(tuple(sorted(labels.items())))
        return 0 if hist is None else hist.count

    def render(self) -> bytes:
        lines: list[str] = []
        for name in sorted(self._counters):
            if name in self._help:
                lines.append(f"# HELP {name} {self._help[name]}")
            lines.append(f"# TYPE {name} counter")
            for labels, value in sorted(self._counters[name].items()):
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")
        for name in sorted(self._gauges):
            if name in self._help:
                lines.append(f"# HELP {name} {self._help[name]}")
            lines.append(f"# TYPE {name} gauge")
            for labels, value in sorted(self._gauges[name].items()):
                lines.append(_sample(name, labels, value))
        for name in sorted(self._histograms):
            if name in self._help:
                lines.append(f"# HELP {name} {self._help[name]}")
            lines.append(f"# TYPE {name} histogram")
            for labels, hist in sorted(self._histograms[name].items(), key=lambda item: item[0]):
                cumulative = 0
                for bound, count in zip((*hist.bounds, float("inf")), hist.counts):
                    cumulative += count
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(_sample(name + "_bucket", (*labels, ("le", le)), cumulative))
                lines.append(_sample(name + "_sum", labels, hist.sum))
                lines.append(_sample(name + "_count", labels, hist.count))
        return ("\n".join(lines) + "\n").encode()


class _Histogram:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.count = 0


def _sample(name: str, labels: tuple[tuple[str, str], ...], value: float) -> str:
    if not labels:
        return f"{name} {value:g}"
    label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{label_text}}} {value:g}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
