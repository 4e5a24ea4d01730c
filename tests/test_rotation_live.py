"""Signing-key rotation under load across three broker processes on one real Redis.

The property (attack matrix: `signing-key-rotation`): no token fails verification at a resource
server using any replica's JWKS, at any time. A resource server may hold a JWKS fetched up to the
cache lifetime before the token arrives, or fetch one at any time while the token is valid. So for
every token issued during stage → promote → retire, every JWKS snapshot of every replica taken in
``[received - cache lifetime, exp)`` must hold its kid and verify it. The test uses a short cache
lifetime (and a short token lifetime) so that the whole cycle fits in seconds; the rule it checks is
the one ``promote`` enforces with the real 300 s.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from typing import Any

import httpx
import pytest

from app.oauth.access_token import verification_keys_from_jwks, verify_access_token
from app.service import signing_keys
from tests.conftest import wait_until
from tests.helpers import ISS, RS1, TestClient, decode_unverified, form
from tests.redis_topology import redis_cluster, shared_redis  # noqa: F401 (fixtures)
from tests.test_replay import _admin_register

pytestmark = [pytest.mark.redis, pytest.mark.live]

CACHE = 1.5  # the test's stand-in for the 300 s JWKS cache lifetime
LIFETIME = 3  # BROKER_TOKEN_LIFETIME for this test
MAX_REQUESTS = 4000
MAX_SECONDS = 40.0


def _wait(predicate: Any, what: str, timeout: float = 8.0) -> None:
    wait_until(predicate, timeout, what=what)


def test_rotation_during_load_fails_no_verification(shared_redis: tuple[str, dict[str, str]], spawn_broker: Any) -> None:
    redis_url, redis_env = shared_redis
    env = {"BROKER_TOKEN_LIFETIME": str(LIFETIME), **redis_env}
    brokers = [spawn_broker(redis_url=redis_url, env=env) for _ in range(3)]
    keys_dir = spawn_broker.keys_dir
    client = TestClient("c1")
    _admin_register(brokers[0].url, keys_dir, client)  # new to every replica: each reads it on first use

    stop = threading.Event()
    issued: list[tuple[float, str]] = []
    failures: list[tuple[int, str]] = []
    snapshots: list[tuple[float, int, dict[str, Any]]] = []

    def load() -> None:
        with httpx.Client(timeout=5) as http:
            for i in range(MAX_REQUESTS):
                if stop.is_set():
                    return
                resp = http.post(brokers[i % 3].url + "/token", data=form(client.assertion()))
                if resp.status_code == 200:
                    issued.append((time.time(), resp.json()["access_token"]))
                else:
                    failures.append((resp.status_code, resp.text))
                time.sleep(0.01)  # steady load, not a benchmark: ~50-100 tokens/s across replicas

    def poll_jwks() -> None:
        with httpx.Client(timeout=5) as http:
            while not stop.is_set():
                for idx, b in enumerate(brokers):
                    resp = http.get(b.url + "/jwks.json")
                    snapshots.append((time.time(), idx, resp.json()))
                time.sleep(0.1)

    def published(kid: str) -> bool:
        return all(kid in {k["kid"] for k in httpx.get(b.url + "/jwks.json").json()["keys"]} for b in brokers)

    threads = [threading.Thread(target=load), threading.Thread(target=poll_jwks)]
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        old_kid = decode_unverified(httpx.post(brokers[0].url + "/token", data=form(client.assertion())).json()["access_token"])[0]["kid"]
        _wait(lambda: len(issued) > 10, "tokens signed with the first key")
        staged = signing_keys.stage(keys_dir, "ES256")
        _wait(lambda: published(staged.kid), "every replica to publish the staged key")
        time.sleep(CACHE)  # published for a whole cache lifetime before it signs
        signing_keys.promote(keys_dir, min_published=int(CACHE) + 1)  # no --force: the rule holds
        _wait(lambda: sum(1 for _, tok in issued[-6:] if decode_unverified(tok)[0]["kid"] == staged.kid) == 6,
              "every replica to sign with the promoted key")
        deleted: list[str] = []
        skew = int(signing_keys.RELOAD_INTERVAL) + 1

        def retire() -> bool:
            deleted.extend(signing_keys.retire_expired(keys_dir, max_token_lifetime=LIFETIME, skew=skew))
            return bool(deleted)

        _wait(retire, "the retired key's tokens to expire", timeout=LIFETIME + skew + 5)
        assert deleted == [old_kid]
        _wait(lambda: not any(old_kid in {k["kid"] for k in httpx.get(b.url + "/jwks.json").json()["keys"]} for b in brokers),
              "every replica to drop the retired key")
        after_drop = len(issued)
        _wait(lambda: len(issued) >= after_drop + 10, "tokens after the retired key was dropped")
    finally:
        stop.set()
        for t in threads:
            t.join(MAX_SECONDS)
    assert time.monotonic() - started < MAX_SECONDS

    assert failures == []
    kids = [decode_unverified(tok)[0]["kid"] for _, tok in issued]
    assert kids.count(old_kid) > 10 and kids.count(staged.kid) > 10, (kids.count(old_kid), kids.count(staged.kid))
    checked = 0
    snapshots.sort(key=lambda snap: snap[0])
    times = [t for t, _, _ in snapshots]
    # Snapshots of one replica with the same kids are the same JWKS: verify once per distinct one.
    key_maps: dict[tuple[int, str], dict[str, Any]] = {}
    for received, token in issued:
        header, claims = decode_unverified(token)
        window = snapshots[bisect_left(times, received - CACHE):bisect_left(times, claims["exp"])]
        assert {idx for _, idx, _ in window} == {0, 1, 2}
        distinct: dict[tuple[int, str], float] = {}
        for t, idx, jwks in window:
            kids = sorted(k["kid"] for k in jwks["keys"])
            assert header["kid"] in kids, (header["kid"], idx, t - received)
            sig = (idx, ",".join(kids))
            distinct.setdefault(sig, t)
            key_maps.setdefault(sig, verification_keys_from_jwks(jwks))
        for sig, t in distinct.items():
            verify_access_token(token, key_maps[sig], issuer=ISS, audience=RS1, now=min(t, claims["exp"] - 0.01))
            checked += 1
    assert checked >= len(issued) * 3
    for b in brokers:  # each replica picked up all three changes by itself, with no restart
        reloads = [e["signing_kid"] for e in b.logs() if e.get("event") == "signing_keys.reloaded"]
        assert reloads[0] == old_kid and reloads[-1] == staged.kid, reloads
