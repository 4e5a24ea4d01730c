"""Token broker benchmark: one command, the ceiling and the scenarios measured in the same run.

    python scripts/bench.py                 # default run: ~10 s per scenario, writes bench-results/latest.json
    python scripts/bench.py --smoke         # seconds-long CI smoke (no figures worth quoting)
    python scripts/bench.py --workers 2     # also compare 2 workers on 2 cores with 1 worker
    python scripts/bench.py --rss-requests 1000000   # long RSS-flatness check

What it does (see docs/performance.md):

1. starts a real ``redis-server`` (temp dir, free port, no persistence) and the broker
   (``python -m app serve``), pinned with ``taskset``: broker on core 0, Redis and the load
   generator on core 1, when the machine has at least two usable cores;
2. registers clients through the admin API (bootstrap admin key from ``<keys_dir>/admin.jwk``);
3. measures the ceiling on core 0 while the broker is idle: one client-assertion verify
   (``parse_assertion`` + ``verify_assertion``), one access-token sign (``TokenSigner.sign``),
   one redis-py ``SET NX PX GET`` (32 concurrent callers, the broker's own client settings);
4. pre-generates single-use ES256 assertions before each timed window and drives load with
   ``wrk`` (``scripts/bench/post_bodies.lua``: every assertion sent once, status codes counted)
   or, for the fixed offered rate, a lean open-loop asyncio HTTP/1.1 client;
5. prints a table and writes JSON with the machine, the pinning and the date.

Every loop is bounded in count and time; only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import datetime as dt
import http.client
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature  # noqa: E402

from app.oauth.constants import ADMIN_SCOPE, CLIENT_ASSERTION_TYPE  # noqa: E402

LUA = ROOT / "scripts" / "bench" / "post_bodies.lua"
RS = "https://api.bench.test"
MISS_SCOPES = [f"m{i:02d}" for i in range(64)]  # C(64,1..3) = 43,744 distinct scope sets per client
N_MISS_CLIENTS = 24
N_HIT_CLIENTS = 4
HTTP_SCENARIOS = ("miss", "hit", "bad_signature", "replay", "fixed_rate")
ALL_SCENARIOS = HTTP_SCENARIOS + ("rs_verify", "redis_memory", "memory")


# -- small utilities ------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                children = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                todo.extend(int(c) for c in children)
        except OSError:
            pass
    return out


def rss_kib(pid: int) -> int:
    """Sum of VmRSS over the process tree (uvicorn's supervisor + workers)."""
    total = 0
    for p in proc_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in proc_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name, cmd in (("redis", ["redis-server", "--version"]), ("wrk", ["wrk", "-v"])):
        try:
            versions[name] = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.splitlines()[0][:80]
        except (OSError, IndexError, subprocess.SubprocessError):
            versions[name] = None
    try:
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        loadavg = None
    return {
        "loadavg_at_start": loadavg,
        "nproc": os.cpu_count(),
        "usable_cores": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
    }


# -- processes ------------------------------------------------------------------------------------


class Pinning:
    def __init__(self, enabled: bool) -> None:
        cores = sorted(os.sched_getaffinity(0))
        self.enabled = enabled and len(cores) >= 2 and shutil.which("taskset") is not None
        self.broker_core = cores[0]
        self.other_core = cores[1] if len(cores) >= 2 else cores[0]

    def broker(self) -> list[str]:
        return ["taskset", "-c", str(self.broker_core)] if self.enabled else []

    def other(self) -> list[str]:
        return ["taskset", "-c", str(self.other_core)] if self.enabled else []

    def describe(self) -> str:
        if not self.enabled:
            return "none (fewer than 2 usable cores, taskset missing, or --no-pin)"
        return (f"broker on core {self.broker_core}; redis-server and load generator on core {self.other_core}; "
                f"ceiling loops on core {self.broker_core} with the broker idle")


class Redis:
    def __init__(self, workdir: Path, pin: Pinning) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = workdir / "redis.log"
        self.proc = subprocess.Popen(
            pin.other() + ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", str(workdir), "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def command(self, *args: str) -> Any:
        """A tiny RESP client for INFO/PING/DBSIZE (keeps redis-py out of the generator side)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
            s.sendall(payload.encode())
            f = s.makefile("rb")
            line = f.readline()
            kind, rest = line[:1], line[1:].strip()
            if kind == b"+":
                return rest.decode()
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else f.read(n + 2)[:-2].decode()
            raise RuntimeError(f"redis error: {line!r}")

    def info(self, section: str) -> dict[str, str]:
        out = {}
        for line in self.command("INFO", section).splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                out[k] = v
        return out

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Broker:
    def __init__(self, workdir: Path, keys_dir: Path, redis_url: str, pin_cmd: list[str], workers: int, log_level: str,
                 ratelimit_mode: str) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"broker-{self.port}.log"
        env = {**os.environ, "BROKER_REDIS_URL": redis_url, "BROKER_KEYS_DIR": str(keys_dir), "BROKER_ISSUER": self.issuer,
               "BROKER_LOG_LEVEL": log_level, "BROKER_RATELIMIT_MODE": ratelimit_mode, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                pin_cmd + [sys.executable, "-m", "app", "serve", "--port", str(self.port), "--workers", str(workers)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("broker exited:\n" + self.log_path.read_text()[-3000:])
            try:
                status, _, _ = self.request("GET", "/readyz")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("broker did not become ready:\n" + self.log_path.read_text()[-3000:])
        if workers > 1:  # every worker must be up (each answers /readyz once its lifespan ran)
            time.sleep(1.0)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def token(self, body: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        status, headers, raw = self.request("POST", "/token", body.encode(),
                                            {"Content-Type": "application/x-www-form-urlencoded"})
        return status, headers, json.loads(raw or b"{}")

    def stop(self) -> None:
        stop_process(self.proc)


# -- clients and assertions -----------------------------------------------------------------------


class BenchClient:
    """An ES256 client whose assertions are signed with raw ``cryptography`` (fast to pre-generate)."""

    def __init__(self, client_id: str, scopes: list[str], default_scope: str) -> None:
        from joserfc.jwk import ECKey

        self.client_id = client_id
        self.scopes = scopes
        self.default_scope = default_scope
        self.jwk = ECKey.generate_key("P-256")
        self.kid = self.jwk.thumbprint()
        self.private = self.jwk.private_key
        self.header = b64url(json.dumps({"alg": "ES256", "typ": "client-authentication+jwt", "kid": self.kid},
                                        separators=(",", ":")).encode())

    def metadata(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "jwks": {"keys": [{**self.jwk.as_dict(private=False), "kid": self.kid, "alg": "ES256", "use": "sig"}]},
            "scopes": self.scopes,
            "default_scopes": [self.default_scope],
            "audiences": [RS],
            "default_audience": RS,
        }

    def assertion(self, issuer: str, now: int, lifetime: int = 240, key: Any = None) -> str:
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": issuer, "jti": secrets.token_urlsafe(16),
                  "iat": now, "exp": now + lifetime}
        signing_input = self.header + "." + b64url(json.dumps(claims, separators=(",", ":")).encode())
        r, s = decode_dss_signature((key or self.private).sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def form(assertion: str, scope: str | None) -> str:
    body = "grant_type=client_credentials&client_assertion_type=" + quote(CLIENT_ASSERTION_TYPE, safe="") + "&client_assertion=" + assertion
    if scope:
        body += "&scope=" + quote(scope, safe="")
    return body


def miss_scope_sets():
    """Distinct scope sets (1-3 of 64 tokens), so each miss request has its own cache key."""
    n = len(MISS_SCOPES)
    for i in range(n):
        for j in range(i + 1, n):
            for k in range(j + 1, n):
                yield f"{MISS_SCOPES[i]} {MISS_SCOPES[j]} {MISS_SCOPES[k]}"
    for i in range(n):
        for j in range(i + 1, n):
            yield f"{MISS_SCOPES[i]} {MISS_SCOPES[j]}"
    for i in range(n):
        yield MISS_SCOPES[i]


class Workload:
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.miss_clients = [BenchClient(f"bench-miss-{i}", MISS_SCOPES, MISS_SCOPES[0]) for i in range(N_MISS_CLIENTS)]
        self.hit_clients = [BenchClient(f"bench-hit-{i}", ["read", "write"], "read") for i in range(N_HIT_CLIENTS)]
        self.wrong_key = ec.generate_private_key(ec.SECP256R1())
        # One global stream of (client, scope set): no cache key repeats within a run.
        self._miss = ((c, s) for s in miss_scope_sets() for c in self.miss_clients)

    def miss_bodies(self, n: int) -> list[str]:
        now = int(time.time())
        out = []
        for _ in range(n):
            try:
                client, scope = next(self._miss)
            except StopIteration:
                raise RuntimeError("ran out of distinct miss scope sets; raise N_MISS_CLIENTS") from None
            out.append(form(client.assertion(self.issuer, now), scope))
        return out

    def hit_bodies(self, n: int) -> list[str]:
        now = int(time.time())
        return [form(self.hit_clients[i % N_HIT_CLIENTS].assertion(self.issuer, now), "read") for i in range(n)]

    def bad_signature_bodies(self, n: int) -> list[str]:
        now = int(time.time())
        return [form(self.hit_clients[i % N_HIT_CLIENTS].assertion(self.issuer, now, key=self.wrong_key), "read")
                for i in range(n)]


def write_bodies(prefix: Path, bodies: list[str], threads: int) -> None:
    for t in range(threads):
        prefix.with_name(f"{prefix.name}.{t}.txt").write_text("\n".join(bodies[t::threads]) + "\n")


# -- admin ----------------------------------------------------------------------------------------


def register_clients(broker: Broker, keys_dir: Path, clients: list[BenchClient]) -> None:
    from app.client.assertion import make_client_assertion
    from app.keystore import import_private_jwk, read_json

    data = read_json(keys_dir / "admin.jwk")
    key = import_private_jwk(data)
    assertion = make_client_assertion(key, client_id="broker-admin", issuer=broker.issuer, alg=data.get("alg", "ES256"),
                                      kid=data.get("kid"))
    body = (form(assertion, ADMIN_SCOPE) + "&resource=" + quote(broker.issuer + "/admin", safe=""))
    status, _, payload = broker.token(body)
    if status != 200:
        raise RuntimeError(f"admin token: {status} {payload}")
    auth = {"Authorization": "Bearer " + payload["access_token"], "Content-Type": "application/json"}
    for c in clients:
        status, _, raw = broker.request("POST", "/admin/clients", json.dumps(c.metadata()).encode(), auth)
        if status not in (201, 409):
            raise RuntimeError(f"register {c.client_id}: {status} {raw[:300]!r}")


# -- load generators ------------------------------------------------------------------------------


def run_wrk(args: argparse.Namespace, broker: Broker, pin_cmd: list[str], bodies: list[str], mode: str,
            workdir: Path, name: str, threads: int) -> dict[str, Any]:
    prefix = workdir / f"bodies-{name}"
    write_bodies(prefix, bodies, threads)
    cmd = pin_cmd + ["wrk", "-t", str(threads), "-c", str(args.connections), "-d", f"{max(1, round(args.duration))}s",
                     "--timeout", "5s", "-s", str(LUA), broker.issuer, "--", str(prefix), mode]
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0, t0 = cpu_seconds(broker.proc.pid), time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 60)
    wall = time.monotonic() - t0
    cpu1 = cpu_seconds(broker.proc.pid)
    broker_cpu = cpu1 - cpu0
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    for t in range(threads):
        prefix.with_name(f"{prefix.name}.{t}.txt").unlink(missing_ok=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
    res = json.loads(line[len("BENCH_JSON "):])
    seconds = res["duration_us"] / 1e6
    gen_cpu = (after_children.ru_utime - before_children.ru_utime) + (after_children.ru_stime - before_children.ru_stime)
    return {
        "rps": round(res["requests"] / seconds, 1),
        "requests": res["requests"],
        "seconds": round(seconds, 2),
        "p50_ms": round(res["latency_us"]["p50"] / 1000, 2),
        "p90_ms": round(res["latency_us"]["p90"] / 1000, 2),
        "p99_ms": round(res["latency_us"]["p99"] / 1000, 2),
        "max_ms": round(res["latency_us"]["max"] / 1000, 2),
        "statuses": {k: v for k, v in sorted(res["statuses"].items())},
        "socket_errors": {k: v for k, v in res["errors"].items() if k != "status"},
        "exhausted_threads": res["exhausted_threads"],
        "broker_cpu_share": round(broker_cpu / wall, 2),  # 1.0 = one core fully busy
        # Requests per broker CPU-second: what one core would serve if the broker had it to itself
        # (meaningful when the broker is CPU-bound; on a shared machine the wall figure is lower).
        "rps_per_broker_cpu_s": round(res["requests"] / broker_cpu, 1) if broker_cpu > 0 else None,
        "generator_cpu_share": round(gen_cpu / wall, 2),
        "connections": args.connections,
        "generator": f"wrk -t{threads} -c{args.connections}",
    }


async def _fixed_rate(port: int, bodies: list[str], rate: float, conns: int) -> dict[str, Any]:
    """Open loop: request i is due at t0 + i/rate; latency counts from when it was due."""
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    clock = time.perf_counter  # not loop.time(): uvloop's clock has 1 ms resolution
    latencies: list[float] = []
    statuses: collections.Counter[str] = collections.Counter()
    errors = 0
    head = (b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: ")

    async def one(due: float, body: bytes) -> None:
        nonlocal errors
        reader, writer = await pool.get()
        try:
            writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(clock() - due)
            statuses[status_line.split(b" ", 2)[1].decode()] += 1
        except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
            errors += 1
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        pool.put_nowait((reader, writer))

    encoded = [b.encode() for b in bodies]
    tasks = []
    t0 = clock() + 0.05
    for i, body in enumerate(encoded):
        due = t0 + i / rate
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due, body)))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    elapsed = clock() - t0
    while not pool.empty():
        pool.get_nowait()[1].close()
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000, 2) if latencies else 0.0

    return {"offered_rps": rate, "achieved_rps": round(len(latencies) / elapsed, 1), "requests": len(encoded),
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": pct(100), "statuses": dict(statuses),
            "socket_errors": {"io": errors}, "connections": conns, "generator": "asyncio open-loop client (uvloop)"}


def run_fixed_rate(broker: Broker, bodies: list[str], rate: float, conns: int, pin: Pinning) -> dict[str, Any]:
    saved = os.sched_getaffinity(0)
    if pin.enabled:
        os.sched_setaffinity(0, {pin.other_core})
    try:
        try:
            import uvloop

            return uvloop.run(_fixed_rate(broker.port, bodies, rate, conns))
        except ImportError:
            return asyncio.run(_fixed_rate(broker.port, bodies, rate, conns))
    finally:
        os.sched_setaffinity(0, saved)


# -- ceiling (in-process, on the broker's core, broker idle) --------------------------------------


def _per_op_us(fn: Any, items: list[Any], rounds: int) -> tuple[float, float]:
    """Medians over ``rounds`` of the wall and CPU time per call over ``items`` (µs).

    CPU time (CLOCK_PROCESS_CPUTIME_ID) is what a fully available core would spend; it barely moves
    when other processes share the core, where wall time does.
    """
    wall, cpu = [], []
    for _ in range(rounds):
        c0, t0 = time.process_time(), time.perf_counter()
        for it in items:
            fn(it)
        wall.append((time.perf_counter() - t0) / len(items) * 1e6)
        cpu.append((time.process_time() - c0) / len(items) * 1e6)
    return round(statistics.median(wall), 1), round(statistics.median(cpu), 1)


def measure_ceiling(work: Workload, redis_url: str, pin: Pinning, n: int, rounds: int) -> dict[str, Any]:
    from joserfc.jwk import ECKey

    from app.config import Settings
    from app.oauth.access_token import AccessTokenClaims, TokenSigner, new_token_id, verify_access_token
    from app.oauth.jose import verification_key
    from app.oauth.assertion import parse_assertion, verify_assertion
    from app.oauth.clients import ClientRecord, prepare_client
    from app.service.client_auth import assertion_policy
    from app.store import keyspace as store_keys
    from app.store.redis import connect

    saved = os.sched_getaffinity(0)
    if pin.enabled:
        os.sched_setaffinity(0, {pin.broker_core})
    try:
        settings = Settings(issuer=work.issuer, redis_url=redis_url)
        policy = assertion_policy(settings)
        bc = work.hit_clients[0]
        client = prepare_client(msgspec_convert(bc.metadata(), ClientRecord))
        now = int(time.time())
        assertions = [bc.assertion(work.issuer, now) for _ in range(n)]

        def verify(a: str) -> None:
            verify_assertion(parse_assertion(a, policy), client, policy, time.time())

        verify_wall, verify_us = _per_op_us(verify, assertions, rounds)

        key = ECKey.generate_key("P-256")
        signer = TokenSigner(key, "bench-kid", "ES256")
        claims = [AccessTokenClaims(iss=work.issuer, sub="c", client_id="c", aud=RS, scope="read", jti=new_token_id(),
                                    iat=now, exp=now + 900) for _ in range(n)]
        sign_wall, sign_us = _per_op_us(signer.sign, claims, rounds)

        # Resource-server verification (RFC 9068 §4) of broker-shaped tokens.
        vkeys = {"bench-kid": verification_key(key.as_dict(private=False), kid="bench-kid", alg="ES256")}
        tokens = [signer.sign(c) for c in claims]

        def rs(token: str) -> None:
            verify_access_token(token, vkeys, issuer=work.issuer, audience=RS, now=time.time())

        rs_wall, rs_us = _per_op_us(rs, tokens, rounds)

        async def redis_loop() -> tuple[float, float]:
            r = connect(redis_url, timeout=settings.redis_timeout, retries=settings.redis_retries)
            rid = os.urandom(12).hex()
            names = [store_keys.replay("bench-ceiling", secrets.token_urlsafe(16)) for _ in range(n)]
            sem = asyncio.Semaphore(32)

            async def one(k: str) -> None:
                async with sem:
                    await r.set(k, rid, nx=True, px=60_000, get=True)

            await asyncio.gather(*(one(k) for k in names[:64]))  # warm the pool
            samples = []
            cpu = []
            for _ in range(rounds):
                fresh = [k + str(len(samples)) for k in names]
                c0, t0 = time.process_time(), time.perf_counter()
                await asyncio.gather(*(one(k) for k in fresh))
                samples.append((time.perf_counter() - t0) / n * 1e6)
                cpu.append((time.process_time() - c0) / n * 1e6)
            await r.aclose()
            return round(statistics.median(samples), 1), round(statistics.median(cpu), 1)

        try:
            import uvloop

            redis_wall, redis_us = uvloop.run(redis_loop())
        except ImportError:
            redis_wall, redis_us = asyncio.run(redis_loop())
    finally:
        os.sched_setaffinity(0, saved)

    miss = verify_us + sign_us + redis_us
    hit = verify_us + redis_us
    return {
        "verify_us": verify_us,
        "sign_us": sign_us,
        "redis_set_nx_get_us": redis_us,
        "rs_verify_us": rs_us,
        "wall_us": {"verify": verify_wall, "sign": sign_wall, "redis_set_nx_get": redis_wall, "rs_verify": rs_wall},
        "ceiling_rps": {
            "miss": round(1e6 / miss),  # verify + sign + one Redis call
            "hit": round(1e6 / hit),  # verify + one Redis call (the cached token is not re-signed)
            "bad_signature": round(1e6 / verify_us),  # refused at the signature check, no Redis
            "replay": round(1e6 / hit),  # verify + the Redis call that finds the jti
            "fixed_rate": round(1e6 / miss),
            "rs_verify": round(1e6 / rs_us),
        },
        "note": "CPU µs per operation (process CPU time, median of rounds) measured on the broker's core with the "
                "broker idle; redis = redis-py asyncio SET NX PX GET with 32 concurrent callers, the broker's own "
                "client settings (client CPU per op; Redis runs on the other core). wall_us = the same loops in "
                "wall time (inflated when other processes share the core)",
    }


def msgspec_convert(data: dict[str, Any], typ: Any) -> Any:
    import msgspec

    return msgspec.convert(data, typ)


def measure_redis_memory(redis: Redis, n: int) -> dict[str, Any]:
    """Bytes of Redis memory per recorded jti: the broker's key shape and value, with a TTL."""
    from app.store import keyspace as store_keys

    before = int(redis.info("memory")["used_memory"])
    rid = os.urandom(12).hex()
    names = [store_keys.replay("bench-client", secrets.token_urlsafe(16)) for _ in range(n)]
    with socket.create_connection(("127.0.0.1", redis.port), timeout=30) as s:
        f = s.makefile("rb")
        for start in range(0, n, 1000):
            chunk = names[start:start + 1000]
            payload = b"".join(f"*7\r\n$3\r\nSET\r\n${len(k)}\r\n{k}\r\n$24\r\n{rid}\r\n$2\r\nNX\r\n$2\r\nPX\r\n$6\r\n300000\r\n$3\r\nGET\r\n".encode()
                               for k in chunk)
            s.sendall(payload)
            for _ in chunk:
                f.readline()  # "$-1": the key was new
    time.sleep(0.2)
    after = int(redis.info("memory")["used_memory"])
    with socket.create_connection(("127.0.0.1", redis.port), timeout=30) as s:
        f = s.makefile("rb")
        for start in range(0, n, 1000):
            chunk = names[start:start + 1000]
            s.sendall(b"".join(f"*2\r\n$6\r\nUNLINK\r\n${len(k)}\r\n{k}\r\n".encode() for k in chunk))
            for _ in chunk:
                f.readline()
    return {"keys": n, "used_memory_before": before, "used_memory_after": after,
            "bytes_per_jti": round((after - before) / n, 1),
            "key_example_length": len(names[0]), "value_length": 24, "ttl": "PX (expires)"}


# -- orchestration --------------------------------------------------------------------------------


def pool_size(args: argparse.Namespace, expect_rps: float) -> int:
    return max(args.min_bodies, int(args.duration * expect_rps * 1.6) + 500)


def expected(name: str) -> int:
    return 401 if name in ("bad_signature", "replay") else 200


def finish(name: str, res: dict[str, Any], ceiling: dict[str, Any]) -> dict[str, Any]:
    want = str(expected(name))
    unexpected = sum(v for k, v in res["statuses"].items() if k != want) + sum(res["socket_errors"].values())
    if res.get("exhausted_threads"):
        res["warning"] = "a wrk thread ran out of pre-generated assertions: raise --min-bodies"
    res["expected_status"] = int(want)
    res["unexpected"] = unexpected
    rps = res.get("rps", res.get("achieved_rps"))
    res["ceiling_rps"] = ceiling["ceiling_rps"][name]
    res["ceiling_share"] = round(rps / ceiling["ceiling_rps"][name], 2)
    if res.get("rps_per_broker_cpu_s"):
        res["ceiling_share_per_cpu_s"] = round(res["rps_per_broker_cpu_s"] / ceiling["ceiling_rps"][name], 2)
    if res.get("broker_cpu_share") is not None and res["broker_cpu_share"] < 0.8:
        res["note"] = ("the broker used less than 0.8 of a core: it was waiting (on Redis, or for a core shared "
                       "with other processes); see machine.loadavg")
    return res


def http_scenarios(args: argparse.Namespace, broker: Broker, work: Workload, pin: Pinning, ceiling: dict[str, Any],
                   workdir: Path, names: list[str], gen_pin: list[str], label: str = "") -> dict[str, Any]:
    threads = 1 if pin.enabled and gen_pin else args.wrk_threads
    out: dict[str, Any] = {}
    guess = args.expect_rps
    for name in names:
        if name == "miss":
            bodies = work.miss_bodies(pool_size(args, guess))
            res = run_wrk(args, broker, gen_pin, bodies, "once", workdir, "miss", threads)
            guess = max(guess, res["rps"])
        elif name == "hit":
            bodies = work.hit_bodies(pool_size(args, guess * 1.5))
            res = run_wrk(args, broker, gen_pin, bodies, "once", workdir, "hit", threads)
        elif name == "bad_signature":
            res = run_wrk(args, broker, gen_pin, work.bad_signature_bodies(2000), "cycle", workdir, "bad", threads)
        elif name == "replay":
            bodies = work.hit_bodies(200)
            for b in bodies:  # spend every assertion once, then the timed window only replays
                status, _, _ = broker.token(b)
                if status != 200:
                    raise RuntimeError(f"replay setup: first use answered {status}")
            res = run_wrk(args, broker, gen_pin, bodies, "cycle", workdir, "replay", threads)
        elif name == "fixed_rate":
            rate = resolve_rate(args, out)
            n = max(10, int(rate * args.duration))
            res = run_fixed_rate(broker, work.miss_bodies(n), rate, args.connections, pin)
        else:
            continue
        out[name] = finish(name, res, ceiling)
        r = out[name]
        log(f"{label}{name}: {r.get('rps', r.get('achieved_rps'))} req/s p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms "
            f"statuses {r['statuses']} unexpected {r['unexpected']}")
    return out


def resolve_rate(args: argparse.Namespace, done: dict[str, Any]) -> float:
    if args.rate != "auto":
        return float(args.rate)
    if "miss" in done:
        return max(50.0, round(done["miss"]["rps"] / 2 / 50) * 50)
    return 500.0


def detect_cache(broker: Broker, work: Workload) -> dict[str, Any]:
    client = work.hit_clients[0]
    tokens, headers = [], {}
    for _ in range(2):
        status, headers, payload = broker.token(form(client.assertion(work.issuer, int(time.time())), "read"))
        tokens.append(payload.get("access_token") if status == 200 else None)
    same = tokens[0] is not None and tokens[0] == tokens[1]
    return {"detected": same, "how": "two requests for one client+scope returned the same access token" if same else
            "two requests for one client+scope returned different tokens (no token cache on /token yet)",
            "response_headers": sorted(h for h in headers if "cache" in h or h.startswith("x-"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=8.0, help="seconds per timed scenario (default 8, max 10 advised)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--rate", default="auto",
                   help="offered req/s for the fixed-rate scenario (miss requests); auto = half the miss req/s measured "
                        "in this run (so the figure is latency below saturation on a noisy machine)")
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS), help=f"comma list of {','.join(ALL_SCENARIOS)}")
    p.add_argument("--workers", type=int, default=1, help="2: also run miss/hit with 2 workers unpinned and report scaling")
    p.add_argument("--rss-requests", type=int, default=0, help="also run this many miss requests watching broker RSS (e.g. 1000000)")
    p.add_argument("--redis-jtis", type=int, default=100_000, help="keys written for the Redis memory-per-jti figure")
    p.add_argument("--ceiling-n", type=int, default=2000, help="operations per ceiling round")
    p.add_argument("--expect-rps", type=float, default=4000.0, help="sizes the pre-generated assertion pools")
    p.add_argument("--min-bodies", type=int, default=2000)
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk threads when not pinned")
    p.add_argument("--log-level", default="warning", help="BROKER_LOG_LEVEL for the broker (default warning)")
    p.add_argument("--ratelimit-mode", default="observe", choices=("observe", "enforce", "off"),
                   help="BROKER_RATELIMIT_MODE (default observe: every rejection pays full verification plus the "
                        "failure count in Redis, and one source address can send the whole flood)")
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--profile", metavar="SECONDS", type=float, default=0.0,
                   help="py-spy the broker during an extra run of this length per --profile-scenarios; "
                        "writes bench-results/profile-<scenario>.txt (collapsed stacks) and .json (summary)")
    p.add_argument("--profile-scenarios", default="miss", help="comma list of miss, hit, bad_signature")
    p.add_argument("--summarize", metavar="RAW", help="only print the summary of a saved py-spy raw profile and exit")
    p.add_argument("--smoke", action="store_true", help="seconds-long run for CI: tiny pools, 1 s per scenario")
    p.add_argument("--out", default=str(ROOT / "bench-results" / "latest.json"))
    args = p.parse_args(argv)
    if args.summarize:
        print(json.dumps(summarize_profile(Path(args.summarize)), indent=2))
        return 0
    if args.smoke:
        args.duration, args.connections, args.rate = 1.0, 8, "200"
        # Pools sized for up to ~12k req/s so a fast CI runner does not run out within the second.
        args.redis_jtis, args.ceiling_n, args.expect_rps, args.min_bodies = 2000, 200, 8000.0, 500
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(names) - set(ALL_SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    for tool in ("redis-server", "wrk"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed (apt-get install redis-server wrk)", file=sys.stderr)
            return 2

    # SIGTERM (timeout, CI cancel) unwinds through the finally below, which stops Redis and the broker.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pin = Pinning(not args.no_pin)
    log(f"pinning: {pin.describe()}")
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "pinning": pin.describe(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "scenarios": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="broker-bench-"))
    keys_dir = workdir / "keys"
    redis = broker = None
    try:
        redis = Redis(workdir, pin)
        broker = Broker(workdir, keys_dir, redis.url, pin.broker(), 1, args.log_level, args.ratelimit_mode)
        work = Workload(broker.issuer)
        register_clients(broker, keys_dir, work.miss_clients + work.hit_clients)
        # Warm-up: the client directory prepares each client's keys on first use.
        for c in work.miss_clients + work.hit_clients:
            status, _, payload = broker.token(form(c.assertion(broker.issuer, int(time.time())), c.default_scope))
            if status != 200:
                raise RuntimeError(f"warm-up for {c.client_id}: {status} {payload}")
        results["token_cache"] = detect_cache(broker, work)
        log(f"token cache: {results['token_cache']['how']}")

        log("ceiling: measuring on the broker's core (broker idle)")
        ceiling = measure_ceiling(work, redis.url, pin, args.ceiling_n, 3 if args.smoke else 5)
        results["ceiling"] = ceiling
        log(f"ceiling: verify {ceiling['verify_us']} µs, sign {ceiling['sign_us']} µs, redis {ceiling['redis_set_nx_get_us']} µs")

        rss_before = rss_kib(broker.proc.pid)
        results["scenarios"].update(http_scenarios(args, broker, work, pin, ceiling, workdir,
                                                   [n for n in names if n in HTTP_SCENARIOS], pin.other()))
        rss_after = rss_kib(broker.proc.pid)

        if "rs_verify" in names:
            results["scenarios"]["rs_verify"] = {
                "tokens_per_s": ceiling["ceiling_rps"]["rs_verify"], "us_per_token": ceiling["rs_verify_us"],
                "tokens_per_s_wall": round(1e6 / ceiling["wall_us"]["rs_verify"]),
                "how": "app.oauth.access_token.verify_access_token in a tight loop on the broker core (ES256); "
                       "tokens_per_s from CPU time, tokens_per_s_wall from wall time",
            }
        if "redis_memory" in names:
            results["scenarios"]["redis_memory"] = measure_redis_memory(redis, args.redis_jtis)
            log(f"redis memory per jti: {results['scenarios']['redis_memory']['bytes_per_jti']} bytes")
        if "memory" in names:
            mem = {"rss_kib_before": rss_before, "rss_kib_after": rss_after,
                   "change_pct": round((rss_after - rss_before) / rss_before * 100, 1) if rss_before else None,
                   "requests_between": sum(results["scenarios"].get(n, {}).get("requests", 0) for n in HTTP_SCENARIOS)}
            if args.rss_requests:
                mem["long_run"] = rss_long_run(args, broker, work, pin, workdir)
            results["scenarios"]["memory"] = mem
            log(f"broker RSS: {rss_before} KiB -> {rss_after} KiB")

        if args.profile:
            results["profile"] = profile_runs(args, broker, work, pin, workdir)

        if args.workers > 1:
            results["workers"] = scaling(args, redis, keys_dir, work, pin, ceiling, workdir, results["scenarios"])
    finally:
        for proc in (broker, redis):
            if proc is not None:
                proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    try:
        results["machine"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        pass
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nJSON: {out}")
    bad = [n for n, r in results["scenarios"].items() if r.get("unexpected")]
    if bad:
        print(f"bench: unexpected responses in {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def rss_long_run(args: argparse.Namespace, broker: Broker, work: Workload, pin: Pinning, workdir: Path) -> dict[str, Any]:
    """Miss requests in batches until ``--rss-requests``, RSS sampled after each batch."""
    batch_args = argparse.Namespace(**{**vars(args), "duration": 10.0})
    samples, done, total_bad = [], 0, 0
    deadline = time.monotonic() + max(300.0, args.rss_requests / 300)  # bounded even on a slow machine
    while done < args.rss_requests and time.monotonic() < deadline:
        # Every body is sent once; a batch ends when its bodies run out (the last few in-flight
        # answers are not counted by wrk then), so progress counts bodies, not 200s.
        bodies = work.miss_bodies(max(1_000, min(40_000, args.rss_requests - done)))
        res = run_wrk(batch_args, broker, pin.other(), bodies, "once", workdir, "rss", 1)
        done += len(bodies)
        total_bad += sum(v for k, v in res["statuses"].items() if k != "200")
        samples.append((done, rss_kib(broker.proc.pid)))
        log(f"rss run: {done} requests, RSS {samples[-1][1]} KiB")
    first = samples[1][1] if len(samples) > 1 else samples[0][1]  # after the first batch: warmed up
    last = samples[-1][1]
    return {"requests": done, "non_200": total_bad, "samples": samples, "rss_kib_first_batch": first, "rss_kib_last": last,
            "change_pct_after_warmup": round((last - first) / first * 100, 1)}


def profile_runs(args: argparse.Namespace, broker: Broker, work: Workload, pin: Pinning, workdir: Path) -> dict[str, Any]:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        return {"error": "py-spy not installed (pip install py-spy)"}
    out_dir = Path(args.out).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    prof_args = argparse.Namespace(**{**vars(args), "duration": args.profile})
    out = {}
    for name in [n.strip() for n in args.profile_scenarios.split(",") if n.strip()]:
        if name == "miss":
            bodies, mode = work.miss_bodies(pool_size(prof_args, args.expect_rps)), "once"
        elif name == "hit":
            bodies, mode = work.hit_bodies(pool_size(prof_args, args.expect_rps)), "once"
        elif name == "bad_signature":
            bodies, mode = work.bad_signature_bodies(2000), "cycle"
        else:
            raise SystemExit(f"bench: cannot profile {name!r} (miss, hit, bad_signature)")
        raw = out_dir / f"profile-{name}.txt"
        raw.unlink(missing_ok=True)
        log(f"profiling {name} with py-spy for {args.profile} s")
        spy = subprocess.Popen(pin.other() + [pyspy, "record", "--pid", str(broker.proc.pid), "--rate", "250", "--format", "raw",
                                              "--duration", str(int(args.profile) + 1), "--full-filenames", "--output", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        res = run_wrk(prof_args, broker, pin.other(), bodies, mode, workdir, "profile", 1)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
        summary = summarize_profile(raw) if raw.exists() else {"error": spy.stderr.read().decode()[-500:] if spy.stderr else ""}
        summary["rps_while_profiled"] = res["rps"]
        summary["raw"] = str(raw)
        (out_dir / f"profile-{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
        out[name] = summary
    return out


#: Inclusive buckets: a sample counts in a bucket when a frame on its stack matches
#: (function name ends with the first string, file path contains the second).
PROFILE_BUCKETS: list[tuple[str, tuple[tuple[str, str], ...]]] = [
    ("route handler (app/web/routes.py token)", (("token", "/app/web/routes.py"),)),
    ("TokenService.token", (("token", "/app/service/token.py"),)),
    ("  form parse (parse_token_request)", (("parse_token_request", ""),)),
    ("  assertion parse (parse_assertion)", (("parse_assertion", ""),)),
    ("  assertion verify (verify_assertion)", (("verify_assertion", ""),)),
    ("    ECDSA verify (joserfc -> cryptography)", (("verify", "jws_algs.py"),)),
    ("  client directory lookup", (("get", "/app/service/directory.py"),)),
    ("  grant decision (decide_grant)", (("decide_grant", ""),)),
    ("  rate limiter", (("", "/app/service/ratelimit.py"),)),
    ("  Redis calls from app/store (replay, cache, counters)", (("", "/app/store/"),)),
    ("  token cache (app/service/token_cache.py)", (("", "/app/service/token_cache.py"),)),
    ("  access-token sign (TokenSigner.sign)", (("sign", "/app/oauth/access_token.py"),)),
    ("    ECDSA sign (joserfc -> cryptography)", (("sign", "jws_algs.py"),)),
    ("  logging (structlog, app/log.py)", (("", "/structlog/"), ("", "/app/log.py"))),
    ("redis-py client code (anywhere)", (("", "site-packages/redis/"),)),
    ("Litestar code (anywhere)", (("", "site-packages/litestar/"),)),
    ("uvicorn code (anywhere)", (("", "site-packages/uvicorn/"),)),
]
#: Exclusive: the leaf frame's file decides where a sample's CPU went (sums to 100%).
LEAF_GROUPS = [
    ("ECDSA (cryptography via joserfc)", "/joserfc/_rfc7518/jws_algs.py"),
    ("redis-py", "site-packages/redis/"),
    ("Litestar", "site-packages/litestar/"),
    ("uvicorn (+httptools, uvloop transport calls)", "site-packages/uvicorn/"),
    ("structlog", "site-packages/structlog/"),
    ("asyncio (stdlib)", "/asyncio/"),
    ("joserfc (other)", "site-packages/joserfc/"),
    ("msgspec/cryptography (other)", "site-packages/"),
    ("app code", "/app/"),
]
#: Leaf frames that mean "waiting": uvloop's epoll (C) shows as its Python caller; helper threads
#: (thread pools, background fetchers) sleep in Condition.wait. py-spy cannot tell these are idle.
IDLE_LEAVES = ("Runner.run", "run_until_complete", "run_forever", "Server.serve", "", "Condition.wait", "Event.wait",
               "Thread._wait_for_tstate_lock", "Thread.join", "EpollSelector.select", "Queue.get", "SimpleQueue.get")


#: Exclusive attribution: walk each sample's stack from the leaf up; the first frame that matches
#: decides (so json.loads called from app/oauth/jose.py counts as assertion parsing, and the
#: asyncio.timeout redis-py opens per read counts as redis-py). Sums to 100% of busy samples.
EXCLUSIVE_AREAS: list[tuple[str, tuple[tuple[str, str], ...]]] = [
    ("ECDSA verify (cryptography, via joserfc)", (("verify", "/joserfc/_rfc7518/jws_algs.py"),)),
    ("ECDSA sign (cryptography, via joserfc)", (("sign", "/joserfc/_rfc7518/jws_algs.py"),)),
    ("redis-py client (incl. its per-read asyncio timeout)", (("", "site-packages/redis/"),)),
    ("logging (structlog, jti fingerprint)", (("", "/structlog/"), ("", "/app/log.py"))),
    ("token cache (app/service + app/store token_cache.py)", (("", "/app/service/token_cache.py"), ("", "/app/store/token_cache.py"))),
    ("failure rate limiter (app/*/ratelimit.py)", (("", "/app/service/ratelimit.py"), ("", "/app/store/ratelimit.py"))),
    ("Redis store glue (app/store: key hashing, asyncio.timeout per call)", (("", "/app/store/"),)),
    ("assertion parse + claim checks (app/oauth/assertion.py, jose.py)", (("", "/app/oauth/assertion.py"), ("", "/app/oauth/jose.py"))),
    ("form parse (app/oauth/request.py)", (("", "/app/oauth/request.py"),)),
    ("access-token claims/encode (app/oauth/access_token.py)", (("", "/app/oauth/access_token.py"),)),
    ("other app code (route, TokenService, grant, directory, metrics)", (("", "/app/"),)),
    ("Litestar (routing, Request/Response, middleware)", (("", "site-packages/litestar/"),)),
    ("uvicorn + httptools + event loop (HTTP parse, writes, task steps)", (("", "site-packages/uvicorn/"),)),
]


def _stdlib(path: str) -> bool:
    return "/lib/python3" in path and "site-packages" not in path or path.startswith("<frozen")


def _exclusive_area(frames: list[tuple[str, str]]) -> str:
    """Leaf up, skipping the standard library (json, asyncio, typing...): its time goes to the caller."""
    for frame in reversed(frames):
        if _stdlib(frame[1]):
            continue
        area = next((label for label, rules in EXCLUSIVE_AREAS if _matches([frame], rules)), None)
        if area is not None:
            return area
    if any("/asyncio/streams.py" in path for _, path in frames):
        return "redis-py client (incl. its per-read asyncio timeout)"  # only redis-py uses asyncio streams here
    return "asyncio event loop (task steps, callbacks, timers)"


def _frame(frame: str) -> tuple[str, str]:
    name, _, rest = frame.strip().partition(" (")
    return name, rest.rstrip(")")


def _matches(frames: list[tuple[str, str]], rules: tuple[tuple[str, str], ...]) -> bool:
    return any(name.split(".")[-1].endswith(n) and f in path for name, path in frames for n, f in rules if n or f)


def summarize_profile(raw: Path) -> dict[str, Any]:
    """py-spy ``--format raw`` = collapsed stacks, root first: ``frame;frame;... count``."""
    total = idle = 0
    inclusive: collections.Counter[str] = collections.Counter()
    leaf_group: collections.Counter[str] = collections.Counter()
    exclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        try:
            count = int(count_s)
        except ValueError:
            continue
        frames = [_frame(f) for f in stack.split(";")]
        if frames[-1][0] in IDLE_LEAVES:  # uvloop waiting in epoll (C) shows as its Python caller
            idle += count
            continue
        total += count
        for label, rules in PROFILE_BUCKETS:
            if _matches(frames, rules):
                inclusive[label] += count
        exclusive[_exclusive_area(frames)] += count
        name, path = frames[-1]
        group = next((g for g, marker in LEAF_GROUPS if marker in path), "other (stdlib, C, unknown)")
        if group == "app code":
            group = "app code (" + path.split(":")[0].rsplit("/app/", 1)[-1] + ")"
        elif group == "other (stdlib, C, unknown)" and "/python3" in path:
            group = "Python stdlib (json, contextlib, abc, ...)"
        leaf_group[group] += count
        leaf[f"{name} ({path.split('site-packages/')[-1].split('/main/')[-1]})"] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "idle_samples_excluded": idle,
        "exclusive_pct": {k: round(v * 100 / total, 1) for k, v in exclusive.most_common()},
        "inclusive_pct": {label: round(inclusive[label] * 100 / total, 1) for label, _ in PROFILE_BUCKETS},
        "self_pct_by_area": {k: round(v * 100 / total, 1) for k, v in leaf_group.most_common()},
        "top_self_pct": {k: round(v * 100 / total, 1) for k, v in leaf.most_common(25)},
    }


def scaling(args: argparse.Namespace, redis: Redis, keys_dir: Path, work: Workload, pin: Pinning, ceiling: dict[str, Any],
            workdir: Path, one_worker: dict[str, Any]) -> dict[str, Any]:
    """N workers, nothing pinned (they need both cores), compared with the pinned 1-worker figures."""
    log(f"scaling: starting {args.workers} workers (unpinned)")
    broker = Broker(workdir, keys_dir, redis.url, [], args.workers, args.log_level, args.ratelimit_mode)
    try:
        # The clients are already registered (shared Redis); only the issuer (assertion aud) differs.
        multi_work = Workload.__new__(Workload)
        multi_work.__dict__.update(work.__dict__, issuer=broker.issuer)
        redis_cpu0 = float(redis.info("cpu")["used_cpu_user"]) + float(redis.info("cpu")["used_cpu_sys"])
        t0 = time.monotonic()
        res = http_scenarios(args, broker, multi_work, pin, ceiling, workdir, ["miss", "hit"], [],
                             label=f"{args.workers} workers ")
        wall = time.monotonic() - t0
        redis_cpu = float(redis.info("cpu")["used_cpu_user"]) + float(redis.info("cpu")["used_cpu_sys"]) - redis_cpu0
    finally:
        broker.stop()
    out: dict[str, Any] = {"workers": args.workers, "pinning": "none: broker workers, wrk and redis-server share all cores",
                           "scenarios": res, "redis_cpu_share": round(redis_cpu / wall, 2)}
    for name in ("miss", "hit"):
        if name in res and name in one_worker:
            out[f"{name}_speedup"] = round(res[name]["rps"] / one_worker[name]["rps"], 2)
    return out


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"token broker benchmark, {results['date']}",
        f"machine: {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, {m.get('redis')}",
        f"pinning: {results['pinning']}",
        f"load average at start/end: {m.get('loadavg_at_start')} / {m.get('loadavg_at_end')} (other processes share these cores)",
        f"token cache on /token: {'yes' if results.get('token_cache', {}).get('detected') else 'no'}",
        "",
    ]
    c = results.get("ceiling")
    if c:
        lines.append(f"ceiling (CPU µs/op on the broker core): assertion verify {c['verify_us']}, token sign {c['sign_us']}, "
                     f"redis-py SET NX PX GET {c['redis_set_nx_get_us']}")
        lines.append("")
    lines.append("req/s and share: wall clock; /cpu-s and share: requests per broker CPU-second (robust to other "
                 "processes on the core); ceiling: 1e6 / CPU µs of the unavoidable work")
    lines.append(f"{'scenario':<16}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'ceiling':>9}{'share':>7}{'/cpu-s':>8}{'share':>7}"
                 f"{'unexpected':>12}  generator")
    for name in HTTP_SCENARIOS:
        r = results["scenarios"].get(name)
        if not r:
            continue
        rps = r.get("rps", r.get("achieved_rps"))
        label = name if name != "fixed_rate" else f"fixed {r['offered_rps']:.0f}/s"
        per_cpu = r.get("rps_per_broker_cpu_s")
        per_cpu_s = f"{per_cpu:>8.0f}{r['ceiling_share_per_cpu_s']:>7.0%}" if per_cpu else f"{'-':>8}{'-':>7}"
        lines.append(f"{label:<16}{rps:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['ceiling_rps']:>9}{r['ceiling_share']:>7.0%}"
                     f"{per_cpu_s}{r['unexpected']:>12}  {r['generator']} (broker cpu {r.get('broker_cpu_share', '-')}, "
                     f"gen cpu {r.get('generator_cpu_share', '-')})")
    rs = results["scenarios"].get("rs_verify")
    if rs:
        lines.append(f"{'rs_verify':<16}{rs['tokens_per_s']:>9} tokens/s per CPU-second ({rs['us_per_token']} µs each, "
                     f"in-process; {rs['tokens_per_s_wall']}/s wall)")
    rm = results["scenarios"].get("redis_memory")
    if rm:
        lines.append(f"redis memory per recorded jti: {rm['bytes_per_jti']} bytes ({rm['keys']} keys)")
    mem = results["scenarios"].get("memory")
    if mem:
        lines.append(f"broker RSS: {mem['rss_kib_before']} KiB -> {mem['rss_kib_after']} KiB ({mem['change_pct']}%) "
                     f"over {mem['requests_between']} requests")
        if "long_run" in mem:
            lr = mem["long_run"]
            lines.append(f"long RSS run: {lr['requests']} requests, {lr['rss_kib_first_batch']} -> {lr['rss_kib_last']} KiB "
                         f"({lr['change_pct_after_warmup']}% after warm-up)")
    w = results.get("workers")
    if w:
        for name in ("miss", "hit"):
            r = w["scenarios"].get(name)
            if r:
                lines.append(f"{w['workers']} workers {name}: {r['rps']:.0f} req/s (x{w.get(name + '_speedup')} vs 1 pinned worker), "
                             f"p99 {r['p99_ms']} ms; broker cpu {r['broker_cpu_share']}, wrk cpu {r['generator_cpu_share']}, "
                             f"redis cpu {w['redis_cpu_share']} (cores)")
    for name, prof in (results.get("profile") or {}).items():
        if not isinstance(prof, dict) or "inclusive_pct" not in prof:
            continue
        lines.append("")
        lines.append(f"profile of {name} ({prof['samples']} samples, {prof['rps_while_profiled']} req/s while profiled):")
        for label, v in prof["inclusive_pct"].items():
            lines.append(f"  {v:>5.1f}%  {label}")
        lines.append("  exclusive (leaf-up attribution, sums to 100%):")
        for label, v in prof.get("exclusive_pct", {}).items():
            lines.append(f"  {v:>5.1f}%  {label}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
