"""The HTTP servers compared, same pinning, same Redis and clients:

- ``--compare-server granian``: the broker's ASGI app (``app.web.asgi:app``) under granian instead
  of uvicorn, same settings;
- ``--compare-server floor``: not the broker but the floor (``scripts/bench/floor.py``): the
  ceiling's work alone as a bare ASGI app under uvicorn (httptools, uvloop), miss and hit only.

granian runs with the nearest equivalents of the broker's uvicorn limits: the HTTP/1 buffer at
``BROKER_HTTP_HEADER_MAX`` bytes and the header read timeout at ``BROKER_HTTP_HEADER_TIMEOUT``
(granian has no body deadline), one worker, single-threaded runtime, uvloop, no access log. Only
the public app runs (granian serves one app: no management listener, so readiness is the public
``/jwks.json`` answering). Measurement only: granian is not a dependency of the broker
(``pip install granian==2.8.7`` to run it; skipped when absent).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from scripts.bench.results import Ceiling
from scripts.bench.runner import broker_settings, http_scenarios, warm_up
from scripts.bench.system import Pinning, log
from scripts.bench.workload import Workload
from scripts.processes import BrokerProcess, RedisServer, broker_env, free_port, wait_until


def _answers(url: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"server exited with code {proc.returncode}")
    try:
        return httpx.get(url + "/jwks.json", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def granian_scenarios(args: argparse.Namespace, redis: RedisServer, work: Workload, pin: Pinning, ceiling: Ceiling,
                      workdir: Path, names: list[str]) -> dict[str, Any]:
    try:
        import granian
    except ImportError:
        log("http servers: granian is not installed (pip install granian==2.8.7), skipped")
        return {}
    from app.config import Settings

    defaults = Settings()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = broker_env(url, workdir / "keys", redis.url, {"BROKER_MANAGEMENT_PORT": str(free_port()), **broker_settings(args)})
    cmd = [*pin.broker(), sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--runtime-mode", "st", "--loop", "uvloop", "--http", "1", "--no-access-log",
           "--log-level", "warning", "--http1-buffer-size", str(defaults.http_header_max),
           "--http1-header-read-timeout", str(int(defaults.http_header_timeout * 1000)), "app.web.asgi:app"]
    log_path = workdir / "granian.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = BrokerProcess(port, proc, log_path, 0)
    try:
        wait_until(lambda: _answers(url, proc), 30, what="granian to answer")
        there = work.for_issuer(url)
        warm_up(server, there)
        label = f"granian {granian.__version__}"
        res = http_scenarios(args, server, there, pin, ceiling, workdir, names, pin.other(), label=f"[{label}] ")
    finally:
        server.stop()
    return {name: {**r.to_json(), "label": label, "command": " ".join(cmd[len(pin.broker()):])} for name, r in res.items()}


def floor_scenarios(args: argparse.Namespace, redis: RedisServer, work: Workload, pin: Pinning, ceiling: Ceiling,
                    workdir: Path, names: list[str], raw: bool = False) -> dict[str, Any]:
    import uvicorn

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    there = work.for_issuer(url)
    config = workdir / "floor.json"
    config.write_text(json.dumps({"issuer": url, "redis_url": redis.url, "hit_scope": "read",
                                  "clients": [c.metadata() for c in there.clients]}))
    if raw:
        cmd = [*pin.broker(), sys.executable, "-m", "scripts.bench.floor", str(port)]
        label, server_desc = "floor raw", "the ceiling's work alone on httptools + uvloop, no ASGI server"
    else:
        cmd = [*pin.broker(), sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--http",
               "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning", "scripts.bench.floor:app"]
        label, server_desc = "floor", f"the ceiling's work alone, bare ASGI, uvicorn {uvicorn.__version__} httptools uvloop"
    log_path = workdir / f"{label.replace(' ', '-')}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, "FLOOR_CONFIG": str(config)}, stdout=out,
                                stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
    server = BrokerProcess(port, proc, log_path, 0)
    try:
        wait_until(lambda: _answers(url, proc), 30, what="the floor app to answer")
        warm_up(server, there)
        res = http_scenarios(args, server, there, pin, ceiling, workdir, [n for n in names if n in ("miss", "hit")],
                             pin.other(), label=f"[{label}] ")
    finally:
        server.stop()
    return {name: {**r.to_json(), "label": label, "server": server_desc, "command": " ".join(cmd[len(pin.broker()):])}
            for name, r in res.items()}
