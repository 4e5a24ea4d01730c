"""DPoP at the resource server (RFC 9449 §7.1): the policy, the request URL, and proof-jti replay.

``DPoPPolicy`` turns DPoP on for a ``ResourceVerifier``: ``Authorization: DPoP <token>`` with
exactly one ``DPoP`` header is then accepted, the proof checked by
``token_broker_jose.dpop.verify_proof`` (signature, ``typ``, ``alg``, ``htm``, ``htu``, ``iat``,
``ath``), its key compared with the token's ``cnf.jkt``, and its ``jti`` recorded so that the same
proof is refused a second time. ``required=True`` refuses Bearer tokens altogether.

``htu`` is compared with the URL the request was received at: ``external_url`` (scheme, host, port
and any path prefix a proxy strips, as clients see the service) followed by the request path; without
``external_url``, the ASGI scheme, the ``Host`` header and the path. Behind a proxy that terminates
TLS or rewrites the host, set ``external_url``: the URL the app sees is not the one the client signed.

A proof's ``jti`` is remembered for its acceptance window (``max_age`` plus the leeway on both
sides): after that, its ``iat`` refuses it anyway. ``MemoryReplayCache`` (the default) remembers
them in the process, bounded; with several replicas behind a load balancer, ``RedisReplayCache``
shares them (``SET NX PX``, one command per accepted proof). Either way a cache that cannot answer
makes the verifier unavailable (503): a proof is never accepted unrecorded.

Server nonces (RFC 9449 §9, optional): with ``nonces=ResourceNonces(...)`` a proof must carry the
current nonce (or the previous one, across a rotation); without it the answer is 401
``use_dpop_nonce`` with the nonce in ``DPoP-Nonce``, and every answer carries the current nonce.
A nonce is an HMAC of the current time window under a secret: nothing is stored, and replicas
given the same secret accept each other's nonces.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from token_broker_jose.dpop import DPOP_ALGS
from token_broker_resource.keys import VerifierUnavailable


class ReplayCache(Protocol):
    """Where accepted proof ``jti`` values are remembered."""

    async def first_use(self, key: str, ttl: float) -> bool:
        """Record ``key`` for ``ttl`` seconds; False if it was already recorded (a replay)."""
        ...


class MemoryReplayCache:
    """Per-process replay cache, at most ``max_entries`` live entries; full means unavailable (503),
    never forgetting a live entry early (that would let its proof be replayed)."""

    def __init__(self, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self._clock = clock
        # Every entry has the same ttl (the policy's window), so insertion order is expiry order.
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    async def first_use(self, key: str, ttl: float) -> bool:
        now = self._clock()
        while self._seen and next(iter(self._seen.values())) <= now:
            self._seen.popitem(last=False)
        expires = self._seen.get(key)
        if expires is not None and expires > now:
            return False
        if len(self._seen) >= self.max_entries:
            raise VerifierUnavailable("the DPoP replay cache is full")
        self._seen[key] = now + ttl
        return True


class SetNX(Protocol):
    """What ``RedisReplayCache`` needs of its client: redis-py's ``set`` (``redis.Redis`` or
    ``redis.asyncio.Redis``; redis is not a dependency of this package)."""

    def set(self, name: str, value: str, *, nx: bool, px: int) -> Any: ...


class RedisReplayCache:
    """Replay cache shared by the replicas of one resource server: ``SET <prefix><key> 1 NX PX <ttl>``."""

    def __init__(self, redis: SetNX, *, prefix: str = "tbr:dpop:") -> None:
        self.redis = redis
        self.prefix = prefix

    async def first_use(self, key: str, ttl: float) -> bool:
        try:
            reply = self.redis.set(self.prefix + key, "1", nx=True, px=max(1, int(ttl * 1000)))
            if inspect.isawaitable(reply):
                reply = await reply
        except Exception:  # RedisError, OSError, a timeout: fail closed (503), whatever the client raises
            raise VerifierUnavailable("the DPoP replay cache (Redis) cannot be reached") from None
        return bool(reply)


def replay_key(jkt: str, jti: str) -> str:
    """One key per (proof key, jti): RFC 9449 §11.1 scopes jti uniqueness to the key."""
    # surrogatepass: a jti may hold a lone surrogate (a valid JSON escape); it must hash, not raise.
    return hashlib.sha256(f"{jkt}\0{jti}".encode("utf-8", "surrogatepass")).hexdigest()


class ResourceNonces:
    """Stateless server nonces: ``HMAC(secret, window)`` for windows of ``lifetime`` seconds. The
    secret is random per process unless given (replicas behind one load balancer share one)."""

    def __init__(self, secret: bytes | None = None, *, lifetime: int = 300, clock: Callable[[], float] = time.time) -> None:
        if secret is not None and len(secret) < 32:
            raise ValueError("ResourceNonces needs a secret of at least 32 bytes")
        self._secret = secret or secrets.token_bytes(32)
        self.lifetime = lifetime
        self._clock = clock

    def __repr__(self) -> str:  # never show the secret
        return f"ResourceNonces(lifetime={self.lifetime})"

    def _for(self, window: int) -> str:
        digest = hmac.new(self._secret, window.to_bytes(8, "big", signed=True), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")

    def current(self) -> str:
        return self._for(int(self._clock() // self.lifetime))

    def valid(self, nonce: str | None) -> bool:
        """The current nonce or the previous window's (a client that just got it across a rotation)."""
        if nonce is None or not nonce.isascii():  # ours are ASCII; a lone surrogate cannot be encoded
            return False
        window = int(self._clock() // self.lifetime)
        return any(hmac.compare_digest(nonce.encode(), self._for(w).encode()) for w in (window, window - 1))


#: What a ``Host`` header may be when ``htu`` is built from it: a DNS name or IPv4 address, or a
#: bracketed IPv6 address, and an optional port (RFC 9110 §7.2, RFC 3986 §3.2.2). Anything else (a
#: ``/``, ``@``, ``?``, ``#``, spaces: servers such as uvicorn pass them through) could move the URL
#: the proof is compared with to another host or path, so it matches no proof.
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


@dataclass(frozen=True)
class DPoPPolicy:
    """DPoP at a ``ResourceVerifier`` (module docstring): ``required`` refuses Bearer tokens; ``algs``
    the proof algorithms accepted (advertised in ``WWW-Authenticate: DPoP algs=...``); a proof's ``iat``
    at most ``max_age`` seconds old and ``leeway`` ahead; ``clock_skew`` the largest clock difference
    between the replicas sharing ``replay`` (it pads how long a proof jti is remembered);
    ``external_url`` the service's URL as clients see it; ``replay`` where proof jti values are
    remembered; ``nonces`` server nonces (optional)."""

    required: bool = False
    algs: tuple[str, ...] = DPOP_ALGS
    max_age: int = 60
    leeway: int = 5
    clock_skew: int = 5
    external_url: str | None = None
    replay: ReplayCache = field(default_factory=MemoryReplayCache)
    nonces: ResourceNonces | None = None

    def __post_init__(self) -> None:
        unknown = set(self.algs) - set(DPOP_ALGS)
        if not self.algs or unknown:
            raise ValueError(f"DPoPPolicy.algs must be some of {', '.join(DPOP_ALGS)}")
        if self.clock_skew < 0:
            raise ValueError("DPoPPolicy.clock_skew must be 0 or more")

    @property
    def window(self) -> float:
        """How long its jti is remembered: a proof's whole acceptance window (``iat`` from ``max_age +
        leeway`` ago to ``leeway`` ahead), plus ``clock_skew`` for a replica whose clock is behind
        the one that recorded it (RFC 9449 §11.1)."""
        return self.max_age + 2 * self.leeway + self.clock_skew

    def request_url(self, scope: MutableMapping[str, Any]) -> str:
        """The URL of an ASGI request as ``htu`` names it (before ``normalize_htu``)."""
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if isinstance(raw, bytes) and raw else scope.get("path", "/")
        path = path.split("?", 1)[0]
        if self.external_url is not None:
            return self.external_url.rstrip("/") + path
        host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None)
        if host is None:
            server = scope.get("server") or ("localhost", None)
            host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
        elif not _HOST.fullmatch(host):
            return ""  # no URL: ``normalize_htu`` gives None, and the proof is refused (dpop_htu_mismatch)
        return f"{scope.get('scheme', 'http')}://{host}{path}"
