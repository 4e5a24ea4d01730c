"""Failed-authentication rate limits (``app.service.ratelimit``): per source address and per
client, counted in Redis and shared by replicas, 429 ``slow_down`` with ``Retry-After``, an
observe-only mode, and no Redis round trip on the success path."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakeredis.aioredis import FakeRedis

from app.config import ConfigError, Settings
from app.oauth.errors import OAuthError
from app.service.client_auth import EndpointRequest
from app.service.ratelimit import FailureLimiter, KeyHolderFailure
from app.store.base import StoreUnavailable
from app.store.ratelimit import RedisFailureCounter
from tests.conftest import Broker, FrozenClock, RedisServer, wait_until
from tests.helpers import ISS, TestClient, form

SLOW_DOWN = {"error": "slow_down", "error_description": "Too many requests; retry later."}
INVALID_CLIENT = {"error": "invalid_client", "error_description": "Client authentication failed."}


def make_settings(tmp_path: Path, **kw: Any) -> Settings:
    kw.setdefault("ratelimit_failures", 3)
    return Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, **kw)


def call(broker: Broker, data: dict[str, str], source: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One token request straight into the service, from the given source address."""
    body = httpx.QueryParams(data).__str__().encode()
    try:
        out = broker.call(lambda: broker.app.state.token_service.token(EndpointRequest(
            body, "application/x-www-form-urlencoded", False, os.urandom(12).hex(), source)))
    except OAuthError as exc:
        return exc.status_code, json.loads(exc.body()), exc.headers
    return 200, json.loads(out), {}


def refused_at_once(broker: Broker, client: TestClient, n: int, source: str, id_prefix: str) -> list[int]:
    """``n`` bad-signature requests for ``client`` from ``source``, handled concurrently in one
    pass of the broker's event loop (request ids ``<id_prefix><i>``); their statuses in order."""
    service = broker.app.state.token_service

    async def one(i: int) -> int:
        body = httpx.QueryParams(bad(client, broker.clock.now)).__str__().encode()
        try:
            await service.token(EndpointRequest(body, "application/x-www-form-urlencoded", False, f"{id_prefix}{i}",
                                                source))
        except OAuthError as exc:
            return exc.status_code
        return 200

    async def flood() -> list[int]:
        return list(await asyncio.gather(*(one(i) for i in range(n))))

    return broker.call(flood)


@pytest.fixture
def limited(tmp_path: Path, clock: FrozenClock) -> Iterator[Broker]:
    with Broker(make_settings(tmp_path), clock) as b:
        yield b


def bad(client: TestClient, now: float) -> dict[str, str]:
    """A well-formed assertion for ``client`` with a signature from the wrong key."""
    return form(client.assertion(now, key=TestClient("intruder").key))


def refused(client: TestClient, now: float) -> dict[str, str]:
    """An assertion ``client``'s own key signed that the claim rules refuse (expired 30 s ago):
    a failure only its key holder can cause, so it counts toward the client too."""
    return form(client.assertion(now, exp=now - 30, iat=now - 90))


def test_settings_validated() -> None:
    with pytest.raises(ConfigError, match="BROKER_RATELIMIT_MODE"):
        Settings.from_env({"BROKER_RATELIMIT_MODE": "loud"})
    with pytest.raises(ConfigError, match="BROKER_RATELIMIT_FAILURES"):
        Settings.from_env({"BROKER_RATELIMIT_FAILURES": "0"})
    s = Settings.from_env({"BROKER_RATELIMIT_MODE": "observe", "BROKER_RATELIMIT_FAILURES": "7", "BROKER_RATELIMIT_WINDOW": "30"})
    assert (s.ratelimit_mode, s.ratelimit_failures, s.ratelimit_window) == ("observe", 7, 30)


@pytest.mark.parametrize("value, parsed", [
    ("", ()),
    ("10.0.0.7", ("10.0.0.7",)),
    ("172.30.80.0/24, ::1", ("172.30.80.0/24", "::1")),
    ("*", None),  # trusting everyone lets any caller choose its own address
    ("10.0.0.1/8", None),  # host bits set: refused, not silently read as 10.0.0.0/8
    ("haproxy", None),  # names are not resolved
], ids=["unset", "address", "network-and-v6", "star", "host-bits", "hostname"])
def test_trusted_proxies_setting(value: str, parsed: tuple[str, ...] | None) -> None:
    if parsed is None:
        with pytest.raises(ConfigError, match="BROKER_TRUSTED_PROXIES must be IP addresses or CIDR networks"):
            Settings.from_env({"BROKER_TRUSTED_PROXIES": value})
    else:
        assert Settings.from_env({"BROKER_TRUSTED_PROXIES": value}).trusted_proxies == parsed


def test_per_address_limit_blocks_that_address_only(limited: Broker) -> None:
    c1, c2 = TestClient("c1"), TestClient("c2")
    limited.register(c1)
    limited.register(c2)
    now = limited.clock.now
    for i in range(3):  # failures for different clients from one address: the address is what counts
        status, body, _ = call(limited, bad(c1 if i % 2 else c2, now), "192.0.2.1")
        assert (status, body) == (401, INVALID_CLIENT)
    status, body, headers = call(limited, form(c1.assertion(now)), "192.0.2.1")
    assert (status, body) == (429, SLOW_DOWN)
    assert 1 <= int(headers["Retry-After"]) <= 60
    # Other addresses are unaffected, even for the same clients (per-client counts are 2 and 1).
    assert call(limited, form(c1.assertion(now)), "192.0.2.2")[0] == 200
    assert call(limited, form(c2.assertion(now)), "192.0.2.3")[0] == 200
    exceeded = [e for e in limited.logs() if e["event"] == "ratelimit.exceeded"]
    assert [(e["kind"], e["source"], e["mode"]) for e in exceeded] == [("addr", "192.0.2.1", "enforce")]
    rejected = [e for e in limited.logs() if e["event"] == "token.rejected" and e["reason"].startswith("rate_limited")]
    assert [e["reason"] for e in rejected] == ["rate_limited_address"]


def test_per_client_limit_across_addresses(limited: Broker) -> None:
    c1, c2 = TestClient("c1"), TestClient("c2")
    limited.register(c1)
    limited.register(c2)
    now = limited.clock.now
    for i in range(3):
        assert call(limited, refused(c1, now), f"198.51.100.{i}")[0] == 401
    status, body, headers = call(limited, form(c1.assertion(now)), "198.51.100.99")
    assert (status, body) == (429, SLOW_DOWN) and "Retry-After" in headers
    assert call(limited, form(c2.assertion(now)), "198.51.100.99")[0] == 200
    assert [e["client_id"] for e in limited.logs() if e["event"] == "ratelimit.exceeded"] == ["c1"]


def test_http_answer_is_429_with_retry_after_and_no_store(limited: Broker) -> None:
    c1 = TestClient("c1")
    limited.register(c1)
    for _ in range(3):
        assert limited.token(bad(c1, limited.clock.now)).status_code == 401
    resp = limited.get_token(c1)
    assert resp.status_code == 429 and resp.json() == SLOW_DOWN
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.headers["cache-control"] == "no-store"


def test_block_ends_with_the_window(tmp_path: Path, clock: FrozenClock) -> None:
    with Broker(make_settings(tmp_path, ratelimit_window=1), clock) as broker:
        c1 = TestClient("c1")
        broker.register(c1)
        for _ in range(3):
            call(broker, bad(c1, clock.now), "192.0.2.9")
        assert call(broker, form(c1.assertion(clock.now)), "192.0.2.9")[0] == 429
        time.sleep(1.1)
        assert call(broker, form(c1.assertion(clock.now)), "192.0.2.9")[0] == 200


def test_observe_mode_counts_and_logs_but_never_blocks(tmp_path: Path, clock: FrozenClock) -> None:
    with Broker(make_settings(tmp_path, ratelimit_mode="observe"), clock) as broker:
        c1 = TestClient("c1")
        broker.register(c1)
        for _ in range(5):
            assert call(broker, refused(c1, clock.now), "192.0.2.5")[0] == 401
        assert call(broker, form(c1.assertion(clock.now)), "192.0.2.5")[0] == 200
        exceeded = [e for e in broker.logs() if e["event"] == "ratelimit.exceeded"]
        assert {(e["kind"], e["mode"], e["failures"]) for e in exceeded} == {("addr", "observe", 3), ("client", "observe", 3)}


def test_off_mode_touches_nothing(tmp_path: Path, clock: FrozenClock) -> None:
    redis = FakeRedis()
    with Broker(make_settings(tmp_path, ratelimit_mode="off"), clock, redis=redis) as broker:
        c1 = TestClient("c1")
        broker.register(c1)
        for _ in range(5):
            assert call(broker, bad(c1, clock.now), "192.0.2.5")[0] == 401
        assert call(broker, form(c1.assertion(clock.now)), "192.0.2.5")[0] == 200
        assert broker.call(redis.keys, "{tb:rl}*") == []


def test_replicas_share_the_count(tmp_path: Path, clock: FrozenClock) -> None:
    """Two brokers on one store: failures on A count for B; B learns the block from its next INCR."""
    redis = FakeRedis()
    c1 = TestClient("c1")
    with Broker(make_settings(tmp_path), clock, redis=redis) as a, Broker(make_settings(tmp_path), clock, redis=redis) as b:
        a.register(c1)
        b.app.state.directory.invalidate()
        for _ in range(3):
            assert call(a, bad(c1, clock.now), "192.0.2.7")[0] == 401
        assert call(a, form(c1.assertion(clock.now)), "192.0.2.7")[0] == 429
        # B has no local block yet (success path reads nothing from Redis) ...
        assert call(b, form(c1.assertion(clock.now)), "192.0.2.7")[0] == 200
        # ... and its first failure returns a count over the limit: blocked from then on.
        assert call(b, bad(c1, clock.now), "192.0.2.7")[0] == 401
        assert call(b, form(c1.assertion(clock.now)), "192.0.2.7")[0] == 429


class _DownCounter:
    async def hit(self, subjects: list[tuple[str, str, str | None]], window_ms: int,
                  amounts: list[int] | None = None) -> list[tuple[int, int]]:
        raise StoreUnavailable("ConnectionError")


class _NullLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))


def test_counting_failure_never_changes_the_answer() -> None:
    log = _NullLog()
    limiter = FailureLimiter(_DownCounter(), limit=1, window=60, mode="enforce", log=log)
    asyncio.run(limiter.failed("192.0.2.1", "rid", KeyHolderFailure("c1", "0" * 64, None)))
    limiter.check_address("192.0.2.1")
    limiter.check_client("c1")
    assert log.events == [("ratelimit.count_failed", {"request_id": "rid", "error": "ConnectionError"})]


def test_block_table_is_bounded() -> None:
    class Over:
        async def hit(self, subjects: list[tuple[str, str, str | None]], window_ms: int,
                      amounts: list[int] | None = None) -> list[tuple[int, int]]:
            return [(5, 60_000) for _ in subjects]

    limiter = FailureLimiter(Over(), limit=1, window=60, mode="enforce", log=_NullLog(), max_blocked=50)

    async def flood() -> None:
        await limiter.failed(None, "rid", KeyHolderFailure("c1", "0" * 64, None))
        for i in range(500):
            await limiter.failed(f"10.0.{i // 256}.{i % 256}", "rid")

    asyncio.run(flood())
    assert len(limiter._addresses) == 50
    with pytest.raises(OAuthError):
        limiter.check_address("10.0.1.243")  # the newest entries are kept
    with pytest.raises(OAuthError):
        limiter.check_client("c1")  # a flood of addresses does not evict a client's block


class _Recording:
    """The broker's Redis failure counter (on fakeredis), with the calls it was given recorded."""

    def __init__(self) -> None:
        self.counter = RedisFailureCounter(FakeRedis(), timeout=1.0, retries=1)
        self.calls: list[tuple[list[tuple[str, str, str | None]], list[int] | None]] = []

    async def hit(self, subjects: list[tuple[str, str, str | None]], window_ms: int,
                  amounts: list[int] | None = None) -> list[tuple[int, int]]:
        self.calls.append((list(subjects), None if amounts is None else list(amounts)))
        return await self.counter.hit(subjects, window_ms, amounts)


def test_failures_of_one_loop_pass_share_one_counter_call() -> None:
    counter, log = _Recording(), _NullLog()
    limiter = FailureLimiter(counter, limit=10, window=60, mode="enforce", log=log)
    signed = KeyHolderFailure("c1", "a" * 64, None)

    async def flood() -> None:
        # 12 refusals at once, half of them of one signed assertion: one call, the address up by
        # 12, the client by one (a signed content counts once)
        await asyncio.gather(*(limiter.failed("192.0.2.1", f"r{i}", signed if i % 2 else None) for i in range(12)))
        await limiter.failed("192.0.2.1", "r12")  # alone: its own call

    asyncio.run(flood())
    assert counter.calls == [
        ([("addr", "192.0.2.1", None), ("client", "c1", "a" * 64)], [12, 1]),
        ([("addr", "192.0.2.1", None)], [1]),
    ]
    # the call that crossed the limit logs it once, naming the first request of the batch
    assert log.events == [("ratelimit.exceeded", {"request_id": "r0", "mode": "enforce", "kind": "addr",
                                                  "source": "192.0.2.1", "failures": 12, "window": 60})]
    with pytest.raises(OAuthError):
        limiter.check_address("192.0.2.1")
    limiter.check_client("c1")  # one failure of ten


def test_a_request_that_goes_away_does_not_cancel_the_others_count() -> None:
    counter, log = _Recording(), _NullLog()
    limiter = FailureLimiter(counter, limit=3, window=60, mode="enforce", log=log)

    async def scenario() -> list[Any]:
        tasks = [asyncio.ensure_future(limiter.failed("192.0.2.9", f"r{i}")) for i in range(3)]
        await asyncio.sleep(0)  # all three joined; the first one counts for all, its call not made yet
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert outcomes[0] is None and isinstance(outcomes[1], asyncio.CancelledError) and outcomes[2] is None
    assert counter.calls == [([("addr", "192.0.2.9", None)], [3])]
    with pytest.raises(OAuthError):
        limiter.check_address("192.0.2.9")


def test_the_first_request_going_away_does_not_cancel_the_count() -> None:
    counter, log = _Recording(), _NullLog()
    limiter = FailureLimiter(counter, limit=3, window=60, mode="enforce", log=log)

    async def scenario() -> list[Any]:
        tasks = [asyncio.ensure_future(limiter.failed("192.0.2.9", f"r{i}")) for i in range(3)]
        await asyncio.sleep(0)
        tasks[0].cancel()  # the request whose refusal started the batch
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)

    outcomes = asyncio.run(scenario())
    assert isinstance(outcomes[0], asyncio.CancelledError) and outcomes[1:] == [None, None]
    assert counter.calls == [([("addr", "192.0.2.9", None)], [3])]
    assert log.events == [("ratelimit.exceeded", {"request_id": "r0", "mode": "enforce", "kind": "addr",
                                                  "source": "192.0.2.9", "failures": 3, "window": 60})]
    with pytest.raises(OAuthError):
        limiter.check_address("192.0.2.9")


@pytest.mark.redis
def test_concurrent_refusals_are_counted_exactly(real_redis: RedisServer, tmp_path: Path, clock: FrozenClock) -> None:
    """30 refusals handled at once on real Redis go up by exactly 30: the 31st failure blocks."""
    settings = make_settings(tmp_path, redis_url=real_redis.url, ratelimit_failures=31)
    with Broker(settings, clock) as broker:
        c1 = TestClient("c1")
        broker.register(c1)
        assert refused_at_once(broker, c1, 30, "192.0.2.44", "r") == [401] * 30
        assert call(broker, form(c1.assertion(clock.now)), "192.0.2.44")[0] == 200  # 30 of 31
        assert call(broker, bad(c1, clock.now), "192.0.2.44")[0] == 401  # the 31st
        assert call(broker, form(c1.assertion(clock.now)), "192.0.2.44")[:2] == (429, SLOW_DOWN)
        exceeded = [e for e in broker.logs() if e["event"] == "ratelimit.exceeded"]
        assert [(e["source"], e["failures"]) for e in exceeded] == [("192.0.2.44", 31)]


@pytest.mark.redis
def test_refusals_while_redis_hangs_are_answered_and_counting_resumes(real_redis: RedisServer, tmp_path: Path,
                                                                       clock: FrozenClock) -> None:
    """A flood of refusals while Redis hangs (SIGSTOP): every one still a 401, each with its own
    ``ratelimit.count_failed`` line, none stuck behind the batch; after Redis is back, counting works."""
    settings = make_settings(tmp_path, redis_url=real_redis.url, ratelimit_failures=1000)
    with Broker(settings, clock) as broker:
        c1 = TestClient("c1")
        broker.register(c1)
        assert broker.get_token(c1).status_code == 200  # client cached: bad signatures need no Redis read
        real_redis.pause()
        try:
            assert refused_at_once(broker, c1, 10, "192.0.2.55", "hung-") == [401] * 10
        finally:
            real_redis.resume()
        def count_failed() -> list[dict[str, Any]]:
            return [e for e in broker.logs() if e["event"] == "ratelimit.count_failed"]

        failed = count_failed()
        assert sorted(e["request_id"] for e in failed) == [f"hung-{i}" for i in range(10)]
        assert all(e["error"] == "TimeoutError" for e in failed), failed

        def count_resumed() -> bool:  # a refusal after the outage is counted again (no count_failed line)
            before = len(count_failed())
            status, body, _ = call(broker, bad(c1, clock.now), "192.0.2.55")
            assert (status, body) == (401, INVALID_CLIENT)
            return len(count_failed()) == before

        wait_until(count_resumed, 10, what="a refusal counted after Redis is back", interval=0.1)


@pytest.mark.redis
def test_success_path_sends_no_rate_limit_command(real_redis: RedisServer, tmp_path: Path, clock: FrozenClock) -> None:
    settings = make_settings(tmp_path, redis_url=real_redis.url, registry_poll_interval=3600.0)
    with Broker(settings, clock) as broker:
        c1 = TestClient("c1")
        broker.register(c1)
        assert broker.get_token(c1).status_code == 200  # warm the client cache
        real_redis.command("CONFIG", "RESETSTAT")
        for _ in range(5):
            assert broker.get_token(c1).status_code == 200
        stats = real_redis.command("INFO", "commandstats")
        assert not [k for k in stats if k.startswith(("cmdstat_incr", "cmdstat_pexpire"))], stats
        scripts_before = _script_calls(stats)
        assert broker.token(bad(c1, clock.now)).status_code == 401
        stats = real_redis.command("INFO", "commandstats")
        # a forged assertion: the address only, in one script call (a first EVALSHA answered
        # NOSCRIPT does not count)
        assert _incr_calls(stats) == 1 and _script_calls(stats) - scripts_before == 1
        assert broker.token(refused(c1, clock.now)).status_code == 401
        stats = real_redis.command("INFO", "commandstats")
        # a failure c1's key signed: address + client and the client's marker, in one script call
        assert _incr_calls(stats) == 3 and _script_calls(stats) - scripts_before == 2
        assert len(real_redis.command("KEYS", "{tb:rl}:seen:*")) == 1


def _incr_calls(stats: dict) -> int:
    return sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_incr", "cmdstat_incrby"))


def _script_calls(stats: dict) -> int:
    return sum(v["calls"] - v.get("failed_calls", 0) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


# -- a flood of bad assertions does not slow down a good client ----------------------------------


async def _timed_posts(url: str, bodies: list[dict[str, str]], local: str, concurrency: int) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []
    queue = list(bodies)
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=local), timeout=10) as http:
        async def worker() -> None:
            while queue:
                data = queue.pop()
                t0 = time.perf_counter()
                resp = await http.post(url + "/token", data=data)
                out.append((resp.status_code, time.perf_counter() - t0))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


@pytest.mark.redis
@pytest.mark.live
def test_flood_of_bad_assertions_does_not_slow_good_client(real_redis: RedisServer, spawn_broker: Any, tmp_path: Path) -> None:
    live = spawn_broker(redis_url=real_redis.url)
    good, victim = TestClient("good"), TestClient("victim")
    with Broker(make_settings(tmp_path, redis_url=real_redis.url), FrozenClock(time.time())) as admin:
        admin.register(good)
        admin.register(victim)  # new to the live broker: it reads them from the registry on first use

    def good_bodies(n: int) -> list[dict[str, str]]:
        return [form(good.assertion(time.time())) for _ in range(n)]

    async def scenario() -> tuple[list[tuple[int, float]], list[tuple[int, float]], list[tuple[int, float]]]:
        baseline = await _timed_posts(live.url, good_bodies(40), "127.0.0.1", 1)
        flood_bodies = [bad(victim, time.time()) for _ in range(400)]
        flood = asyncio.create_task(_timed_posts(live.url, flood_bodies, "127.0.0.2", 8))
        await asyncio.sleep(0.05)
        during = await _timed_posts(live.url, good_bodies(40), "127.0.0.1", 1)
        return baseline, during, await flood

    baseline, during, flood = asyncio.run(scenario())
    assert {s for s, _ in baseline + during} == {200}
    statuses = [s for s, _ in flood]
    assert set(statuses) <= {401, 429} and statuses.count(401) <= 20 + 8, statuses.count(401)  # the limit, + in-flight
    base_med = statistics.median(t for _, t in baseline)
    during_med = statistics.median(t for _, t in during)
    print(f"good client median: {base_med * 1000:.1f} ms alone, {during_med * 1000:.1f} ms during a 400-request flood")
    assert during_med < base_med * 4 + 0.02, (base_med, during_med)


@pytest.mark.redis
@pytest.mark.live
@pytest.mark.parametrize("trusted, limited_source", [
    (None, "127.0.0.1"),
    ("127.0.0.1", "198.51.100.7"),
], ids=["unset-header-ignored", "trusted-proxy-names-the-client"])
def test_x_forwarded_for_is_read_only_from_trusted_proxies(real_redis: RedisServer, spawn_broker: Any,
                                                           trusted: str | None, limited_source: str) -> None:
    """The per-address limit keys on the TCP peer unless the peer is a configured proxy.

    (uvicorn's own default trusts X-Forwarded-For from loopback: a local caller could then pick a
    new address per request and never be limited. The broker turns that off.)
    Failures are for unknown client ids, one each, so only the address count can reach the limit.
    """
    env = {"BROKER_RATELIMIT_FAILURES": "3", **({"BROKER_TRUSTED_PROXIES": trusted} if trusted else {})}
    live = spawn_broker(redis_url=real_redis.url, env=env)

    def post(n: int, xff: str) -> int:
        ghost = TestClient(f"ghost-{n}")
        return httpx.post(live.url + "/token", data=form(ghost.assertion(time.time())),
                          headers={"X-Forwarded-For": xff}).status_code

    # A proxy appends the peer it saw on the right; anything left of it is the caller's own claim.
    sent = [post(0, "198.51.100.7"), post(1, "203.0.113.1, 198.51.100.7"), post(2, "203.0.113.2, 198.51.100.7")]
    assert sent == [401, 401, 401]
    assert post(3, "203.0.113.3, 198.51.100.7") == 429  # prepending a new address does not escape
    assert post(4, "198.51.100.8") == (401 if trusted else 429)
    exceeded = [e for e in live.logs() if e.get("event") == "ratelimit.exceeded"]
    assert [(e["kind"], e["source"]) for e in exceeded] == [("addr", limited_source)]
