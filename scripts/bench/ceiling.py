"""The ceiling, measured in process on the broker's core while the broker is idle: the CPU cost of
the work no implementation can skip (assertion verify, token sign, one Redis call), and the
resource server's token verification; plus Redis bytes per recorded jti."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import msgspec

from scripts.bench.results import Ceiling, RedisMemory
from scripts.bench.scenarios import Costs, ceiling_rps
from scripts.bench.system import Pinning, run_async
from scripts.bench.workload import RS, Workload
from scripts.processes import RedisServer, wait_until

NOTE = ("CPU µs per operation (process CPU time, median of rounds) measured on the broker's core with the "
        "broker idle; redis_script = the token endpoint's script call (RedisTokenStore.consume_and_lookup, "
        "EVALSHA with 3 keys) through the broker's own client (app.store.redis.connect: auto-pipelined), "
        "32 concurrent callers, client CPU per call (Redis runs on the other core); it is the ceilings' Redis "
        "cost. redis_set_nx_get = one redis-py SET NX PX GET on its pool, as before. wall_us = the same loops "
        "in wall time (inflated when other processes share the core)")


def per_op_us(fn: Callable[[Any], Any], items: list[Any], rounds: int) -> tuple[float, float]:
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


def _verifier(work: Workload, settings: Any, n: int) -> tuple[Callable[[str], None], list[str]]:
    """The broker's own ``parse_assertion`` + ``verify_assertion`` for a hit client, and ``n`` of
    its assertions."""
    from app.oauth.assertion import parse_assertion, verify_assertion
    from app.oauth.clients import ClientRecord, prepare_client
    from app.service.client_auth import assertion_policy

    policy = assertion_policy(settings)
    bc = work.hit_clients[0]
    client = prepare_client(msgspec.convert(bc.metadata(), ClientRecord))
    now = int(time.time())

    def verify(a: str) -> None:
        verify_assertion(parse_assertion(a, policy), client, policy, time.time())

    return verify, [bc.assertion(work.issuer, now) for _ in range(n)]


def _verify_cost(work: Workload, settings: Any, n: int, rounds: int) -> tuple[float, float]:
    verify, assertions = _verifier(work, settings, n)
    return per_op_us(verify, assertions, rounds)


#: The idle gap before each verify of ``verify_after_idle_us`` (about the gap between requests
#: at the fixed-rate row's load).
IDLE_GAP_S = 0.001


def _verify_after_idle(work: Workload, settings: Any, n: int) -> float:
    """The same verify, each one after the core sat idle for ``IDLE_GAP_S``: the median CPU µs
    of one verify (its thread's CPU time, the sleep excluded). On a shared VM the same work costs
    more when it comes spaced out, as requests at a fixed rate do; this is how much."""
    verify, assertions = _verifier(work, settings, n)
    costs = []
    for a in assertions:
        time.sleep(IDLE_GAP_S)
        c0 = time.thread_time_ns()
        verify(a)
        costs.append(time.thread_time_ns() - c0)
    return round(statistics.median(costs) / 1000, 1)


def _dpop_cost(work: Workload, settings: Any, n: int, rounds: int) -> tuple[float, float]:
    """The broker's own DPoP proof check at /token, on proofs shaped as the dpop scenario sends."""
    from app.oauth.dpop import proof_policy, verify_token_proof

    policy = proof_policy(settings)
    proofs = work.dpop_proofs(n)

    def check(proof: str) -> None:
        verify_token_proof((proof,), policy, time.time())

    return per_op_us(check, proofs, rounds)


def _sign_and_rs_costs(issuer: str, n: int, rounds: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Access-token sign, then resource-server verification (RFC 9068 §4) of broker-shaped tokens."""
    from joserfc.jwk import ECKey

    from app.oauth.access_token import AccessTokenClaims, TokenSigner, new_token_id, verify_access_token
    from app.oauth.jose import verification_key

    now = int(time.time())
    key = ECKey.generate_key("P-256")
    signer = TokenSigner(key, "bench-kid", "ES256")
    claims = [AccessTokenClaims(iss=issuer, sub="c", client_id="c", aud=RS, scope="read", jti=new_token_id(),
                                iat=now, exp=now + 900) for _ in range(n)]
    sign = per_op_us(signer.sign, claims, rounds)
    vkeys = {"bench-kid": verification_key(key.as_dict(private=False), kid="bench-kid", alg="ES256")}
    tokens = [signer.sign(c) for c in claims]

    def rs(token: str) -> None:
        verify_access_token(token, vkeys, issuer=issuer, audience=RS, now=time.time())

    return sign, per_op_us(rs, tokens, rounds)


async def _redis_cost(settings: Any, n: int, rounds: int) -> tuple[float, float]:
    """redis-py asyncio SET NX PX GET of broker-shaped replay keys, 32 callers at a time."""
    from app.store import keyspace
    from app.store.redis import connect

    r = connect(settings.redis_url, timeout=settings.redis_timeout, retries=settings.redis_retries)
    rid = os.urandom(12).hex()
    names = [keyspace.replay("bench-ceiling", secrets.token_urlsafe(16)) for _ in range(n)]
    sem = asyncio.Semaphore(32)

    async def one(k: str) -> None:
        async with sem:
            await r.set(k, rid, nx=True, px=60_000, get=True)

    await asyncio.gather(*(one(k) for k in names[:64]))  # warm the pool
    wall, cpu = [], []
    for _ in range(rounds):
        fresh = [k + str(len(wall)) for k in names]
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(k) for k in fresh))
        wall.append((time.perf_counter() - t0) / n * 1e6)
        cpu.append((time.process_time() - c0) / n * 1e6)
    await r.aclose()
    return round(statistics.median(wall), 1), round(statistics.median(cpu), 1)


def measure_ceiling(work: Workload, redis_url: str, pin: Pinning, n: int, rounds: int) -> Ceiling:
    from app.config import Settings
    from app.store.redis import connect
    from scripts.bench.redis_clients import store_call_us

    settings = Settings(issuer=work.issuer, redis_url=redis_url)
    with pin.run_on(pin.broker_core):
        verify_wall, verify_us = _verify_cost(work, settings, n, rounds)
        verify_idle_us = _verify_after_idle(work, settings, min(n, 300))
        dpop_wall, dpop_us = _dpop_cost(work, settings, n, rounds)
        (sign_wall, sign_us), (rs_wall, rs_us) = _sign_and_rs_costs(work.issuer, n, rounds)
        redis_wall, redis_us = run_async(_redis_cost(settings, n, rounds))
        client = connect(settings.redis_url, timeout=settings.redis_timeout, retries=settings.redis_retries)
        script_wall, script_us = run_async(store_call_us(client, n, rounds))
    return Ceiling(
        verify_us=verify_us, sign_us=sign_us, redis_script_us=script_us, redis_set_nx_get_us=redis_us, rs_verify_us=rs_us,
        dpop_proof_us=dpop_us, verify_after_idle_us=verify_idle_us,
        wall_us={"verify": verify_wall, "dpop_proof": dpop_wall, "sign": sign_wall, "redis_script": script_wall, "redis_set_nx_get": redis_wall,
                 "rs_verify": rs_wall},
        ceiling_rps=ceiling_rps(Costs(verify=verify_us, sign=sign_us, redis=script_us, dpop=dpop_us), rs_us),
        note=NOTE,
    )


def _pipeline(port: int, commands: list[bytes]) -> None:
    """Send RESP commands 1000 at a time on one raw connection, reading one reply line each."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        for start in range(0, len(commands), 1000):
            chunk = commands[start:start + 1000]
            s.sendall(b"".join(chunk))
            for _ in chunk:
                f.readline()


def measure_redis_memory(redis: RedisServer, n: int) -> RedisMemory:
    """Bytes of Redis memory per recorded jti: the broker's key shape and value, with a TTL."""
    from app.store import keyspace

    clients = redis.command("INFO", "clients")["connected_clients"]
    before = int(redis.command("INFO", "memory")["used_memory"])
    rid = os.urandom(12).hex()
    names = [keyspace.replay("bench-client", secrets.token_urlsafe(16)) for _ in range(n)]
    _pipeline(redis.port, [f"*7\r\n$3\r\nSET\r\n${len(k)}\r\n{k}\r\n$24\r\n{rid}\r\n$2\r\nNX\r\n$2\r\nPX\r\n"
                           f"$6\r\n300000\r\n$3\r\nGET\r\n".encode() for k in names])  # each reply "$-1": new key
    # Every reply has been read, so every SET has run; once the server has also dropped the
    # pipeline's connection (and its buffers), used_memory counts the keys alone.
    wait_until(lambda: redis.command("INFO", "clients")["connected_clients"] <= clients, 10,
               what="redis-server to close the pipeline connection")
    after = int(redis.command("INFO", "memory")["used_memory"])
    _pipeline(redis.port, [f"*2\r\n$6\r\nUNLINK\r\n${len(k)}\r\n{k}\r\n".encode() for k in names])
    return RedisMemory(keys=n, used_memory_before=before, used_memory_after=after,
                       bytes_per_jti=round((after - before) / n, 1), key_example_length=len(names[0]),
                       value_length=24, ttl="PX (expires)")

