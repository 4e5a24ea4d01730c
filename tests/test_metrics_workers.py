"""Several workers, one scrape: ``/metrics`` on any worker adds up every worker's values.

Workers are simulated as several ``Metrics`` on one directory (each its own file, as each worker
process has), as real processes that wrote their file and exited, and for real: ``serve
--workers 2`` on a real Redis, where every scrape, whichever worker answers it, shows the total,
also after a worker was killed and restarted. ``app/metrics_files.py`` says how each kind adds up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from app.config import ConfigError, Settings
from app.metrics import (
    DECLARED,
    HTTP_REQUEST_SECONDS,
    REDIS_MAXMEMORY_POLICY,
    REDIS_MEMORY_USED,
    REGISTRY_LOST,
    SIGNING_KEYS,
    TOKEN_REJECTIONS,
    TOKENS_ISSUED,
    Metrics,
)
from app.metrics_files import DIRECTORY_ENV, worker_directory, worker_metrics_directory
from scripts.processes import ROOT, broker_env, worker_pids
from tests.conftest import Broker, FrozenClock, RedisServer, free_port, start_broker, wait_until
from tests.helpers import ISS, TestClient, form


def _samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def _families(text: str, field: str) -> set[str]:
    return {line.split(" ")[2] for line in text.splitlines() if line.startswith(f"# {field} ")}


# -- adding up ---------------------------------------------------------------------------------------


def test_counters_and_histograms_of_two_workers_add_up_exactly(tmp_path: Path) -> None:
    one, two = Metrics(directory=tmp_path), Metrics(directory=tmp_path)
    for _ in range(3):
        one.inc(TOKENS_ISSUED)
    two.inc(TOKENS_ISSUED, 4)
    one.inc(TOKEN_REJECTIONS, error="invalid_client", reason="jti_replayed")
    two.inc(TOKEN_REJECTIONS, error="invalid_client", reason="jti_replayed")
    two.inc(TOKEN_REJECTIONS, error="invalid_request", reason="form_invalid")
    one.observe(HTTP_REQUEST_SECONDS, 0.0007, endpoint="/token", outcome="ok")
    two.observe(HTTP_REQUEST_SECONDS, 0.0007, endpoint="/token", outcome="ok")
    two.observe(HTTP_REQUEST_SECONDS, 3.0, endpoint="/token", outcome="ok")

    for scraped in (one, two):  # either worker answers the scrape with the same totals
        samples = _samples(scraped.render().decode())
        assert samples["broker_tokens_issued_total"] == 7
        assert samples['broker_token_rejections_total{error="invalid_client",reason="jti_replayed"}'] == 2
        assert samples['broker_token_rejections_total{error="invalid_request",reason="form_invalid"}'] == 1
        series = 'endpoint="/token",outcome="ok"'
        assert samples[f'broker_http_request_duration_seconds_bucket{{{series},le="0.0005"}}'] == 0
        assert samples[f'broker_http_request_duration_seconds_bucket{{{series},le="0.001"}}'] == 2
        assert samples[f'broker_http_request_duration_seconds_bucket{{{series},le="2.5"}}'] == 2
        assert samples[f'broker_http_request_duration_seconds_bucket{{{series},le="+Inf"}}'] == 3
        assert samples[f"broker_http_request_duration_seconds_count{{{series}}}"] == 3
        assert samples[f"broker_http_request_duration_seconds_sum{{{series}}}"] == pytest.approx(3.0014)
    # value() stays each process's own.
    assert (one.value(TOKENS_ISSUED), two.value(TOKENS_ISSUED)) == (3, 4)


@pytest.mark.parametrize(
    ("name", "first", "second", "expected"),
    [
        (REGISTRY_LOST, {(): 1.0}, {(): 0.0}, {"broker_registry_lost": 1}),
        (REGISTRY_LOST, {(): 0.0}, {(): 0.0}, {"broker_registry_lost": 0}),
        (SIGNING_KEYS, {("active",): 1.0, ("next",): 1.0}, {("active",): 1.0, ("next",): 0.0},
         {'broker_signing_keys{state="active"}': 1, 'broker_signing_keys{state="next"}': 0}),
        (REDIS_MAXMEMORY_POLICY, {("noeviction",): 1.0}, {("allkeys-lru",): 1.0},
         {'broker_redis_maxmemory_policy_info{policy="allkeys-lru"}': 1}),
    ],
    ids=["registry-lost-is-the-max", "registry-served-everywhere", "signing-keys-the-latest-reload",
         "redis-policy-the-latest-reading"],
)
def test_gauges_of_live_workers_combine_per_declaration(tmp_path: Path, name: str, first: dict, second: dict,
                                                         expected: dict[str, float]) -> None:
    """``first`` is written, then ``second`` in another worker (clear, then set: as the services do)."""
    label = next(m.labels for m in DECLARED if m.name == name)
    workers = Metrics(directory=tmp_path), Metrics(directory=tmp_path)
    for metrics, values in zip(workers, (first, second)):
        metrics.clear_gauge(name)
        for labels, value in values.items():
            metrics.set(name, value, **dict(zip(label, labels)))
    samples = _samples(workers[0].render().decode())
    assert {k: v for k, v in samples.items() if k.split("{")[0] == name} == expected


def test_a_family_the_latest_worker_cleared_is_absent(tmp_path: Path) -> None:
    """Redis refused INFO to the worker that asked last: no memory reading, though another worker
    still holds an older one (as one worker would show it)."""
    one, two = Metrics(directory=tmp_path), Metrics(directory=tmp_path)
    for metrics in (one, two):
        metrics.set(REDIS_MEMORY_USED, 1000)
        metrics.set(REDIS_MAXMEMORY_POLICY, 1, policy="noeviction")
    two.clear_gauge(REDIS_MEMORY_USED)
    two.clear_gauge(REDIS_MAXMEMORY_POLICY)
    text = one.render().decode()
    assert not [k for k in _samples(text) if k.startswith(("broker_redis_memory_used", "broker_redis_maxmemory"))]
    assert "# TYPE broker_redis_memory_used_bytes gauge" in text
    one.set(REDIS_MEMORY_USED, 2000)  # and a newer reading shows again
    assert _samples(two.render().decode())["broker_redis_memory_used_bytes"] == 2000


_DEAD_WORKER = """
import sys
from app.metrics import REGISTRY_LOST, TOKENS_ISSUED, HTTP_REQUEST_SECONDS, Metrics
m = Metrics(directory=sys.argv[1])
m.inc(TOKENS_ISSUED, float(sys.argv[2]))
m.observe(HTTP_REQUEST_SECONDS, 0.002, endpoint="/token", outcome="ok")
m.set(REGISTRY_LOST, 1.0)
"""


def test_a_dead_workers_counters_still_count_and_its_gauges_do_not(tmp_path: Path) -> None:
    """Two worker processes wrote their file and exited (a crash, a restart); one is still running."""
    for issued in ("5", "6"):
        subprocess.run([sys.executable, "-c", _DEAD_WORKER, str(tmp_path), issued], cwd=ROOT, check=True, timeout=60)
    live = Metrics(directory=tmp_path)
    live.inc(TOKENS_ISSUED)
    live.set(REGISTRY_LOST, 0.0)
    text = live.render().decode()
    samples = _samples(text)
    assert samples["broker_tokens_issued_total"] == 12
    assert samples['broker_http_request_duration_seconds_count{endpoint="/token",outcome="ok"}'] == 2
    assert samples["broker_registry_lost"] == 0  # the dead workers' 1 is stale
    # process_* only for processes that are running.
    assert {k for k in samples if k.startswith("process_start_time_seconds")} == {
        f'process_start_time_seconds{{pid="{os.getpid()}"}}'}


# -- every family from the first scrape -------------------------------------------------------------


def _assert_every_declared_family(text: str) -> None:
    declared = {m.name for m in DECLARED}
    assert declared <= _families(text, "HELP") and declared <= _families(text, "TYPE")
    samples = _samples(text)
    for metric in DECLARED:
        if metric.kind == "counter" and not metric.labels:
            assert samples[metric.name] == 0, metric.name
    process = {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
               "process_open_fds", "process_max_fds", "process_start_time_seconds"}
    assert process <= _families(text, "HELP")
    assert all(f'{name}{{pid="' in text for name in process)


def test_every_declared_family_is_on_the_first_scrape(broker: Broker) -> None:
    _assert_every_declared_family(broker.metrics())


def test_every_declared_family_is_on_the_first_scrape_of_a_worker(tmp_path: Path) -> None:
    _assert_every_declared_family(Metrics(directory=tmp_path).render().decode())


# -- the directory the parent makes ---------------------------------------------------------------------


def test_the_parent_makes_the_directory_and_removes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DIRECTORY_ENV, raising=False)
    with worker_metrics_directory(2) as path:
        assert path.is_dir() and list(path.iterdir()) == []
        assert os.environ[DIRECTORY_ENV] == f"{os.getpid()}:{path}"
        assert oct(path.stat().st_mode & 0o777) == "0o700"  # the counters name client ids
    assert not path.exists() and DIRECTORY_ENV not in os.environ


@pytest.mark.parametrize(
    ("value", "expected"),
    [("{ppid}:/run/x", "/run/x"), ("{pid}:/run/x", None), ("{other}:/run/x", None), ("", None)],
    ids=["from-the-parent", "from-this-process", "from-another-process", "unset"],
)
def test_a_worker_uses_only_its_parents_directory(monkeypatch: pytest.MonkeyPatch, value: str,
                                                  expected: str | None) -> None:
    """Inherited from further up (not this run's parent), a directory is not used."""
    monkeypatch.setenv(DIRECTORY_ENV, value.format(ppid=os.getppid(), pid=os.getpid(), other=os.getppid() + 1))
    assert worker_directory() == expected


def test_no_writable_temporary_directory_refuses_several_workers(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(ConfigError) as exc, worker_metrics_directory(2):
        pass
    assert str(exc.value) == ("--workers > 1 needs a writable temporary directory (TMPDIR) for the workers' metrics: "
                              "No such file or directory")


#: ``serve --workers 2`` where no temporary directory can be made (tempfile's own fallbacks, /tmp
#: among them, are writable on a test machine: this points it at a missing folder instead).
_SERVE_WITHOUT_TMP = """
import sys, tempfile
tempfile.tempdir = sys.argv[1]
from app.__main__ import main
sys.exit(main(["serve", "--port", sys.argv[2], "--workers", "2"]))
"""


@pytest.mark.live
@pytest.mark.redis
def test_serve_refuses_several_workers_without_a_metrics_directory(tmp_path: Path, real_redis: RedisServer) -> None:
    # A reachable Redis: the start checks Redis before it makes the workers' metrics directory.
    env = broker_env(ISS, tmp_path / "keys", real_redis.url, {"BROKER_MANAGEMENT_PORT": str(free_port())})
    done = subprocess.run([sys.executable, "-c", _SERVE_WITHOUT_TMP, str(tmp_path / "missing"), str(free_port())],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", "token-broker: --workers > 1 needs a writable temporary directory (TMPDIR) for the "
               "workers' metrics: No such file or directory\n")


# -- for real: serve --workers 2 ------------------------------------------------------------------------


def _scrape(url: str) -> str:
    with httpx.Client(timeout=5) as http:  # a new connection: the kernel picks the worker
        resp = http.get(url + "/metrics")
    assert resp.status_code == 200
    return resp.text


def _issue(url: str, client: TestClient, n: int) -> None:
    for _ in range(n):
        with httpx.Client(timeout=5) as http:
            assert http.post(url + "/token", data=form(client.assertion())).status_code == 200


@pytest.mark.redis
@pytest.mark.live
def test_two_workers_one_scrape_shows_every_token(real_redis: RedisServer, tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    broker = start_broker(keys_dir, tmp_path / "broker.log", issuer=ISS, redis_url=real_redis.url, workers=2)
    try:
        _assert_every_declared_family(_scrape(broker.management_url))
        client = TestClient("c1")
        with Broker(Settings(issuer=ISS, keys_dir=keys_dir, redis_url=real_redis.url), FrozenClock(time.time())) as admin:
            admin.register(client)  # straight into the registry: no admin token counted
        _issue(broker.url, client, 100)
        workers = worker_pids(broker.proc.pid)
        assert len(workers) == 2
        directory = Path(_environ(min(workers))[DIRECTORY_ENV].split(":", 1)[1])
        counted = _issued_per_file(directory)
        assert sum(counted) == 100 and len(counted) == 2 and min(counted) > 0  # else nothing here was added up
        for _ in range(10):
            samples = _samples(_scrape(broker.management_url))
            assert samples["broker_tokens_issued_total"] == 100
            assert samples['broker_http_requests_total{endpoint="/token",status="200"}'] == 100
            assert _process_pids(samples) == workers

        # A worker that dies is restarted with a new pid; what it counted still counts.
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)

        def replaced() -> set[int] | None:
            now = worker_pids(broker.proc.pid)
            return now if len(now) == 2 and killed not in now else None

        restarted = wait_until(replaced, 30, what="uvicorn to restart the killed worker")
        wait_until(lambda: _process_pids(_samples(_scrape(broker.management_url))) == restarted, 30,
                   what="the restarted worker's metrics file")
        _issue(broker.url, client, 10)
        for _ in range(10):
            samples = _samples(_scrape(broker.management_url))
            assert samples["broker_tokens_issued_total"] == 110
            assert _process_pids(samples) == restarted
        assert len(list(directory.glob("*.db"))) == 3  # the dead worker's file stays for the run
    finally:
        broker.stop()
    assert not directory.exists()  # removed by the parent once its workers have stopped


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


def _issued_per_file(directory: Path) -> list[float]:
    """``broker_tokens_issued_total`` as each worker wrote it into its own file."""
    return [sum(value for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))
                if json.loads(key)[0] == TOKENS_ISSUED) for path in sorted(directory.glob("*.db"))]


def _process_pids(samples: dict[str, float]) -> set[int]:
    return {int(k.split('pid="')[1].split('"')[0]) for k in samples if k.startswith("process_start_time_seconds{")}
