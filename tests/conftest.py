"""Shared fixtures.

- ``broker``: the app on a fresh embedded fakeredis, a frozen clock, and a captured JSON log.
- ``redis_server``: a real ``redis-server`` process started by the suite (session scope). Without
  the binary the Redis tests skip locally, and fail under ``CI=true``.
- ``spawn_broker``: real broker processes (``python -m app serve``) talking HTTP on loopback.

Tests that use the last two carry the ``redis`` / ``live`` marker; an unmarked test that starts
either fails (``_servers_need_a_marker``).
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient as LitestarTestClient

from app.config import Settings
from app.oauth.clients import ClientRecord
from app.web.app import create_app

# Tests import these from here too (tests.conftest.RedisServer, free_port, wait_until...).
from scripts.processes import BrokerProcess, RedisServer, free_port, start_broker, wait_until  # noqa: F401
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
    """An in-process broker: Litestar's test client over the real app, store and keys.

    ``http`` is the public listener; ``management`` the management listener (``/metrics``,
    ``/healthz``, ``/readyz``: ``app.state.management_app``, same state), on the same event loop."""

    def __init__(self, settings: Settings, clock: FrozenClock, redis: Any = None) -> None:
        self.settings = settings
        self.clock = clock
        self.log_stream = io.StringIO()
        self.app = create_app(settings, redis=redis, clock=clock, log_stream=self.log_stream)
        self.http = LitestarTestClient(self.app, base_url=ISS)

    def __enter__(self) -> Broker:
        self.http.__enter__()
        return self

    @functools.cached_property
    def management(self) -> LitestarTestClient[Any]:
        """Not entered: it borrows the public client's portal (one event loop for the Redis client),
        and the management app has no lifespan of its own."""
        client = LitestarTestClient(self.app.state.management_app, base_url="http://127.0.0.1:8002")
        client.blocking_portal = self.http.blocking_portal
        return client

    def metrics(self) -> str:
        """The management listener's ``/metrics`` page."""
        resp = self.management.get("/metrics")
        assert resp.status_code == 200, resp.text
        return resp.text

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
# The processes themselves come from scripts/processes.py, shared with the demo and the benchmark.


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
    server = RedisServer(_redis_binary()).start()
    yield server
    server.stop()


@pytest.fixture
def real_redis(redis_server: RedisServer) -> RedisServer:
    """The session's real Redis, flushed, running and unpaused."""
    if not redis_server.running():
        redis_server.start()
    redis_server.resume()
    redis_server.command("FLUSHALL")
    return redis_server


# -- live broker processes -----------------------------------------------------------------------


@pytest.fixture
def spawn_broker(tmp_path: Path) -> Iterator[Any]:
    """Start ``python -m app serve`` processes; all share ``keys_dir`` unless told otherwise."""
    procs: list[BrokerProcess] = []
    keys_dir = tmp_path / "keys"

    def spawn(redis_url: str | None = None, issuer: str | None = None, env: dict[str, str] | None = None,
              workers: int = 1) -> BrokerProcess:
        port = free_port()
        bp = start_broker(keys_dir, tmp_path / f"broker-{port}.log", port=port, issuer=issuer or ISS,
                          redis_url=redis_url, env=env, workers=workers, timeout=20)
        procs.append(bp)
        return bp

    spawn.keys_dir = keys_dir  # type: ignore[attr-defined]
    yield spawn
    for bp in procs:
        bp.stop()


# -- markers: no real process without "redis" / "live" -------------------------------------------

#: Commands that start a real Redis or a broker (directly, or through the demo / the benchmark).
_SERVER_COMMANDS = ("redis-server", "redis-sentinel", "scripts/demo.py", "scripts/bench.py")


def _starts_a_server(args: Any) -> bool:
    argv = [str(a) for a in ([args] if isinstance(args, (str, bytes, os.PathLike)) else args)]
    text = " ".join(argv)
    return any(c in text for c in _SERVER_COMMANDS) or ("-m" in argv and "app" in argv and "serve" in argv)


#: Fixtures that start one (session/module scope: set up before any function-scoped guard).
_SERVER_FIXTURES = {"redis_server", "real_redis", "spawn_broker", "redis_cluster", "redis_sentinel", "sentinel", "live_broker"}


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("redis") or item.get_closest_marker("live"):
        return
    used = _SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
    if used:
        pytest.fail(f"{item.nodeid} uses {', '.join(sorted(used))}: mark it redis or live", pytrace=False)


@pytest.fixture(autouse=True)
def _servers_need_a_marker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test without the ``redis`` or ``live`` marker that starts redis-server or a broker fails,
    so that ``pytest -m "not redis and not live"`` never starts one."""
    if request.node.get_closest_marker("redis") or request.node.get_closest_marker("live"):
        return
    real_popen = subprocess.Popen

    class Guarded(real_popen):  # type: ignore[misc, valid-type]
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            if _starts_a_server(args):
                raise AssertionError(f"{request.node.nodeid} starts {args!r}: mark it redis or live")
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Guarded)


# -- generated-input counts (property tests report how many inputs they tried) -------------------

#: test name -> number of generated inputs run; printed in the terminal summary.
GENERATED_INPUTS: dict[str, int] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if GENERATED_INPUTS:
        terminalreporter.write_sep("-", "property tests: generated inputs (every one answered without a 500)")
        for name, count in sorted(GENERATED_INPUTS.items()):
            terminalreporter.write_line(f"{name}: {count}")
