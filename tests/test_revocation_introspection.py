"""RFC 7009 revocation and RFC 7662 introspection (docs/token-cache.md), in process on fakeredis, frozen clock."""

from __future__ import annotations

import httpx
import pytest

from app.keystore import generate_private_key
from app.oauth import errors
from app.oauth.access_token import AccessTokenClaims, TokenSigner
from app.service.token_cache import REVOKED
from tests.conftest import Broker
from tests.expect import assert_error, assert_invalid_client, assert_token, error_body
from tests.helpers import ISS, RS1, RS2, URN, TestClient, decode_unverified, form

INTROSPECTOR = TestClient("rs-1", scopes=("broker:introspect",), default_scopes=("broker:introspect",))
FORM = "application/x-www-form-urlencoded"
INACTIVE = {"active": False}


def post(broker: Broker, path: str, client: TestClient | None, assertion: str | None = None, **params: str) -> httpx.Response:
    data: dict[str, str] = {}
    if client is not None:
        data = {"client_assertion_type": URN, "client_assertion": assertion or client.assertion(broker.clock.now)}
    data.update(params)
    return broker.http.post(path, content=str(httpx.QueryParams(data)), headers={"content-type": FORM})


def revoke(broker: Broker, client: TestClient, token: str, **params: str) -> httpx.Response:
    r = post(broker, "/revoke", client, token=token, **params)
    assert (r.status_code, r.content) == (200, b""), r.text
    assert r.headers["cache-control"] == "no-store"
    return r


def introspect(broker: Broker, token: str, caller: TestClient = INTROSPECTOR) -> dict:
    r = post(broker, "/introspect", caller, token=token)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-type"].split(";")[0] == "application/json"
    return r.json()


@pytest.fixture
def rs(broker: Broker) -> TestClient:
    broker.register(INTROSPECTOR)
    return INTROSPECTOR


def token_for(broker: Broker, client: TestClient, **params: str) -> str:
    return assert_token(broker.get_token(client, **params))["access_token"]


def test_metadata_lists_both_endpoints(broker):
    meta = broker.http.get("/.well-known/oauth-authorization-server").json()
    assert meta["revocation_endpoint"] == ISS + "/revoke"
    assert meta["introspection_endpoint"] == ISS + "/introspect"
    for name in ("revocation", "introspection"):
        assert meta[f"{name}_endpoint_auth_methods_supported"] == ["private_key_jwt"]
        assert meta[f"{name}_endpoint_auth_signing_alg_values_supported"] == list(broker.settings.assertion_algs)


def test_introspection_of_an_active_token(broker, c1, rs):
    token = token_for(broker, c1, scope="read write", resource=RS2)
    claims = decode_unverified(token)[1]
    assert introspect(broker, token) == {
        "active": True, "scope": "read write", "client_id": "c1", "sub": "c1", "aud": RS2, "iss": ISS,
        "exp": claims["exp"], "iat": claims["iat"], "jti": claims["jti"], "token_type": "Bearer",
    }


def test_revoked_token_is_inactive_and_never_served_again(broker, c1, rs):
    token = token_for(broker, c1)
    assert token_for(broker, c1) == token  # cached
    revoke(broker, c1, token, token_type_hint="access_token")
    assert introspect(broker, token) == INACTIVE
    fresh = token_for(broker, c1)
    assert fresh != token
    assert introspect(broker, fresh)["active"] is True
    assert token_for(broker, c1) == fresh
    assert broker.app.state.metrics.value(REVOKED) == 1
    revoked = [e for e in broker.logs() if e.get("event") == "token.revoked"]
    assert len(revoked) == 1 and revoked[0]["client_id"] == "c1"
    assert token not in broker.log_text()


def test_revocation_lasts_until_the_token_expires(broker, c1, rs):
    token = token_for(broker, c1)
    revoke(broker, c1, token)
    broker.clock.advance(299)
    assert introspect(broker, token) == INACTIVE
    redis = broker.app.state.token_cache.store.redis
    ttls = [broker.call(redis.pttl, k) for k in broker.call(redis.keys, "*:revoked:*")]
    assert len(ttls) == 1 and 299_000 < ttls[0] <= 300_000  # the token's own lifetime (exp - now at revocation)


def test_client_cannot_revoke_another_clients_token(broker, c1, rs):
    """RFC 7009 §2.1: the token must belong to the caller; otherwise 200 and nothing happens."""
    c2 = TestClient("c2")
    broker.register(c2)
    token = token_for(broker, c1)
    revoke(broker, c2, token)
    assert introspect(broker, token)["active"] is True
    assert token_for(broker, c1) == token  # still served from the cache
    assert broker.app.state.metrics.value(REVOKED) == 0
    assert any(e.get("event") == "revocation.foreign_token" for e in broker.logs())


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "x" * 9000, "eyJhbGciOiJub25lIn0.e30."],
    ids=["garbage", "three-segments", "oversized", "alg-none"],
)
def test_revoking_something_that_is_not_our_token_is_a_quiet_200(broker, c1, token):
    revoke(broker, c1, token, token_type_hint="refresh_token")
    assert broker.app.state.metrics.value(REVOKED) == 0


def _foreign_tokens(broker: Broker) -> dict[str, str]:
    now = int(broker.clock.now)
    ours = broker.app.state.signer()
    key = generate_private_key("ES256")
    stranger = TokenSigner(key, ours.kid, "ES256")  # same kid, another key
    claims = AccessTokenClaims(ISS, "c1", "c1", RS1, "read", "foreign-jti-000000000", now, now + 300)
    other_iss = AccessTokenClaims("https://other-issuer.test", "c1", "c1", RS1, "read", claims.jti, now, now + 300)
    return {
        "malformed": "not-a-token",
        "empty-segments": "..",
        "foreign-key": stranger.sign(claims),
        "foreign-issuer": ours.sign(other_iss),
        "client-assertion": TestClient("c1").assertion(now),
        "unknown-client": ours.sign(AccessTokenClaims(ISS, "ghost", "ghost", RS1, "read", claims.jti, now, now + 300)),
    }


@pytest.mark.parametrize(
    "kind", ["malformed", "empty-segments", "foreign-key", "foreign-issuer", "client-assertion", "unknown-client"]
)
def test_introspection_inactive_for_foreign_or_malformed_tokens(broker, c1, rs, kind):
    assert introspect(broker, _foreign_tokens(broker)[kind]) == INACTIVE


def test_introspection_inactive_when_expired(broker, c1, rs):
    token = token_for(broker, c1)
    broker.clock.advance(299)
    assert introspect(broker, token)["active"] is True
    broker.clock.advance(1)
    assert introspect(broker, token) == INACTIVE


def test_introspection_inactive_when_client_disabled(broker, c1, rs):
    token = token_for(broker, c1)
    broker.update("c1", enabled=False)
    assert introspect(broker, token) == INACTIVE


def test_introspection_needs_the_introspect_scope(broker, c1):
    token = token_for(broker, c1)
    r = post(broker, "/introspect", c1, token=token)
    assert (r.status_code, r.json()) == (403, error_body("access_denied", errors.AccessDenied))
    assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("path", ["/revoke", "/introspect"])
def test_client_authentication_is_the_token_endpoints(broker, c1, rs, path):
    caller = rs if path == "/introspect" else c1
    token = token_for(broker, c1)
    now = broker.clock.now
    used = caller.assertion(now)
    assert post(broker, path, caller, used, token=token).status_code == 200
    # replayed assertion, even across endpoints: the jti store is shared with /token
    assert_invalid_client(post(broker, path, caller, used, token=token))
    assert_invalid_client(broker.token(form(used)))
    shared = caller.assertion(now)
    assert_token(broker.token(form(shared)))
    assert_invalid_client(post(broker, path, caller, shared, token=token))
    for bad in (
        caller.assertion(now, aud=ISS + path),
        caller.assertion(now, exp=now - 30, iat=now - 60),
        caller.assertion(now, key=generate_private_key("ES256")),
    ):
        assert_invalid_client(post(broker, path, caller, bad, token=token))
    assert_invalid_client(post(broker, path, None, token=token), "client_auth_missing")
    # only the first, genuine call did anything
    assert introspect(broker, token)["active"] is (path == "/introspect")
    assert broker.app.state.metrics.value(REVOKED) == (path == "/revoke")


@pytest.mark.parametrize("path", ["/revoke", "/introspect"])
@pytest.mark.parametrize(
    ("case", "status", "code", "reason"),
    [("no-token", 400, "invalid_request", "token_missing"), ("json-body", 400, "invalid_request", "content_type_json"),
     ("basic-auth-too", 400, "invalid_request", "multiple_auth_methods"),
     ("repeated-token", 400, "invalid_request", None)],
    ids=["no-token", "json-body", "basic-auth-too", "repeated-token"],
)
def test_bad_requests(broker, c1, rs, path, case, status, code, reason):
    caller = rs if path == "/introspect" else c1
    auth = {"client_assertion_type": URN, "client_assertion": caller.assertion(broker.clock.now)}
    body, headers = str(httpx.QueryParams({**auth, "token": "t"})), {"content-type": FORM}
    if case == "no-token":
        body = str(httpx.QueryParams(auth))
    elif case == "json-body":
        headers = {"content-type": "application/json"}
    elif case == "basic-auth-too":
        headers["authorization"] = "Basic YTpi"
    elif case == "repeated-token":
        body += "&token=u"
    r = broker.http.post(path, content=body, headers=headers)
    if reason is None:  # repeated-token: the answer names the parameter
        assert (r.status_code, r.json()) == (status, {"error": code, "error_description": (
            "The parameter token appears more than once: send each parameter once (only resource may repeat).")})
    else:
        assert_error(r, status, code, reason=reason)


@pytest.mark.parametrize("path", ["/revoke", "/introspect"])
def test_other_methods(broker, path):
    r = broker.http.get(path)
    assert (r.status_code, r.headers["allow"]) == (405, "POST")


def test_revoked_admin_token_is_refused_by_the_admin_api(broker):
    from app.keystore import import_private_jwk, read_json

    data = read_json(broker.settings.keys_dir / "admin.jwk")
    admin = TestClient("broker-admin", key=import_private_jwk(data), kid=data["kid"])
    r = broker.token(form(admin.assertion(broker.clock.now), scope="broker:admin", resource=broker.settings.admin_audience))
    assert r.status_code == 200, r.text
    bearer = {"authorization": "Bearer " + r.json()["access_token"]}
    assert broker.http.get("/admin/clients", headers=bearer).status_code == 200
    revoke(broker, admin, r.json()["access_token"])
    refused = broker.http.get("/admin/clients", headers=bearer)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith('Bearer realm="token-broker", error="invalid_token"')
