"""Token endpoint request handling and the issued token (docs/attack-matrix.md: "Token endpoint requests" and
"Scope, resource and the issued token")."""

from __future__ import annotations

import base64

import httpx
import pytest

from app.oauth.access_token import verify_access_token
from app.oauth.errors import MethodNotAllowed, RequestTooLarge
from tests.expect import (
    INVALID_CLIENT_BODY,
    assert_error,
    assert_hygiene,
    assert_invalid_client,
    assert_token,
)
from tests.helpers import DROP, ISS, RS1, RS2, URN, TestClient, decode_unverified, form


@pytest.fixture
def clients(broker) -> dict[str, TestClient]:
    """C1 ES256, C2 PS256, C3 not allowed client_credentials, C4 disabled (docs/attack-matrix.md, "Conventions")."""
    out = {
        "c1": TestClient("c1", alg="ES256", kid="c1-1"),
        "c2": TestClient("c2", alg="PS256", kid="c2-1", scopes=("read", "write", "c2only")),
        "c3": TestClient("c3", grant_types=()),
        "c4": TestClient("c4", enabled=False),
    }
    for c in out.values():
        broker.register(c)
    return out


def encode(params: list[tuple[str, str]]) -> str:
    return str(httpx.QueryParams(params))


def base_params(assertion: str) -> list[tuple[str, str]]:
    return [("grant_type", "client_credentials"), ("client_assertion_type", URN), ("client_assertion", assertion)]


# -- method and content type (attack matrix: `token-method-and-content-type`) ----------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_with_allow_post(broker, method):
    r = broker.http.request(method, "/token")
    assert_error(r, 405, "invalid_request", MethodNotAllowed)
    assert r.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "content_type,reason",
    [
        ("application/json", "content_type_json"),
        ("text/plain", "content_type_invalid"),
        ("multipart/form-data; boundary=x", "content_type_invalid"),
        (None, "content_type_missing"),
    ],
    ids=["json", "text-plain", "multipart", "missing"],
)
def test_wrong_content_type_is_invalid_request(broker, clients, content_type, reason):
    body = encode(base_params(clients["c1"].assertion(broker.clock.now)))
    headers = {} if content_type is None else {"content-type": content_type}
    r = broker.http.post("/token", content=body, headers=headers)
    assert_error(r, 400, "invalid_request", reason=reason)


def test_content_type_with_charset_is_accepted(broker, clients):
    body = encode(base_params(clients["c1"].assertion(broker.clock.now)))
    r = broker.token(body, headers={"content-type": "application/x-www-form-urlencoded; charset=UTF-8"})
    assert_token(r)


# -- duplicate parameters (attack matrix: `duplicate-parameters`) ----------------------------------


@pytest.mark.parametrize(
    "name,second",
    [
        ("grant_type", "client_credentials"),
        ("client_assertion", "same"),
        ("client_assertion", "other"),
        ("client_assertion_type", URN),
        ("client_id", "c1"),
        ("scope", "read"),
    ],
    ids=["grant_type", "assertion-same", "assertion-different", "assertion_type", "client_id", "scope"],
)
def test_repeated_parameter_is_invalid_request(broker, clients, name, second):
    assertion = clients["c1"].assertion(broker.clock.now)
    params = base_params(assertion) + [("client_id", "c1"), ("scope", "read")]
    if second == "same":
        second = assertion
    r = broker.token(encode(params + [(name, second)]))
    assert r.json()["error_description"] == (
        f"The parameter {name} appears more than once: send each parameter once (only resource may repeat).")
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
    assert_hygiene(r)
    # The assertion was not consumed: it still works once the request is well formed.
    assert_token(broker.token(form(assertion)))


def test_repeated_resource_is_invalid_target(broker, clients):
    """RFC 8707 §2 allows several resources; we issue single-audience tokens (documented deviation)."""
    params = base_params(clients["c1"].assertion(broker.clock.now)) + [("resource", RS1), ("resource", RS1)]
    assert_error(broker.token(encode(params)), 400, "invalid_target", reason="resource_multiple")


# -- blank and unknown parameters (attack matrix: `blank-and-unknown-parameters`) ------------------


def test_blank_client_id_is_treated_as_omitted(broker, clients):
    assert_token(broker.token(form(clients["c1"].assertion(broker.clock.now), client_id="")))


def test_blank_assertion_is_invalid_client(broker, clients):
    assert_error(broker.token(form("")), 401, "invalid_client", reason="assertion_missing")


def test_blank_scope_gives_default_scope(broker, clients):
    body = assert_token(broker.token(form(clients["c1"].assertion(broker.clock.now), scope="")))
    assert body["scope"] == "read"


def test_unknown_parameters_are_ignored_and_change_nothing(broker, clients):
    c1 = clients["c1"]
    plain = assert_token(broker.token(form(c1.assertion(broker.clock.now))))
    extra = assert_token(broker.token(form(c1.assertion(broker.clock.now), foo="bar", aud="x", sub="c2", iss="c2")))
    _, a = decode_unverified(plain["access_token"])
    _, b = decode_unverified(extra["access_token"])
    for claims in (a, b):
        claims.pop("jti")
    assert a == b


# -- grant type (attack matrix: `grant-type`) ------------------------------------------------------


@pytest.mark.parametrize(
    "grant,status,code,reason",
    [
        (DROP, 400, "invalid_request", "grant_type_missing"),
        ("password", 400, "unsupported_grant_type", "grant_type_unsupported"),
        ("authorization_code", 400, "unsupported_grant_type", "grant_type_unsupported"),
        ("refresh_token", 400, "unsupported_grant_type", "grant_type_unsupported"),
        ("urn:ietf:params:oauth:grant-type:jwt-bearer", 400, "unsupported_grant_type", "grant_type_unsupported"),
        ("Client_Credentials", 400, "unsupported_grant_type", "grant_type_unsupported"),
    ],
    ids=["missing", "password", "authorization_code", "refresh_token", "jwt-bearer", "wrong-case"],
)
def test_grant_type(broker, clients, grant, status, code, reason):
    r = broker.token(form(clients["c1"].assertion(broker.clock.now), grant_type=grant))
    assert_error(r, status, code, reason=reason)


def test_client_not_allowed_client_credentials_is_unauthorized_client(broker, clients):
    assert_error(broker.get_token(clients["c3"]), 400, "unauthorized_client")


# -- no authentication, assertion type (attack matrix: `no-client-authentication`, `client-assertion-type`) ---


@pytest.mark.parametrize(
    "body",
    ["grant_type=client_credentials&client_id=c1", "grant_type=client_credentials"],
    ids=["client_id-only", "grant_type-only"],
)
def test_no_client_authentication_is_invalid_client(broker, clients, body):
    assert_error(broker.token(body), 401, "invalid_client", reason="client_auth_missing")


def test_assertion_without_type_is_invalid_request(broker, clients):
    r = broker.token(form(clients["c1"].assertion(broker.clock.now), client_assertion_type=DROP))
    assert_error(r, 400, "invalid_request", reason="assertion_type_missing")


@pytest.mark.parametrize(
    "value",
    [
        "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
        URN.upper(),
        URN + " ",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
    ],
    ids=["saml", "upper-case", "trailing-space", "grant-urn"],
)
def test_wrong_assertion_type_is_invalid_client(broker, clients, value):
    assertion = clients["c1"].assertion(broker.clock.now)
    r = broker.token(form(assertion, client_assertion_type=value))
    assert_error(r, 401, "invalid_client", reason="assertion_type_unsupported")
    assert_token(broker.token(form(assertion)))  # not consumed


# -- two authentication methods (attack matrix: `two-authentication-methods`) ----------------------


@pytest.mark.parametrize(
    "extra_header,extra_param",
    [
        ({"authorization": "Basic " + base64.b64encode(b"c1:secret").decode()}, {}),
        ({}, {"client_secret": "secret"}),
    ],
    ids=["basic-header", "client_secret"],
)
def test_two_auth_methods_is_invalid_request_and_keeps_jti(broker, clients, extra_header, extra_param):
    assertion = clients["c1"].assertion(broker.clock.now)
    r = broker.token(form(assertion, **extra_param), headers=extra_header)
    assert_error(r, 400, "invalid_request", reason="multiple_auth_methods")
    assert_token(broker.token(form(assertion)))


# -- client_id binding, credentials in the URL (attack matrix: `client-id-mismatch`, `credentials-in-query`) ---


def test_client_id_of_another_client_is_invalid_client(broker, clients):
    assert_invalid_client(broker.token(form(clients["c1"].assertion(broker.clock.now), client_id="c2")))


def test_matching_client_id_is_accepted(broker, clients):
    assert_token(broker.token(form(clients["c1"].assertion(broker.clock.now), client_id="c1")))


@pytest.mark.parametrize(
    "client_id,status,code,reason",
    [
        # RFC 6749 App. A.1: client-id = *VSCHAR (%x20-7E). SP passes the form check; no registered
        # client_id holds one, so it can only fail as a mismatch with the assertion's iss.
        ("c 1", 401, "invalid_client", "client_id_mismatch"),
        ("c1\x7f", 400, "invalid_request", "client_id_charset"),
        ("c1\t", 400, "invalid_request", "client_id_charset"),
        ("c1\u00e9", 400, "invalid_request", "client_id_charset"),
    ],
    ids=["space-is-vschar", "del-is-not", "htab-is-not", "non-ascii-is-not"],
)
def test_client_id_parameter_charset_is_vschar(broker, clients, client_id, status, code, reason):
    r = broker.token(form(clients["c1"].assertion(broker.clock.now), client_id=client_id))
    # client_id_mismatch is decided after parsing the assertion: the generic invalid_client text.
    assert_error(r, status, code, reason=None if code == "invalid_client" else reason)
    rejected = [e for e in broker.logs() if e.get("event") == "token.rejected"]
    assert [e["reason"] for e in rejected] == [reason]


def test_credentials_in_query_are_ignored_and_not_logged(broker, clients):
    assertion = clients["c1"].assertion(broker.clock.now)
    query = encode([("client_assertion", assertion), ("client_assertion_type", URN)])
    r = broker.http.post(
        "/token?" + query, content="grant_type=client_credentials", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert_error(r, 401, "invalid_client", reason="client_auth_missing")
    assert assertion[:100] not in broker.log_text()
    assert assertion[-60:] not in broker.log_text()


# -- size limits (attack matrix: `oversized-body`) -------------------------------------------------


@pytest.mark.parametrize("size", [65536 + 1, 10 * 1024 * 1024], ids=["limit+1", "10MB"])
def test_body_over_limit_is_413(broker, clients, size):
    body = "grant_type=client_credentials&pad=" + "a" * size
    r = broker.token(body)
    assert_error(r, 413, "invalid_request", RequestTooLarge)


@pytest.mark.parametrize(
    "assertion",
    [
        "a" * 8193,
        "." * 60000,
        "a." * 30000,
    ],
    ids=["assertion-limit+1", "dots", "many-segments"],
)
def test_pathological_assertions_are_invalid_client(broker, clients, assertion):
    # Each is over the 8 KiB assertion cap: refused before any parsing.
    assert_error(broker.token(form(assertion)), 401, "invalid_client", reason="assertion_too_large")


def test_many_ampersands_within_limit_is_handled(broker, clients):
    body = encode(base_params(clients["c1"].assertion(broker.clock.now))) + "&" * 60000
    assert_token(broker.token(body))


# -- control characters and encoding (attack matrix: `form-charset`) -------------------------------


@pytest.mark.parametrize(
    "raw_body,status,code,reason",
    [
        ("grant_type=client_credentials%00", 400, "invalid_request", "grant_type_charset"),
        ("grant_type=client_credentials&client_id=%FF%FE", 400, "invalid_request", "form_encoding"),
        ("grant_type=client_credentials&client_id=c1%0D%0Ax", 400, "invalid_request", "client_id_charset"),
        ("grant_type=client_credentials\r\n&client_id=c1", 400, "invalid_request", "form_charset"),
        ("grant_type=client_credentials&client_id=caf\xc3\xa9", 400, "invalid_request", "form_charset"),
    ],
    ids=["nul-in-grant", "invalid-utf8-client_id", "crlf-escaped", "crlf-raw", "raw-non-ascii"],
)
def test_control_characters_and_bad_encoding(broker, raw_body, status, code, reason):
    r = broker.token(raw_body.encode("latin-1"))
    assert_error(r, status, code, reason=reason)


def test_10kb_client_id_is_invalid_client_not_500(broker, clients):
    r = broker.token(form(clients["c1"].assertion(broker.clock.now), client_id="c" * 10_000))
    assert_invalid_client(r)


@pytest.mark.parametrize("scope", ["read\u00e9", "r\x00ead", "read\u3000write"], ids=["non-ascii", "nul", "ideographic-space"])
def test_bad_scope_characters_are_invalid_scope(broker, clients, scope):
    assert_error(broker.token(form(clients["c1"].assertion(broker.clock.now), scope=scope)), 400, "invalid_scope")


# -- hygiene and the enumeration oracle (attack matrix: `response-hygiene`, `client-enumeration`) ---


def test_invalid_client_is_byte_identical_for_every_cause(broker, clients):
    """Everything decided once the assertion has been parsed (the client look-up and after) gets the
    one generic answer; only the request's own shape is answered specifically (test_error_descriptions)."""
    now = broker.clock.now
    c1 = clients["c1"]
    unknown = TestClient("nobody")
    replayed = c1.assertion(now)
    assert_token(broker.token(form(replayed)))
    variants = {
        "unknown": broker.token(form(unknown.assertion(now))),
        "disabled": broker.get_token(clients["c4"]),
        "bad-signature": broker.token(form(c1.assertion(now, key=TestClient("x").key))),
        "expired": broker.token(form(c1.assertion(now, exp=int(now) - 100, iat=int(now) - 160))),
        "kid-echo": broker.token(form(c1.assertion(now, header={"alg": "ES256", "kid": 'a"\r\n'}))),
        "kid-unknown": broker.token(form(c1.assertion(now, header={"alg": "ES256", "kid": "nope"}))),
        "alg-not-the-keys": broker.token(form(c1.assertion(now, header={"alg": "PS256", "kid": "c1-1"},
                                                           key=clients["c2"].key))),
        "aud-token-endpoint": broker.token(form(c1.assertion(now, aud=ISS + "/token"))),
        "exp-too-far": broker.token(form(c1.assertion(now, exp=int(now) + 3600))),
        "exp-missing": broker.token(form(c1.assertion(now, exp=DROP))),
        "iat-too-old": broker.token(form(c1.assertion(now, iat=int(now) - 3000))),
        "nbf-in-future": broker.token(form(c1.assertion(now, nbf=int(now) + 600))),
        "jti-missing": broker.token(form(c1.assertion(now, jti=DROP))),
        "client-id-mismatch": broker.token(form(c1.assertion(now), client_id="c2")),
        "replayed": broker.token(form(replayed)),
    }
    reasons = [e["reason"] for e in broker.logs() if e.get("event") == "token.rejected"]
    assert reasons == ["client_unknown", "client_disabled", "signature_invalid", "exp_expired", "kid_unknown",
                       "kid_unknown", "alg_not_allowed", "aud_not_issuer", "exp_too_far", "exp_missing", "iat_too_old",
                       "nbf_in_future", "jti_invalid", "client_id_mismatch", "jti_replayed"]
    bodies = {name: (r.status_code, r.content, r.headers.get("content-type")) for name, r in variants.items()}
    assert len(set(bodies.values())) == 1, bodies
    status, content, _ = bodies["unknown"]
    assert status == 401 and content == b'{"error":"invalid_client","error_description":"Client authentication failed."}'
    for r in variants.values():
        assert_hygiene(r)
    assert set(variants["unknown"].json()) == set(INVALID_CLIENT_BODY)


# -- scope and resource (attack matrix: `scope-escalation`, `scope-syntax`, `resource-invalid`) ----


@pytest.mark.parametrize("scope", ["admin", "read admin", "c2only"], ids=["admin", "read+admin", "other-clients-scope"])
def test_scope_escalation_is_invalid_scope_and_consumes_jti(broker, clients, scope):
    assertion = clients["c1"].assertion(broker.clock.now)
    assert_error(broker.token(form(assertion, scope=scope)), 400, "invalid_scope")
    assert_invalid_client(broker.token(form(assertion)))


@pytest.mark.parametrize(
    "scope,status,code,granted",
    [
        ("READ", 400, "invalid_scope", None),
        ("read\twrite", 400, "invalid_scope", None),
        ("read\u00a0write", 400, "invalid_scope", None),
        ("read  write", 400, "invalid_scope", None),
        (" read", 400, "invalid_scope", None),
        ("read ", 400, "invalid_scope", None),
        ('re"ad', 400, "invalid_scope", None),
        ("re\\ad", 400, "invalid_scope", None),
        (" ".join(f"s{i}" for i in range(1000)), 400, "invalid_request", None),
        ("s" * 10_000, 400, "invalid_request", None),
        ("read read", 200, None, "read"),
        ("write read", 200, None, "read write"),
        ("read write read", 200, None, "read write"),
    ],
    ids=["case", "tab", "nbsp", "double-space", "leading-space", "trailing-space", "quote", "backslash",
         "1000-tokens", "10kb", "dup", "order", "dup-order"],
)
def test_scope_syntax(broker, clients, scope, status, code, granted):
    r = broker.token(form(clients["c1"].assertion(broker.clock.now), scope=scope))
    if status == 200:
        body = assert_token(r)
        assert body["scope"] == granted
        assert decode_unverified(body["access_token"])[1]["scope"] == granted
    else:
        assert_error(r, status, code)


def test_no_default_scope_and_none_requested_is_invalid_scope(broker):
    client = TestClient("nodefault", default_scopes=())
    broker.register(client)
    assert_error(broker.get_token(client), 400, "invalid_scope")


@pytest.mark.parametrize(
    "resource",
    ["https://unregistered.example.test", "/relative/path", RS1 + "#frag", "not a uri"],
    ids=["unregistered", "relative", "fragment", "spaces"],
)
def test_bad_resource_is_invalid_target(broker, clients, resource):
    assert_error(broker.token(form(clients["c1"].assertion(broker.clock.now), resource=resource)), 400, "invalid_target")


def test_resource_selects_the_audience(broker, clients):
    body = assert_token(broker.token(form(clients["c1"].assertion(broker.clock.now), resource=RS2)))
    assert decode_unverified(body["access_token"])[1]["aud"] == RS2


# -- the success contract (attack matrix: `success-contract`) --------------------------------------


def test_success_contract(broker, clients):
    now = broker.clock.now
    body = assert_token(broker.token(form(clients["c1"].assertion(now), scope="read write")))
    assert body["expires_in"] == 300 and body["scope"] == "read write"
    header, claims = decode_unverified(body["access_token"])
    jwks = broker.http.get("/jwks.json").json()
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256"
    assert header["kid"] in {k["kid"] for k in jwks["keys"]}
    assert set(claims) == {"iss", "sub", "client_id", "aud", "scope", "jti", "iat", "exp"}
    assert claims["iss"] == ISS and claims["sub"] == claims["client_id"] == "c1" and claims["aud"] == RS1
    assert claims["iat"] == int(now) and claims["exp"] == int(now) + 300
    assert len(base64.urlsafe_b64decode(claims["jti"] + "==")) >= 16
    # Verifies against the published JWKS.
    from app.oauth.access_token import verification_keys_from_jwks

    verified = verify_access_token(body["access_token"], verification_keys_from_jwks(jwks), issuer=ISS, audience=RS1, now=now)
    assert verified["client_id"] == "c1"


def test_token_jtis_are_unique(broker, clients):
    jtis = set()
    for _ in range(200):
        body = assert_token(broker.get_token(clients["c1"]))
        jtis.add(decode_unverified(body["access_token"])[1]["jti"])
        broker.clock.advance(200)  # past the cache's 50% freshness floor: every request mints (docs/token-cache.md)
    assert len(jtis) == 200


def test_per_client_token_lifetime(broker):
    client = TestClient("short", token_lifetime=120)
    broker.register(client)
    assert assert_token(broker.get_token(client))["expires_in"] == 120


def test_privilege_claims_in_assertion_are_ignored(broker, clients):
    """Scope and aud come only from the form and the registration (attack matrix: `privilege-claims-ignored`)."""
    c1 = clients["c1"]
    now = broker.clock.now
    body = assert_token(broker.token(form(c1.assertion(
        now, scope="admin", client_id="c2", roles=["admin"], cnf={"jkt": "x"}, act={"sub": "c2"}, resource=RS2
    ))))
    claims = decode_unverified(body["access_token"])[1]
    assert (claims["scope"], claims["client_id"], claims["aud"]) == ("read", "c1", RS1)


