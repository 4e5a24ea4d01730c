"""The resource server's answers to DPoP requests, as RFC 9449 §7.1 and §4.3 say
(docs/attack-matrix.md, "DPoP at the resource server").

Tokens are signed here with the broker's test key (``Authority.token``) carrying ``cnf.jkt`` of a
proof key made at test time; proofs are ``token_broker_jose.dpop.create_proof`` or built by hand
for what it would never produce.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import fakeredis
import httpx
import pytest

from tests.conftest import FrozenClock
from tests.helpers import ISS, RS1, RS2, b64u, new_key, raw
from tests.resource.conftest import Authority, echo_app
from token_broker_jose.dpop import access_token_hash, create_proof, jwk_thumbprint
from token_broker_resource import (
    BearerMiddleware,
    DPoPPolicy,
    MemoryReplayCache,
    RedisReplayCache,
    ResourceNonces,
    ResourceVerifier,
    VerifierUnavailable,
)

URL = RS1 + "/data"
ALGS = "ES256 ES384 PS256 RS256 Ed25519"
BEARER_BARE = 'Bearer realm="api"'
DPOP_BARE = f'DPoP realm="api", algs="{ALGS}"'
TOKEN_DESCRIPTION = "The access token is invalid or expired."


def dpop_challenge(error: str, description: str, scope: str | None = None) -> str:
    scope_param = f', scope="{scope}"' if scope else ""
    return f'DPoP realm="api", error="{error}", error_description="{description}"{scope_param}, algs="{ALGS}"'


def bearer_challenge(error: str, description: str) -> str:
    return f'Bearer realm="api", error="{error}", error_description="{description}"'


class Holder:
    """A client holding a DPoP key, and a token bound to it."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self.key = new_key("ES256")
        self.jkt = jwk_thumbprint(self.key.as_dict(private=False))
        self.token = authority.token(cnf={"jkt": self.jkt}, scope="read")

    @property
    def now(self) -> float:
        return self.authority.clock.now

    def proof(self, htm: str = "GET", htu: str = URL, *, key: Any = None, token: str | None = None,
              iat_offset: float = 0, ath: bool = True) -> str:
        return create_proof(key or self.key, alg="ES256", htm=htm, htu=htu, now=self.now + iat_offset,
                            access_token=(token or self.token) if ath else None)

    def hand(self, header: dict[str, Any] | None = None, claims: dict[str, Any] | None = None, *,
             alg: str = "ES256", key: Any = None) -> str:
        """A proof built by hand: ``header``/``claims`` override a valid one's members (None drops)."""
        hdr = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.key.as_dict(private=False), **(header or {})}
        body = {"jti": "hand-" + str(id(hdr)), "htm": "GET", "htu": URL, "iat": int(self.now),
                "ath": access_token_hash(self.token), **(claims or {})}
        return raw(json.dumps({k: v for k, v in hdr.items() if v is not None}),
                   json.dumps({k: v for k, v in body.items() if v is not None}), key or self.key, alg)

    def unsigned(self, alg: str) -> str:
        header = {"typ": "dpop+jwt", "alg": alg, "jwk": self.key.as_dict(private=False)}
        claims = {"jti": "unsigned", "htm": "GET", "htu": URL, "iat": int(self.now), "ath": access_token_hash(self.token)}
        return b64u(json.dumps(header)) + "." + b64u(json.dumps(claims)) + ".AAAA"

    def headers(self, proof: str | list[str] | None = None, scheme: str = "DPoP", token: str | None = None) -> list[tuple[str, str]]:
        proofs = [] if proof is None else [proof] if isinstance(proof, str) else proof
        return [("Authorization", f"{scheme} {token or self.token}"), *(("DPoP", p) for p in proofs)]


@pytest.fixture
def holder(authority: Authority) -> Holder:
    return Holder(authority)


def dpop_verifier(authority: Authority, clock: FrozenClock, **policy: Any) -> ResourceVerifier:
    http = httpx.AsyncClient(transport=httpx.MockTransport(authority.handler))
    return ResourceVerifier(ISS, RS1, http=http, clock=clock, leeway=10, dpop=DPoPPolicy(**policy))


def send(verifier: ResourceVerifier, method: str = "GET", url: str = "/data", scopes: tuple[str, ...] = ("read",),
         **kw: Any) -> httpx.Response:
    app = BearerMiddleware(echo_app, verifier, scopes=scopes, realm="api")

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=RS1) as client:
            return await client.request(method, url, **kw)

    return asyncio.run(run())


@pytest.fixture
def dpop_call(authority: Authority, clock: FrozenClock) -> Callable[..., httpx.Response]:
    verifier = dpop_verifier(authority, clock)
    return lambda method="GET", url="/data", **kw: send(verifier, method, url, **kw)


def answer(response: httpx.Response) -> tuple[int, list[str], Any]:
    return response.status_code, response.headers.get_list("www-authenticate"), response.json()


def ok(client_id: str = "c1") -> tuple[int, list[str], Any]:
    return 200, [], {"client_id": client_id, "scopes": ["read"], "user": None}


def proof_refused(description: str) -> tuple[int, list[str], Any]:
    return 401, [BEARER_BARE, dpop_challenge("invalid_dpop_proof", description)], {
        "error": "invalid_dpop_proof", "error_description": description}


def dpop_token_refused() -> tuple[int, list[str], Any]:
    return 401, [BEARER_BARE, dpop_challenge("invalid_token", TOKEN_DESCRIPTION)], {
        "error": "invalid_token", "error_description": TOKEN_DESCRIPTION}


# -- accepted ----------------------------------------------------------------------------------------

ACCEPTED = [
    ("proof-and-bound-token", lambda h: dict(headers=h.headers(h.proof()))),
    ("query-not-in-htu", lambda h: dict(url="/data?page=2", headers=h.headers(h.proof()))),
    ("htu-default-port-and-host-case", lambda h: dict(headers=h.headers(h.proof(htu="https://API.Example.test:443/data")))),
    ("iat-at-max-age-edge", lambda h: dict(headers=h.headers(h.proof(iat_offset=-65)))),
    ("iat-at-leeway-ahead", lambda h: dict(headers=h.headers(h.proof(iat_offset=5)))),
    ("scheme-case-insensitive", lambda h: dict(headers=h.headers(h.proof(), scheme="dpop"))),
    ("post-with-post-proof", lambda h: dict(method="POST", content=b"x", headers=h.headers(h.proof("POST")))),
]


@pytest.mark.parametrize("build", [r[1] for r in ACCEPTED], ids=[r[0] for r in ACCEPTED])
def test_accepted(holder: Holder, dpop_call: Any, build: Any) -> None:
    assert answer(dpop_call(**build(holder))) == ok()


def test_plain_bearer_token_still_accepted_beside_dpop(authority: Authority, dpop_call: Any) -> None:
    assert answer(dpop_call(headers={"Authorization": "Bearer " + authority.token()})) == ok()


# -- refused: RFC 9449 §7.1 and §4.3, each with its exact answer (attack matrix: `rs-dpop-proof-checks`) --

def _other_token_ath(h: Holder) -> str:
    return h.proof(token=h.authority.token(cnf={"jkt": h.jkt}))


def _padded_x(key: Any) -> dict[str, Any]:
    """The same EC public key with ``x`` one octet longer (a leading zero): it imports as the same
    key, but its RFC 7638 thumbprint would differ from the key's."""
    jwk = key.as_dict(private=False)
    return {**jwk, "x": b64u(b"\x00" + base64.urlsafe_b64decode(jwk["x"] + "=="))}


REFUSED = [
    ("no-proof", lambda h: h.headers(None), proof_refused("exactly one DPoP proof header is required")),
    ("two-proofs", lambda h: h.headers([h.proof(), h.proof()]), proof_refused("exactly one DPoP proof header is required")),
    ("proof-from-another-key", lambda h: h.headers(h.proof(key=new_key("ES256"))),
     proof_refused("the DPoP proof is not signed by the key the token is bound to")),
    ("wrong-htu-host", lambda h: h.headers(h.proof(htu=RS2 + "/data")),
     proof_refused("the DPoP proof's htu does not match the URL of this request")),
    ("wrong-htu-path", lambda h: h.headers(h.proof(htu=RS1 + "/other")),
     proof_refused("the DPoP proof's htu does not match the URL of this request")),
    # uvicorn (httptools) passes such a Host through: it must not move the URL to another host and path.
    ("host-header-with-a-path", lambda h: [*h.headers(h.proof(htu="https://other-svc.example/v2/data")),
                                           ("Host", "other-svc.example/v2")],
     proof_refused("the DPoP proof's htu does not match the URL of this request")),
    ("host-header-with-userinfo", lambda h: [*h.headers(h.proof()), ("Host", "evil@api.example.test")],
     proof_refused("the DPoP proof's htu does not match the URL of this request")),
    ("crit-header", lambda h: h.headers(h.hand({"crit": ["x-unknown"], "x-unknown": 1})),
     proof_refused("the DPoP proof header must not list critical extensions (crit)")),
    ("jwk-coordinate-with-a-leading-zero", lambda h: h.headers(h.hand({"jwk": _padded_x(h.key)})),
     proof_refused("the DPoP proof's jwk is not in its canonical form")),
    ("wrong-htu-scheme", lambda h: h.headers(h.proof(htu="http://api.example.test/data")),
     proof_refused("the DPoP proof's htu does not match the URL of this request")),
    ("wrong-htm", lambda h: h.headers(h.proof("POST")),
     proof_refused("the DPoP proof's htm does not match the method of this request")),
    ("wrong-ath", lambda h: h.headers(_other_token_ath(h)), proof_refused("the DPoP proof's ath does not match the access token")),
    ("no-ath", lambda h: h.headers(h.proof(ath=False)), proof_refused("the DPoP proof's ath does not match the access token")),
    ("stale-iat", lambda h: h.headers(h.proof(iat_offset=-66)), proof_refused("the DPoP proof is older than 60 seconds")),
    ("future-iat", lambda h: h.headers(h.proof(iat_offset=6)), proof_refused("the DPoP proof's iat is in the future")),
    ("typ-jwt", lambda h: h.headers(h.hand({"typ": "JWT"})), proof_refused("the DPoP proof's typ must be dpop+jwt")),
    ("typ-missing", lambda h: h.headers(h.hand({"typ": None})), proof_refused("the DPoP proof's typ must be dpop+jwt")),
    ("alg-none", lambda h: h.headers(h.unsigned("none")), proof_refused("the DPoP proof's alg is not accepted here")),
    ("signature-stripped", lambda h: h.headers(h.proof().rsplit(".", 1)[0] + "."), proof_refused("the DPoP header is not a compact JWS")),
    ("alg-hs256", lambda h: h.headers(h.hand({"alg": "HS256"})), proof_refused("the DPoP proof's alg is not accepted here")),
    ("jwk-missing", lambda h: h.headers(h.hand({"jwk": None})),
     proof_refused("the DPoP proof header must carry the public key as jwk")),
    ("jwk-private", lambda h: h.headers(h.hand({"jwk": h.key.as_dict(private=True)})),
     proof_refused("the DPoP proof's jwk must not contain private key members")),
    ("jwk-not-fitting-alg", lambda h: h.headers(h.hand({"jwk": new_key("ES384").as_dict(private=False)})),
     proof_refused("the DPoP proof's jwk does not fit its alg")),
    ("signature-by-other-key", lambda h: h.headers(h.hand(key=new_key("ES256"))),
     proof_refused("the DPoP proof's signature does not verify with its jwk")),
    ("jti-missing", lambda h: h.headers(h.hand(claims={"jti": None})),
     proof_refused("the DPoP proof's jti claim is missing or invalid")),
    ("htm-missing", lambda h: h.headers(h.hand(claims={"htm": None})),
     proof_refused("the DPoP proof's htm claim is missing or invalid")),
    ("iat-missing", lambda h: h.headers(h.hand(claims={"iat": None})),
     proof_refused("the DPoP proof's claims are malformed or iat is missing")),
    ("not-a-jws", lambda h: h.headers("not-a-proof"), proof_refused("the DPoP header is not a compact JWS")),
    ("dpop-scheme-token-without-cnf", lambda h: h.headers(h.proof(token=(t := h.authority.token())), token=t),
     dpop_token_refused()),
    ("dpop-scheme-cnf-without-jkt", lambda h: h.headers(h.proof(token=(t := h.authority.token(cnf={"x5t#S256": "abc"}))), token=t),
     dpop_token_refused()),
    ("dpop-scheme-expired-token", lambda h: h.headers(h.proof(token=(t := h.authority.token(
        cnf={"jkt": h.jkt}, exp=int(h.now) - 60))), token=t), dpop_token_refused()),
    ("bearer-presented-dpop-token", lambda h: h.headers(None, scheme="Bearer"),
     (401, [bearer_challenge("invalid_token", TOKEN_DESCRIPTION), DPOP_BARE],
      {"error": "invalid_token", "error_description": TOKEN_DESCRIPTION})),
    ("bearer-presented-dpop-token-with-proof", lambda h: h.headers(h.proof(), scheme="Bearer"),
     (401, [bearer_challenge("invalid_token", TOKEN_DESCRIPTION), DPOP_BARE],
      {"error": "invalid_token", "error_description": TOKEN_DESCRIPTION})),
    ("no-credentials", lambda h: [], (401, [BEARER_BARE, DPOP_BARE], {})),
]


@pytest.mark.parametrize(("build", "expected"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused(holder: Holder, dpop_call: Any, build: Any, expected: Any) -> None:
    response = dpop_call(headers=build(holder))
    assert answer(response) == expected
    assert response.headers["cache-control"] == "no-store"


def test_replayed_proof_is_refused(holder: Holder, dpop_call: Any) -> None:
    proof = holder.proof()
    assert answer(dpop_call(headers=holder.headers(proof))) == ok()
    assert answer(dpop_call(headers=holder.headers(proof))) == proof_refused("the DPoP proof has been used before")
    assert answer(dpop_call(headers=holder.headers(holder.proof()))) == ok()  # a fresh proof is fine


def test_a_replica_whose_clock_is_behind_still_refuses_the_replay(holder: Holder, authority: Authority,
                                                                  clock: FrozenClock) -> None:
    """Two replicas share one replay cache; B's clock is 3 s behind A's. A proof made 5 s ahead of
    A (within the leeway) is accepted by A; 70.5 s later it is still young enough for B. Its record
    must outlive that: the window counts ``clock_skew`` (before: max_age + 2 x leeway = 70 s)."""
    replay = MemoryReplayCache(clock=clock)
    a = dpop_verifier(authority, clock, replay=replay)
    b = dpop_verifier(authority, lambda: clock() - 3, replay=replay)  # type: ignore[arg-type]
    proof = holder.proof(iat_offset=5)
    assert answer(send(a, headers=holder.headers(proof))) == ok()
    clock.advance(70.5)
    assert answer(send(b, headers=holder.headers(proof))) == proof_refused("the DPoP proof has been used before")
    assert DPoPPolicy().window == 60 + 2 * 5 + 5


def test_insufficient_scope_in_the_dpop_challenge(holder: Holder, dpop_call: Any) -> None:
    response = dpop_call(headers=holder.headers(holder.proof()), scopes=("write",))
    description = "The access token lacks the required scope."
    assert answer(response) == (403, [BEARER_BARE, dpop_challenge("insufficient_scope", description, "write")],
                                {"error": "insufficient_scope", "error_description": description})


def test_a_refused_token_does_not_consume_the_proof(holder: Holder, authority: Authority, clock: FrozenClock) -> None:
    """The jti is recorded only once proof, token and binding passed: a garbage request fills nothing."""
    replay = MemoryReplayCache()
    verifier = dpop_verifier(authority, clock, replay=replay)
    send(verifier, headers=holder.headers(holder.proof(key=new_key("ES256"))))
    send(verifier, headers=holder.headers(holder.proof(token=(unbound := authority.token())), token=unbound))
    assert len(replay) == 0
    send(verifier, headers=holder.headers(holder.proof()))
    assert len(replay) == 1


# -- modes: DPoP off (the default), DPoP required -----------------------------------------------------

def test_without_dpop_policy_a_bound_token_is_refused_as_bearer(holder: Holder, call: Any) -> None:
    """A verifier without DPoP never turns a sender-constrained token into a bearer token."""
    refused = call(headers=holder.headers(None, scheme="Bearer"))
    assert answer(refused) == (401, [bearer_challenge("invalid_token", TOKEN_DESCRIPTION)],
                               {"error": "invalid_token", "error_description": TOKEN_DESCRIPTION})
    # The DPoP scheme is another scheme there: no credentials it accepts (RFC 6750 §3.1).
    assert answer(call(headers=holder.headers(holder.proof()))) == (401, [BEARER_BARE], {})


REQUIRED = [
    ("dpop-accepted", lambda h: h.headers(h.proof()), ok()),
    ("plain-bearer-token", lambda h: [("Authorization", "Bearer " + h.authority.token())], (401, [DPOP_BARE], {})),
    ("no-credentials", lambda h: [], (401, [DPOP_BARE], {})),
    ("no-proof", lambda h: h.headers(None), (401, [dpop_challenge("invalid_dpop_proof", "exactly one DPoP proof header is required")],
                                             {"error": "invalid_dpop_proof",
                                              "error_description": "exactly one DPoP proof header is required"})),
    ("token-in-query", lambda h: [], (400, [dpop_challenge("invalid_request", "Access tokens are accepted only in the "
                                                                                "Authorization header.")],
                                      {"error": "invalid_request",
                                       "error_description": "Access tokens are accepted only in the Authorization header."})),
]


@pytest.mark.parametrize(("build", "expected"), [r[1:] for r in REQUIRED], ids=[r[0] for r in REQUIRED])
def test_dpop_required(holder: Holder, authority: Authority, clock: FrozenClock, build: Any, expected: Any) -> None:
    verifier = dpop_verifier(authority, clock, required=True)
    url = "/data?access_token=x" if expected[0] == 400 else "/data"
    assert answer(send(verifier, url=url, headers=build(holder))) == expected


def test_algs_narrowed_are_advertised_and_enforced(holder: Holder, authority: Authority, clock: FrozenClock) -> None:
    verifier = dpop_verifier(authority, clock, algs=("Ed25519",))
    refused = send(verifier, headers=holder.headers(holder.proof()))
    description = "the DPoP proof's alg is not accepted here"
    assert refused.headers.get_list("www-authenticate") == [
        BEARER_BARE, f'DPoP realm="api", error="invalid_dpop_proof", error_description="{description}", algs="Ed25519"']


# -- htu behind a proxy: external_url -------------------------------------------------------------------

@pytest.mark.parametrize(("external_url", "htu", "status"), [
    ("https://public.example.test/orders", "https://public.example.test/orders/data", 200),
    ("https://public.example.test/orders/", "https://public.example.test/orders/data", 200),
    ("https://public.example.test/orders", URL, 401),  # the URL the app sees is not the one clients use
    (None, URL, 200),
], ids=["prefix", "prefix-trailing-slash", "internal-url-refused", "no-external-url-uses-host"])
def test_external_url(holder: Holder, authority: Authority, clock: FrozenClock, external_url: str | None, htu: str,
                      status: int) -> None:
    verifier = dpop_verifier(authority, clock, external_url=external_url)
    assert send(verifier, headers=holder.headers(holder.proof(htu=htu))).status_code == status


# -- replay caches ----------------------------------------------------------------------------------

def test_memory_replay_cache_forgets_after_the_window_and_is_bounded() -> None:
    clock = FrozenClock()
    cache = MemoryReplayCache(max_entries=2, clock=clock)

    async def run() -> list[Any]:
        seen = [await cache.first_use("a", 70), await cache.first_use("a", 70), await cache.first_use("b", 70)]
        try:
            await cache.first_use("c", 70)
        except VerifierUnavailable as exc:
            seen.append(str(exc))  # full of live entries: fail closed, never forget "a" early
        clock.advance(70)
        seen += [await cache.first_use("a", 70), await cache.first_use("c", 70), len(cache)]
        return seen

    assert asyncio.run(run()) == [True, False, True, "the DPoP replay cache is full", True, True, 2]


def test_redis_replay_cache_sync_and_async_clients() -> None:
    server = fakeredis.FakeServer()

    async def run() -> list[Any]:
        sync_cache = RedisReplayCache(fakeredis.FakeRedis(server=server))
        async_cache = RedisReplayCache(fakeredis.FakeAsyncRedis(server=server), prefix="tbr:dpop:")
        seen = [await sync_cache.first_use("k1", 70), await async_cache.first_use("k1", 70),
                await async_cache.first_use("k2", 70.5)]
        ttl = fakeredis.FakeRedis(server=server).pttl("tbr:dpop:k2")
        seen.append(0 < ttl <= 70500)
        return seen

    assert asyncio.run(run()) == [True, False, True, True]


def test_redis_replay_cache_down_is_503(holder: Holder, authority: Authority, clock: FrozenClock) -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    verifier = dpop_verifier(authority, clock, replay=RedisReplayCache(fakeredis.FakeAsyncRedis(server=server)))
    response = send(verifier, headers=holder.headers(holder.proof()))
    assert (response.status_code, response.json()) == (503, {
        "error": "temporarily_unavailable", "error_description": "The token cannot be checked right now."})


def test_shared_redis_replay_cache_across_two_verifiers(holder: Holder, authority: Authority, clock: FrozenClock) -> None:
    """Two replicas of one resource server: a proof accepted by one is a replay at the other."""
    server = fakeredis.FakeServer()
    replicas = [dpop_verifier(authority, clock, replay=RedisReplayCache(fakeredis.FakeAsyncRedis(server=server)))
                for _ in range(2)]
    proof = holder.proof()
    assert answer(send(replicas[0], headers=holder.headers(proof))) == ok()
    assert answer(send(replicas[1], headers=holder.headers(proof))) == proof_refused("the DPoP proof has been used before")


def test_policy_refuses_unknown_algs() -> None:
    with pytest.raises(ValueError, match="DPoPPolicy.algs"):
        DPoPPolicy(algs=("HS256",))


# -- server nonces (RFC 9449 §9; optional) ----------------------------------------------------------------

NONCE_DESCRIPTION = "Resource server requires nonce in DPoP proof"


@pytest.mark.parametrize(("nonce_at", "status"), [
    (None, 401), ("current", 200), ("previous-window", 200), ("two-windows-old", 401), ("made-up", 401),
], ids=lambda v: str(v))
def test_resource_server_nonces(holder: Holder, authority: Authority, clock: FrozenClock, nonce_at: str | None,
                                status: int) -> None:
    nonces = ResourceNonces(b"n" * 32, lifetime=300, clock=clock)
    verifier = dpop_verifier(authority, clock, nonces=nonces)
    issued = {"current": 0, "previous-window": 300, "two-windows-old": 600}
    nonce = {"made-up": "abc"}.get(nonce_at or "")
    if nonce_at in issued:
        nonce = nonces.current()
        clock.advance(issued[nonce_at])
    holder.token = authority.token(cnf={"jkt": holder.jkt}, scope="read")  # still valid after the clock moved
    proof = create_proof(holder.key, alg="ES256", htm="GET", htu=URL, access_token=holder.token, nonce=nonce,
                         now=clock.now)
    response = send(verifier, headers=holder.headers(proof))
    assert (response.status_code, response.headers["dpop-nonce"]) == (status, nonces.current())
    if status == 401:
        assert answer(response) == (401, [BEARER_BARE, dpop_challenge("use_dpop_nonce", NONCE_DESCRIPTION)],
                                    {"error": "use_dpop_nonce", "error_description": NONCE_DESCRIPTION})


def test_resource_nonces_need_a_long_secret_and_hide_it() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ResourceNonces(b"short")
    assert repr(ResourceNonces(b"s" * 32, lifetime=60)) == "ResourceNonces(lifetime=60)"


# -- claims that are valid JSON strings but not valid Unicode (a lone surrogate: "\ud800") -----------


@pytest.mark.parametrize(("claim", "nonces"), [("jti", False), ("jti", True), ("nonce", True)],
                         ids=["jti", "jti-with-nonces", "nonce"])
def test_lone_surrogate_in_a_proof_claim_is_never_a_500(holder: Holder, authority: Authority, clock: FrozenClock,
                                                       claim: str, nonces: bool) -> None:
    """`rs-dpop-proof-checks`: a proof claim holding "\\ud800" (a JSON escape any client can write) is a
    string to the proof rules: a jti like that is recorded and refused the second time, a nonce like that
    is not the current one (use_dpop_nonce). Neither reaches a UnicodeEncodeError (500)."""
    server_nonces = ResourceNonces(b"n" * 32, lifetime=300, clock=clock) if nonces else None
    verifier = dpop_verifier(authority, clock, nonces=server_nonces)
    claims = {"jti": "\ud800"} if claim == "jti" else {"nonce": "\ud800"}
    if nonces and claim == "jti":
        claims["nonce"] = server_nonces.current()  # type: ignore[union-attr]
    proof = holder.hand(claims=claims)
    first, second = send(verifier, headers=holder.headers(proof)), send(verifier, headers=holder.headers(proof))
    if claim == "nonce":
        expected = (401, [BEARER_BARE, dpop_challenge("use_dpop_nonce", NONCE_DESCRIPTION)],
                    {"error": "use_dpop_nonce", "error_description": NONCE_DESCRIPTION})
        assert (answer(first), answer(second)) == (expected, expected)
        return
    assert (answer(first), answer(second)) == (ok(), proof_refused("the DPoP proof has been used before"))
