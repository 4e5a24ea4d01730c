"""The resource server's answers, as RFC 6750 §3 says (docs/attack-matrix.md, "Resource server")."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

import pytest

from tests.helpers import ISS, RS2, TestClient, b64u, new_key, raw
from tests.resource.conftest import BROKER_KID, Authority

INVALID_TOKEN = {"error": "invalid_token", "error_description": "The access token is invalid or expired."}
CHALLENGE_INVALID = 'Bearer realm="api", error="invalid_token", error_description="The access token is invalid or expired."'
INVALID_REQUEST = {"error": "invalid_request", "error_description": "Access tokens are accepted only in the Authorization header."}


def bearer(token: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


def assert_invalid_token(response: Any) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == CHALLENGE_INVALID
    assert response.json() == INVALID_TOKEN
    assert response.headers["cache-control"] == "no-store"


def test_valid_token_reaches_the_app_with_the_client_not_a_user(authority: Authority, call: Any) -> None:
    response = call(headers=bearer(authority.token(scope="read write")))
    assert response.status_code == 200
    # The RS authorises on client_id and scope; the client is never made a "user"
    # (attack matrix: `rs-client-not-a-user`).
    assert response.json() == {"client_id": "c1", "scopes": ["read", "write"], "user": None}


# -- typ confusion (attack matrix: `rs-typ-confusion`) -------------------------------------------

def _client_assertion(authority: Authority) -> str:
    client = TestClient("c1", kid=BROKER_KID, key=authority.key)  # broker key, so only typ differs
    return client.assertion(authority.clock.now, aud=ISS)


@pytest.mark.parametrize("typ", [None, "JWT", "client-authentication+jwt", "jwt", "at+JWT+x"], ids=lambda t: f"typ={t}")
def test_typ_other_than_at_jwt(authority: Authority, call: Any, typ: str | None) -> None:
    header = {"alg": "ES256", "kid": BROKER_KID, **({"typ": typ} if typ else {})}
    assert_invalid_token(call(headers=bearer(authority.token(header=header))))


def test_client_assertion_is_not_an_access_token(authority: Authority, call: Any) -> None:
    assert_invalid_token(call(headers=bearer(_client_assertion(authority))))


def test_application_at_jwt_typ_is_accepted(authority: Authority, call: Any) -> None:
    header = {"alg": "ES256", "kid": BROKER_KID, "typ": "application/at+jwt"}
    assert call(headers=bearer(authority.token(header=header))).status_code == 200


# -- claims (attack matrix: `rs-claim-checks`) ----------------------------------------------------

CLAIM_ROWS = [
    ("iss-other", lambda now: {"iss": "https://evil.test"}),
    ("iss-trailing-slash", lambda now: {"iss": ISS + "/"}),
    ("aud-other-rs", lambda now: {"aud": RS2}),
    ("aud-array-without-rs", lambda now: {"aud": [RS2, "https://x.test"]}),
    ("exp-past-leeway", lambda now: {"exp": now - 11}),
    ("exp-at-leeway-edge", lambda now: {"exp": now - 10}),
    ("nbf-future", lambda now: {"nbf": now + 11}),
    ("iat-future", lambda now: {"iat": now + 11}),
    ("sub-missing", lambda now: {"sub": None}),
    ("client_id-missing", lambda now: {"client_id": None}),
    ("jti-missing", lambda now: {"jti": None}),
    ("scope-not-string", lambda now: {"scope": ["read"]}),
    ("exp-missing", lambda now: {"exp": None}),
]


@pytest.mark.parametrize("build", [r[1] for r in CLAIM_ROWS], ids=[r[0] for r in CLAIM_ROWS])
def test_claim_checks(authority: Authority, call: Any, build: Any) -> None:
    assert_invalid_token(call(headers=bearer(authority.token(**build(int(authority.clock.now))))))


def test_expiry_within_leeway_is_accepted(authority: Authority, call: Any) -> None:
    now = int(authority.clock.now)
    assert call(headers=bearer(authority.token(exp=now - 9))).status_code == 200


# -- signature and alg (attack matrix: `rs-signature-and-alg`) -------------------------------------

def _hs256_with_public_key(authority: Authority) -> str:
    pem = authority.key.as_pem(private=False)
    h = b64u(json.dumps({"alg": "HS256", "kid": BROKER_KID, "typ": "at+jwt"}))
    p = b64u(json.dumps(authority.claims()))
    return f"{h}.{p}." + b64u(hmac.new(pem, f"{h}.{p}".encode(), hashlib.sha256).digest())


SIG_ROWS = [
    ("alg-none", lambda a: b64u('{"alg":"none","kid":"%s","typ":"at+jwt"}' % BROKER_KID) + "." + b64u(json.dumps(a.claims())) + "."),
    ("alg-None-sig", lambda a: b64u('{"alg":"None","kid":"%s","typ":"at+jwt"}' % BROKER_KID) + "." + b64u(json.dumps(a.claims())) + ".AAAA"),
    ("hs256-public-key", _hs256_with_public_key),
    ("es384-header-on-es256-key", lambda a: raw(json.dumps({"alg": "ES384", "kid": BROKER_KID, "typ": "at+jwt"}),
                                                  json.dumps(a.claims()), new_key("ES384"), "ES384")),
    ("non-broker-key-same-kid", lambda a: a.token(key=new_key("ES256"))),
    ("jwe-five-segments", lambda a: "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.AAAA.AAAA.AAAA.AAAA"),
    ("signature-stripped", lambda a: a.token().rsplit(".", 1)[0] + "."),
    ("extra-header-jwk", lambda a: a.token(header={"alg": "ES256", "kid": BROKER_KID, "typ": "at+jwt", "jku": "https://evil.test"})),
    ("garbage", lambda a: "not.a.jwt"),
]


@pytest.mark.parametrize("build", [r[1] for r in SIG_ROWS], ids=[r[0] for r in SIG_ROWS])
def test_signature_and_alg(authority: Authority, call: Any, build: Any) -> None:
    assert_invalid_token(call(headers=bearer(build(authority))))


def test_alg_outside_rs_allowlist(authority: Authority, clock: Any) -> None:
    """The JWKS publishes an RS256 key; this RS allows only ES256, so the key is never used."""
    import asyncio

    import httpx

    from tests.helpers import sign
    from token_broker_resource import ResourceVerifier
    from token_broker_resource.bearer import BearerError

    rsa = new_key("RS256")
    from app.keystore import public_jwk

    authority.keys.append(public_jwk(rsa, alg="RS256", kid="rsa-1"))
    verifier = ResourceVerifier(ISS, "https://api.example.test", clock=clock, algorithms=("ES256",),
                                http=httpx.AsyncClient(transport=httpx.MockTransport(authority.handler)))
    token = sign({"alg": "RS256", "kid": "rsa-1", "typ": "at+jwt"}, authority.claims(), rsa)
    with pytest.raises(BearerError) as err:
        asyncio.run(verifier.verify(token))
    assert (err.value.status, err.value.error) == (401, "invalid_token")
    assert asyncio.run(verifier.verify(authority.token())).client_id == "c1"


def test_unknown_kid_refetches_once_per_cooldown(authority: Authority, call: Any, clock: Any) -> None:
    assert call(headers=bearer(authority.token())).status_code == 200
    assert authority.jwks_fetches == 1
    unknown = [authority.token(header={"alg": "ES256", "kid": f"nope-{i}", "typ": "at+jwt"}) for i in range(20)]
    for token in unknown:
        assert_invalid_token(call(headers=bearer(token)))
    assert authority.jwks_fetches == 2  # one refresh for the whole flood
    clock.advance(31)
    assert_invalid_token(call(headers=bearer(unknown[0])))
    assert authority.jwks_fetches == 3  # the cooldown passed: one more


def test_rotated_broker_key_is_picked_up_by_the_unknown_kid_refetch(authority: Authority, call: Any) -> None:
    assert call(headers=bearer(authority.token())).status_code == 200
    from app.keystore import public_jwk

    new = new_key("ES256")
    authority.keys.append(public_jwk(new, alg="ES256", kid="broker-2"))
    token = authority.token(header={"alg": "ES256", "kid": "broker-2", "typ": "at+jwt"}, key=new)
    assert call(headers=bearer(token)).status_code == 200
    assert authority.jwks_fetches == 2


def test_broker_keys_unreachable_gives_503_not_401(authority: Authority, call: Any) -> None:
    authority.down = True
    response = call(headers=bearer(authority.token()))
    assert response.status_code == 503
    assert response.json() == {"error": "temporarily_unavailable", "error_description": "The token cannot be checked right now."}
    assert response.headers["retry-after"] == "5"
    assert response.headers["cache-control"] == "no-store"


def test_oversized_form_body_is_413(authority: Authority, call: Any) -> None:
    response = call("POST", content=b"a=" + b"x" * 70000, headers={
        **bearer(authority.token()), "content-type": "application/x-www-form-urlencoded"})
    assert (response.status_code, response.json()) == (413, {"error": "invalid_request"})


# -- scope (attack matrix: `rs-insufficient-scope`) ----------------------------------------------

def test_missing_scope_is_403_insufficient_scope(authority: Authority, call: Any) -> None:
    response = call(headers=bearer(authority.token(scope="read")), scopes=("read", "write"))
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == (
        'Bearer realm="api", error="insufficient_scope", '
        'error_description="The access token lacks the required scope.", scope="read write"'
    )
    assert response.json() == {"error": "insufficient_scope", "error_description": "The access token lacks the required scope."}


def test_scope_prefix_is_not_the_scope(authority: Authority, call: Any) -> None:
    assert call(headers=bearer(authority.token(scope="reader writes")), scopes=("read",)).status_code == 403


# -- transport (attack matrix: `rs-token-transport`) -------------------------------------------------

def test_no_token_is_a_bare_challenge(call: Any) -> None:
    response = call()
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="api"'
    assert response.json() == {}


def test_other_scheme_is_a_bare_challenge(call: Any) -> None:
    response = call(headers={"Authorization": "Basic YTpi"})
    assert (response.status_code, response.headers["www-authenticate"]) == (401, 'Bearer realm="api"')


def test_token_in_query_is_refused_and_not_logged(authority: Authority, call: Any, caplog: Any) -> None:
    token = authority.token()
    with caplog.at_level(logging.DEBUG):
        response = call(url="/data?access_token=" + token)
        both = call(url="/data?access_token=" + token, headers=bearer(token))
    for r in (response, both):
        assert r.status_code == 400
        assert r.json() == INVALID_REQUEST
        assert r.headers["www-authenticate"].startswith('Bearer realm="api", error="invalid_request"')
    # The test's own HTTP client logs the URL; what matters is that the verifier logs nothing of it.
    assert not [r for r in caplog.records if r.name.startswith("token_broker") and token in r.getMessage() + str(r.__dict__)]


@pytest.mark.parametrize("with_header", [True, False], ids=["header+body", "body-only"])
def test_token_in_form_body(authority: Authority, call: Any, with_header: bool) -> None:
    token = authority.token()
    headers = {"content-type": "application/x-www-form-urlencoded", **(bearer(token) if with_header else {})}
    response = call("POST", content=f"access_token={token}&x=1", headers=headers)
    assert response.status_code == 400
    assert response.json() == INVALID_REQUEST


def test_form_body_without_token_reaches_the_app(authority: Authority, verifier: Any) -> None:
    """The body read to look for a token is replayed to the app unchanged."""
    import asyncio

    import httpx

    from token_broker_resource import BearerMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=BearerMiddleware(app, verifier))
        async with httpx.AsyncClient(transport=transport, base_url="http://rs") as client:
            return await client.post("/x", content="a=1&b=2", headers={
                **bearer(authority.token()), "content-type": "application/x-www-form-urlencoded"})

    response = asyncio.run(run())
    assert (response.status_code, response.content) == (200, b"a=1&b=2")


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_scheme_is_case_insensitive(authority: Authority, call: Any, scheme: str) -> None:
    assert call(headers=bearer(authority.token(), scheme)).status_code == 200


@pytest.mark.parametrize("value", ["Bearer", "Bearer ", "Bearer  "], ids=["no-token", "space", "two-spaces"])
def test_empty_token_is_invalid_request(call: Any, value: str) -> None:
    response = call(headers={"Authorization": value})
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "error_description": "The request is malformed."}


@pytest.mark.parametrize("token", ['a"b', "a b,c", "x" * 8193, "é"], ids=["quote", "comma", "oversized", "non-ascii"])
def test_token_syntax(call: Any, token: str) -> None:
    response = call(headers={"Authorization": ("Bearer " + token).encode("utf-8")})
    assert_invalid_token(response)


def test_repeated_authorization_header(authority: Authority, call: Any) -> None:
    token = authority.token()
    response = call(headers=[("Authorization", "Bearer " + token), ("Authorization", "Bearer " + token)])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
