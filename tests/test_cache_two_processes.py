"""Two broker processes on one real Redis share one issued-token cache.

200 concurrent token requests (each with a fresh assertion) from one client for the same scopes,
split over both processes, produce exactly one signing and 200 identical tokens; other scopes or
audiences get other tokens; a revoked token is inactive at introspection through either process
and is never served from the cache again.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.helpers import RS2, URN, TestClient, form
from tests.test_replay import _admin_register

pytestmark = [pytest.mark.live, pytest.mark.redis]

REQUESTS = 200
CONCURRENCY = 50
# Waiters give the lock holder up to 1 s (default 0.2 s) before minting themselves: these tests
# assert "one signing while the holder is alive", and a shared CI machine can stall a process for
# longer than 0.2 s. A waiter that never sees the holder's entry still mints a second token, so a
# broken flight or lock fails them as before.
STAMPEDE_ENV = {"BROKER_CACHE_STAMPEDE_WAIT": "1"}


def _events(procs, event: str, client_id: str) -> list[dict]:
    return [e for p in procs for e in p.logs() if e.get("event") == event and e.get("client_id") == client_id]


def _metric(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _auth(client: TestClient) -> dict[str, str]:
    return {"client_assertion_type": URN, "client_assertion": client.assertion()}


def test_two_processes_share_one_token(real_redis, spawn_broker):
    r1 = spawn_broker(redis_url=real_redis.url, env=STAMPEDE_ENV)
    r2 = spawn_broker(redis_url=real_redis.url, env=STAMPEDE_ENV)
    procs = (r1, r2)
    client = TestClient("svc-a")
    rs = TestClient("rs-a", scopes=("broker:introspect",), default_scopes=("broker:introspect",))
    _admin_register(r1.url, spawn_broker.keys_dir, client)
    _admin_register(r1.url, spawn_broker.keys_dir, rs)  # both new to r2: it reads them from the registry on first use

    assertions = [client.assertion() for _ in range(REQUESTS)]  # fresh: every jti is new
    counters = ("broker_tokens_minted_total", "broker_token_cache_hits_total", "broker_token_cache_stampede_waits_total")
    before = {name: sum(_metric(p.management_url, name) for p in procs) for name in counters}  # the admin's tokens

    async def burst() -> list[httpx.Response]:
        gate = asyncio.Semaphore(CONCURRENCY)
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(timeout=20, limits=limits) as http:
            # Open every connection first, so the burst arrives at both processes at once.
            await asyncio.gather(*(http.get(procs[i % 2].url + "/jwks.json") for i in range(CONCURRENCY)))

            async def one(i: int) -> httpx.Response:
                async with gate:
                    return await http.post(procs[i % 2].url + "/token", data=form(assertions[i], scope="write read"))

            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(REQUESTS))), 60)

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * REQUESTS, {r.text for r in responses if r.status_code != 200}
    tokens = {r.json()["access_token"] for r in responses}
    assert len(tokens) == 1
    (shared,) = tokens
    assert len([e for e in _events(procs, "token.issued", "svc-a") if e["cache"] == "mint"]) == 1
    outcomes = [e["cache"] for e in _events(procs, "token.issued", "svc-a")]
    assert (len(outcomes), outcomes.count("mint")) == (REQUESTS, 1)
    # The same story in the counters, summed over both processes.
    delta = {name: sum(_metric(p.management_url, name) for p in procs) - before[name] for name in counters}
    assert delta["broker_tokens_minted_total"] == 1
    assert delta["broker_token_cache_hits_total"] + delta["broker_token_cache_stampede_waits_total"] == REQUESTS - 1
    print("outcomes:", {o: outcomes.count(o) for o in set(outcomes)}, delta)
    assert all(r.json()["expires_in"] <= 900 for r in responses)

    # Other scopes or audience: other tokens, each again shared by both processes.
    def get(proc, **params: str) -> str:
        r = httpx.post(proc.url + "/token", data=form(client.assertion(), **params))
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    read_only = get(r1, scope="read")
    other_aud = get(r2, scope="read write", resource=RS2)
    assert len({shared, read_only, other_aud}) == 3
    assert get(r2, scope="read") == read_only and get(r1, scope="read write", resource=RS2) == other_aud

    # Revoke through R1; introspect through both; never served again by either.
    def introspect(proc, token: str) -> dict:
        r = httpx.post(proc.url + "/introspect", data={**_auth(rs), "token": token})
        assert r.status_code == 200, r.text
        return r.json()

    assert introspect(r1, shared)["active"] is True and introspect(r2, shared)["active"] is True
    r = httpx.post(r1.url + "/revoke", data={**_auth(client), "token": shared})
    assert (r.status_code, r.content) == (200, b"")
    assert introspect(r1, shared) == {"active": False}
    assert introspect(r2, shared) == {"active": False}
    renewed = {get(p, scope="read write") for p in (r2, r1, r2, r1)}
    assert len(renewed) == 1 and shared not in renewed
    assert introspect(r2, renewed.pop())["active"] is True
    assert introspect(r1, read_only)["active"] is True  # only that one token was revoked
    assert _metric(r1.management_url, "broker_tokens_revoked_total") == 1


def _raw_post(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def test_simultaneous_misses_on_both_processes_mint_once(real_redis, spawn_broker):
    """The stampede itself: 2 x 30 requests written on pre-opened connections in the same instant.

    (httpx sends too slowly to make many requests miss at once; raw pre-built requests do.)
    Repeated for three scope sets, each a cold key. Every request of a cold burst signs a token
    ahead of its lookup; the first lookup stores its own in the same atomic step as the read, and
    every later one finds it: one mint per burst, the others hits, nobody waits on a lock.
    """
    r1 = spawn_broker(redis_url=real_redis.url, env=STAMPEDE_ENV)
    r2 = spawn_broker(redis_url=real_redis.url, env=STAMPEDE_ENV)
    procs = (r1, r2)
    client = TestClient("svc-b", scopes=("a", "b", "c"), default_scopes=("a",))
    _admin_register(r1.url, spawn_broker.keys_dir, client)  # new to every replica: each reads it from the registry on first use

    async def burst(scope: str) -> list[tuple[int, str]]:
        requests = [_raw_post("/token", str(httpx.QueryParams(form(client.assertion(), scope=scope))).encode())
                    for _ in range(60)]
        conns = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", procs[i % 2].port) for i in range(60)))
        for (_, writer), raw in zip(conns, requests):
            writer.write(raw)
        await asyncio.gather(*(writer.drain() for _, writer in conns))
        out = []
        for reader, writer in conns:
            data = await asyncio.wait_for(reader.read(), 20)
            writer.close()
            head, _, payload = data.partition(b"\r\n\r\n")
            out.append((int(head.split(b" ", 2)[1]), payload.decode()))
        return out

    for scope in ("a", "a b", "b c"):
        results = asyncio.run(burst(scope))
        assert [status for status, _ in results] == [200] * 60, results[:3]
        tokens = {httpx.Response(200, content=payload).json()["access_token"] for _, payload in results}
        assert len(tokens) == 1, scope
    minted = [e for e in _events(procs, "token.issued", "svc-b") if e["cache"] == "mint"]
    assert len(minted) == 3
    outcomes = [e["cache"] for e in _events(procs, "token.issued", "svc-b")]
    assert sorted(outcomes) == ["hit"] * 177 + ["mint"] * 3
    assert sum(_metric(p.management_url, "broker_token_cache_stampede_waits_total") for p in procs) == 0
