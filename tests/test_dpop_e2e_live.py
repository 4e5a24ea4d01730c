"""DPoP end to end (RFC 9449): the project's client library with DPoP on gets a DPoP-bound token from
a real broker process and calls a resource server protected by the project's verifier, served by
uvicorn on loopback; the refusals of RFC 9449 §7.1 through real HTTP, exact status and challenge.

The broker runs twice (module scope): with its defaults, and with server nonces on
(``BROKER_DPOP_NONCE=true``), where the client's one ``use_dpop_nonce`` retry is exercised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.keystore import public_jwk
from scripts.processes import BrokerProcess, register_clients, start_broker
from tests.dpop_resource import DPoPResourceServer
from tests.helpers import RS1, decode_unverified, new_key
from token_broker_client import BrokerClient, BrokerError, HttpSettings
from token_broker_jose.dpop import create_proof

pytestmark = pytest.mark.live

ALGS = "ES256 ES384 PS256 RS256 Ed25519"
BEARER_BARE = 'Bearer realm="api"'
DPOP_BARE = f'DPoP realm="api", algs="{ALGS}"'
TOKEN_DESCRIPTION = "The access token is invalid or expired."


class Deployment:
    """A broker process and its admin key; ``register`` adds a client with a new ES256 key."""

    def __init__(self, process: BrokerProcess, keys_dir: Path) -> None:
        self.process = process
        self.keys_dir = keys_dir
        self.issuer = process.url

    def register(self, client_id: str, **metadata: Any) -> Any:
        key = new_key("ES256")
        body = {"client_id": client_id, "jwks": {"keys": [public_jwk(key, alg="ES256", kid=client_id + "-1")]},
                "scopes": ["read", "write"], "default_scopes": ["read"], "audiences": [RS1], "default_audience": RS1,
                **metadata}
        register_clients(self.issuer, self.keys_dir / "admin.jwk", [body])
        return key

    def client(self, client_id: str, **kw: Any) -> BrokerClient:
        key = self.register(client_id, **kw.pop("metadata", {}))
        return BrokerClient(self.issuer, client_id, key, alg="ES256", kid=client_id + "-1", **kw)


def _deployment(tmp: Path, env: dict[str, str] | None = None) -> Iterator[Deployment]:
    process = start_broker(tmp / "keys", tmp / "broker.log", env=env, timeout=30)
    try:
        yield Deployment(process, tmp / "keys")
    finally:
        process.stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from _deployment(tmp_path_factory.mktemp("dpop-broker"))


@pytest.fixture(scope="module")
def nonce_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from _deployment(tmp_path_factory.mktemp("dpop-nonce-broker"), {"BROKER_DPOP_NONCE": "true"})


@pytest.fixture(scope="module")
def resource(broker: Deployment) -> Iterator[DPoPResourceServer]:
    server = DPoPResourceServer(broker.issuer).start()
    try:
        yield server
    finally:
        server.stop()


def answer(response: httpx.Response) -> tuple[int, list[str], Any]:
    return response.status_code, response.headers.get_list("www-authenticate"), response.json()


def proof_refused(description: str) -> tuple[int, list[str], Any]:
    challenge = f'DPoP realm="api", error="invalid_dpop_proof", error_description="{description}", algs="{ALGS}"'
    return 401, [BEARER_BARE, challenge], {"error": "invalid_dpop_proof", "error_description": description}


# -- done when: the bound token, the resource call ----------------------------------------------------

def test_client_gets_a_dpop_bound_token_and_calls_the_resource(broker: Deployment, resource: DPoPResourceServer) -> None:
    client = broker.client("dpop-e2e", dpop=True)
    token = client.get_token()
    claims = decode_unverified(token)[1]
    assert (claims["client_id"], claims["cnf"]) == ("dpop-e2e", {"jkt": client.dpop_key.jkt})
    with httpx.Client(auth=client.auth(), base_url=resource.url, timeout=10) as http:
        first, second = http.get("/data"), http.post("/data", content=b"payload")
    assert (first.status_code, first.json()) == (200, {"client_id": "dpop-e2e", "jkt": client.dpop_key.jkt})
    assert (second.status_code, second.json()) == (200, {"body": "payload"})


def test_async_client_calls_the_resource(broker: Deployment, resource: DPoPResourceServer) -> None:
    client = broker.client("dpop-e2e-async", dpop=True)

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(auth=client.auth(), base_url=resource.url, timeout=10) as http:
            return await http.get("/data")

    assert asyncio.run(run()).status_code == 200


# -- done when: the refusals, through real HTTP ----------------------------------------------------------

class Caller:
    """Hand-built requests with a real DPoP-bound token from the broker."""

    def __init__(self, client: BrokerClient, resource: DPoPResourceServer) -> None:
        self.client = client
        self.resource = resource
        self.token = client.get_token()

    def proof(self, htm: str = "GET", path: str = "/data", *, key: Any = None, token: str | None = None,
              iat_offset: float = 0, url: str | None = None) -> str:
        dpop = self.client.dpop_key
        return create_proof(key or dpop.key, alg="ES256", htm=htm, htu=url or self.resource.url + path,
                            access_token=token or self.token, now=self.client.dpop.clock() + iat_offset)

    def get(self, proofs: list[str], scheme: str = "DPoP") -> httpx.Response:
        headers = [("Authorization", f"{scheme} {self.token}"), *(("DPoP", p) for p in proofs)]
        return httpx.get(self.resource.url + "/data", headers=headers, timeout=10)


@pytest.fixture(scope="module")
def caller(broker: Deployment, resource: DPoPResourceServer) -> Caller:
    return Caller(broker.client("dpop-e2e-refusals", dpop=True), resource)


REFUSALS = [
    ("without-its-proof", lambda c: c.get([]), proof_refused("exactly one DPoP proof header is required")),
    ("two-proofs", lambda c: c.get([c.proof(), c.proof()]), proof_refused("exactly one DPoP proof header is required")),
    ("proof-from-another-key", lambda c: c.get([c.proof(key=new_key("ES256"))]),
     proof_refused("the DPoP proof is not signed by the key the token is bound to")),
    ("wrong-htu", lambda c: c.get([c.proof(path="/other")]),
     proof_refused("the DPoP proof's htu does not match the URL of this request")),
    ("wrong-htu-host", lambda c: c.get([c.proof(url="https://api.example.test/data")]),
     proof_refused("the DPoP proof's htu does not match the URL of this request")),
    ("wrong-htm", lambda c: c.get([c.proof("POST")]),
     proof_refused("the DPoP proof's htm does not match the method of this request")),
    ("wrong-ath", lambda c: c.get([c.proof(token="another.access.token")]),
     proof_refused("the DPoP proof's ath does not match the access token")),
    ("stale-iat", lambda c: c.get([c.proof(iat_offset=-300)]), proof_refused("the DPoP proof is older than 60 seconds")),
    ("presented-as-bearer", lambda c: c.get([], scheme="Bearer"),
     (401, [f'Bearer realm="api", error="invalid_token", error_description="{TOKEN_DESCRIPTION}"', DPOP_BARE],
      {"error": "invalid_token", "error_description": TOKEN_DESCRIPTION})),
]


@pytest.mark.parametrize(("send", "expected"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals(caller: Caller, send: Any, expected: Any) -> None:
    assert answer(send(caller)) == expected


def test_replayed_proof(caller: Caller) -> None:
    proof = caller.proof()
    assert caller.get([proof]).status_code == 200
    assert answer(caller.get([proof])) == proof_refused("the DPoP proof has been used before")


# -- the broker side as the client sees it ---------------------------------------------------------------

def test_a_client_registered_for_dpop_gets_no_bearer_token(broker: Deployment) -> None:
    key = broker.register("dpop-e2e-required", dpop_bound_access_tokens=True)
    bearer_client = BrokerClient(broker.issuer, "dpop-e2e-required", key, alg="ES256", kid="dpop-e2e-required-1")
    with pytest.raises(BrokerError) as err:
        bearer_client.get_token()
    assert (err.value.error, err.value.status_code) == ("invalid_dpop_proof", 400)
    dpop_client = BrokerClient(broker.issuer, "dpop-e2e-required", key, alg="ES256", kid="dpop-e2e-required-1", dpop=True)
    assert decode_unverified(dpop_client.get_token())[1]["cnf"] == {"jkt": dpop_client.dpop_key.jkt}


def test_broker_nonce_is_retried_once_and_kept(nonce_broker: Deployment) -> None:
    answers: list[tuple[int, str | None]] = []

    def record(response: httpx.Response) -> None:
        if response.request.url.path == "/token":
            answers.append((response.status_code, response.request.headers.get("dpop") and
                            decode_unverified(response.request.headers["dpop"])[1].get("nonce")))

    with httpx.Client(event_hooks={"response": [record]}, timeout=10) as raw:
        client = nonce_broker.client("dpop-e2e-nonce", dpop=True, http=HttpSettings(client=raw))
        first = client.get_token()
        assert decode_unverified(first)[1]["cnf"] == {"jkt": client.dpop_key.jkt}
        nonce = client.dpop.nonce(nonce_broker.issuer + "/token")
        client.invalidate(first)
        client.get_token()  # the kept nonce: no use_dpop_nonce this time
    # The first proof has no nonce (400 use_dpop_nonce), the retry and the next request carry it.
    assert (nonce is not None, answers) == (True, [(400, None), (200, nonce), (200, nonce)])
