"""Client compatibility (docs/onboarding.md, "Client compatibility profile"; docs/attack-matrix.md:
`aud-token-endpoint-url`, `assertion-lifetime-cap`, `replay-same-replica`, `key-selection-ambiguity`,
`jku-x5u-x5c`, `alg-not-registered`).

Two kinds of relaxation:

* the per-client compat profile the operator sets (never on by default): ``token_endpoint_aud``,
  ``assertion_max_lifetime``, ``assertion_reuse``; every use logged and counted;
* accepted for every client: ``x5t`` / ``x5t#S256`` as a key selector, ``alg: EdDSA`` for an Ed25519
  key, no ``kid`` with several keys.

Assertions shaped like Authlib's and MSAL's are made by those libraries themselves (installed for
the tests), at the broker's frozen clock.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey, OKPKey, RSAKey
from msal.oauth2cli.assertion import JwtAssertionCreator

from app.client.admin_cli import _metadata, build_parser
from app.client.admin_keys import read_public_keys
from app.config import ConfigError, Settings
from app.keystore import public_jwk
from app.metrics import CLIENT_COMPAT_USED
from app.oauth.clients import CompatProfile
from app.oauth.errors import SlowDown
from app.service.client_metadata import read_clients_document
from app.store import keyspace
from app.store.base import FIRST_USE, REPLAYED, REUSED
from app.store.token_cache import RedisTokenStore
from tests.conftest import Broker
from tests.expect import assert_error, assert_invalid_client, assert_token
from tests.helpers import ISS, RS1, TOKEN_URL, b64u, decode_unverified, form, good, sign
from tests.test_admin_api import admin_headers, bad_request

MSAL_LIKE = {"token_endpoint_aud": True, "assertion_max_lifetime": 600, "assertion_reuse": True}
AUTHLIB_LIKE = {"token_endpoint_aud": True, "assertion_max_lifetime": 3600}


def certificate(private: Any, name: str = "svc") -> x509.Certificate:
    """A self-signed certificate for a ``cryptography`` private key (what MSAL users hold)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(private.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=730)).sign(private, hashes.SHA256()))


def x5c(cert: x509.Certificate) -> list[str]:
    return [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]


class CertClient:
    """An RSA client with a certificate: its private key as ``cryptography`` and joserfc objects."""

    def __init__(self, client_id: str, alg: str = "RS256") -> None:
        self.client_id = client_id
        self.alg = alg
        self.private = rsa.generate_private_key(65537, 2048)
        self.key = RSAKey.import_key(self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        self.cert = certificate(self.private, client_id)
        self.der = self.cert.public_bytes(serialization.Encoding.DER)

    def jwk(self, kid: str) -> dict[str, Any]:
        return {**public_jwk(self.key, alg=self.alg, kid=kid), "x5c": x5c(self.cert)}

    def msal(self, now: float, **claims: Any) -> str:
        """An assertion as MSAL Python makes it from a private key and a SHA-1 ``thumbprint``:
        RS256, ``x5t`` (padded base64url), aud = the token endpoint, exp = iat + 600, no kid."""
        creator = JwtAssertionCreator(self.private, "RS256", sha1_thumbprint=self.cert.fingerprint(hashes.SHA1()).hex())
        made = creator.create_normal_assertion(TOKEN_URL, self.client_id, issued_at=now, expires_at=now + 600,
                                               additional_claims=claims or None)
        return made.decode()


def by_hand(header: dict[str, Any], claims: dict[str, Any], key: Any, algorithm: str) -> str:
    """A compact JWS whose header joserfc would not write (``alg: EdDSA``, a non-string ``x5t``)."""
    from joserfc.jws import JWSRegistry

    signing_input = b64u(json.dumps(header)) + "." + b64u(json.dumps(claims))
    return signing_input + "." + b64u(JWSRegistry.algorithms[algorithm].sign(signing_input.encode(), key))


def register(broker: Broker, metadata: dict[str, Any], compat: dict[str, Any] | None = None) -> None:
    broker.call(broker.app.state.admin_service.register, "tests",
                {**metadata, **({"compat": compat} if compat is not None else {})})
    broker.app.state.directory.invalidate()


def metadata(client_id: str, *keys: dict[str, Any]) -> dict[str, Any]:
    return {"client_id": client_id, "jwks": {"keys": list(keys)}, "scopes": ["read"], "default_scopes": ["read"],
            "audiences": [RS1]}


def rejected(broker: Broker) -> list[str]:
    return [e["reason"] for e in broker.logs() if e["event"] in ("token.rejected", "revocation.rejected")]


def compat_events(broker: Broker) -> list[tuple[str, str]]:
    return [(e["client_id"], e["feature"]) for e in broker.logs() if e["event"] == "client_auth.compat_used"]


def used(broker: Broker, client_id: str, feature: str) -> float:
    return broker.app.state.metrics.value(CLIENT_COMPAT_USED, client_id=client_id, feature=feature)


# -- the profile: validation, storage, show --------------------------------------------------------


@pytest.mark.parametrize(
    "compat, description",
    [
        pytest.param("token_endpoint_aud", 'compat must be a JSON object, e.g. {"token_endpoint_aud": true, '
                     '"assertion_max_lifetime": 3600, "assertion_reuse": true}', id="not-an-object"),
        pytest.param({"kid_trial": True}, "unknown compat feature 'kid_trial': the features are token_endpoint_aud, "
                     "assertion_max_lifetime, assertion_reuse", id="unknown-feature"),
        pytest.param({"assertion_lifetime": 600}, "unknown compat feature 'assertion_lifetime': the features are "
                     "token_endpoint_aud, assertion_max_lifetime, assertion_reuse", id="metric-label-is-not-a-feature"),
        pytest.param({"token_endpoint_aud": "yes"}, "compat token_endpoint_aud must be true or false", id="aud-string"),
        pytest.param({"assertion_reuse": 1}, "compat assertion_reuse must be true or false", id="reuse-int"),
        *(pytest.param({"assertion_max_lifetime": v}, "compat assertion_max_lifetime must be a whole number of seconds "
                       "from 1 to 3600", id=f"lifetime-{i}")
          for i, v in (("0", 0), ("3601", 3601), ("true", True), ("float", 600.0), ("string", "600"), ("neg", -1))),
    ],
)
def test_invalid_profiles_are_refused_with_what_is_wrong(broker, compat, description):
    r = broker.http.post("/admin/clients", json={**metadata("svc", public_jwk(ECKey.generate_key("P-256"), alg="ES256",
                                                                                kid="k")), "compat": compat},
                         headers=admin_headers(broker))
    assert (r.status_code, r.json()) == bad_request(description)


@pytest.mark.parametrize(
    "compat, stored",
    [
        pytest.param(None, None, id="absent"),
        pytest.param({}, None, id="empty"),
        pytest.param({"token_endpoint_aud": False, "assertion_reuse": False}, None, id="all-off"),
        pytest.param({"assertion_max_lifetime": 1}, {"assertion_max_lifetime": 1}, id="lifetime-1"),
        pytest.param(MSAL_LIKE, MSAL_LIKE, id="msal"),
        pytest.param({"token_endpoint_aud": True, "assertion_max_lifetime": 3600, "assertion_reuse": False},
                     {"token_endpoint_aud": True, "assertion_max_lifetime": 3600}, id="authlib"),
    ],
)
def test_profile_round_trip_through_the_admin_api(broker, compat, stored):
    """Off by default; an empty profile is no profile; ``compat`` is omitted when empty."""
    h = admin_headers(broker)
    body = metadata("svc", public_jwk(ECKey.generate_key("P-256"), alg="ES256", kid="k"))
    r = broker.http.post("/admin/clients", json={**body, **({} if compat is None else {"compat": compat})}, headers=h)
    assert r.status_code == 201, r.text
    shown = broker.http.get("/admin/clients/svc", headers=h).json()
    assert (r.json().get("compat"), shown.get("compat")) == (stored, stored)
    # Another update leaves it alone; "compat": {} clears it.
    assert broker.http.patch("/admin/clients/svc", json={"scopes": ["read", "write"]}, headers=h).json().get("compat") == stored
    cleared = broker.http.patch("/admin/clients/svc", json={"compat": {}}, headers=h).json()
    assert "compat" not in cleared


def test_profile_in_the_clients_file(tmp_path, settings):
    entry = metadata("svc", public_jwk(ECKey.generate_key("P-256"), alg="ES256", kid="k"))
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"clients": [{**entry, "compat": MSAL_LIKE}]}))
    [record] = read_clients_document(settings, str(path), now=1_800_000_000).clients
    assert record.compat == CompatProfile(token_endpoint_aud=True, assertion_max_lifetime=600, assertion_reuse=True)
    path.write_text(json.dumps({"clients": [{**entry, "compat": {"assertion_max_lifetime": 7200}}]}))
    with pytest.raises(ConfigError) as caught:
        read_clients_document(settings, str(path), now=1_800_000_000)
    assert str(caught.value) == (f"BROKER_CLIENTS_FILE={path}: client #0 ('svc'): compat assertion_max_lifetime must be "
                                 "a whole number of seconds from 1 to 3600")


# -- compat off: the strict default refuses what these libraries send -------------------------------


def _strict_rows() -> list[Any]:
    def authlib(c: CertClient, now: float) -> str:
        return private_key_jwt_sign(c.key.as_dict(private=True), c.client_id, TOKEN_URL, issued_at=int(now))

    def aud_only(c: CertClient, now: float) -> str:
        return sign({"alg": "RS256"}, good(c.client_id, now=now, aud=TOKEN_URL), c.key)

    def long_only(c: CertClient, now: float) -> str:
        return sign({"alg": "RS256"}, good(c.client_id, now=now, exp=int(now) + 600), c.key)

    return [
        # (id, profile, assertion, reason)
        pytest.param(None, authlib, "aud_not_issuer", id="authlib-no-profile"),
        pytest.param(None, lambda c, now: c.msal(now), "aud_not_issuer", id="msal-no-profile"),
        pytest.param(None, long_only, "exp_too_far", id="600s-no-profile"),
        pytest.param({"assertion_max_lifetime": 3600}, aud_only, "aud_not_issuer", id="lifetime-does-not-open-aud"),
        pytest.param({"token_endpoint_aud": True}, long_only, "exp_too_far", id="aud-does-not-open-lifetime"),
        pytest.param({"token_endpoint_aud": True, "assertion_max_lifetime": 600}, authlib, "exp_too_far",
                     id="3600s-over-a-600s-profile"),
        pytest.param({"assertion_max_lifetime": 60}, long_only, "exp_too_far", id="profile-can-be-stricter"),
        pytest.param({"token_endpoint_aud": True}, lambda c, now: sign({"alg": "RS256"}, good(
            c.client_id, now=now, aud=[TOKEN_URL]), c.key), "aud_not_issuer", id="token-url-in-an-array"),
        pytest.param({"token_endpoint_aud": True}, lambda c, now: sign({"alg": "RS256"}, good(
            c.client_id, now=now, aud=ISS + "/revoke"), c.key), "aud_not_issuer", id="another-endpoint-url"),
    ]


@pytest.mark.parametrize("profile, make, reason", _strict_rows())
def test_what_a_profile_does_not_allow_is_refused(broker, profile, make, reason):
    client = CertClient("lib")
    register(broker, metadata("lib", client.jwk("k1")), profile)
    assert_invalid_client(broker.token(form(make(client, broker.clock.now))))
    assert rejected(broker) == [reason]
    assert compat_events(broker) == []


def test_reuse_is_a_replay_without_the_profile(broker):
    client = CertClient("msal-app")
    register(broker, metadata("msal-app", client.jwk("k1")), {"token_endpoint_aud": True, "assertion_max_lifetime": 600})
    assertion = client.msal(broker.clock.now)
    assert_token(broker.token(form(assertion)))
    assert_invalid_client(broker.token(form(assertion)))
    assert rejected(broker) == ["jti_replayed"]


# -- compat on: Authlib and MSAL get tokens -----------------------------------------------------------


def test_authlib_assertion_with_its_profile(broker):
    """Authlib: aud = the token endpoint, exp = iat + 3600, no kid; the client has two keys."""
    old, new = CertClient("authlib-app"), CertClient("authlib-app")
    register(broker, metadata("authlib-app", old.jwk("old"), new.jwk("new")), AUTHLIB_LIKE)
    assertion = private_key_jwt_sign(new.key.as_dict(private=True), "authlib-app", TOKEN_URL,
                                     issued_at=int(broker.clock.now))
    header, claims = decode_unverified(assertion)
    assert (header, claims["aud"], claims["exp"] - claims["iat"]) == ({"alg": "RS256", "typ": "JWT"}, TOKEN_URL, 3600)
    assert_token(broker.token(form(assertion)))
    assert compat_events(broker) == [("authlib-app", "token_endpoint_aud"), ("authlib-app", "assertion_lifetime")]
    assert (used(broker, "authlib-app", "token_endpoint_aud"), used(broker, "authlib-app", "assertion_lifetime")) == (1, 1)
    # Within the deployment's own rules nothing is counted.
    assert_token(broker.token(form(sign({"alg": "RS256"}, good("authlib-app", now=broker.clock.now), new.key))))
    assert len(compat_events(broker)) == 2


def test_replay_record_lives_as_long_as_the_clients_own_cap(broker):
    client = CertClient("authlib-app")
    register(broker, metadata("authlib-app", client.jwk("k1")), AUTHLIB_LIKE)
    now = broker.clock.now
    assertion = private_key_jwt_sign(client.key.as_dict(private=True), "authlib-app", TOKEN_URL, issued_at=int(now))
    assert_token(broker.token(form(assertion)))
    redis = broker.app.state.registry.redis
    ttl_ms = broker.call(redis.pttl, keyspace.replay("authlib-app", decode_unverified(assertion)[1]["jti"]))
    pad = broker.settings.leeway + broker.settings.clock_skew
    assert (3600 + pad - 1) * 1000 < ttl_ms <= (3600 + pad) * 1000
    # Well inside the hour the assertion is still a replay, not a new one.
    broker.clock.advance(3000)
    assert_invalid_client(broker.token(form(assertion)))
    assert rejected(broker) == ["jti_replayed"]


@pytest.mark.parametrize("quota", [0, 100], ids=["no-quota", "quota"])
def test_msal_assertion_reused_until_exp(tmp_path, clock, quota):
    """MSAL: x5t of a certificate (padded), exp = iat + 600, the same assertion re-sent: accepted
    again (counted, logged) until exp, then refused; /revoke takes it too."""
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, client_quota=quota)
    with Broker(settings, clock) as broker:
        other, client = CertClient("msal-app"), CertClient("msal-app")
        register(broker, metadata("msal-app", other.jwk("other"), client.jwk("mine")), MSAL_LIKE)
        start = clock.now
        assertion = client.msal(start)
        assert "x5t" in decode_unverified(assertion)[0] and decode_unverified(assertion)[0]["x5t"].endswith("=")
        assert_token(broker.token(form(assertion)))
        assert_token(broker.token(form(assertion)))
        clock.advance(590)
        assert_token(broker.token(form(assertion)))
        assert broker.http.post("/revoke", data={**form(assertion), "token": "x"}).status_code == 200
        reuses = [e for e in broker.logs() if e["event"] == "client_auth.compat_used" and e["feature"] == "assertion_reuse"]
        assert len(reuses) == 3 and {e["jti_hash"] for e in reuses} == {reuses[0]["jti_hash"]}
        assert used(broker, "msal-app", "assertion_reuse") == 3
        assert used(broker, "msal-app", "token_endpoint_aud") == 4
        clock.advance(10)  # now = exp: inside the leeway a first use would pass; a reuse does not
        assert_invalid_client(broker.token(form(assertion)))
        clock.advance(broker.settings.leeway + 1)
        assert_invalid_client(broker.token(form(assertion)))
        assert rejected(broker) == ["jti_replayed", "exp_expired"]


@pytest.mark.parametrize("store", ["fakeredis", pytest.param("redis-server", marks=pytest.mark.redis)])
def test_reuses_count_toward_the_client_quota(request, tmp_path, clock, store):
    """Each reuse is a request: with BROKER_CLIENT_QUOTA=2 one re-sent assertion gets two answers in
    the window, then 429 at /token and /revoke alike, so a captured reusable assertion cannot get
    round the quota for its lifetime."""
    redis_url = request.getfixturevalue("real_redis").url if store == "redis-server" else None  # flushed
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", redis_url=redis_url, client_quota=2,
                        client_quota_window=60)
    with Broker(settings, clock) as broker:
        client = CertClient("msal-app")
        register(broker, metadata("msal-app", client.jwk("mine")), MSAL_LIKE)
        assertion = client.msal(clock.now)
        assert_token(broker.token(form(assertion)))
        assert_token(broker.token(form(assertion)))
        assert_error(broker.token(form(assertion)), 429, "slow_down", SlowDown)
        assert_error(broker.http.post("/revoke", data={**form(assertion), "token": "x"}), 429, "slow_down", SlowDown)
        assert used(broker, "msal-app", "assertion_reuse") == 1


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda c, now, jti: c.msal(now - 1, jti=jti), id="new-iat"),
        pytest.param(lambda c, now, jti: c.msal(now, jti=jti, extra="x"), id="extra-claim"),
        pytest.param(lambda c, now, jti: sign({"alg": "RS256"}, good(c.client_id, now=now, jti=jti, aud=TOKEN_URL),
                                              c.key), id="other-header"),
    ],
)
def test_reuse_needs_the_very_same_assertion(broker, change):
    client = CertClient("msal-app")
    register(broker, metadata("msal-app", client.jwk("k1")), MSAL_LIKE)
    now = broker.clock.now
    first = client.msal(now)
    assert_token(broker.token(form(first)))
    other = change(client, now, decode_unverified(first)[1]["jti"])
    assert other != first
    assert_invalid_client(broker.token(form(other)))
    assert rejected(broker) == ["jti_replayed"]
    assert_token(broker.token(form(first)))  # the original still may


def test_enabling_reuse_later_does_not_reopen_a_spent_assertion(broker):
    client = CertClient("msal-app")
    register(broker, metadata("msal-app", client.jwk("k1")), {"token_endpoint_aud": True, "assertion_max_lifetime": 600})
    assertion = client.msal(broker.clock.now)
    assert_token(broker.token(form(assertion)))
    broker.update("msal-app", compat=MSAL_LIKE)
    assert_invalid_client(broker.token(form(assertion)))
    assert rejected(broker) == ["jti_replayed"]


# -- the Lua reuse path, store level: fakeredis and the real redis-server ------------------------------


def _reuse_verdicts(call: Any, redis: Any, quota: int) -> list[str]:
    store = RedisTokenStore(redis, quota=quota, timeout=1.0, retries=0)
    out = []
    for request_id, digest in (("r1", "d" * 64), ("r1", "d" * 64), ("r2", "d" * 64), ("r3", "e" * 64)):
        out.append(call(store.record_reusable, "c", "j", request_id, 60_000, digest))
    out.append(REPLAYED if not call(store.first_use, "c", "j", "r4", 60_000) else FIRST_USE)
    return out


#: own retry → first use; another request with the same digest → reused; another digest → replay;
#: a client without reuse (plain record) → replay.
REUSE_VERDICTS = [FIRST_USE, FIRST_USE, REUSED, REPLAYED, REPLAYED]


@pytest.mark.parametrize("quota", [0, 10], ids=["no-quota", "quota"])
def test_reuse_verdicts_fakeredis(broker, quota):
    assert _reuse_verdicts(broker.call, broker.app.state.registry.redis, quota) == REUSE_VERDICTS


@pytest.mark.redis
@pytest.mark.parametrize("quota", [0, 10], ids=["no-quota", "quota"])
def test_reuse_on_real_redis(real_redis, tmp_path, clock, quota):
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", redis_url=real_redis.url, client_quota=quota)
    with Broker(settings, clock) as b:
        assert _reuse_verdicts(b.call, b.app.state.registry.redis, quota) == REUSE_VERDICTS
        client = CertClient("msal-app")
        register(b, metadata("msal-app", client.jwk("k1")), MSAL_LIKE)
        assertion = client.msal(clock.now)
        for _ in range(3):
            assert_token(b.token(form(assertion)))
        other = client.msal(clock.now - 1, jti=decode_unverified(assertion)[1]["jti"])
        assert_invalid_client(b.token(form(other)))
        assert used(b, "msal-app", "assertion_reuse") == 2
        assert rejected(b) == ["jti_replayed"]


# -- accepted for everyone: x5t / x5t#S256, EdDSA, no kid ------------------------------------------------


def _x5t_rows() -> list[Any]:
    def thumb(c: CertClient, digest: Any, pad: bool = False) -> str:
        value = base64.urlsafe_b64encode(digest(c.der).digest()).decode()
        return value if pad else value.rstrip("=")

    return [
        pytest.param(lambda c, o: {"x5t": thumb(c, hashlib.sha1)}, None, id="x5t"),
        pytest.param(lambda c, o: {"x5t": thumb(c, hashlib.sha1, pad=True)}, None, id="x5t-padded"),
        pytest.param(lambda c, o: {"x5t#S256": thumb(c, hashlib.sha256)}, None, id="x5t-s256"),
        pytest.param(lambda c, o: {"x5t#S256": c.key.thumbprint()}, None, id="jwk-thumbprint"),
        pytest.param(lambda c, o: {"x5t": thumb(o, hashlib.sha1), "kid": "mine"}, None, id="kid-wins"),
        pytest.param(lambda c, o: {"x5t": thumb(o, hashlib.sha1)}, "signature_invalid", id="names-the-other-key"),
        pytest.param(lambda c, o: {"x5t": b64u(hashlib.sha1(b"unknown").digest())}, "x5t_unknown", id="unknown"),
        pytest.param(lambda c, o: {"x5c": ["MIIB"]}, "header_param_forbidden", id="x5c-still-refused"),
        pytest.param(lambda c, o: {"x5t": 1}, "header_invalid", id="not-a-string"),
    ]


@pytest.mark.parametrize("header, reason", _x5t_rows())
def test_x5t_selects_among_the_clients_keys(broker, header, reason):
    other, client = CertClient("svc"), CertClient("svc")
    register(broker, metadata("svc", other.jwk("other"), client.jwk("mine")))
    assertion = by_hand({"alg": "RS256", **header(client, other)}, good("svc", now=broker.clock.now), client.key, "RS256")
    if reason is None:
        assert_token(broker.token(form(assertion)))
    else:
        assert_invalid_client(broker.token(form(assertion)))
        assert rejected(broker) == [reason]


def test_x5t_is_ignored_for_a_client_with_one_key(broker):
    client = CertClient("svc")
    register(broker, metadata("svc", client.jwk("k1")))
    assert_token(broker.token(form(sign({"alg": "RS256", "x5t": "whatever"}, good("svc", now=broker.clock.now),
                                        client.key))))


@pytest.mark.parametrize(
    "x5c_value, status, description",
    [
        pytest.param(lambda c, o: x5c(c.cert), 201, None, id="own-certificate"),
        pytest.param(lambda c, o: x5c(c.cert) + x5c(o.cert), 201, None, id="with-chain"),
        pytest.param(lambda c, o: x5c(o.cert), 400, "the certificate x5c[0] holds another public key than the JWK",
                     id="another-keys-certificate"),
        pytest.param(lambda c, o: ["bm90IGEgY2VydA=="], 400, "x5c[0] is not a base64 DER X.509 certificate",
                     id="not-a-certificate"),
        pytest.param(lambda c, o: ["***"], 400, "x5c[0] is not a base64 DER X.509 certificate", id="not-base64"),
        pytest.param(lambda c, o: x5c(c.cert)[0], 400, "x5c must be a list of 1-10 base64 DER certificates, the key's "
                     "own certificate first", id="not-a-list"),
        pytest.param(lambda c, o: [], 400, "x5c must be a list of 1-10 base64 DER certificates, the key's own "
                     "certificate first", id="empty"),
        pytest.param(lambda c, o: x5c(c.cert) * 11, 400, "x5c must be a list of 1-10 base64 DER certificates, the "
                     "key's own certificate first", id="eleven"),
    ],
)
def test_registered_x5c_must_hold_the_key(broker, x5c_value, status, description):
    client, other = CertClient("svc"), CertClient("other")
    jwk = {**public_jwk(client.key, alg="RS256", kid="k1"), "x5c": x5c_value(client, other)}
    r = broker.http.post("/admin/clients", json=metadata("svc", jwk), headers=admin_headers(broker))
    if description is None:
        assert r.status_code == status, r.text
        assert r.json()["jwks"]["keys"][0]["x5c"] == jwk["x5c"]
    else:
        assert (r.status_code, r.json()) == bad_request(description)


@pytest.mark.parametrize(
    "registered, signing_key, header_alg, reason",
    [
        pytest.param("Ed25519", "same", "EdDSA", None, id="eddsa-for-ed25519"),
        pytest.param("EdDSA", "same", "EdDSA", None, id="registered-as-eddsa"),
        pytest.param("EdDSA", "same", "Ed25519", None, id="registered-as-eddsa-sent-as-ed25519"),
        pytest.param("Ed25519", "ed448", "EdDSA", "signature_invalid", id="ed448-signature"),
        pytest.param("ES256", "p256", "EdDSA", "alg_not_allowed", id="eddsa-for-an-ec-key"),
    ],
)
def test_eddsa_is_ed25519(broker, registered, signing_key, header_alg, reason):
    key = ECKey.generate_key("P-256") if registered == "ES256" else OKPKey.generate_key("Ed25519")
    register(broker, metadata("svc", public_jwk(key, alg=registered, kid="k1")))
    signer = {"same": key, "ed448": OKPKey.generate_key("Ed448"), "p256": key}[signing_key]
    algorithm = {"same": "Ed25519", "ed448": "Ed448", "p256": "ES256"}[signing_key]
    response = broker.token(form(by_hand({"alg": header_alg, "kid": "k1"}, good("svc", now=broker.clock.now), signer,
                                         algorithm)))
    if reason is None:
        assert_token(response)
    else:
        assert_invalid_client(response)
        assert rejected(broker) == [reason]


def test_eddsa_follows_the_deployments_alg_list(tmp_path, clock):
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", assertion_algs=("ES256",))
    with Broker(settings, clock) as broker:
        key = OKPKey.generate_key("Ed25519")
        register(broker, metadata("svc", public_jwk(key, alg="Ed25519", kid="k1")))
        assert_invalid_client(broker.token(form(by_hand({"alg": "EdDSA"}, good("svc", now=clock.now), key, "Ed25519"))))
        assert rejected(broker) == ["alg_not_allowed"]


@pytest.mark.parametrize(
    "registered, jwk_alg, reason",
    [
        pytest.param("Ed448", "EdDSA", "Ed25519 needs a OKP key on Ed25519", id="ed448-key-as-eddsa"),
        pytest.param("P-256", "EdDSA", "Ed25519 needs a OKP key on Ed25519", id="ec-key-as-eddsa"),
    ],
)
def test_eddsa_registration_binds_an_ed25519_key_only(broker, registered, jwk_alg, reason):
    key = OKPKey.generate_key(registered) if registered.startswith("Ed") else ECKey.generate_key(registered)
    jwk = {**key.as_dict(private=False), "alg": jwk_alg}
    r = broker.http.post("/admin/clients", json=metadata("svc", jwk), headers=admin_headers(broker))
    assert (r.status_code, r.json()) == bad_request(reason)


# -- the admin CLI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, compat",
    [
        pytest.param([], None, id="not-given"),
        pytest.param(["--compat", "token_endpoint_aud"], {"token_endpoint_aud": True}, id="flag"),
        pytest.param(["--compat", "token_endpoint_aud", "--compat", "assertion_max_lifetime=3600", "--compat",
                      "assertion_reuse"], {"token_endpoint_aud": True, "assertion_max_lifetime": 3600,
                                           "assertion_reuse": True}, id="agreed-spelling"),
        pytest.param(["--compat", "assertion_reuse=false"], {"assertion_reuse": False}, id="explicit-false"),
        pytest.param(["--compat", "none"], {}, id="none-clears"),
        pytest.param(["--compat", "kid_trial"], {"kid_trial": True}, id="unknown-left-to-the-broker"),
        pytest.param(["--compat", "assertion_max_lifetime=ten"], {"assertion_max_lifetime": "ten"}, id="bad-value-too"),
    ],
)
def test_cli_compat_options(argv, compat):
    args = build_parser().parse_args(["update", "svc", "--scope", "read", *argv])
    assert _metadata(args).get("compat") == compat


def test_cli_compat_none_alone():
    from app.client.admin_keys import UsageError

    args = build_parser().parse_args(["update", "svc", "--compat", "none", "--compat", "assertion_reuse"])
    with pytest.raises(UsageError) as caught:
        _metadata(args)
    assert str(caught.value) == "--compat none clears the compat profile: give it alone"


@pytest.mark.live
def test_cli_round_trip(spawn_broker, tmp_path):
    """register --compat, show, update --compat (replaces), update --compat none, a refusal."""
    import subprocess
    import sys

    bp = spawn_broker()
    script = str(Path(__file__).resolve().parent.parent / "scripts" / "broker_admin.py")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, script, "--broker", bp.url, "--admin-key",
                               str(spawn_broker.keys_dir / "admin.jwk"), "--keys-dir", str(tmp_path / "ck"), *argv],
                              capture_output=True, text=True, timeout=60)

    made = run("register", "msal-app", "--scope", "read", "--audience", RS1, "--compat", "token_endpoint_aud",
               "--compat", "assertion_max_lifetime=600", "--compat", "assertion_reuse")
    assert made.returncode == 0, made.stderr
    shown = json.loads(run("show", "msal-app").stdout)
    assert shown["compat"] == MSAL_LIKE
    assert json.loads(run("update", "msal-app", "--compat", "token_endpoint_aud").stdout)["compat"] == {
        "token_endpoint_aud": True}
    assert "compat" not in json.loads(run("update", "msal-app", "--compat", "none").stdout)
    refused = run("update", "msal-app", "--compat", "kid_trial")
    # One line naming the broker's detail (the rest of the line is the CLI's general error wording).
    assert (refused.returncode, refused.stdout, refused.stderr.count("\n")) == (1, "", 1)
    assert refused.stderr.startswith("broker_admin.py update: error: invalid_client_metadata: unknown compat feature "
                                     "'kid_trial': the features are token_endpoint_aud, assertion_max_lifetime, "
                                     "assertion_reuse")


def test_cli_help_names_compat_and_the_pem_rsa_alg(capsys):
    for command in ("register", "add-key"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "an RSA PEM key: RS256" in text
        assert ("--compat" in text) == (command == "register")


@pytest.mark.parametrize(
    "kind, alg, expected",
    [
        pytest.param("rsa-pem", None, "RS256", id="rsa-pem"),
        pytest.param("rsa-pem", "PS256", "PS256", id="rsa-pem-with-alg"),
        pytest.param("rsa-jwk", None, "PS256", id="rsa-jwk-unchanged"),
        pytest.param("ec-pem", None, "ES256", id="ec-pem"),
    ],
)
def test_pem_rsa_key_binds_rs256(tmp_path, kind, alg, expected):
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1()) if kind.startswith("ec") else rsa.generate_private_key(65537, 2048)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / "key"
    if kind.endswith("jwk"):
        jwk = RSAKey.import_key(pem).as_dict(private=False)
        jwk.pop("alg", None)
        path.write_text(json.dumps(jwk))
    else:
        path.write_bytes(pem)
    assert [k["alg"] for k in read_public_keys(path, alg)] == [expected]



def test_certificate_pem_registers_its_key_with_x5c(broker, tmp_path):
    """`register --public-key cert.pem`: the certificate's key (RS256) with the chain as x5c, so
    MSAL's x5t finds it."""
    client, issuer = CertClient("msal-app"), CertClient("ca")
    path = tmp_path / "cert.pem"
    path.write_bytes(client.cert.public_bytes(serialization.Encoding.PEM) + issuer.cert.public_bytes(serialization.Encoding.PEM))
    [jwk] = read_public_keys(path)
    assert (jwk["alg"], jwk["x5c"]) == ("RS256", x5c(client.cert) + x5c(issuer.cert))
    other = CertClient("msal-app")
    register(broker, metadata("msal-app", other.jwk("other"), {**jwk, "kid": "cert"}), MSAL_LIKE)
    assert_token(broker.token(form(client.msal(broker.clock.now))))
