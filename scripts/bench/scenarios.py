"""The one table of benchmark scenarios (``tests/test_bench_smoke.py`` imports it too).

Each HTTP scenario names the status every response must have, how its request bodies are made
(which ``Workload`` method, how many, and whether each is sent once or the file is cycled), and
its ceiling: the CPU µs of the work no implementation of the broker can skip, from the costs
measured in the same run (``ceiling.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec


class Costs(msgspec.Struct, frozen=True):
    """CPU µs per operation, measured on the broker's core (``ceiling.measure_ceiling``)."""

    verify: float  # client-assertion parse + verify
    sign: float  # access-token sign
    redis: float  # the token endpoint's script call through the broker's Redis client
    dpop: float  # the broker's DPoP proof check (app.oauth.dpop.verify_token_proof)


@dataclass(frozen=True)
class Scenario:
    name: str
    expected_status: int
    #: The ``Workload`` method that makes the request bodies.
    bodies: str
    #: "once": every body sent once (single-use assertions); "cycle": the bodies loop (nothing is
    #: consumed: rejections); "open-loop": a fixed offered rate from the asyncio client.
    send: str
    #: CPU µs per request of the unavoidable work; the ceiling is 1e6 / this.
    ceiling_us: Callable[[Costs], float]
    ceiling_why: str
    #: Bodies per timed window: a fixed number, or sized from the expected rate times this factor.
    fixed_pool: int | None = None
    pool_factor: float = 1.0
    #: Spend every body once before the window (the window then only replays them).
    spend_first: bool = False


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("miss", 200, "miss_bodies", "once", lambda c: c.verify + c.sign + c.redis,
             "verify + sign + one Redis call"),
    Scenario("hit", 200, "hit_bodies", "once", lambda c: c.verify + c.redis,
             "verify + one Redis call (the cached token is not re-signed)", pool_factor=1.5),
    Scenario("bad_signature", 401, "bad_signature_bodies", "cycle", lambda c: c.verify,
             "refused at the signature check, no Redis", fixed_pool=2000),
    Scenario("replay", 401, "hit_bodies", "cycle", lambda c: c.verify + c.redis,
             "verify + the Redis call that finds the jti", fixed_pool=200, spend_first=True),
    Scenario("fixed_rate", 200, "miss_bodies", "open-loop", lambda c: c.verify + c.sign + c.redis,
             "as miss, at a fixed offered rate"),
    # DPoP (RFC 9449): the miss requests, each with its own pre-generated ES256 proof; the proof's
    # jti rides in the same Redis call, so the added unavoidable work is the proof check (one
    # signature verification, the proof's key parsed once and cached).
    Scenario("dpop", 200, "dpop_bodies", "once", lambda c: c.verify + c.dpop + c.sign + c.redis,
             "as miss + the proof check (its jti in the same Redis call)"),
)
BY_NAME = {s.name: s for s in SCENARIOS}
HTTP_SCENARIOS = tuple(s.name for s in SCENARIOS)
#: The scenarios whose every response is a refusal (the failure rate limiter counts each one).
REJECTION_SCENARIOS = tuple(s.name for s in SCENARIOS if s.expected_status >= 400)
#: Measured without HTTP load: resource-server verification, Redis bytes per jti, broker RSS, and
#: the Redis clients side by side on the token endpoint's script call (``redis_clients.py``).
OTHER_SCENARIOS = ("rs_verify", "redis_memory", "memory", "redis_clients")
ALL_SCENARIOS = HTTP_SCENARIOS + OTHER_SCENARIOS


def ceiling_rps(costs: Costs, rs_verify_us: float) -> dict[str, int]:
    """Requests per second one core could serve doing only each scenario's unavoidable work."""
    return {**{s.name: round(1e6 / s.ceiling_us(costs)) for s in SCENARIOS}, "rs_verify": round(1e6 / rs_verify_us)}
