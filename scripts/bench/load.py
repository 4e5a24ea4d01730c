"""Load generators: wrk with ``post_bodies.lua`` (closed loop) and an open-loop asyncio client for
a fixed offered rate; plus single requests for set-up."""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import math
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scripts.bench.results import FixedRateRun, WrkRun
from scripts.bench.system import BrokerWindow, Pinning, run_async
from scripts.bench.workload import remove_bodies, write_bodies
from scripts.processes import BrokerProcess, free_port, wait_until

LUA = Path(__file__).resolve().parent / "post_bodies.lua"
_ROOT = Path(__file__).resolve().parents[2]


def request(broker: BrokerProcess, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", broker.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _metrics(broker: BrokerProcess) -> list[str]:
    """The lines of the broker's management ``/metrics``."""
    conn = http.client.HTTPConnection("127.0.0.1", broker.management_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode().splitlines()
    finally:
        conn.close()


_REDIS_COUNT = re.compile(r'^broker_redis_duration_seconds_count\{op="(?P<op>[^"]+)"\} (?P<n>\S+)$')


def redis_calls(broker: BrokerProcess) -> dict[str, int]:
    """``broker_redis_duration_seconds_count`` by ``op`` from the broker's management ``/metrics``."""
    return {m["op"]: int(float(m["n"])) for line in _metrics(broker) if (m := _REDIS_COUNT.match(line))}


_BUCKET = re.compile(r'^(?P<name>broker_http_request_duration_seconds|broker_redis_duration_seconds)_bucket'
                     r'\{(?P<labels>[^}]*)\} (?P<count>\S+)$')
_LE = re.compile(r'le="(?P<le>[^"]+)"')
#: The token endpoint's successful requests, and its Redis call (the replay script: every
#: request of the miss and hit rows makes exactly one).
_TOKEN_OK = ("broker_http_request_duration_seconds", ('endpoint="/token"', 'outcome="ok"'))
_TOKEN_REDIS = ("broker_redis_duration_seconds", ('op="replay"',))


def token_latency_buckets(broker: BrokerProcess) -> dict[str, dict[float, float]]:
    """The broker's own latency histograms so far, cumulative counts by upper bound in seconds
    (``inf`` is the total): ``token``, its time per successful ``/token`` request, and ``redis``,
    the time of the token endpoint's Redis call as the broker awaits it."""
    return latency_buckets(_metrics(broker))


def latency_buckets(lines: list[str]) -> dict[str, dict[float, float]]:
    """``token_latency_buckets`` from the lines of a ``/metrics`` answer."""
    out: dict[str, dict[float, float]] = {"token": {}, "redis": {}}
    for line in lines:
        m = _BUCKET.match(line)
        if not m:
            continue
        for key, (name, labels) in (("token", _TOKEN_OK), ("redis", _TOKEN_REDIS)):
            if m["name"] == name and all(label in m["labels"] for label in labels) and (le := _LE.search(m["labels"])):
                out[key][float(le["le"].replace("+Inf", "inf"))] = float(m["count"])
    return out


def in_broker_latency(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """From two histogram snapshots: the smallest bucket bound that holds 99% of the requests in
    between (ms), and the share of them over 5 ms, both as the broker itself timed them."""
    diff = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in sorted(after)}
    total = diff.get(math.inf, 0.0)
    if total <= 0:
        return {"p99_at_most_ms": None, "share_over_5ms": None}
    p99 = next((le for le, n in diff.items() if n >= 0.99 * total), math.inf)
    return {"p99_at_most_ms": None if p99 == math.inf else round(p99 * 1000, 2),
            "share_over_5ms": round(1 - diff.get(0.005, 0.0) / total, 4),
            "share_at_most_ms": {("inf" if le == math.inf else f"{le * 1000:g}"): round(n / total, 4)
                                 for le, n in diff.items()}}


def post_token(broker: BrokerProcess, body: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    status, headers, raw = request(broker, "POST", "/token", body.encode(),
                                   {"Content-Type": "application/x-www-form-urlencoded"})
    return status, headers, json.loads(raw or b"{}")


def run_wrk(broker: BrokerProcess, bodies: list[str], mode: str, *, duration: float, connections: int,
            threads: int, pin_cmd: list[str], workdir: Path, name: str) -> WrkRun:
    """wrk for ``duration`` seconds; ``mode`` "once" (each body sent once) or "cycle"."""
    prefix = workdir / f"bodies-{name}"
    write_bodies(prefix, bodies, threads)
    cmd = pin_cmd + ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
                     "--timeout", "5s", "-s", str(LUA), broker.url, "--", str(prefix), mode]
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    window = BrokerWindow(broker.proc.pid)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    window.close()
    wall, broker_cpu = window.wall, window.cpu
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    remove_bodies(prefix, threads)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
    res = json.loads(line[len("BENCH_JSON "):])
    seconds = res["duration_us"] / 1e6
    gen_cpu = (after_children.ru_utime - before_children.ru_utime) + (after_children.ru_stime - before_children.ru_stime)
    latency = {p: round(res["latency_us"][p] / 1000, 2) for p in ("p50", "p90", "p99", "max")}
    reads, writes = window.per_request(res["requests"])
    return WrkRun(
        rps=round(res["requests"] / seconds, 1), requests=res["requests"], seconds=round(seconds, 2),
        p50_ms=latency["p50"], p90_ms=latency["p90"], p99_ms=latency["p99"], max_ms=latency["max"],
        statuses=dict(sorted(res["statuses"].items())),
        socket_errors={k: v for k, v in res["errors"].items() if k != "status"},
        exhausted_threads=res["exhausted_threads"],
        broker_cpu_share=round(broker_cpu / wall, 2),
        rps_per_broker_cpu_s=round(res["requests"] / broker_cpu, 1) if broker_cpu > 0 else None,
        generator_cpu_share=round(gen_cpu / wall, 2), connections=connections,
        generator=f"wrk -t{threads} -c{connections}",
        broker_reads_per_request=reads, broker_writes_per_request=writes, steal=window.steal,
    )


_HEAD = (b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
         b"Content-Length: ")


class _OpenLoop:
    """Open loop: request i is due at t0 + i/rate; latency counts from when it was due."""

    def __init__(self, port: int, conns: int) -> None:
        self.port = port
        self.conns = conns
        self.pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self.clock = time.perf_counter  # not loop.time(): uvloop's clock has 1 ms resolution
        self.latencies: list[float] = []
        self.statuses: collections.Counter[str] = collections.Counter()
        self.errors = 0
        #: Per request, how late the generator itself started it (s after its due time): the
        #: schedule thread's wake-up and the hand-over to the loop, before any connection wait.
        self.start_late: list[float] = []

    async def one(self, due: float, body: bytes) -> None:
        reader, writer = await self.pool.get()
        try:
            writer.write(_HEAD + str(len(body)).encode() + b"\r\n\r\n" + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            self.latencies.append(self.clock() - due)
            self.statuses[status_line.split(b" ", 2)[1].decode()] += 1
        except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
            self.errors += 1
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.pool.put_nowait((reader, writer))

    async def run(self, bodies: list[bytes], rate: float) -> float:
        """Send every body on schedule; returns the elapsed seconds.

        The schedule runs in a thread of its own: ``time.sleep`` wakes within microseconds of a
        due time, where the event loop's timers (uvloop's, and epoll's timeout) have 1 ms steps,
        so a request woke up to 1 ms late (or early) and that lateness counted as the server's.
        The thread hands each due request to the loop (``call_soon_threadsafe``); the GIL's switch
        interval is cut to 0.2 ms for the run so a busy loop thread cannot hold a start back 5 ms.
        """
        for _ in range(self.conns):
            self.pool.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        t0 = self.clock() + 0.05

        def start(due: float, body: bytes) -> None:
            self.start_late.append(self.clock() - due)
            tasks.append(loop.create_task(self.one(due, body)))

        def schedule() -> None:  # request i is due at t0 + i/rate
            for i, body in enumerate(bodies):
                due = t0 + i / rate
                delay = due - self.clock()
                if delay > 0:
                    time.sleep(delay)
                loop.call_soon_threadsafe(start, due, body)

        switch = sys.getswitchinterval()
        sys.setswitchinterval(0.0002)
        try:
            # The thread's last start is queued before its completion: every task is in ``tasks``.
            await asyncio.to_thread(schedule)
        finally:
            sys.setswitchinterval(switch)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        elapsed = self.clock() - t0
        while not self.pool.empty():
            self.pool.get_nowait()[1].close()
        return elapsed

    def percentile(self, p: float) -> float:
        return percentile_ms(self.latencies, p)


def percentile_ms(ordered: list[float], p: float) -> float:
    """The ``p``-th percentile of sorted seconds, in ms (0.0 for none)."""
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 2) if ordered else 0.0


def run_fixed_rate(port: int, bodies: list[str], rate: float, conns: int, pin: Pinning) -> FixedRateRun:
    async def main() -> tuple[_OpenLoop, float]:
        loop = _OpenLoop(port, conns)
        return loop, await loop.run([b.encode() for b in bodies], rate)

    with pin.run_on(pin.other_core):
        client, elapsed = run_async(main())
    client.latencies.sort()
    return FixedRateRun(
        offered_rps=rate, achieved_rps=round(len(client.latencies) / elapsed, 1), requests=len(bodies),
        p50_ms=client.percentile(50), p90_ms=client.percentile(90), p99_ms=client.percentile(99),
        max_ms=client.percentile(100), statuses=dict(client.statuses), socket_errors={"io": client.errors},
        connections=conns, generator="asyncio open-loop client (uvloop, scheduled from a thread)",
        generator_start_late=start_lateness(client.start_late),
    )


def start_lateness(late: list[float]) -> dict[str, float]:
    """How late the generator started its requests (from their due times): p99 and largest in
    ms, and the share started more than 1 ms late. A late start comes from the generator's side
    (its core, its threads) and sends the requests it held back together."""
    if not late:
        return {}
    late = sorted(late)
    return {"p99_ms": percentile_ms(late, 99), "max_ms": percentile_ms(late, 100),
            "share_over_1ms": round(sum(x > 0.001 for x in late) / len(late), 4)}


def _accepts(port: int, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"the no-op server exited with code {proc.returncode}")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def generator_alone(bodies: list[str], rate: float, conns: int, pin: Pinning) -> dict[str, Any]:
    """The fixed-rate generator at the same rate, connections and pinning against
    ``scripts/bench/noop.py`` on the broker's core (the broker idle): its own latency figures."""
    port = free_port()
    proc = subprocess.Popen([*pin.broker(), sys.executable, "-m", "scripts.bench.noop", str(port)], cwd=_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _accepts(port, proc), 30, what="the no-op server to accept")
        run = run_fixed_rate(port, bodies, rate, conns, pin)
    finally:
        proc.terminate()
        proc.wait(10)
    return {"p50_ms": run.p50_ms, "p90_ms": run.p90_ms, "p99_ms": run.p99_ms, "max_ms": run.max_ms,
            "achieved_rps": run.achieved_rps, "start_late": run.generator_start_late}
