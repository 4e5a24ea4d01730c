"""The ``/metrics`` page: Prometheus text exposition format 0.0.4.

Every declared family is written, sampled or not: HELP and TYPE always, ``0`` for a counter or
histogram without labels that nothing has counted yet (a labelled family gets its series with
their first values; an unset gauge has no sample, since 0 would be a reading). Then the standard
``process_*`` families (CPU seconds, resident and virtual memory, open and maximum file
descriptors, start time), one series per worker process labelled ``pid``, read from
``/proc/<pid>`` by prometheus-client's ``ProcessCollector`` at scrape time (absent where there is
no /proc). They are not added up: memory or descriptors summed over processes mean little, and
``sum without (pid)`` gives the container's CPU seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.process_collector import ProcessCollector

if TYPE_CHECKING:
    from app.metrics import Metric

Labels = tuple[tuple[str, str], ...]


class Histogram:
    """One histogram series: a count per bucket (not cumulative; the last slot is +Inf)."""

    __slots__ = ("bounds", "counts", "sum", "count", "keys")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0
        #: With several workers: this series' entries in the worker's file (app.metrics_files).
        self.keys: list[str] = []


def exposition(declared: Mapping[str, Metric], series: Mapping[str, Mapping[Labels, float]],
               histograms: Mapping[str, Mapping[Labels, Histogram]], pids: Iterable[int]) -> bytes:
    lines: list[str] = []
    for name in sorted(declared):
        metric = declared[name]
        lines.append(f"# HELP {name} {metric.help}")
        lines.append(f"# TYPE {name} {metric.kind}")
        if metric.kind == "histogram":
            hists = histograms[name] or ({} if metric.labels else {(): Histogram(metric.buckets)})
            for labels, hist in sorted(hists.items(), key=lambda item: item[0]):
                lines.extend(_histogram_lines(name, labels, hist))
            continue
        values = series[name] or ({(): 0.0} if metric.kind == "counter" and not metric.labels else {})
        lines.extend(_sample(name, labels, value) for labels, value in sorted(values.items()))
    lines.extend(_process_lines(pids))
    return ("\n".join(lines) + "\n").encode()


def _histogram_lines(name: str, labels: Labels, hist: Histogram) -> list[str]:
    lines = []
    cumulative = 0
    for bound, count in zip((*hist.bounds, float("inf")), hist.counts):
        cumulative += count
        le = "+Inf" if bound == float("inf") else f"{bound:g}"
        lines.append(_sample(name + "_bucket", (*labels, ("le", le)), cumulative))
    lines.append(_sample(name + "_sum", labels, hist.sum))
    lines.append(_sample(name + "_count", labels, hist.count))
    return lines


#: One ProcessCollector per worker pid (each reads the boot time once when built).
_COLLECTORS: dict[int, ProcessCollector] = {}


def _process_lines(pids: Iterable[int]) -> list[str]:
    pids = sorted(pids)
    for gone in set(_COLLECTORS) - set(pids):  # workers that exited
        del _COLLECTORS[gone]
    families: dict[str, tuple[str, str, list[str]]] = {}
    for pid in pids:
        collector = _COLLECTORS.get(pid)
        if collector is None:
            collector = _COLLECTORS[pid] = ProcessCollector(pid=lambda pid=pid: pid, registry=None)
        for family in collector.collect():
            # prometheus-client names a counter family without its _total; the 0.0.4 TYPE line has it.
            name = family.name + "_total" if family.type == "counter" else family.name
            entry = families.setdefault(name, (family.documentation, family.type, []))
            entry[2].extend(_sample(s.name, (("pid", str(pid)),), s.value) for s in family.samples)
    lines = []
    for name, (help_text, kind, samples) in sorted(families.items()):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
    return lines


def _sample(name: str, labels: Labels, value: Any) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{label_text}}} {_number(value)}"


def _number(value: float) -> str:
    # Exact: "{:g}" keeps 6 digits, so a byte count or a counter past 999,999 came out rounded.
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
