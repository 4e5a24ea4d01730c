"""Redis faults (docs/attack-matrix.md, "Redis faults", and `replay-reply-lost`): the replay check fails closed.

Every fault is injected into a real ``redis-server`` started by the suite: stopped (refused),
hung (SIGSTOP), ``CLIENT PAUSE``, out of memory, ``READONLY``, ``NOPERM``, a changed password, a
full connection pool, and a loopback TCP proxy that delays replies. Each must give 503 ``temporarily_unavailable``
with ``Retry-After`` within about a second, never a token and never a 500; ``/readyz`` says not
ready while ``/healthz`` stays up; service resumes without a restart once Redis is back.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry  # the sync Retry never retries a coroutine
from redis.backoff import NoBackoff

from app.config import Settings
from tests.conftest import Broker, FrozenClock, RedisServer, wait_until
from tests.expect import assert_token
from tests.helpers import ISS, TestClient, form

pytestmark = pytest.mark.redis

UNAVAILABLE = {"error": "temporarily_unavailable", "error_description": "The service is temporarily unavailable; retry later."}
INVALID_CLIENT = {"error": "invalid_client", "error_description": "Client authentication failed."}
BUDGET = 1.0  # seconds: docs/security.md's "within about a second" (deadline is timeout*(retries+1))


def assert_unavailable(resp: httpx.Response, elapsed: float | None = None) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.json() == UNAVAILABLE
    assert resp.headers["retry-after"] == "2"
    assert resp.headers["cache-control"] == "no-store"
    assert "access_token" not in resp.text
    if elapsed is not None:
        assert elapsed < BUDGET * 2, f"503 took {elapsed:.2f}s"


def redis_settings(tmp_path: Path, url: str, **kw: Any) -> Settings:
    return Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, redis_url=url, **kw)


@pytest.fixture
def rbroker(real_redis: RedisServer, tmp_path: Path, clock: FrozenClock) -> Iterator[Broker]:
    """The app in process, on the real Redis (create_app connects with settings.redis_url)."""
    with Broker(redis_settings(tmp_path, real_redis.url), clock) as b:
        yield b


@pytest.fixture
def rc1(rbroker: Broker) -> TestClient:
    client = TestClient("c1", kid="c1-1")
    rbroker.register(client)
    return client


def timed_token(broker: Broker, client: TestClient) -> tuple[httpx.Response, float, str]:
    assertion = client.assertion(broker.clock.now)
    t0 = time.monotonic()
    resp = broker.token(form(assertion))
    return resp, time.monotonic() - t0, assertion


def outage_round(broker: Broker, client: TestClient, n: int = 5) -> list[str]:
    """n token requests during the fault: all 503 within budget; /readyz vs /healthz checked by caller."""
    times, assertions = [], []
    for _ in range(n):
        resp, elapsed, assertion = timed_token(broker, client)
        assert_unavailable(resp, elapsed)
        times.append(elapsed)
        assertions.append(assertion)
    assert statistics.median(times) < BUDGET, times
    return assertions


def eventually_ok(broker: Broker, client: TestClient, within: float = 5.0) -> None:
    """Service resumes without a restart: a token within ``within`` s, and only 503s before it."""

    def token_issued() -> bool:
        resp = broker.get_token(client)
        if resp.status_code != 200:
            assert_unavailable(resp)
        return resp.status_code == 200

    wait_until(token_issued, within, what="a token after the fault", interval=0.1)


def test_redis_stopped_then_restarted(rbroker: Broker, rc1: TestClient, real_redis: RedisServer) -> None:
    """`redis-unreachable`: connection refused → 503 fast; /readyz 503, /healthz 200; recovery without restart."""
    assert rbroker.get_token(rc1).status_code == 200
    real_redis.command("SAVE")  # keep the registry across the restart (the server runs without persistence)
    real_redis.stop()
    try:
        outage_round(rbroker, rc1)
        assert rbroker.management.get("/readyz").status_code == 503
        assert rbroker.management.get("/healthz").status_code == 200
    finally:
        real_redis.start()
        (Path(real_redis.dir) / "dump.rdb").unlink(missing_ok=True)
    eventually_ok(rbroker, rc1)
    assert rbroker.management.get("/readyz").status_code == 200
    events = [e["event"] for e in rbroker.logs()]
    assert "token.store_unavailable" in events and "token.unexpected_error" not in events


def test_redis_hung_sigstop(rbroker: Broker, rc1: TestClient, real_redis: RedisServer) -> None:
    """`redis-hung-or-slow`: a server that accepts nothing and answers nothing (SIGSTOP) → 503 within budget."""
    assert rbroker.get_token(rc1).status_code == 200
    real_redis.pause()
    try:
        outage_round(rbroker, rc1)
        t0 = time.monotonic()
        assert rbroker.management.get("/readyz").status_code == 503
        assert time.monotonic() - t0 < BUDGET * 2
        assert rbroker.management.get("/healthz").status_code == 200
    finally:
        real_redis.resume()
    eventually_ok(rbroker, rc1)


def test_client_pause_write(rbroker: Broker, rc1: TestClient, real_redis: RedisServer) -> None:
    """`redis-hung-or-slow`: ``CLIENT PAUSE 2000 WRITE`` blocks the SET NX: 503, then healthy after the pause."""
    assert rbroker.get_token(rc1).status_code == 200
    real_redis.command("CLIENT", "PAUSE", "2000", "WRITE")
    try:
        outage_round(rbroker, rc1, n=2)
    finally:
        real_redis.command("CLIENT", "UNPAUSE")
    eventually_ok(rbroker, rc1)


@pytest.mark.parametrize(
    ("fault", "restore"),
    [
        pytest.param([("CONFIG", "SET", "maxmemory-policy", "noeviction"), ("CONFIG", "SET", "maxmemory", "1")],
                     [("CONFIG", "SET", "maxmemory", "0")], id="oom"),
        pytest.param([("REPLICAOF", "127.0.0.1", "1")], [("REPLICAOF", "NO", "ONE")], id="readonly"),
        pytest.param([("ACL", "SETUSER", "default", "-set")], [("ACL", "SETUSER", "default", "+@all")], id="noperm"),
    ],
)
def test_command_errors(rbroker: Broker, rc1: TestClient, real_redis: RedisServer,
                        fault: list[tuple[str, ...]], restore: list[tuple[str, ...]]) -> None:
    """`redis-command-errors`: OOM, READONLY and NOPERM on the SET NX → 503 (never 500, never 200), logged without secrets."""
    assert rbroker.get_token(rc1).status_code == 200
    try:
        for cmd in fault:
            real_redis.command(*cmd)
        assertions = outage_round(rbroker, rc1, n=3)
    finally:
        for cmd in restore:
            real_redis.command(*cmd)
    eventually_ok(rbroker, rc1)
    text = rbroker.log_text()
    assert all(a[:100] not in text and a[-100:] not in text for a in assertions)
    assert '"token.unexpected_error"' not in text


def test_password_changed_under_the_broker(rbroker: Broker, rc1: TestClient, real_redis: RedisServer) -> None:
    """`redis-command-errors`, WRONGPASS/NOAUTH: Redis now requires a password the broker does not have → 503."""
    import redis

    assert rbroker.get_token(rc1).status_code == 200
    r = redis.Redis(host="127.0.0.1", port=real_redis.port, socket_timeout=2)
    try:
        r.execute_command("ACL", "SETUSER", "default", "resetpass", ">not-the-brokers")
        r.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")  # force reconnects
        outage_round(rbroker, rc1, n=3)
    finally:
        r.execute_command("ACL", "SETUSER", "default", "nopass")
        r.close()
    eventually_ok(rbroker, rc1)


def _registry_poller_asleep(broker: Broker) -> bool:
    """True once the registry poller (``ClientDirectory.run``) has finished its first epoch read and
    sleeps: with a one-hour poll interval nothing but the test then uses the pool's connection."""

    async def check() -> bool:
        for task in asyncio.all_tasks():
            coro = task.get_coro()
            if getattr(coro, "__qualname__", "") == "ClientDirectory.run":
                return getattr(coro.cr_await, "__qualname__", "") == "sleep"  # not awaiting refresh()
        raise AssertionError("no registry poller task")

    return broker.call(check)


def test_pool_exhausted(real_redis: RedisServer, tmp_path: Path, clock: FrozenClock) -> None:
    """`redis-command-errors`: no free connection in the pool (MaxConnectionsError) → 503 at once, fine after release."""
    client = Redis.from_url(real_redis.url, max_connections=1, socket_timeout=0.3, socket_connect_timeout=0.3,
                            retry=Retry(NoBackoff(), 1))
    settings = redis_settings(tmp_path, real_redis.url, registry_poll_interval=3600.0)
    with Broker(settings, clock, redis=client) as broker:
        # The poller's first epoch read runs right after start-up and needs the one connection too.
        wait_until(lambda: _registry_poller_asleep(broker), 10, what="the registry poller's first read")
        c1 = TestClient("c1")
        broker.register(c1)
        assert_token(broker.get_token(c1))
        pool = client.connection_pool
        held = broker.call(pool.get_connection)
        try:
            outage_round(broker, c1, n=3)
        finally:
            broker.call(pool.release, held)
        assert_token(broker.get_token(c1))
        broker.call(client.aclose)


# -- the reply is lost after the write, and redis-py retries (attack matrix: `replay-reply-lost`) ---


class DelayProxy:
    """A loopback TCP proxy in front of Redis that can hold back the server's next replies.

    ``delay_replies`` replies (server→client chunks) are each held for ``delay`` seconds, longer
    than the client's socket timeout: the command has run in Redis but the client never sees the
    answer in time, so redis-py drops the connection and retries the same command.
    """

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.delay_replies = 0
        self.holding = 0  # replies being held back right now
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            try:
                while data := await src.read(65536):
                    if replies and self.delay_replies > 0:
                        self.delay_replies -= 1
                        self.holding += 1
                        try:
                            await asyncio.sleep(self.delay)  # the fault itself: a late reply
                            dst.write(data)
                        finally:
                            self.holding -= 1
                    else:
                        dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_w, False), pump(up_r, writer, True))


@pytest.fixture
def proxy(real_redis: RedisServer) -> Iterator[DelayProxy]:
    with DelayProxy(real_redis.port, delay=0.45) as p:
        yield p


@pytest.fixture
def proxied(proxy: DelayProxy, tmp_path: Path, clock: FrozenClock) -> Iterator[Broker]:
    # No registry polling, so a warm token request (a cache hit) sends Redis one command: the token
    # endpoint's script that writes the replay record and reads the cache (app/store/token_cache.py).
    with Broker(redis_settings(tmp_path, proxy.url, registry_poll_interval=3600.0), clock) as b:
        yield b


def test_reply_lost_after_write_retry_is_first_use(proxied: Broker, proxy: DelayProxy) -> None:
    """`replay-reply-lost`: SET NX ran, its reply is late, redis-py retries the same command → 200, not 401."""
    c1 = TestClient("c1")
    proxied.register(c1)
    assert proxied.get_token(c1).status_code == 200  # warms the client cache
    assertion = c1.assertion(proxied.clock.now)
    proxy.delay_replies = 1
    resp = proxied.token(form(assertion))
    assert resp.status_code == 200, (resp.text, proxied.logs()[-3:])
    assert proxy.delay_replies == 0  # the delay really hit the token script's reply
    # A replay of the completed request is still a replay.
    replay = proxied.token(form(assertion))
    assert replay.status_code == 401 and replay.json() == INVALID_CLIENT


def test_every_reply_late_is_503_never_401(proxied: Broker, proxy: DelayProxy) -> None:
    """`replay-reply-lost`, `redis-hung-or-slow`: Redis slower than the deadline on every attempt → 503; a later retry by the
    client of that same assertion is a replay (its jti was recorded), never a silent second token."""
    c1 = TestClient("c1")
    proxied.register(c1)
    assert proxied.get_token(c1).status_code == 200
    assertion = c1.assertion(proxied.clock.now)
    proxy.delay_replies = 10**6
    try:
        t0 = time.monotonic()
        resp = proxied.token(form(assertion))
        assert_unavailable(resp, time.monotonic() - t0)
    finally:
        proxy.delay_replies = 0
    wait_until(lambda: proxy.holding == 0, 5, what="the held replies to drain")
    again = proxied.token(form(assertion))
    assert again.status_code == 401 and again.json() == INVALID_CLIENT
    assert proxied.get_token(c1).status_code == 200


def test_slow_redis_degrades_latency_not_correctness(proxied: Broker, proxy: DelayProxy) -> None:
    """Every reply 0.1 s late (under the 0.3 s timeout) → slower 200s, replays still 401."""
    c1 = TestClient("c1")
    proxied.register(c1)
    assert proxied.get_token(c1).status_code == 200
    proxy.delay, proxy.delay_replies = 0.1, 10**6
    try:
        for _ in range(3):
            assertion = c1.assertion(proxied.clock.now)
            t0 = time.monotonic()
            assert proxied.token(form(assertion)).status_code == 200
            assert time.monotonic() - t0 >= 0.1  # the latency really was there
            replay = proxied.token(form(assertion))
            assert replay.status_code == 401 and replay.json() == INVALID_CLIENT
    finally:
        proxy.delay_replies = 0


# -- live processes ----------------------------------------------------------------------------


def live_token(url: str, client: TestClient) -> httpx.Response:
    return httpx.post(url + "/token", data=form(client.assertion(time.time())), timeout=5)


@pytest.mark.live
def test_live_broker_sigstop_and_recovery(real_redis: RedisServer, spawn_broker: Any, tmp_path: Path) -> None:
    """`redis-unreachable`, `redis-hung-or-slow` on a real ``python -m app serve`` process: 503 + Retry-After, readyz/healthz, no leak."""
    live = spawn_broker(redis_url=real_redis.url)
    # Register through an in-process broker on the same Redis.
    with Broker(redis_settings(tmp_path, real_redis.url), FrozenClock(time.time())) as admin:
        c1 = TestClient("c1")
        admin.register(c1)
    # A client the live broker has not seen is read from the registry on first use.
    assert_token(live_token(live.url, c1))

    real_redis.pause()
    try:
        times = []
        for _ in range(5):
            t0 = time.monotonic()
            resp = live_token(live.url, c1)
            times.append(time.monotonic() - t0)
            assert_unavailable(resp, times[-1])
        assert statistics.median(times) < BUDGET, times
        assert httpx.get(live.management_url + "/readyz", timeout=5).status_code == 503
        assert httpx.get(live.management_url + "/healthz", timeout=5).status_code == 200
    finally:
        real_redis.resume()

    def token_issued() -> bool:
        resp = live_token(live.url, c1)
        if resp.status_code != 200:
            assert_unavailable(resp)
        return resp.status_code == 200

    wait_until(token_issued, 5, what="a token after Redis resumed", interval=0.1)
    assert httpx.get(live.management_url + "/readyz", timeout=5).status_code == 200
    clients = int(real_redis.command("INFO", "clients")["connected_clients"])
    assert clients < 20, f"connection leak: {clients} clients"
    events = [e.get("event") for e in live.logs()]
    assert "token.store_unavailable" in events and "token.unexpected_error" not in events
