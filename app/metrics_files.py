"""Per-worker metric files: how one scrape of any worker adds up all the workers.

``serve --workers N`` (N > 1) runs ``worker_metrics_directory`` in the parent process: it makes a
new, empty, private directory (under ``TMPDIR``) before the workers start, names it to them in
``DIRECTORY_ENV``, and removes it once they have all stopped. Each worker's ``Metrics`` opens a
``WorkerFile`` there, ``<pid>-<start time>-<n>.db`` (an mmapped file in prometheus-client's
``MmapedDict`` layout: a JSON key, a value and a timestamp per series), and writes a series'
current value into it whenever it changes: one slice assignment into shared memory, no system
call, no lock (only this worker writes its file); a series' first write appends its key.
``read_workers`` reads every file and adds them up as the declarations say (``app.metrics``):
counters and histograms summed over every file, also those of workers that exited or were
restarted (a restarted worker has a new pid, hence a new file: totals never go down); gauges over
live workers only.

A worker is live while a process with its pid and its start time (``/proc/<pid>/stat``) exists,
which a reused pid does not fake. Where there is no /proc, dead workers cannot be told from live
ones, so the parent refuses several workers there (one ``ConfigError`` line at start) rather than
serve a dead worker's gauges.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.mmap_dict import MmapedDict

from app.config import ConfigError
from app.metrics_exposition import Histogram, Labels

if TYPE_CHECKING:
    from app.metrics import Metric

#: Set by the parent for its workers only (not a setting): "<parent pid>:<directory>".
DIRECTORY_ENV = "TOKEN_BROKER_WORKER_METRICS"
#: Space reserved for each worker's file when it is made (thousands of series): writes into an
#: mmapped file whose blocks were never allocated would kill the worker (SIGBUS) on a full tmpfs.
FILE_BYTES = 1 << 20


@contextlib.contextmanager
def worker_metrics_directory(workers: int) -> Iterator[Path]:
    """In the parent, around running the workers: their metrics directory, made and removed."""
    if _started(os.getpid()) is None:
        raise ConfigError("--workers > 1 needs /proc to add up the workers' metrics: run one worker per container here")
    try:
        path = Path(tempfile.mkdtemp(prefix="token-broker-metrics-"))
    except OSError as exc:
        raise ConfigError("--workers > 1 needs a writable temporary directory (TMPDIR) for the workers' metrics: "
                          f"{exc.strerror}") from None
    try:
        _reserve(path / "probe", FILE_BYTES * workers)
    except OSError as exc:
        shutil.rmtree(path, ignore_errors=True)
        raise ConfigError(f"--workers > 1 needs {FILE_BYTES * workers >> 20} MiB free in TMPDIR for the workers' metrics: "
                          f"{exc.strerror}") from None
    os.environ[DIRECTORY_ENV] = f"{os.getpid()}:{path}"
    try:
        yield path
    finally:
        os.environ.pop(DIRECTORY_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def worker_directory() -> str | None:
    """The directory this process writes its metrics to: the one its parent made, or None (one
    process: values in memory only). A value inherited from further up is not this run's."""
    parent, _, path = os.environ.get(DIRECTORY_ENV, "").partition(":")
    return path if path and parent == str(os.getppid()) else None


def _reserve(path: Path, size: int) -> None:
    """Create ``path`` with ``size`` bytes allocated; the probe is removed again."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
        os.unlink(path)


class WorkerFile:
    """This worker's file: the current value of every series it has written."""

    def __init__(self, directory: str | Path) -> None:
        self.path = _create(Path(directory))
        self._file = MmapedDict(str(self.path))
        # Open for the worker's life; closed with this object (several per process in tests).
        weakref.finalize(self, self._file.close)
        self._keys: dict[tuple[str, Labels], str] = {}

    def write(self, name: str, labels: Labels, value: float, stamp: float = 0.0) -> None:
        key = self._keys.get((name, labels))
        if key is None:
            key = self._keys[(name, labels)] = json.dumps([name, labels])
        self._file.write_value(key, value, stamp)

    @staticmethod
    def histogram_keys(name: str, labels: Labels, buckets: int) -> list[str]:
        """A histogram series' entries: one per bucket, then the sum (the count is the buckets' total)."""
        return [json.dumps([name, labels, slot]) for slot in (*range(buckets), "sum")]

    def write_histogram(self, hist: Histogram, slot: int) -> None:
        self._file.write_value(hist.keys[slot], hist.counts[slot], 0.0)
        self._file.write_value(hist.keys[-1], hist.sum, 0.0)


def _create(directory: Path) -> Path:
    """A new file of this process's own, its space allocated (see FILE_BYTES)."""
    pid, started = os.getpid(), _started(os.getpid()) or "0"
    for n in range(1000):  # n > 0: another Metrics in the same process (tests)
        path = directory / f"{pid}-{started}-{n}.db"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except FileExistsError:
            continue
        try:
            os.posix_fallocate(fd, 0, FILE_BYTES)
        finally:
            os.close(fd)
        return path
    raise FileExistsError(f"no free metrics file name for pid {pid} in {directory}")


def _started(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


Gauges = dict[str, tuple[float, dict[Labels, float]]]  # per family: (last write, values)


def read_workers(directory: str | Path, declared: Mapping[str, Metric]
                 ) -> tuple[dict[str, dict[Labels, float]], dict[str, dict[Labels, Histogram]], list[int]]:
    """Every worker's values added up: (counters and gauges, histograms, pids of the live workers)."""
    series: dict[str, dict[Labels, float]] = {name: {} for name in declared}
    histograms: dict[str, dict[Labels, Histogram]] = {n: {} for n, m in declared.items() if m.kind == "histogram"}
    readings: dict[str, list[dict[Labels, float]]] = {n: [] for n, m in declared.items() if m.kind == "gauge"}
    latest: dict[str, tuple[float, dict[Labels, float]]] = {}
    live = []
    for path in sorted(Path(directory).glob("*.db")):
        pid, started, _ = path.stem.split("-")
        alive = _started(int(pid)) == started
        gauges = _read_file(path, declared, series, histograms)
        if not alive:
            continue  # its counters count; its gauges are stale
        live.append(int(pid))
        for name, (stamp, values) in gauges.items():
            readings[name].append(values)
            if stamp >= latest.get(name, (-1.0, {}))[0]:
                latest[name] = (stamp, values)
    for name, values in readings.items():
        series[name] = _combine(declared[name].merge, values, latest.get(name, (0.0, {}))[1])
    return series, histograms, sorted(set(live))


def _read_file(path: Path, declared: Mapping[str, Metric], series: dict[str, dict[Labels, float]],
               histograms: dict[str, dict[Labels, Histogram]]) -> Gauges:
    """Add one worker's counters and histograms into ``series``/``histograms``; its gauges."""
    gauges: Gauges = {}
    for key, value, stamp, _ in MmapedDict.read_all_values_from_file(str(path)):
        name, pairs, *slot = json.loads(key)
        metric = declared.get(name)
        if metric is None:
            continue
        labels = tuple((k, v) for k, v in pairs)
        if metric.kind == "counter":
            series[name][labels] = series[name].get(labels, 0.0) + value
        elif metric.kind == "histogram":
            hist = histograms[name].get(labels) or histograms[name].setdefault(labels, Histogram(metric.buckets))
            if slot == ["sum"]:
                hist.sum += value
            else:
                hist.counts[slot[0]] += int(value)
                hist.count += int(value)
        else:
            last, values = gauges.get(name, (0.0, {}))
            if not math.isnan(value):  # NaN: cleared
                values[labels] = value
            gauges[name] = (max(last, stamp), values)
    return gauges


def _combine(merge: str, readings: list[dict[Labels, float]], latest: dict[Labels, float]) -> dict[Labels, float]:
    """One gauge family from the live workers' readings."""
    if merge == "latest":
        return dict(latest)
    out: dict[Labels, float] = {}
    for values in readings:
        for labels, value in values.items():
            if merge == "max":
                out[labels] = max(out.get(labels, value), value)
            else:
                out[labels] = out.get(labels, 0.0) + value
    return out
