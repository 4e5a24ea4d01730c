"""The client library's DPoP option (RFC 9449), on in-memory transports: a broker stand-in that
checks each token request's proof with ``token_broker_jose.dpop.verify_proof`` and binds its tokens
to the proof's key, and a resource server protected by the project's own verifier (``DPoPPolicy``).
The same client against a real broker process is tests/test_dpop_e2e_live.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import fakeredis
import httpx
import pytest

from tests.conftest import FrozenClock
from tests.helpers import ISS, RS1, RS2, decode_unverified, new_key
from tests.resource.conftest import Authority, echo_app
from token_broker_client import BrokerClient, BrokerError, DPoPKey, HttpSettings, SharedTokenCache
from token_broker_client.auth import Fetch, Refused, bearer_flow
from token_broker_client.dpop import DPoPSession, origin
from token_broker_client.effects import Done, advance
from token_broker_client.shared_cache import cache_slot
from token_broker_jose.dpop import InvalidDPoPProof, access_token_hash, jwk_thumbprint, normalize_htu, verify_proof
from token_broker_resource import BearerMiddleware, DPoPPolicy, ResourceNonces, ResourceVerifier

TOKEN_URL = ISS + "/token"


class DPoPBroker(Authority):
    """The broker's agreed DPoP behaviour, scripted: a proof on POST /token gets a DPoP token bound
    to its key; ``token_type`` and nonce demands are settable; every proof seen is kept."""

    def __init__(self, clock: FrozenClock) -> None:
        super().__init__(clock)
        self.proofs: list[dict[str, Any]] = []
        self.assertions: list[str] = []
        self.token_type = "DPoP"
        self.nonces: list[str] = []  # the next requests are refused with use_dpop_nonce and these nonces, in order
        self.success_nonce: str | None = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/token":
            return super().handler(request)
        form = {k: v[0] for k, v in parse_qs(request.read().decode()).items()}
        self.assertions.append(form["client_assertion"])
        proof = request.headers.get("dpop")
        try:
            checked = verify_proof(proof or "", htm="POST", htu=normalize_htu(TOKEN_URL) or "", now=self.clock.now)
        except InvalidDPoPProof as exc:
            return httpx.Response(400, json={"error": exc.error, "error_description": exc.description})
        self.proofs.append(decode_unverified(proof)[1])
        if self.nonces:
            return httpx.Response(400, headers={"DPoP-Nonce": self.nonces.pop(0)}, json={
                "error": "use_dpop_nonce", "error_description": "Authorization server requires nonce in DPoP proof"})
        headers = {"DPoP-Nonce": self.success_nonce} if self.success_nonce else {}
        token = self.token(cnf={"jkt": checked.jkt}, scope="read")
        return httpx.Response(200, headers=headers, json={
            "access_token": token, "token_type": self.token_type, "expires_in": 300, "scope": "read"})


@pytest.fixture
def dpop_broker(clock: FrozenClock) -> DPoPBroker:
    return DPoPBroker(clock)


@pytest.fixture
def make(dpop_broker: DPoPBroker, clock: FrozenClock) -> Callable[..., BrokerClient]:
    def make(**kw: Any) -> BrokerClient:
        transport = httpx.MockTransport(dpop_broker.handler)
        http = HttpSettings(client=httpx.Client(transport=transport), async_client=httpx.AsyncClient(transport=transport))
        options: dict[str, Any] = {"alg": "ES256", "kid": "c1-1", "scope": "read", "resource": RS1, "http": http,
                                   "clock": clock, "dpop": True, **kw}
        return BrokerClient(ISS, "c1", new_key("ES256"), **options)

    return make


# -- the key ----------------------------------------------------------------------------------------

def test_generated_key_is_es256_and_its_repr_shows_no_material(make: Any) -> None:
    client = make()
    key = client.dpop_key
    assert (key.alg, key.jkt) == ("ES256", jwk_thumbprint(key.key.as_dict(private=False)))
    private = key.key.as_dict(private=True)["d"]
    assert repr(key) == f"DPoPKey(alg='ES256', jkt='{key.jkt}')"
    assert private not in repr(client) and repr(key) in repr(client)


@pytest.mark.parametrize("form", ["jwk-file", "pem-file", "jwk-dict", "key-object"])
def test_key_loaded_like_a_client_key(tmp_path: Path, make: Any, dpop_broker: DPoPBroker, form: str) -> None:
    key = new_key("ES384")
    path = tmp_path / "dpop.key"
    if form == "jwk-file":
        path.write_text(json.dumps(key.as_dict(private=True)))
    elif form == "pem-file":
        path.write_bytes(key.as_pem(private=True))
    material = {"jwk-file": path, "pem-file": path, "jwk-dict": key.as_dict(private=True), "key-object": key}[form]
    client = make(dpop=DPoPKey(material))
    assert (client.dpop_key.alg, client.dpop_key.jkt) == ("ES384", jwk_thumbprint(key.as_dict(private=False)))
    token = client.get_token()
    assert decode_unverified(token)[1]["cnf"] == {"jkt": client.dpop_key.jkt}


def test_a_public_key_is_refused() -> None:
    with pytest.raises(ValueError, match="public key"):
        DPoPKey(new_key("ES256").as_dict(private=False))


@pytest.mark.parametrize(("bits", "exponent"), [(2048, 3), (4608, 65537)],
                         ids=["exponent-3", "4608-bits"])
def test_an_rsa_key_servers_refuse_is_refused(bits: int, exponent: int) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from joserfc.jwk import RSAKey

    key = RSAKey.import_key(rsa.generate_private_key(public_exponent=exponent, key_size=bits))
    with pytest.raises(ValueError, match="2048-4096 bits with exponent 65537"):
        DPoPKey(key, alg="RS256")


def test_an_rsa_key_of_the_accepted_shape_signs_proofs_verifiers_accept() -> None:
    key = DPoPKey(new_key("RS256"), alg="RS256")
    proof = DPoPSession(key, clock=lambda: 1_700_000_000.0).proof("POST", "https://broker.example/token")
    assert verify_proof(proof, htm="POST", htu="https://broker.example/token", now=1_700_000_000).jkt == key.jkt


# -- token requests ----------------------------------------------------------------------------------

def test_every_token_request_carries_a_fresh_proof(make: Any, dpop_broker: DPoPBroker, clock: FrozenClock) -> None:
    client = make()
    first = client.get_token()
    clock.advance(300)  # expired: a new token request
    second = client.get_token()
    assert first != second
    assert [(p["htm"], p["htu"], p["iat"], "ath" in p, "nonce" in p) for p in dpop_broker.proofs] == [
        ("POST", TOKEN_URL, int(clock.now) - 300, False, False), ("POST", TOKEN_URL, int(clock.now), False, False)]
    assert len({p["jti"] for p in dpop_broker.proofs}) == 2
    assert decode_unverified(second)[1]["cnf"] == {"jkt": client.dpop_key.jkt}


def test_a_bearer_answer_to_a_dpop_request_is_refused(make: Any, dpop_broker: DPoPBroker) -> None:
    dpop_broker.token_type = "Bearer"
    with pytest.raises(BrokerError) as err:
        make().get_token()
    assert (err.value.error, err.value.status_code, str(err.value)) == ("dpop_not_supported", 200, (
        f"dpop_not_supported: {TOKEN_URL} answered a DPoP token request with token_type Bearer: the broker does not "
        "bind tokens to the client's DPoP key (DPoP off at the broker?); the client refuses a bearer token while DPoP "
        "is on"))


def test_without_dpop_no_proof_is_sent(make: Any) -> None:
    with pytest.raises(BrokerError) as err:
        make(dpop=False).get_token()  # no proof: the stand-in answers invalid_dpop_proof
    assert (err.value.error, err.value.status_code) == ("invalid_dpop_proof", 400)


@pytest.mark.parametrize(("demanded", "outcome", "requests"), [
    (["n1"], "token", 2),
    (["n1", "n2"], "use_dpop_nonce", 2),  # the retry is refused with another nonce: no second retry
], ids=["retried-once-with-the-nonce", "no-loop"])
def test_use_dpop_nonce_at_the_token_endpoint(make: Any, dpop_broker: DPoPBroker, demanded: list[str], outcome: str,
                                              requests: int) -> None:
    dpop_broker.nonces = list(demanded)
    client = make()
    try:
        result = "token" if client.get_token() else ""
    except BrokerError as exc:
        result = exc.error
    assert (result, len(dpop_broker.assertions)) == (outcome, requests)
    assert [p.get("nonce") for p in dpop_broker.proofs] == [None, "n1"]
    assert len(set(dpop_broker.assertions)) == requests  # the retry is a new request: a new assertion


def test_a_nonce_is_kept_per_origin_and_used_next_time(make: Any, dpop_broker: DPoPBroker, clock: FrozenClock) -> None:
    dpop_broker.success_nonce = "from-success"
    client = make()
    client.get_token()
    clock.advance(300)
    client.get_token()
    assert [p.get("nonce") for p in dpop_broker.proofs] == [None, "from-success"]
    assert client.dpop.nonce(ISS + "/anything") == "from-success"
    assert client.dpop.nonce(RS1 + "/token") is None  # another origin: its own nonce


async def _aget(client: BrokerClient) -> str:
    return await client.aget_token()


def test_async_token_request_carries_the_proof(make: Any, dpop_broker: DPoPBroker) -> None:
    client = make()
    token = asyncio.run(_aget(client))
    assert decode_unverified(token)[1]["cnf"] == {"jkt": client.dpop_key.jkt}
    assert [p["htm"] for p in dpop_broker.proofs] == ["POST"]


def test_shared_cache_slot_is_per_dpop_key(make: Any) -> None:
    redis = fakeredis.FakeRedis()
    client = make(shared_cache=SharedTokenCache(redis))
    client.get_token()
    assert redis.exists(cache_slot("c1", "read", RS1, client.dpop_key.jkt) + ":token") == 1
    assert redis.exists(cache_slot("c1", "read", RS1) + ":token") == 0


@pytest.mark.parametrize(("url", "expected"), [
    ("https://API.example.test/x?y=1", "https://api.example.test:443"),
    ("http://127.0.0.1:8080/token", "http://127.0.0.1:8080"),
    ("http://localhost/", "http://localhost:80"),
])
def test_origin(url: str, expected: str) -> None:
    assert origin(url) == expected


# -- resource requests: the pure flow --------------------------------------------------------------

NONCE_CHALLENGE = {"WWW-Authenticate": 'DPoP error="use_dpop_nonce", error_description="Resource server requires '
                                      'nonce in DPoP proof"', "DPoP-Nonce": "rs-1"}
INVALID_TOKEN = {"WWW-Authenticate": 'DPoP error="invalid_token"'}


@pytest.mark.parametrize(("answers", "steps", "nonces"), [
    ([(200, {})], ["fetch", "send", "end"], [None]),
    ([(401, NONCE_CHALLENGE), (200, {})], ["fetch", "send", "send", "end"], [None, "rs-1"]),
    ([(401, NONCE_CHALLENGE), (401, NONCE_CHALLENGE), (200, {})],
     ["fetch", "send", "send", "refused", "fetch", "send", "end"], [None, "rs-1", "rs-1"]),
    ([(401, INVALID_TOKEN), (200, {})], ["fetch", "send", "refused", "fetch", "send", "end"], [None, None]),
    ([(401, NONCE_CHALLENGE), (401, INVALID_TOKEN), (401, INVALID_TOKEN)],
     ["fetch", "send", "send", "refused", "fetch", "send", "end"], [None, "rs-1", "rs-1"]),
    ([(400, {"DPoP-Nonce": "rs-1"})], ["fetch", "send", "end"], [None]),  # a 400 is not a nonce challenge
], ids=["ok", "nonce-retry", "same-nonce-again-is-a-token-problem", "reauth-once", "nonce-then-reauth-no-loop",
        "400-not-retried"])
def test_dpop_resource_flow(answers: list[tuple[int, dict[str, str]]], steps: list[str], nonces: list[str | None]) -> None:
    session = DPoPSession(DPoPKey(), FrozenClock())
    request = httpx.Request("POST", RS1 + "/data?x=1", content=b"body")
    flow, seen, sent, tokens = bearer_flow(request, session), [], [], iter(["t1", "t2"])
    step = advance(flow)
    while not isinstance(step, Done):
        if isinstance(step, Fetch):
            seen.append("fetch")
            step = advance(flow, next(tokens))
        elif isinstance(step, Refused):
            seen.append("refused")
            step = advance(flow)
        else:
            seen.append("send")
            token = step.headers["Authorization"].removeprefix("DPoP ")
            claims = decode_unverified(step.headers["DPoP"])[1]
            sent.append((token, claims.get("nonce")))
            assert (claims["htm"], claims["htu"], claims["ath"]) == ("POST", RS1 + "/data", access_token_hash(token))
            status, headers = answers[len(sent) - 1]
            step = advance(flow, httpx.Response(status, headers=headers))
    assert seen + ["end"] == steps
    assert [nonce for _, nonce in sent] == nonces


# -- resource requests: the project's client against the project's verifier, in memory --------------

def _protected(dpop_broker: DPoPBroker, clock: FrozenClock, **policy: Any) -> BearerMiddleware:
    verifier = ResourceVerifier(ISS, RS1, clock=clock, dpop=DPoPPolicy(**policy),
                                http=httpx.AsyncClient(transport=httpx.MockTransport(dpop_broker.handler)))
    return BearerMiddleware(echo_app, verifier, scopes=["read"], realm="api")


def test_client_and_verifier_in_memory(make: Any, dpop_broker: DPoPBroker, clock: FrozenClock) -> None:
    client = make()
    app = _protected(dpop_broker, clock, required=True, external_url=RS1)

    async def run() -> list[Any]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=RS1, auth=client.auth()) as rs:
            first, second = await rs.get("/data"), await rs.post("/data", content=b"x")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=RS2, auth=client.auth()) as other:
            wrong_host = await other.get("/data")  # the proof names RS2: this server is RS1 (external_url)
        return [first.status_code, first.json()["client_id"], second.status_code, wrong_host.status_code,
                wrong_host.json()["error"]]

    # One token for both requests; each request its own proof (the verifier refuses replays).
    assert asyncio.run(run()) == [200, "c1", 200, 401, "invalid_dpop_proof"]
    assert len(dpop_broker.proofs) == 2  # the first token, then one re-authentication after the 401


def test_client_follows_the_verifiers_nonces(make: Any, dpop_broker: DPoPBroker, clock: FrozenClock) -> None:
    """RFC 9449 §9 against the project's verifier: one 401 use_dpop_nonce, a retry with the nonce,
    then the nonce kept from the answers for the next requests (no second 401)."""
    client = make()
    nonces = ResourceNonces(b"n" * 32, clock=clock)
    app = _protected(dpop_broker, clock, nonces=nonces)
    seen: list[tuple[int, str | None]] = []

    async def record(response: httpx.Response) -> None:
        seen.append((response.status_code, decode_unverified(response.request.headers["dpop"])[1].get("nonce")))

    async def run() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=RS1, auth=client.auth(),
                                     event_hooks={"response": [record]}) as rs:
            return [(await rs.get("/data")).status_code, (await rs.get("/data")).status_code]

    assert asyncio.run(run()) == [200, 200]
    nonce = nonces.current()
    assert seen == [(401, None), (200, nonce), (200, nonce)]
    assert len(dpop_broker.proofs) == 1  # the nonce retry is not a re-authentication
