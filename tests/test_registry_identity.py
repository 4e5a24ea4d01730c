"""Registry identities (docs/onboarding.md, docs/token-cache.md; attack matrix:
`registry-identity`): a client_id deleted and registered again is a new registration; admin
clients come from the operator only; wrongly typed metadata is a 400 and never a stored record;
one public key belongs to one client unless both allow sharing. In process on fakeredis."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, RSAKey

from app.client.admin import load_private_jwk
from app.config import ConfigError, Settings
from app.oauth.clients import ClientRecord, encode_record, jti_registration, key_thumbprint, validate_client_jwks
from app.store import keyspace
from tests.conftest import GENERATED_INPUTS, Broker, FrozenClock
from tests.expect import assert_invalid_client, assert_token
from tests.helpers import ISS, RS1, TestClient, decode_unverified, form
from tests.keyserver import KeyServer
from tests.test_admin_api import admin_headers
from tests.test_revocation_introspection import INTROSPECTOR, introspect
from token_broker_jose.assertion import make_client_assertion

ADMIN = ISS + "/admin"


def bad(reason_text: str) -> tuple[int, dict[str, str]]:
    return 400, {"error": "invalid_client_metadata", "error_description": reason_text}


def redis(broker: Broker) -> Any:
    return broker.app.state.registry.redis


def stored(broker: Broker, client_id: str) -> ClientRecord:
    return broker.call(broker.app.state.registry.get, client_id)


# -- delete and register again (the token cache and introspection follow the registration) ------


def test_delete_and_register_again_is_a_new_registration(broker):
    """The same client_id, key and metadata, deleted and registered again: its version starts at 1
    again, yet it gets a fresh token (not the deleted registration's cached one), and the deleted
    registration's token stays inactive at /introspect."""
    broker.register(INTROSPECTOR)
    c1 = TestClient("c1")
    first = broker.register(c1)
    old = assert_token(broker.get_token(c1))["access_token"]
    assert assert_token(broker.get_token(c1))["access_token"] == old  # cached
    assert introspect(broker, old)["active"] is True
    assert jti_registration(decode_unverified(old)[1]["jti"]) == first.registration_id

    broker.call(broker.app.state.admin_service.delete, "tests", "c1")
    broker.app.state.directory.invalidate()
    assert introspect(broker, old) == {"active": False}
    second = broker.register(c1)
    assert (second.version, second.registration_id != first.registration_id) == (first.version, True)

    new = assert_token(broker.get_token(c1))["access_token"]
    assert new != old
    assert introspect(broker, old) == {"active": False}  # forever: not revived by the new registration
    assert introspect(broker, new)["active"] is True
    reasons = [e["reason"] for e in broker.logs() if e["event"] == "introspection.inactive"]
    assert reasons == ["client_gone", "registration_gone"]


def test_an_update_keeps_the_registration(broker, c1):
    before = stored(broker, "c1")
    token = assert_token(broker.get_token(c1))["access_token"]
    after = broker.update("c1", token_lifetime=600)
    assert (after.registration_id, after.version) == (before.registration_id, before.version + 1)
    broker.register(INTROSPECTOR)
    assert introspect(broker, token)["active"] is True


def test_records_without_a_registration_id_keep_working(broker, c1):
    """A record stored before registration ids existed reads back as the legacy registration: its
    clients get tokens (plain jti), which introspect active."""
    legacy = msgspec.structs.replace(stored(broker, "c1"), registration_id="")
    broker.call(redis(broker).set, keyspace.client("c1"), encode_record(legacy))
    assert b"registration_id" not in broker.call(redis(broker).get, keyspace.client("c1"))
    broker.app.state.directory.invalidate()
    token = assert_token(broker.get_token(c1))["access_token"]
    assert "." not in decode_unverified(token)[1]["jti"]
    broker.register(INTROSPECTOR)
    assert introspect(broker, token)["active"] is True
    assert broker.update("c1", token_lifetime=600).registration_id == ""  # kept across updates


# -- admin clients come from the operator only ---------------------------------------------------


def _jwk() -> dict[str, Any]:
    return TestClient("x").public_jwk()


ADMIN_CHANGES = [
    ("scopes", {"scopes": ["broker:admin", "read"]}, "bootstrap"),
    ("audiences", {"audiences": [ADMIN, RS1]}, "bootstrap"),
    ("default-audience", {"default_audience": RS1}, "bootstrap"),
    ("token-lifetime", {"token_lifetime": 86400}, "bootstrap"),
    ("grant-types", {"grant_types": []}, "bootstrap"),
    ("jwks", {"jwks": {"keys": [_jwk()]}}, "bootstrap"),
    ("jwks-uri", {"jwks_uri": "https://keys.example.com/jwks"}, "bootstrap"),
    ("legacy-aud", {"legacy_token_endpoint_aud_until": 1_800_000_100}, "bootstrap"),
    ("disable", {"enabled": False}, "the bootstrap admin client cannot be disabled"),
    ("admin-flag", {"admin": False}, "admin is set by the broker and the operator's configuration, not the admin API"),
]
_BOOTSTRAP = ("the bootstrap admin client is configured by the operator (BROKER_ADMIN_JWKS or the admin key file) "
              "and re-asserted at every start; change it there")


@pytest.mark.parametrize(("changes", "description"), [c[1:] for c in ADMIN_CHANGES], ids=[c[0] for c in ADMIN_CHANGES])
def test_admin_api_cannot_change_the_bootstrap_admin(broker, changes, description):
    h = admin_headers(broker)
    before = stored(broker, "broker-admin")
    r = broker.http.patch("/admin/clients/broker-admin", json=changes, headers=h)
    assert (r.status_code, r.json()) == bad(_BOOTSTRAP if description == "bootstrap" else description)
    assert stored(broker, "broker-admin") == before


def test_admin_keys_cannot_be_added_or_removed_through_the_api(broker):
    h = admin_headers(broker)
    kid = stored(broker, "broker-admin").jwks["keys"][0]["kid"]
    r = broker.http.post("/admin/clients/broker-admin/keys", json=_jwk(), headers=h)
    assert (r.status_code, r.json()) == bad(_BOOTSTRAP)
    r = broker.http.delete(f"/admin/clients/broker-admin/keys/{kid}", headers=h)
    assert (r.status_code, r.json()) == bad(
        "a client needs at least one key; add the new key first or disable the client")


RESERVED = [
    ("broker-admin-scope", {"scopes": ["read", "broker:admin"]},
     "scope 'broker:admin' is reserved for admin clients the operator configures (BROKER_ADMIN_JWKS, or "
     "\"admin\": true in the clients file)"),
    ("other-broker-scope", {"scopes": ["read", "broker:rotate"]},
     "scope 'broker:rotate' is reserved for admin clients the operator configures (BROKER_ADMIN_JWKS, or "
     "\"admin\": true in the clients file)"),
    ("admin-audience", {"audiences": [RS1, ADMIN]},
     "the admin audience is reserved for admin clients the operator configures (BROKER_ADMIN_JWKS, or "
     "\"admin\": true in the clients file)"),
    ("admin-default-audience", {"default_audience": ADMIN + "/"},
     "the admin audience is reserved for admin clients the operator configures (BROKER_ADMIN_JWKS, or "
     "\"admin\": true in the clients file)"),
    ("admin-flag", {"admin": True}, "admin is set by the broker and the operator's configuration, not the admin API"),
    ("registration-id", {"registration_id": "mine"},
     "registration_id is set by the broker and the operator's configuration, not the admin API"),
    ("admin-client-id", {"client_id": "broker-admin"}, "the admin client comes from BROKER_ADMIN_JWKS"),
]


@pytest.mark.parametrize(("extra", "description"), [c[1:] for c in RESERVED], ids=[c[0] for c in RESERVED])
def test_ordinary_registration_cannot_get_admin_privileges(broker, extra, description):
    h = admin_headers(broker)
    body = {**TestClient("svc").metadata(), **extra}
    r = broker.http.post("/admin/clients", json=body, headers=h)
    assert (r.status_code, r.json()) == bad(description)
    r = broker.http.post("/admin/clients", json=TestClient("svc").metadata(), headers=h)
    assert r.status_code == 201
    if extra.get("client_id") is None:  # the same through an update
        r = broker.http.patch("/admin/clients/svc", json=extra, headers=h)
        assert (r.status_code, r.json()) == bad(description)


def test_introspect_scope_is_still_an_ordinary_registration(broker):
    r = broker.http.post("/admin/clients", json=INTROSPECTOR.metadata(), headers=admin_headers(broker))
    assert r.status_code == 201 and r.json()["scopes"] == ["broker:introspect"]


def test_bootstrap_admin_is_reasserted_in_full_at_start(tmp_path, clock):
    """Tampered in Redis (more scopes, a longer lifetime, an extra key, another audience): the next
    start puts back exactly what the operator configured (same registration, next version)."""
    from fakeredis.aioredis import FakeRedis

    shared = FakeRedis()
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys")
    with Broker(settings, clock, redis=shared) as b:
        good = stored(b, "broker-admin")
        tampered = msgspec.structs.replace(
            good, scopes=("broker:admin", "read"), token_lifetime=86400, audiences=(ADMIN, RS1), default_audience=RS1,
            jwks={"keys": [*good.jwks["keys"], *validate_client_jwks([_jwk()])["keys"]]}, grant_types=())
        b.call(shared.set, keyspace.client("broker-admin"), encode_record(tampered))
    with Broker(settings, clock, redis=shared) as b:
        now = stored(b, "broker-admin")
        assert msgspec.structs.replace(now, version=0, updated_at=0) == msgspec.structs.replace(good, version=0, updated_at=0)
        assert now.version == good.version + 1
        assert any(e["event"] == "admin.bootstrap_asserted" for e in b.logs())
        admin_headers(b)  # and it works


def test_a_client_holding_broker_admin_without_the_admin_flag_is_no_admin(broker):
    """A record stored before these rules (broker:admin scope, admin audience, no admin flag): it
    may still get the token, but the admin API refuses it."""
    rogue = TestClient("rogue", scopes=("broker:admin",), default_scopes=("broker:admin",), audiences=(ADMIN,),
                       default_audience=ADMIN)
    record = ClientRecord(client_id="rogue", registration_id="r1", jwks=validate_client_jwks([rogue.public_jwk()]),
                          scopes=("broker:admin",), default_scopes=("broker:admin",), audiences=(ADMIN,),
                          default_audience=ADMIN, version=1)
    broker.call(broker.app.state.registry.put, record)
    broker.app.state.directory.invalidate()
    token = assert_token(broker.get_token(rogue))["access_token"]
    r = broker.http.get("/admin/clients", headers={"authorization": "Bearer " + token})
    assert r.status_code == 401


def test_clients_file_admin_flag_makes_an_admin_the_api_cannot_touch(tmp_path, clock):
    ops = TestClient("ops-admin", scopes=("broker:admin",), default_scopes=("broker:admin",), audiences=(ADMIN,),
                     default_audience=ADMIN)
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"clients": [{**ops.metadata(), "admin": True}]}))
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", clients_file=str(path))
    with Broker(settings, clock) as b:
        token = assert_token(b.get_token(ops))["access_token"]
        h = {"authorization": "Bearer " + token}
        assert b.http.get("/admin/clients", headers=h).status_code == 200
        file_admin = "this admin client is configured by the operator in the clients file; change it there"
        r = b.http.patch("/admin/clients/ops-admin", json={"token_lifetime": 900}, headers=h)
        assert (r.status_code, r.json()) == bad(file_admin)
        r = b.http.delete("/admin/clients/ops-admin", headers=h)
        assert (r.status_code, r.json()) == bad(file_admin)
    path.write_text(json.dumps({"clients": [ops.metadata()]}))  # the same entry without the flag
    with pytest.raises(BaseException) as info:
        with Broker(Settings(issuer=ISS, keys_dir=tmp_path / "keys2", clients_file=str(path)), clock):
            pass
    pattern = r"client #0 \('ops-admin'\): scope 'broker:admin' is reserved for admin clients"
    assert info.group_contains(ConfigError, match=pattern) if isinstance(info.value, BaseExceptionGroup) else info.match(pattern)


# -- wrongly typed metadata: 400, never a 500, never a stored record ---------------------------------


def _ec_jwk(**override: Any) -> dict[str, Any]:
    return {**ECKey.generate_key("P-256").as_dict(private=False), "alg": "ES256", **override}


TYPED = [
    ("default-audience-int", {"default_audience": 5}, "default_audience '5' must be an absolute URI without fragment"),
    # Alone, it was stored (201) and then every `list` answered 500.
    ("default-audience-int-alone", {"audiences": [], "default_audience": 5},
     "default_audience '5' must be an absolute URI without fragment"),
    ("default-audience-object", {"default_audience": {"a": 1}},
     "default_audience \"{'a': 1}\" must be an absolute URI without fragment"),
    ("audiences-nested", {"audiences": [[RS1]]}, "audience \"['https://api.example.test']\" must be an absolute URI without fragment"),
    ("scopes-nested", {"scopes": [["read"]]}, "scopes: \"['read']\" is not a valid scope token (RFC 6749 §3.3)"),
    ("grant-types-nested", {"grant_types": [["client_credentials"]]}, "grant_types may only contain client_credentials"),
    ("signing-alg-list", {"token_endpoint_auth_signing_alg": ["ES256"]},
     "token_endpoint_auth_signing_alg must be one of ES256, ES384, PS256, RS256, Ed25519"),
    ("kty-list", {"jwks": {"keys": [_ec_jwk(kty=["EC"])]}},
     "unsupported key type \"['EC']\": use EC, RSA or OKP (no symmetric keys)"),
    ("alg-list", {"jwks": {"keys": [_ec_jwk(alg=["ES256"])]}},
     "alg must be one of ES256, ES384, PS256, RS256, Ed25519 (got \"['ES256']\")"),
    ("key-ops-nested", {"jwks": {"keys": [_ec_jwk(key_ops=[["verify"]])]}}, "key_ops may only contain 'verify'"),
    ("allow-shared-key-string", {"allow_shared_key": "yes"}, "allow_shared_key must be true or false"),
    ("enabled-null", {"enabled": None}, "enabled must be true or false"),
]


@pytest.mark.parametrize(("extra", "description"), [c[1:] for c in TYPED], ids=[c[0] for c in TYPED])
def test_wrongly_typed_metadata_is_400_and_list_keeps_working(broker, extra, description):
    h = admin_headers(broker)
    r = broker.http.post("/admin/clients", json={**TestClient("svc").metadata(), **extra}, headers=h)
    assert (r.status_code, r.json()) == bad(description)
    assert broker.http.post("/admin/clients", json=TestClient("svc").metadata(), headers=h).status_code == 201
    r = broker.http.patch("/admin/clients/svc", json=extra, headers=h)
    assert (r.status_code, r.json()) == bad(description)
    r = broker.http.get("/admin/clients", headers=h)
    assert r.status_code == 200 and [c["client_id"] for c in r.json()["clients"]] == ["broker-admin", "svc"]


def test_an_unreadable_stored_record_breaks_nothing(broker, c1):
    """Written by something else (an integer default_audience): listed without it, its requests 401."""
    raw = json.loads(encode_record(stored(broker, "c1")))
    broker.call(redis(broker).set, keyspace.client("c1"), json.dumps({**raw, "default_audience": 5}))
    broker.app.state.directory.invalidate()
    h = admin_headers(broker)
    r = broker.http.get("/admin/clients", headers=h)
    assert r.status_code == 200 and [c["client_id"] for c in r.json()["clients"]] == ["broker-admin"]
    r = broker.http.get("/admin/clients/c1", headers=h)
    assert (r.status_code, r.json()["error_description"]) == (
        409, "the stored record cannot be read; delete the client and register it again")
    assert_invalid_client(broker.get_token(c1))
    events = {e["event"] for e in broker.logs()}
    assert {"admin.record_unreadable", "client.record_unreadable"} <= events
    assert broker.http.delete("/admin/clients/c1", headers=h).status_code == 204


# Generated admin metadata: valid metadata with fields replaced by any JSON value, extra members,
# or a body that is any JSON value at all.
json_leaf = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False, allow_infinity=False)
             | st.text(max_size=12) | st.sampled_from(["ES256", "EC", "P-256", "client_credentials", RS1, ADMIN,
                                                       "broker:admin", "read", "", "\u2028"]))
json_values = st.recursive(json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                           max_leaves=8)
FIELDS = ["client_id", "jwks", "scopes", "default_scopes", "audiences", "default_audience", "grant_types",
          "token_lifetime", "enabled", "token_endpoint_auth_signing_alg", "legacy_token_endpoint_aud_until",
          "allow_shared_key", "admin", "registration_id", "version", "created_at"]
# jwks_uri only from values the URL check refuses before any name is resolved (no DNS in the fuzz).
jwks_uris = json_values.filter(lambda v: not isinstance(v, str)) | st.sampled_from(
    ["https://10.0.0.1/jwks", "http://keys.example/jwks", "https://[::1]/jwks", "/jwks", ""])


def _key_field(data: st.DataObject, jwk: dict[str, Any]) -> dict[str, Any]:
    out = dict(jwk)
    for name in data.draw(st.lists(st.sampled_from(["kty", "crv", "x", "y", "alg", "use", "key_ops", "kid", "nbf", "exp", "d"]),
                                   max_size=3)):
        out[name] = data.draw(json_values)
    return out


def test_admin_api_fuzz_never_5xx(tmp_path):
    config = Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, ratelimit_mode="off")
    count = 0
    statuses: dict[int, int] = {}
    with Broker(config, FrozenClock()) as broker:
        h = admin_headers(broker)
        base = TestClient("fuzz")
        assert broker.http.post("/admin/clients", json=base.metadata(), headers=h).status_code == 201
        # The registrations get a key of their own: one public key belongs to one client, so a body
        # carrying the key "fuzz" holds would be refused whatever else it says.
        svc = TestClient("svc")

        @hsettings(max_examples=300, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(data=st.data())
        def check(data: st.DataObject) -> None:
            nonlocal count
            count += 1
            body: Any = dict(svc.metadata())
            for name in data.draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
                body[name] = data.draw(json_values)
            if data.draw(st.booleans()):
                body["jwks"] = {"keys": [_key_field(data, svc.public_jwk())]}
            if data.draw(st.integers(0, 9)) == 0:
                body = {"jwks_uri": data.draw(jwks_uris), **{k: v for k, v in body.items() if k != "jwks"}}
            if data.draw(st.integers(0, 9)) == 0:
                body = data.draw(json_values)
            how = data.draw(st.sampled_from(["register", "update", "add-key"]))
            if how == "register":
                r = broker.http.post("/admin/clients", json=body, headers=h)
            elif how == "update":
                r = broker.http.patch("/admin/clients/fuzz", json=body, headers=h)
            else:
                r = broker.http.post("/admin/clients/fuzz/keys", json=body.get("jwks", body) if isinstance(body, dict) else body,
                                     headers=h)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, (how, body, r.text)
            if r.status_code >= 400:
                assert r.json()["error"] in ("invalid_client_metadata", "not_found"), r.text
            listing = broker.http.get("/admin/clients", headers=h)
            assert listing.status_code == 200, listing.text
            if r.status_code == 201 and how == "register":  # make room for the next registration
                assert broker.http.delete("/admin/clients/" + r.json()["client_id"], headers=h).status_code == 204

        check()
        assert not any(e["event"].endswith("unexpected_error") for e in broker.logs())
    assert statuses.get(201, 0) + statuses.get(200, 0) > 0, statuses  # some inputs were valid
    GENERATED_INPUTS["admin API metadata"] = count


# -- one public key, one client ----------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _leading_zero(jwk: dict[str, Any], member: str) -> dict[str, Any]:
    """The same key with a coordinate (or modulus) written with a leading zero byte."""
    raw = base64.urlsafe_b64decode(jwk[member] + "=" * (-len(jwk[member]) % 4))
    return {**jwk, member: _b64(b"\0" + raw)}


SHARED = [
    ("same-jwk", lambda a: a.public_jwk(), None, "refused"),
    ("another-kid", lambda a: {**a.public_jwk(), "kid": "shared-1"}, None, "refused"),
    ("ec-x-leading-zero", lambda a: {**_leading_zero(a.public_jwk(), "x"), "kid": "shared-1"}, None, "refused"),
    ("both-allow", lambda a: a.public_jwk(), (True, True), "allowed"),
    ("only-new-allows", lambda a: a.public_jwk(), (False, True), "refused"),
    ("only-old-allows", lambda a: a.public_jwk(), (True, False), "refused"),
]


@pytest.mark.parametrize(("make", "allow", "outcome"), [c[1:] for c in SHARED], ids=[c[0] for c in SHARED])
def test_one_public_key_one_client(broker, make, allow, outcome):
    h = admin_headers(broker)
    a = TestClient("a")
    a_allows, b_allows = allow or (False, False)
    assert broker.http.post("/admin/clients", json={**a.metadata(), "allow_shared_key": a_allows}, headers=h).status_code == 201
    jwk = make(a)
    b_meta = {**TestClient("b").metadata(), "jwks": {"keys": [jwk]}, "allow_shared_key": b_allows}
    r = broker.http.post("/admin/clients", json=b_meta, headers=h)
    if outcome == "allowed":
        assert r.status_code == 201, r.text
        return
    thumbprint = key_thumbprint(a.public_jwk())
    shared = bad(f"a public key (RFC 7638 thumbprint {thumbprint}) is registered for another client ('a'); "
                 "give this client its own key, or set allow_shared_key on both")
    assert (r.status_code, r.json()) == shared
    # The same key through add-key and through an update of another client's keys.
    assert broker.http.post("/admin/clients", json={**TestClient("b").metadata(), "allow_shared_key": b_allows},
                            headers=h).status_code == 201
    r = broker.http.post("/admin/clients/b/keys", json=jwk, headers=h)
    assert (r.status_code, r.json()) == shared
    r = broker.http.patch("/admin/clients/b", json={"jwks": {"keys": [jwk]}}, headers=h)
    assert (r.status_code, r.json()) == shared
    # a itself may keep and re-send its key; once a is deleted the key is free.
    assert broker.http.patch("/admin/clients/a", json={"jwks": {"keys": [a.public_jwk()]}}, headers=h).status_code == 200
    assert broker.http.delete("/admin/clients/a", headers=h).status_code == 204
    assert broker.http.post("/admin/clients/b/keys", json=jwk, headers=h).status_code == 201


def test_rsa_modulus_with_a_leading_zero_is_the_same_key(broker):
    h = admin_headers(broker)
    key = RSAKey.generate_key(2048)
    jwk = {**key.as_dict(private=False), "alg": "PS256"}
    assert broker.http.post("/admin/clients", json={**TestClient("a").metadata(), "jwks": {"keys": [jwk]}},
                            headers=h).status_code == 201
    r = broker.http.post("/admin/clients", json={**TestClient("b").metadata(),
                                                 "jwks": {"keys": [{**_leading_zero(jwk, "n"), "kid": "b-1"}]}}, headers=h)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client_metadata")
    assert "is registered for another client ('a')" in r.json()["error_description"]


def test_clients_file_with_one_key_for_two_clients_is_refused(tmp_path, clock):
    a = TestClient("a")
    path = tmp_path / "clients.json"
    path.write_text(json.dumps([a.metadata(), {**TestClient("b").metadata(), "jwks": {"keys": [a.public_jwk()]}}]))
    with pytest.raises(BaseException) as info:
        with Broker(Settings(issuer=ISS, keys_dir=tmp_path / "keys", clients_file=str(path)), clock):
            pass
    pattern = r"client #1 \('b'\): a public key is also listed for 'a' \(set allow_shared_key on both to share it\)"
    assert info.group_contains(ConfigError, match=pattern) if isinstance(info.value, BaseExceptionGroup) else info.match(pattern)


def test_jwks_uri_key_registered_for_another_client_is_refused(tmp_path, clock):
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", jwks_uri_allow_http_loopback=True)
    with Broker(settings, clock) as broker, KeyServer() as server:
        a = TestClient("a", kid="k1")
        broker.register(a)
        own = TestClient("remote", kid="k2")
        server.keys = [{**a.public_jwk(), "kid": "stolen"}, own.public_jwk()]
        metadata = {**own.metadata(), "jwks_uri": server.url, "token_endpoint_auth_signing_alg": "ES256"}
        metadata.pop("jwks")
        broker.call(broker.app.state.admin_service.register, "tests", metadata)
        broker.app.state.directory.invalidate()
        assert_token(broker.get_token(own))
        stolen = make_client_assertion(a.key, client_id="remote", issuer=ISS, alg="ES256", kid="stolen", now=clock.now)
        assert_invalid_client(broker.token(form(stolen)))
        refused = [e for e in broker.logs() if e["event"] == "jwks_uri.key_refused"]
        assert refused and {(e["client_id"], e["kid"], e["reason"], e["registered_for"]) for e in refused} == {
            ("remote", "stolen", "jwk_shared", "a")}  # at every fetch of the set


def test_admin_key_file_is_the_admin_of_record(broker):
    """The admin CLI's key is the one the start asserted (sanity check of the helpers above)."""
    key, alg, kid = load_private_jwk(broker.settings.keys_dir / "admin.jwk")
    assert stored(broker, "broker-admin").jwks["keys"][0]["kid"] == kid
    assert stored(broker, "broker-admin").admin is True
