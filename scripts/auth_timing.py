#!/usr/bin/env python3
"""Median time of each way a client authentication is refused, in process (not a test).

    .venv/bin/python scripts/auth_timing.py [--requests 2000] [--alg ES256]

Builds the broker over an in-memory store (fakeredis) with the rate limiter off, registers one
enabled and one disabled client, and sends the same number of refused /token requests down each
path, interleaved: an unknown client, a disabled client, an unknown kid, a bad signature (a
registered client's kid, another key's signature). A refusal that costs no signature work is
measurably faster than a bad signature, which would tell an attacker which clients exist; the
broker spends the same signature work on each (``DecoyKeys`` in ``app.oauth.assertion``), so the
medians should agree to a few microseconds. ``docs/security.md`` quotes its output.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fakeredis.aioredis import FakeRedis

from app.config import Settings
from app.keystore import generate_private_key, public_jwk
from app.oauth.constants import CLIENT_ASSERTION_TYPE
from app.oauth.errors import OAuthError
from app.service.client_auth import EndpointRequest
from app.service.registry_state import open_registry
from app.web.app import create_app
from token_broker_jose.assertion import make_client_assertion

ISSUER = "https://broker.test"


def _body(assertion: str) -> bytes:
    return f"grant_type=client_credentials&client_assertion_type={CLIENT_ASSERTION_TYPE}&client_assertion={assertion}".encode()


async def measure(requests: int, alg: str) -> dict[str, list[float]]:
    keys_dir = Path(tempfile.mkdtemp(prefix="auth-timing-"))
    app = create_app(Settings(issuer=ISSUER, keys_dir=keys_dir, ratelimit_mode="off", log_level="error"),
                     redis=FakeRedis())
    state = app.state
    # What the lifespan does first: find (here: create) the registry, then tell the watch it is there.
    state.registry_watch.started(await open_registry(state.registry, state.registry_record, log=state.log))
    key, other = generate_private_key(alg), generate_private_key(alg)
    for client_id, enabled in (("known", True), ("off", False)):
        await state.admin_service.register("timing", {
            "client_id": client_id, "jwks": {"keys": [public_jwk(key, alg=alg, kid="k1")]},
            "scopes": ["read"], "audiences": ["https://rs.test"], "enabled": enabled,
            "allow_shared_key": True})  # one key for both: the paths differ only in what the broker knows

    def assertion(client_id: str, kid: str, signer: object) -> bytes:
        return _body(make_client_assertion(signer, client_id=client_id, issuer=ISSUER, alg=alg, kid=kid))

    paths = {
        "unknown client": lambda: assertion("ghost", "k1", key),
        "disabled client": lambda: assertion("off", "k1", key),
        "unknown kid": lambda: assertion("known", "k9", key),
        "bad signature": lambda: assertion("known", "k1", other),
    }
    bodies = {name: [make() for _ in range(requests)] for name, make in paths.items()}
    times: dict[str, list[float]] = {name: [] for name in paths}
    service = state.token_service
    for i in range(-50, requests):  # the first 50 of each warm the caches and are not kept
        for name in paths:
            request = EndpointRequest(bodies[name][max(i, 0)], "application/x-www-form-urlencoded", False, "t", None)
            t0 = time.perf_counter()
            try:
                await service.token(request)
            except OAuthError as exc:
                assert exc.error == "invalid_client", exc.error
            else:
                raise AssertionError(f"{name}: accepted")
            if i >= 0:
                times[name].append(time.perf_counter() - t0)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="refused requests per path")
    parser.add_argument("--alg", default="ES256", help="the clients' key algorithm")
    args = parser.parse_args()
    times = asyncio.run(measure(args.requests, args.alg))
    base = statistics.median(times["bad signature"])
    print(f"{args.requests} refused requests per path, {args.alg}, in process")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:16} median {median * 1e6:7.1f} µs  ({(median - base) * 1e6:+7.1f} µs vs bad signature)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
