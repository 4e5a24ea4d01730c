"""Shared fixtures.

- ``broker``: the app on a fresh embedded fakeredis, a frozen clock, and a captured JSON log.
- ``redis_server``: a real ``redis-server`` process started by the suite (session scope). Without
  the binary the Redis tests skip locally, and fail under ``CI=true``.
- ``spawn_broker``: real broker processes (``python -m app serve``) talking HTTP on loopback.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient as LitestarTestClient

from app.config import Settings
from app.oauth.clients import ClientRecord
from app.web.app import create_app
from tests.helpers import ISS, TestClient, form

ROOT = Path(__file__).resolve().parent.parent


class FrozenClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Broker:
    """An in-process broker: Litestar's test client over the real app, store and keys."""

    def __init__(self, settings: Settings, clock: FrozenClock, redis: Any = None) -> None:
        self.settings = settings
        self.clock = clock
        self.log_stream = io.StringIO()
        self.app = create_app(settings, redis=redis, clock=clock, log_stream=self.log_stream)
        self.http = LitestarTestClient(self.app, base_url=ISS)

    def __enter__(self) -> Broker:
        self.http.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.__exit__(*exc)

    def call(self, fn: Any, *args: Any) -> Any:
        return self.http.blocking_portal.call(fn, *args)

    def register(self, client: TestClient) -> ClientRecord:
        record = self.call(self.app.state.admin_service.register, "tests", client.metadata())
        self.app.state.directory.invalidate()
        return record

    def update(self, client_id: str, **changes: Any) -> ClientRecord:
        record = self.call(self.app.state.admin_service.update, "tests", client_id, changes)
        self.app.state.directory.invalidate()
        return record

    def token(self, data: dict[str, str] | str | bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        hdrs = {"content-type": "application/x-www-form-urlencoded", **(headers or {})}
        if isinstance(data, dict):
            data = httpx.QueryParams(data).__str__()
        return self.http.post("/token", content=data, headers=hdrs)

    def get_token(self, client: TestClient, **params: Any) -> httpx.Response:
        return self.token(form(client.assertion(self.clock.now), **params))

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_stream.getvalue().splitlines() if line.strip()]

    def log_text(self) -> str:
        return self.log_stream.getvalue()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300)


@pytest.fixture
def broker(settings: Settings, clock: FrozenClock) -> Iterator[Broker]:
    with Broker(settings, clock) as b:
        yield b


@pytest.fixture
def c1(broker: Broker) -> TestClient:
    client = TestClient("c1", alg="ES256", kid="c1-1")
    broker.register(client)
    return client


# -- real Redis --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="tb-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.terminate()
                self.proc.wait(5)
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def command(self, *args: str) -> Any:
        import redis

        r = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        try:
            return r.execute_command(*args)
        finally:
            r.close()


def require_binary(name: str, needed_for: str, install: str) -> str:
    """The path of a tool the live tests run. Missing: a skip locally, a failure in CI (``CI=true``),
    where the README test command has installed it."""
    binary = shutil.which(name)
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is not installed: CI must run {needed_for} ({install})")
        pytest.skip(f"{name} is not installed ({install}; the README test command installs it)")
    return binary


def _redis_binary() -> str:
    return require_binary("redis-server", "the real-Redis tests", "apt-get install redis-server")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(_redis_binary())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def real_redis(redis_server: RedisServer) -> RedisServer:
    """The session's real Redis, flushed, running and unpaused."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.resume()
    redis_server.command("FLUSHALL")
    return redis_server


# -- live broker processes -----------------------------------------------------------------------


class BrokerProcess:
    def __init__(self, port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def spawn_broker(tmp_path: Path) -> Iterator[Any]:
    """Start ``python -m app serve`` processes; all share ``keys_dir`` unless told otherwise."""
    procs: list[BrokerProcess] = []
    keys_dir = tmp_path / "keys"

    def spawn(redis_url: str | None = None, issuer: str | None = None, env: dict[str, str] | None = None,
              workers: int = 1) -> BrokerProcess:
        port = free_port()
        log_path = tmp_path / f"broker-{port}.log"
        environ = {**os.environ, "BROKER_KEYS_DIR": str(keys_dir), "BROKER_ISSUER": issuer or ISS,
                   "PYTHONUNBUFFERED": "1", **(env or {})}
        if redis_url:
            environ["BROKER_REDIS_URL"] = redis_url
        else:
            environ.pop("BROKER_REDIS_URL", None)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", str(workers)],
                cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT,
            )
        bp = BrokerProcess(port, proc, log_path)
        procs.append(bp)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("broker exited:\n" + log_path.read_text()[-3000:])
            try:
                if httpx.get(bp.url + "/readyz", timeout=0.5).status_code == 200:
                    return bp
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("broker did not become ready:\n" + log_path.read_text()[-3000:])

    spawn.keys_dir = keys_dir  # type: ignore[attr-defined]
    yield spawn
    for bp in procs:
        bp.stop()


# -- generated-input counts (property tests report how many inputs they tried) -------------------

#: test name -> number of generated inputs run; printed in the terminal summary.
GENERATED_INPUTS: dict[str, int] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if GENERATED_INPUTS:
        terminalreporter.write_sep("-", "property tests: generated inputs (every one answered without a 500)")
        for name, count in sorted(GENERATED_INPUTS.items()):
            terminalreporter.write_line(f"{name}: {count}")
