"""docs/integrate.md's Node recipes (tests/interop/node/client.mjs), run with the npm packages
pinned in tests/interop/node/package.json against a live broker:

- openid-client 6: ``discovery()`` of the RFC 8414 metadata, ``PrivateKeyJwt`` (its assertion:
  aud = the issuer, 60 s, the key's kid, a fresh jti) and ``clientCredentialsGrant``;
- jose by hand: ``SignJWT`` and ``fetch``; the same assertion sent twice is refused the second time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey, OKPKey

from app.keystore import public_jwk
from tests.helpers import RS1, RS2
from tests.interop.conftest import INVALID_CLIENT, InteropBroker, NodeClients

pytestmark = pytest.mark.live


def _client(broker: InteropBroker, tmp_path: Path, client_id: str, alg: str) -> dict[str, Any]:
    """Register ``client_id`` with a new key; the Node script's config (its private JWK in a 0600 file)."""
    key = ECKey.generate_key("P-256") if alg == "ES256" else OKPKey.generate_key("Ed25519")
    kid = client_id + "-1"
    broker.register(client_id, public_jwk(key, alg=alg, kid=kid))
    key_file = tmp_path / "client.jwk"
    key_file.touch(mode=0o600)
    key_file.write_text(json.dumps({**key.as_dict(private=True), "alg": alg, "kid": kid}))
    return {"issuer": broker.issuer, "client_id": client_id, "key_file": str(key_file)}


def _claims(broker: InteropBroker, token: str, audience: str) -> tuple[str, str, str, str]:
    claims = broker.verify(token, audience)
    return claims["iss"], claims["client_id"], claims["aud"], claims["scope"]


@pytest.mark.parametrize("alg", ["ES256", "Ed25519"])
def test_openid_client_recipe(interop_broker: InteropBroker, node_clients: NodeClients, tmp_path: Path, alg: str) -> None:
    client_id = f"interop-openid-client-{alg.lower()}"
    config = _client(interop_broker, tmp_path, client_id, alg)
    result = node_clients.run({**config, "recipe": "openid-client", "scope": "read write", "resource": RS2,
                               "insecure_http": True}, tmp_path)
    assert result["ok"] is True, result
    tokens = result["tokens"]
    assert (sorted(tokens), tokens["token_type"], tokens["scope"], tokens["expires_in"]) == (
        ["access_token", "expires_in", "scope", "token_type"], "bearer", "read write", 900)
    assert _claims(interop_broker, tokens["access_token"], RS2) == (interop_broker.issuer, client_id, RS2, "read write")


def test_jose_recipe_and_replay(interop_broker: InteropBroker, node_clients: NodeClients, tmp_path: Path) -> None:
    config = _client(interop_broker, tmp_path, "interop-jose", "ES256")
    result = node_clients.run({**config, "recipe": "jose", "scope": "read", "resource": RS1,
                               "repeat_assertion": True}, tmp_path)
    first, replayed = result["responses"]
    assert (first["status"], sorted(first["body"]), first["body"]["token_type"], first["body"]["scope"]) == (
        200, ["access_token", "expires_in", "scope", "token_type"], "Bearer", "read")
    assert _claims(interop_broker, first["body"]["access_token"], RS1) == (interop_broker.issuer, "interop-jose", RS1, "read")
    assert replayed == {"status": 401, "body": INVALID_CLIENT}
    assert [e["reason"] for e in interop_broker.events("token.rejected", "interop-jose")] == ["jti_replayed"]
