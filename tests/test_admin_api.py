"""Admin API (RFC 7591/7592 shape) over HTTP, key validation (attack matrix: `client-key-validation`),
reserved client_ids (`rs-client-not-a-user`), per-key nbf/exp windows, the legacy token-endpoint
``aud`` window, and the clients file."""

from __future__ import annotations

import json
from typing import Any

import pytest
from joserfc.jwk import ECKey, OKPKey

from app.client.admin import load_private_jwk
from app.config import ConfigError
from app.service.directory import LEGACY_AUD_METRIC
from tests.conftest import Broker
from tests.expect import assert_invalid_client, assert_token
from tests.helpers import ISS, RS1, TOKEN_URL, TestClient, b64u, form, new_key
from token_broker_jose.assertion import make_client_assertion

ADMIN_BAD_TOKEN = {"error": "invalid_token", "error_description": "The access token is invalid or expired."}


def admin_headers(broker: Broker) -> dict[str, str]:
    key, alg, kid = load_private_jwk(broker.settings.keys_dir / "admin.jwk")
    assertion = make_client_assertion(key, client_id="broker-admin", issuer=ISS, alg=alg, kid=kid, now=broker.clock.now)
    r = broker.token(form(assertion, scope="broker:admin", resource=ISS + "/admin"))
    assert r.status_code == 200, r.text
    return {"authorization": "Bearer " + r.json()["access_token"]}


def meta(client_id: str = "svc", **extra: Any) -> dict[str, Any]:
    key = new_key("ES256")
    base = {"client_id": client_id, "jwks": {"keys": [key.as_dict(private=False) | {"alg": "ES256"}]}, "scopes": ["read"],
            "audiences": [RS1]}
    return {**base, **extra}


def bad_request(description: str) -> tuple[int, dict[str, str]]:
    return 400, {"error": "invalid_client_metadata", "error_description": description}


# -- authentication --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-authorization"),
        pytest.param({"authorization": "Basic dXNlcjpwYXNz"}, id="another-scheme"),
        pytest.param({"authorization": "Bearer"}, id="bearer-without-token"),
    ],
)
def test_admin_call_without_credentials_gets_a_bare_challenge(broker, headers):
    """RFC 6750 §3.1: a request with no Bearer credentials gets the challenge without an error code."""
    r = broker.http.get("/admin/clients", headers=headers)
    assert (r.status_code, r.json()) == (401, {})
    assert r.headers["www-authenticate"] == 'Bearer realm="token-broker"'
    assert r.headers["cache-control"] == "no-store"


def test_admin_calls_need_an_admin_token(broker, c1):
    r = broker.http.get("/admin/clients", headers={"authorization": "Bearer x.y.z"})
    assert (r.status_code, r.json()) == (401, ADMIN_BAD_TOKEN)
    assert r.headers["www-authenticate"] == (
        'Bearer realm="token-broker", error="invalid_token", error_description="The access token is invalid or expired."'
    )
    # A normal client's token (audience RS1, no admin scope) is not an admin token.
    token = broker.get_token(c1).json()["access_token"]
    r = broker.http.get("/admin/clients", headers={"authorization": "Bearer " + token})
    assert (r.status_code, r.json()) == (401, ADMIN_BAD_TOKEN)


def test_register_show_list_stamp_alg_use_and_thumbprint_kid(broker):
    h = admin_headers(broker)
    key = new_key("ES256")
    r = broker.http.post("/admin/clients", json=meta("svc", jwks={"keys": [key.as_dict(private=False) | {"alg": "ES256"}]}), headers=h)
    assert r.status_code == 201, r.text
    stored = r.json()["jwks"]["keys"][0]
    assert (stored["kid"], stored["alg"], stored["use"]) == (key.thumbprint(), "ES256", "sig")
    assert broker.http.get("/admin/clients/svc", headers=h).json() == r.json()
    ids = [c["client_id"] for c in broker.http.get("/admin/clients", headers=h).json()["clients"]]
    assert ids == ["broker-admin", "svc"]
    r = broker.http.post("/admin/clients", json=meta("svc"), headers=h)
    assert (r.status_code, r.json()) == (409, {"error": "invalid_client_metadata", "error_description": "client_id is already registered"})


# -- key validation at registration (attack matrix: `client-key-validation`) ------------------------


def _rsa(bits: int = 2048, **override: str) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import rsa  # joserfc refuses to make small keys

    numbers = rsa.generate_private_key(65537, bits).public_key().public_numbers()
    return {"kty": "RSA", "n": b64u(numbers.n.to_bytes((bits + 7) // 8, "big")), "e": "AQAB", "alg": "PS256", **override}


def _off_curve() -> dict[str, Any]:
    a, b = ECKey.generate_key("P-256").as_dict(private=False), ECKey.generate_key("P-256").as_dict(private=False)
    return {**a, "y": b["y"], "alg": "ES256"}


KEY_CASES = [
    ("private-ec", lambda: {**ECKey.generate_key("P-256").as_dict(private=True), "alg": "ES256"},
     "the key holds private key material; register only the public key"),
    ("private-rsa-p-only", lambda: {**_rsa(), "p": "AQAB"}, "the key holds private key material; register only the public key"),
    ("oct", lambda: {"kty": "oct", "k": b64u(b"0" * 32), "alg": "HS256"},
     "unsupported key type 'oct': use EC, RSA or OKP (no symmetric keys)"),
    ("rsa-1024", lambda: _rsa(1024), "RSA keys must be 2048-4096 bits (got 1024)"),
    ("rsa-5000", lambda: _rsa(5000), "RSA keys must be 2048-4096 bits (got 5000)"),
    ("rsa-e-1", lambda: _rsa(e="AQ"), "RSA public exponent must be odd and at least 3"),
    ("rsa-e-even", lambda: _rsa(e="AQAA"), "RSA public exponent must be odd and at least 3"),
    ("ec-off-curve", _off_curve, "the key could not be parsed (bad coordinates or modulus)"),
    ("es256-with-p384", lambda: {**ECKey.generate_key("P-384").as_dict(private=False), "alg": "ES256"},
     "ES256 needs a EC key on P-256"),
    ("ed25519-alg-ed448-key", lambda: {**OKPKey.generate_key("Ed448").as_dict(private=False), "alg": "Ed25519"},
     "Ed25519 needs a OKP key on Ed25519"),
    ("no-alg", lambda: ECKey.generate_key("P-256").as_dict(private=False) | {"alg": None},
     "alg must be one of ES256, ES384, PS256, RS256, Ed25519 (got 'None')"),
    ("use-enc", lambda: {**ECKey.generate_key("P-256").as_dict(private=False), "alg": "ES256", "use": "enc"},
     "the key's use must be 'sig'"),
    ("key-ops-encrypt", lambda: {**ECKey.generate_key("P-256").as_dict(private=False), "alg": "ES256", "key_ops": ["encrypt"]},
     "key_ops may only contain 'verify'"),
    ("window-exp-before-nbf", lambda: {**ECKey.generate_key("P-256").as_dict(private=False), "alg": "ES256", "nbf": 20, "exp": 10},
     "the key's exp must be after its nbf"),
    ("window-not-int", lambda: {**ECKey.generate_key("P-256").as_dict(private=False), "alg": "ES256", "exp": "soon"},
     "the key's exp must be a unix time in whole seconds"),
]


@pytest.mark.parametrize(("make", "description"), [c[1:] for c in KEY_CASES], ids=[c[0] for c in KEY_CASES])
def test_registration_refuses_bad_keys(broker, make, description):
    jwk = make()
    if jwk.get("alg") is None:
        jwk.pop("alg")
    r = broker.http.post("/admin/clients", json=meta("svc", jwks={"keys": [jwk]}), headers=admin_headers(broker))
    assert (r.status_code, r.json()) == bad_request(description)


def test_registration_refuses_duplicate_kids_and_more_than_ten_keys(broker):
    h = admin_headers(broker)
    dup = [{**new_key("ES256").as_dict(private=False), "kid": "k", "alg": "ES256"} for _ in range(2)]
    r = broker.http.post("/admin/clients", json=meta("svc", jwks={"keys": dup}), headers=h)
    assert (r.status_code, r.json()) == bad_request("duplicate kid 'k'")
    many = [{**new_key("ES256").as_dict(private=False), "alg": "ES256"} for _ in range(11)]
    r = broker.http.post("/admin/clients", json=meta("svc", jwks={"keys": many}), headers=h)
    assert (r.status_code, r.json()) == bad_request("at most 10 keys per client")


JWKS_URI_CASES = [
    ("http", "http://keys.example.com/jwks", "jwks_uri must use https (plain http only for loopback when the broker allows it)"),
    ("http-loopback-without-flag", "http://127.0.0.1:8080/jwks", "jwks_uri must use https (plain http only for loopback when the broker allows it)"),
    ("private-ip", "https://10.1.2.3/jwks", "jwks_uri points at a private, loopback or link-local address"),
    ("link-local", "https://169.254.169.254/latest", "jwks_uri points at a private, loopback or link-local address"),
    ("loopback-v6", "https://[::1]/jwks", "jwks_uri points at a private, loopback or link-local address"),
    ("userinfo", "https://u:p@keys.example.com/jwks", "jwks_uri must be an absolute https URL without user info or fragment"),
    ("relative", "/jwks", "jwks_uri must be an absolute https URL without user info or fragment"),
    ("not-string", 42, "jwks_uri must be an absolute https URL"),
]


@pytest.mark.parametrize(("uri", "description"), [c[1:] for c in JWKS_URI_CASES], ids=[c[0] for c in JWKS_URI_CASES])
def test_registration_refuses_bad_jwks_uri(broker, uri, description):
    body = meta("svc", jwks_uri=uri)
    body.pop("jwks")
    r = broker.http.post("/admin/clients", json=body, headers=admin_headers(broker))
    assert (r.status_code, r.json()) == bad_request(description)


def test_registration_refuses_jwks_and_jwks_uri_together(broker):
    r = broker.http.post("/admin/clients", json=meta("svc", jwks_uri="https://keys.example.com/jwks"), headers=admin_headers(broker))
    assert (r.status_code, r.json()) == bad_request("give jwks or jwks_uri, not both (RFC 7591 §2)")


# -- client_ids in the user-subject namespace (attack matrix: `rs-client-not-a-user`) ------------------


@pytest.mark.parametrize("client_id", ["user:alice", "User-bob", "usr:42", "uid:7", "sub:x", "auth0.123"])
def test_registration_refuses_user_subject_namespace(broker, client_id):
    r = broker.http.post("/admin/clients", json=meta(client_id), headers=admin_headers(broker))
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_client_metadata"
    assert r.json()["error_description"].startswith("client_id starts with a prefix reserved for user subjects")


def test_deployment_adds_reserved_prefixes(tmp_path, clock):
    from app.config import Settings

    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", reserved_client_id_prefixes=("emp-",))
    with Broker(settings, clock) as b:
        h = admin_headers(b)
        assert b.http.post("/admin/clients", json=meta("emp-1234"), headers=h).status_code == 400
        assert b.http.post("/admin/clients", json=meta("employee-sync"), headers=h).status_code == 201


# -- lifecycle through the API ------------------------------------------------------------------------


def test_disable_enable_add_remove_key_delete(broker):
    h = admin_headers(broker)
    c = TestClient("svc")
    assert broker.http.post("/admin/clients", json=c.metadata(), headers=h).status_code == 201
    assert_token(broker.get_token(c))

    assert broker.http.patch("/admin/clients/svc", json={"enabled": False}, headers=h).json()["enabled"] is False
    broker.app.state.directory.invalidate()  # the poller runs on its own schedule; tests do not wait for it
    assert_invalid_client(broker.get_token(c))
    broker.http.patch("/admin/clients/svc", json={"enabled": True}, headers=h)
    broker.app.state.directory.invalidate()
    assert_token(broker.get_token(c))

    new = TestClient("svc", kid="svc-2")
    r = broker.http.post("/admin/clients/svc/keys", json=new.public_jwk(), headers=h)
    assert r.status_code == 201
    assert [k["kid"] for k in r.json()["jwks"]["keys"]] == ["svc-1", "svc-2"]
    broker.app.state.directory.invalidate()
    assert_token(broker.get_token(new))
    assert_token(broker.get_token(c))
    assert broker.http.delete("/admin/clients/svc/keys/svc-1", headers=h).status_code == 200
    broker.app.state.directory.invalidate()
    assert_invalid_client(broker.get_token(c))
    assert_token(broker.get_token(new))
    r = broker.http.delete("/admin/clients/svc/keys/svc-2", headers=h)
    assert (r.status_code, r.json()) == bad_request(
        "a client needs at least one key; add the new key first or disable the client")

    assert broker.http.delete("/admin/clients/svc", headers=h).status_code == 204
    assert broker.http.get("/admin/clients/svc", headers=h).status_code == 404


def test_bootstrap_admin_cannot_be_deleted_or_disabled(broker):
    h = admin_headers(broker)
    r = broker.http.delete("/admin/clients/broker-admin", headers=h)
    assert (r.status_code, r.json()) == bad_request("the bootstrap admin client cannot be deleted")
    r = broker.http.patch("/admin/clients/broker-admin", json={"enabled": False}, headers=h)
    assert (r.status_code, r.json()) == bad_request("the bootstrap admin client cannot be disabled")


def test_keys_of_a_jwks_uri_client_are_rotated_at_the_uri(broker):
    h = admin_headers(broker)
    body = meta("svc", jwks_uri="https://keys.example.com/jwks", token_endpoint_auth_signing_alg="ES256")
    body.pop("jwks")
    r = broker.http.post("/admin/clients", json=body, headers=h)
    assert r.status_code == 201 and "jwks" not in r.json()
    r = broker.http.post("/admin/clients/svc/keys", json=TestClient("x").public_jwk(), headers=h)
    assert (r.status_code, r.json()) == bad_request(
        "this client's keys come from its jwks_uri: rotate them there (the broker refetches on a new kid)")


# -- per-key nbf / exp ---------------------------------------------------------------------------------


def test_key_outside_its_window_is_not_used(broker):
    now = int(broker.clock.now)
    c = TestClient("svc")
    c.extra_keys = []
    metadata = c.metadata()
    metadata["jwks"]["keys"][0] |= {"nbf": now + 100, "exp": now + 200}
    broker.call(broker.app.state.admin_service.register, "tests", metadata)
    broker.app.state.directory.invalidate()
    assert_invalid_client(broker.get_token(c))  # not yet
    broker.clock.advance(100)
    assert_token(broker.get_token(c))  # the cached client is redone at nbf without any admin change
    broker.clock.advance(100)
    assert_invalid_client(broker.get_token(c))  # expired
    assert any(e.get("reason") == "kid_unknown" for e in broker.logs() if e["event"] == "token.rejected")


# -- legacy token-endpoint aud (migration aid) ----------------------------------------------------------


def test_token_endpoint_aud_is_refused_by_default(broker, c1):
    assert_invalid_client(broker.token(form(c1.assertion(broker.clock.now, aud=TOKEN_URL))))


def test_legacy_aud_window_accepts_logs_counts_then_closes(broker, c1):
    now = int(broker.clock.now)
    broker.update("c1", legacy_token_endpoint_aud_until=now + 60)
    assert_token(broker.token(form(c1.assertion(broker.clock.now, aud=TOKEN_URL))))
    assert_token(broker.token(form(c1.assertion(broker.clock.now))))  # the issuer still works
    events = [e for e in broker.logs() if e["event"] == "client_auth.legacy_aud_accepted"]
    assert [e["client_id"] for e in events] == ["c1"]
    assert broker.app.state.metrics.value(LEGACY_AUD_METRIC, client_id="c1") == 1
    # Only the token endpoint URL, only as a plain string.
    assert_invalid_client(broker.token(form(c1.assertion(broker.clock.now, aud=[TOKEN_URL]))))
    assert_invalid_client(broker.token(form(c1.assertion(broker.clock.now, aud=ISS + "/jwks.json"))))
    broker.clock.advance(60)
    assert_invalid_client(broker.token(form(c1.assertion(broker.clock.now, aud=TOKEN_URL))))


def test_legacy_aud_window_is_time_boxed(broker, c1):
    r = broker.http.patch("/admin/clients/c1", json={"legacy_token_endpoint_aud_until": int(broker.clock.now) + 400 * 86400},
                          headers=admin_headers(broker))
    assert (r.status_code, r.json()) == bad_request(
        "legacy_token_endpoint_aud_until must be a unix time at most 366 days ahead (the window is time-boxed)")


# -- declarative clients file ---------------------------------------------------------------------------


def test_clients_file_is_loaded_at_start(tmp_path, clock):
    from app.config import Settings

    c = TestClient("filed")
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"clients": [c.metadata()]}))
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", clients_file=str(path))
    with Broker(settings, clock) as b:
        assert_token(b.get_token(c))
        assert [e["client_id"] for e in b.logs() if e["event"] == "admin.client_loaded"] == ["filed"]


def test_invalid_clients_file_stops_the_start(tmp_path, clock):
    from app.config import Settings

    path = tmp_path / "clients.json"
    path.write_text(json.dumps([{"client_id": "bad", "jwks": {"keys": [{"kty": "oct", "k": "AAAA"}]}, "audiences": [RS1]}]))
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", clients_file=str(path))
    with pytest.raises(BaseException) as info:  # Litestar wraps lifespan failures in an ExceptionGroup
        with Broker(settings, clock):
            pass
    pattern = r"client #0 \('bad'\): unsupported key type 'oct'"
    assert info.group_contains(ConfigError, match=pattern) if isinstance(info.value, BaseExceptionGroup) else info.match(pattern)


_GOOD_ENTRY = {"client_id": "ok", "jwks": {"keys": []}, "audiences": [RS1]}  # keys filled in below


@pytest.mark.live  # runs `python -m app serve` (it must exit at once, but it is a broker process)
@pytest.mark.parametrize("content, message", [
    (None, "cannot read JSON (FileNotFoundError)"),
    ("{not json", "cannot read JSON (DecodeError)"),
    ('{"client": []}', 'expected a list of clients or {"clients": [...]}'),
    ([{"client_id": "bad", "jwks": {"keys": [{"kty": "oct", "k": "AAAA"}]}, "audiences": [RS1]}],
     "client #0 ('bad'): unsupported key type 'oct': use EC, RSA or OKP (no symmetric keys)"),
    ("dup", "client #1 ('ok'): client_id appears twice in the file"),
    ("admin", "client #0 ('broker-admin'): the admin client comes from BROKER_ADMIN_JWKS"),
], ids=["missing", "not-json", "wrong-shape", "symmetric-key", "duplicate-id", "admin-id"])
def test_serve_refuses_a_bad_clients_file_in_one_line(tmp_path, content, message):
    """``serve`` checks the file before uvicorn starts: exit 2 and one line, not a traceback."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT, free_port

    path = tmp_path / "clients.json"
    entry = {**_GOOD_ENTRY, "jwks": {"keys": [TestClient("ok").public_jwk()]}}
    if content == "dup":
        content = [entry, entry]
    elif content == "admin":
        content = [{**entry, "client_id": "broker-admin"}]
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    env = {**os.environ, "BROKER_KEYS_DIR": str(tmp_path / "keys"), "BROKER_CLIENTS_FILE": str(path)}
    env.pop("BROKER_REDIS_URL", None)
    proc = subprocess.run([sys.executable, "-m", "app", "serve", "--port", str(free_port())], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"token-broker: BROKER_CLIENTS_FILE={path}: {message}\n"
