"""The README flow against real broker processes: embedded store and real Redis, plus interop
with a third-party OAuth client library configured from the metadata document alone."""

from __future__ import annotations

import httpx
import pytest

from app.oauth.access_token import verification_keys_from_jwks, verify_access_token
from tests.helpers import ISS, RS1, TestClient, form
from tests.test_replay import _admin_register

pytestmark = pytest.mark.live


def _flow(base_url: str, keys_dir) -> None:
    client = TestClient("svc-a")
    _admin_register(base_url, keys_dir, client)
    assertion = client.assertion()
    r = httpx.post(base_url + "/token", data=form(assertion))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    token = r.json()["access_token"]
    again = httpx.post(base_url + "/token", data=form(assertion))
    assert (again.status_code, again.json()) == (
        401, {"error": "invalid_client", "error_description": "Client authentication failed."}
    )
    meta = httpx.get(base_url + "/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == ISS
    jwks = httpx.get(base_url + "/jwks.json").json()
    import time

    claims = verify_access_token(token, verification_keys_from_jwks(jwks), issuer=ISS, audience=RS1, now=time.time())
    assert claims["client_id"] == "svc-a" and claims["scope"] == "read"


def test_embedded_store_process(spawn_broker):
    bp = spawn_broker()
    _flow(bp.url, spawn_broker.keys_dir)
    logs = bp.logs()
    assert any(e.get("event") == "broker.embedded_store" for e in logs)


def test_real_redis_process(real_redis, spawn_broker):
    bp = spawn_broker(redis_url=real_redis.url)
    _flow(bp.url, spawn_broker.keys_dir)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_authlib_client_configured_from_metadata(spawn_broker):
    """A third-party client (Authlib) discovers the token endpoint and gets a token.

    Authlib puts its ``token_endpoint`` argument of ``PrivateKeyJWT`` into ``aud``; giving it the
    issuer is how an Authlib user meets the RFC 10070 audience rule.
    """
    from authlib.integrations.httpx_client import OAuth2Client
    from authlib.oauth2.rfc7523 import PrivateKeyJWT

    bp = spawn_broker()
    client = TestClient("authlib-svc")
    _admin_register(bp.url, spawn_broker.keys_dir, client)
    meta = httpx.get(bp.url + "/.well-known/oauth-authorization-server").json()
    assert "private_key_jwt" in meta["token_endpoint_auth_methods_supported"]
    assert "ES256" in meta["token_endpoint_auth_signing_alg_values_supported"]
    token_endpoint = meta["token_endpoint"].replace(ISS, bp.url)  # the issuer is an identifier, not where it listens
    import time

    # Authlib's default assertion lifetime is an hour; the broker caps it at 300 s.
    auth = PrivateKeyJWT(meta["issuer"], claims={"exp": int(time.time()) + 60}, headers={"kid": client.kid}, alg="ES256")
    with OAuth2Client(
        client_id="authlib-svc",
        client_secret=client.key,
        token_endpoint_auth_method=auth,
        scope="read write",
    ) as session:
        token = session.fetch_token(token_endpoint, grant_type="client_credentials")
    assert token["token_type"] == "Bearer" and token["scope"] == "read write"
