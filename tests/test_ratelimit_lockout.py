"""Nobody can lock a client out without its key (attack matrix: `client-lockout-by-forged-assertions`).

Client ids are public (every access token carries one), so a failure counts toward a client's
limit only when the client's own key signed the assertion for this broker and its signed content
was not counted before: forged assertions (bad signature, unknown kid, unknown or disabled
client, malformed), assertions made for another audience and replays count toward the sender's
address only. The per-address limit is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakeredis.aioredis import FakeRedis
from joserfc.jwk import ECKey

from app.client.admin import load_private_jwk
from app.oauth.errors import PRE_CLIENT_DESCRIPTIONS
from app.service.admin import admin_key_path
from app.store import keyspace
from tests.conftest import Broker, FrozenClock, RedisServer
from tests.expect import error_body
from tests.helpers import TestClient, form
from tests.test_ratelimit import INVALID_CLIENT, SLOW_DOWN, call, make_settings

LIMIT = 5
ATTACKER = "203.0.113.66"


def admin_client(broker: Broker) -> TestClient:
    """The bootstrapped admin client, with the private key the broker generated in its keys folder."""
    key, alg, kid = load_private_jwk(admin_key_path(broker.settings.keys_dir))
    return TestClient(broker.settings.admin_client_id, alg=alg, kid=kid, key=key)


def forgeries(victim: TestClient, now: float) -> list[str]:
    """Assertions naming ``victim`` that anyone can make: no key of the victim's is needed."""
    intruder = ECKey.generate_key("P-256")
    return [
        victim.assertion(now, key=intruder),  # signature_invalid
        victim.assertion(now, header={"alg": "ES256", "kid": "not-" + str(victim.kid)}, key=intruder),  # kid_unknown
        victim.assertion(now, header={"alg": "ES384", "kid": victim.kid}, key=ECKey.generate_key("P-384")),  # alg
        victim.assertion(now, key=intruder, exp=now - 100, iat=now - 150),  # expired and forged
    ]


@pytest.mark.redis
@pytest.mark.parametrize("victim_name", ["c1", "admin"], ids=["client", "admin-client"])
def test_forged_assertions_do_not_lock_the_client_out(real_redis: RedisServer, tmp_path: Path, clock: FrozenClock,
                                                      victim_name: str) -> None:
    """Three times the limit of forged assertions naming the victim, from many addresses: its
    correctly signed request still gets a token, on the replica that saw the flood and on another;
    the attacker's addresses are still limited."""
    settings = make_settings(tmp_path, redis_url=real_redis.url, ratelimit_failures=LIMIT)
    with Broker(settings, clock) as a, Broker(settings, clock) as b:
        victim = admin_client(a) if victim_name == "admin" else TestClient("c1")
        if victim_name != "admin":
            a.register(victim)
        b.app.state.directory.invalidate()
        now = clock.now
        flood: list[int] = []
        blocked: list[tuple[int, dict[str, Any]]] = []
        for n in range(3):  # each attacker address sends up to its own limit, then is refused
            source = f"203.0.113.{n}"
            for i in range(LIMIT):
                flood.append(call(a, form(forgeries(victim, now)[i % 4]), source)[0])
            status, body, _ = call(a, form(victim.assertion(now, key=ECKey.generate_key("P-256"))), source)
            blocked.append((status, body))
        answers = [call(replica, form(victim.assertion(now)), source)[:2]
                   for replica, source in ((a, "192.0.2.10"), (b, "192.0.2.11"))]
        assert [status for status, _ in answers] == [200, 200], answers
        assert flood == [401] * 3 * LIMIT
        assert blocked == [(429, SLOW_DOWN)] * 3  # the per-address limit still holds
        assert real_redis.command("EXISTS", keyspace.failures("client", victim.client_id)) == 0
        logs = a.logs() + b.logs()  # structlog is configured per process: the last broker made holds them
        assert [e["kind"] for e in logs if e["event"] == "ratelimit.exceeded"] == ["addr"] * 3


# -- which failures count toward which limit ------------------------------------------------------

EXPIRED = {"exp": -30, "iat": -90}  # relative to now; the window is 60 s
LONG_EXPIRED = {"exp": -100, "iat": -150}


def _signed(**claims: Any) -> Callable[[TestClient, TestClient, float], str]:
    return lambda c1, _other, now: c1.assertion(now, **{k: now + v if k in ("exp", "iat", "nbf") else v
                                                          for k, v in claims.items()})


def _forged(**claims: Any) -> Callable[[TestClient, TestClient, float], str]:
    return lambda c1, _other, now: c1.assertion(now, key=ECKey.generate_key("P-256"),
                                                **{k: now + v for k, v in claims.items()})


ROWS: list[tuple[str, Callable[[TestClient, TestClient, float], Any] | str, str, int]] = [
    # forged: anyone can send these
    ("assertion_malformed", lambda c1, _o, now: "not.an.assertion!", "assertion_malformed", 0),
    ("signature_invalid", _forged(), "signature_invalid", 0),
    ("signature_invalid-and-expired", _forged(**EXPIRED), "signature_invalid", 0),
    ("kid_unknown", lambda c1, _o, now: c1.assertion(now, header={"alg": "ES256", "kid": "nope"}), "kid_unknown", 0),
    ("alg_not_allowed", lambda c1, _o, now: c1.assertion(now, header={"alg": "ES384", "kid": c1.kid},
                                                        key=ECKey.generate_key("P-384")), "alg_not_allowed", 0),
    ("client_unknown", lambda _c1, _o, now: TestClient("ghost").assertion(now), "client_unknown", 0),
    ("client_disabled", lambda _c1, other, now: other.assertion(now), "client_disabled", 0),
    ("client_id_mismatch", lambda c1, _o, now: (c1.assertion(now), {"client_id": "c2"}), "client_id_mismatch", 0),
    # signed by c1's key, but anyone who saw the assertion can send it again
    ("aud_not_issuer", _signed(aud="https://another-as.test"), "aud_not_issuer", 0),
    ("jti_replayed", "replay", "jti_replayed", 0),
    # signed by c1's key for this broker: only its key holder makes a new one
    ("exp_expired", _signed(**EXPIRED), "exp_expired", 1),
    # ... but an assertion that expired more than a window ago may be a captured one
    ("exp_expired-before-the-window", _signed(**LONG_EXPIRED), "exp_expired", 0),
    ("exp_too_far", _signed(exp=3600), "exp_too_far", 1),
    ("iat_in_future", _signed(iat=120), "iat_in_future", 1),
    ("nbf_in_future", _signed(nbf=120), "nbf_in_future", 1),
    ("jti_invalid", _signed(jti=""), "jti_invalid", 1),
]


@pytest.fixture
def counted(tmp_path: Path, clock: FrozenClock) -> Iterator[tuple[Broker, FakeRedis]]:
    redis = FakeRedis()
    with Broker(make_settings(tmp_path, ratelimit_failures=LIMIT), clock, redis=redis) as broker:
        yield broker, redis


def _count(broker: Broker, redis: FakeRedis, kind: str, value: str) -> int:
    raw = broker.call(redis.get, keyspace.failures(kind, value))
    return int(raw or 0)


@pytest.mark.parametrize("row, make, reason, client_counts", ROWS, ids=[r[0] for r in ROWS])
def test_which_failures_count_toward_the_client(counted: tuple[Broker, FakeRedis], row: str, make: Any,
                                                reason: str, client_counts: int) -> None:
    broker, redis = counted
    c1, off = TestClient("c1"), TestClient("off", enabled=False)
    broker.register(c1)
    broker.register(off)
    now = broker.clock.now
    if make == "replay":
        assertion = c1.assertion(now)
        assert call(broker, form(assertion), "192.0.2.200")[0] == 200
        made: Any = assertion
    else:
        made = make(c1, off, now)
    assertion, params = made if isinstance(made, tuple) else (made, {})
    status, body, _ = call(broker, form(assertion, **params), ATTACKER)
    # The assertion's outer syntax is answered specifically (decided before the client look-up).
    assert (status, body) == (401, error_body("invalid_client", reason=reason if reason in PRE_CLIENT_DESCRIPTIONS
                                              else None))
    assert [e["reason"] for e in broker.logs() if e["event"] == "token.rejected"] == [reason]
    assert _count(broker, redis, "addr", ATTACKER) == 1  # every failure counts toward the address
    named = {"client_unknown": "ghost", "client_disabled": "off"}.get(row, "c1")
    assert _count(broker, redis, "client", named) == client_counts


def test_a_failure_that_is_not_invalid_client_counts_nowhere(counted: tuple[Broker, FakeRedis]) -> None:
    broker, redis = counted
    c1 = TestClient("c1")
    broker.register(c1)
    status, body, _ = call(broker, form(c1.assertion(broker.clock.now), scope="admin"), ATTACKER)
    assert (status, body["error"]) == (400, "invalid_scope")
    assert (_count(broker, redis, "addr", ATTACKER), _count(broker, redis, "client", "c1")) == (0, 0)


def test_a_captured_expired_assertion_counts_once(counted: tuple[Broker, FakeRedis]) -> None:
    """Whoever saw one of c1's assertions can send it again forever once it has expired; the
    client's count goes up once for it, however many times and from however many addresses."""
    broker, redis = counted
    c1 = TestClient("c1")
    broker.register(c1)
    now = broker.clock.now
    captured = c1.assertion(now - 90, exp=now - 30)
    for n in range(3 * LIMIT):
        status, body, _ = call(broker, form(captured), f"198.51.100.{n}")
        assert (status, body) == (401, INVALID_CLIENT)
    assert _count(broker, redis, "client", "c1") == 1
    assert call(broker, form(c1.assertion(now)), "192.0.2.1")[0] == 200
