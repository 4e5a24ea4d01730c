"""DPoP (RFC 9449) against independent implementations, with the npm packages pinned in
tests/interop/node/package.json (tests/interop/node/dpop.mjs):

- openid-client 6 as the DPoP client: ``getDPoPHandle`` + ``clientCredentialsGrant({DPoP})`` against
  the broker (with and without server nonces: openid-client retries ``use_dpop_nonce`` itself), then
  ``fetchProtectedResource({DPoP})`` against a resource server protected by the project's verifier;
- oauth4webapi's ``validateJwtAccessToken`` with ``requireDPoP`` as the verifier, given a token from
  the broker and a proof from the project's client library.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey

from app.keystore import public_jwk
from scripts.processes import register_clients, start_broker
from tests.dpop_resource import DPoPResourceServer
from tests.helpers import RS1
from tests.interop.conftest import InteropBroker, NodeClients
from token_broker_client import BrokerClient
from token_broker_jose.dpop import create_proof, jwk_thumbprint

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def nonce_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InteropBroker]:
    """A broker with server-provided DPoP nonces on (RFC 9449 §8)."""
    tmp = tmp_path_factory.mktemp("interop-nonce-broker")
    process = start_broker(tmp / "keys", tmp / "broker.log", env={"BROKER_DPOP_NONCE": "true"}, timeout=30)
    try:
        yield InteropBroker(process, tmp / "keys", process.url)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def resource(interop_broker: InteropBroker) -> Iterator[DPoPResourceServer]:
    server = DPoPResourceServer(interop_broker.issuer).start()
    try:
        yield server
    finally:
        server.stop()


def _register(broker: InteropBroker, tmp_path: Path, client_id: str) -> tuple[Any, dict[str, Any]]:
    """A new ES256 client key registered as ``client_id``; (key, the Node script's config)."""
    key = ECKey.generate_key("P-256")
    kid = client_id + "-1"
    register_clients(broker.process.url, broker.keys_dir / "admin.jwk",
                     [{"client_id": client_id, "jwks": {"keys": [public_jwk(key, alg="ES256", kid=kid)]},
                       "scopes": ["read", "write"], "default_scopes": ["read"], "audiences": [RS1],
                       "default_audience": RS1}])
    key_file = tmp_path / "client.jwk"
    key_file.touch(mode=0o600)
    key_file.write_text(json.dumps({**key.as_dict(private=True), "alg": "ES256", "kid": kid}))
    return key, {"issuer": broker.issuer, "client_id": client_id, "key_file": str(key_file), "scope": "read",
                 "resource": RS1}


def test_openid_client_dpop_against_the_broker_and_the_verifier(
        interop_broker: InteropBroker, resource: DPoPResourceServer, node_clients: NodeClients, tmp_path: Path) -> None:
    _, config = _register(interop_broker, tmp_path, "interop-dpop-openid-client")
    result = node_clients.run({**config, "recipe": "openid-client", "resource_url": resource.url + "/data"}, tmp_path,
                              script="dpop.mjs")
    assert result["ok"] is True, result
    jkt = jwk_thumbprint(result["jwk"])
    tokens = result["tokens"]
    assert (tokens["token_type"].lower(), interop_broker.verify(tokens["access_token"])["cnf"]) == ("dpop", {"jkt": jkt})
    # Two calls, each with its own proof: the verifier's replay check passes both.
    assert result["calls"] == [{"status": 200, "body": {"client_id": "interop-dpop-openid-client", "jkt": jkt}}] * 2


def test_openid_client_dpop_with_broker_nonces(nonce_broker: InteropBroker, node_clients: NodeClients,
                                              tmp_path: Path) -> None:
    _, config = _register(nonce_broker, tmp_path, "interop-dpop-nonce")
    result = node_clients.run({**config, "recipe": "openid-client"}, tmp_path, script="dpop.mjs")
    assert result["ok"] is True, result
    claims = nonce_broker.verify(result["tokens"]["access_token"])
    assert claims["cnf"] == {"jkt": jwk_thumbprint(result["jwk"])}


def _project_client(broker: InteropBroker, tmp_path: Path, client_id: str) -> BrokerClient:
    key, _ = _register(broker, tmp_path, client_id)
    return BrokerClient(broker.issuer, client_id, key, alg="ES256", kid=client_id + "-1", dpop=True)


URL = "https://api.example.test/orders?page=2"
VALIDATE_ROWS = [
    ("accepted", lambda c, t: c.dpop.proof("GET", URL, access_token=t), None),
    ("proof-from-another-key", lambda c, t: create_proof(ECKey.generate_key("P-256"), alg="ES256", htm="GET", htu=URL,
                                                         access_token=t), "JWT Access Token confirmation mismatch"),
    ("wrong-htu", lambda c, t: c.dpop.proof("GET", "https://api.example.test/other", access_token=t),
     "DPoP Proof htu mismatch"),
    ("wrong-htm", lambda c, t: c.dpop.proof("POST", URL, access_token=t), "DPoP Proof htm mismatch"),
    ("wrong-ath", lambda c, t: c.dpop.proof("GET", URL, access_token=t + "x"), "DPoP Proof ath mismatch"),
]


@pytest.mark.parametrize(("row", "build", "refusal"), VALIDATE_ROWS, ids=[r[0] for r in VALIDATE_ROWS])
def test_oauth4webapi_validates_a_broker_token_with_a_project_proof(
        interop_broker: InteropBroker, node_clients: NodeClients, tmp_path: Path, row: str, build: Any,
        refusal: str | None) -> None:
    client = _project_client(interop_broker, tmp_path, "interop-dpop-o4w-" + row)
    token = client.get_token()
    metadata = httpx.get(interop_broker.issuer + "/.well-known/oauth-authorization-server", timeout=10).json()
    result = node_clients.run({"recipe": "validate", "issuer": metadata["issuer"], "jwks_uri": metadata["jwks_uri"],
                               "audience": RS1, "url": URL, "method": "GET", "access_token": token,
                               "proof": build(client, token)}, tmp_path, script="dpop.mjs")
    if refusal is None:
        assert result["ok"] is True, result
        assert (result["claims"]["client_id"], result["claims"]["cnf"]) == (client.client_id,
                                                                              {"jkt": client.dpop_key.jkt})
    else:
        assert (result["ok"], result["message"]) == (False, refusal)
