"""Audit log (attack matrix: `hostile-input-in-logs`, `credentials-in-query`, `oversized-segments`):
one structured event per issued token, rejection (stable ``reason``), replay and admin change, each
with a request id, the client_id and a hash of the jti, and never an assertion, a token or a key;
hostile strings never break a line or turn a rejection into a 500."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from app.oauth.assertion import jti_hash
from tests.conftest import Broker
from tests.expect import assert_error, assert_invalid_client, assert_token
from tests.helpers import ISS, RS1, TestClient, b64u, form, new_key, raw
from tests.test_admin_api import admin_headers

REQUEST_ID = re.compile(r"[0-9a-f]{24}")


def secrets_absent(text: str, *secrets: str) -> None:
    """`oversized-segments`, `hostile-input-in-logs`: no 100-character window of any secret appears in the log."""
    for secret in secrets:
        for start in range(0, max(1, len(secret) - 99), 50):
            window = secret[start:start + 100]
            assert window not in text, f"log contains part of a secret: {window[:20]}..."


def events(broker: Broker, name: str) -> list[dict[str, Any]]:
    return [e for e in broker.logs() if e["event"] == name]


def test_issued_token_event(broker: Broker, c1: TestClient) -> None:
    claims = c1.claims(broker.clock.now)
    assertion = c1.assertion(broker.clock.now, jti=claims["jti"])
    body = assert_token(broker.token(form(assertion)))
    [ev] = events(broker, "token.issued")
    assert REQUEST_ID.fullmatch(ev["request_id"])
    assert ev["client_id"] == "c1" and ev["jti_hash"] == jti_hash("c1", claims["jti"])
    assert ev["scope"] == "read" and ev["aud"] == RS1
    secrets_absent(broker.log_text(), assertion, body["access_token"], claims["jti"])


REJECTIONS: dict[str, Any] = {  # reason codes docs/security.md lists under "Audit log"
    "aud_not_issuer": lambda c, now: c.assertion(now, aud=ISS + "/token"),
    "exp_too_far": lambda c, now: c.assertion(now, exp=now + 3600),
    "alg_not_allowed": lambda c, now: c.assertion(now, header={"alg": "ES384", "kid": "c1-1"}, key=new_key("ES384")),
    "kid_unknown": lambda c, now: c.assertion(now, header={"alg": "ES256", "kid": "nope"}),
    "signature_invalid": lambda c, now: c.assertion(now, key=new_key("ES256")),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_rejection_event_has_stable_reason(broker: Broker, c1: TestClient, case: str) -> None:
    assertion = REJECTIONS[case](c1, broker.clock.now)
    assert_invalid_client(broker.token(form(assertion)))
    [ev] = events(broker, "token.rejected")
    assert (ev["error"], ev["reason"], ev["client_id"]) == ("invalid_client", case, "c1")
    assert REQUEST_ID.fullmatch(ev["request_id"])
    assert not events(broker, "token.issued")
    secrets_absent(broker.log_text(), assertion)


def test_replay_attempt_events(broker: Broker, c1: TestClient) -> None:
    claims = c1.claims(broker.clock.now)
    assertion = c1.assertion(broker.clock.now, jti=claims["jti"])
    assert_token(broker.token(form(assertion)))
    assert_invalid_client(broker.token(form(assertion)))
    [replay] = events(broker, "replay.rejected")
    [rejected] = events(broker, "token.rejected")
    [issued] = events(broker, "token.issued")
    digest = jti_hash("c1", claims["jti"])
    assert replay["reason"] == rejected["reason"] == "jti_replayed"
    assert replay["jti_hash"] == rejected["jti_hash"] == issued["jti_hash"] == digest
    assert replay["request_id"] == rejected["request_id"] != issued["request_id"]
    secrets_absent(broker.log_text(), assertion, claims["jti"])


def test_admin_change_events(broker: Broker) -> None:
    headers = admin_headers(broker)
    svc = TestClient("svc")
    assert broker.http.post("/admin/clients", json=svc.metadata(), headers=headers).status_code == 201
    assert broker.http.patch("/admin/clients/svc", json={"enabled": False}, headers=headers).status_code == 200
    assert broker.http.delete("/admin/clients/svc", headers=headers).status_code == 204
    changes = [e for e in broker.logs() if e["event"].startswith("admin.client_")]
    assert [e["event"] for e in changes] == ["admin.client_registered", "admin.client_updated", "admin.client_deleted"]
    assert all(e["client_id"] == "svc" and e["admin"] == "broker-admin" and REQUEST_ID.fullmatch(e["request_id"])
               for e in changes)
    assert len({e["request_id"] for e in changes}) == 3
    admin_key = json.loads((broker.settings.keys_dir / "admin.jwk").read_text())
    secrets_absent(broker.log_text(), headers["authorization"][7:], admin_key["d"])
    for path in (broker.settings.keys_dir / "signing").glob("*.json"):
        d = json.loads(path.read_text()).get("d")
        assert d is None or d not in broker.log_text()


def test_credentials_in_query_ignored_and_not_logged(broker: Broker, c1: TestClient) -> None:
    """`credentials-in-query`: the query string is never read and never logged."""
    assertion = c1.assertion(broker.clock.now)
    query = httpx.QueryParams(form(assertion))
    resp = broker.http.post("/token?" + str(query), content=b"grant_type=client_credentials",
                            headers={"content-type": "application/x-www-form-urlencoded"})
    assert_invalid_client(resp, "client_auth_missing")
    secrets_absent(broker.log_text(), assertion)


@pytest.mark.parametrize(
    "segments",
    [
        pytest.param(("h", 513), id="header-513B"),
        pytest.param(("p", 8300), id="payload-over-assertion-max"),
        pytest.param(("s", 1025), id="signature-1025B"),
    ],
)
def test_oversized_segments_rejected_quickly_and_not_logged(broker: Broker, c1: TestClient, segments: tuple[str, int]) -> None:
    """`oversized-segments`: 401, and neither logs nor error text carry a raw segment."""
    part, size = segments
    h, p, s = c1.assertion(broker.clock.now).split(".")
    filler = b64u(b"x" * size)[:size]
    assertion = ".".join((filler if part == "h" else h, filler if part == "p" else p, filler if part == "s" else s))
    resp = broker.token(form(assertion))
    assert_invalid_client(resp, _rejected_reason(broker))
    secrets_absent(broker.log_text() + resp.text, assertion)


HOSTILE = [
    pytest.param("a\"\r\n{\"event\":\"token.issued\"}", id="crlf-json-injection"),
    pytest.param("\ud800", id="lone-surrogate"),
    pytest.param("k" * 10_000, id="10KB"),
    pytest.param("\u2028\x00\x1b[31m", id="separators-nul-ansi"),
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_kid_never_breaks_logging(broker: Broker, c1: TestClient, value: str) -> None:
    """`hostile-input-in-logs`: attacker-controlled kid reaches no log line raw; one line per event; 401 not 500."""
    header = json.dumps({"alg": "ES256", "kid": value})  # json.dumps escapes the lone surrogate
    assertion = raw(header, json.dumps(c1.claims(broker.clock.now)), c1.key)
    resp = broker.token(form(assertion))
    assert_invalid_client(resp, _rejected_reason(broker))
    _one_event_per_line(broker)


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_iss_never_breaks_logging(broker: Broker, c1: TestClient, value: str) -> None:
    claims = c1.claims(broker.clock.now, iss=value, sub=value)
    assertion = raw(json.dumps({"alg": "ES256", "kid": "c1-1"}), json.dumps(claims), c1.key)
    assert_invalid_client(broker.token(form(assertion)), _rejected_reason(broker))
    lines = _one_event_per_line(broker)
    for ev in lines:
        for v in ev.values():
            assert not isinstance(v, str) or len(v) <= 203  # fields truncated to 200 characters + "..."


@pytest.mark.parametrize(
    ("client_id", "status", "code", "reason"),
    [
        pytest.param("c1%0D%0Ainjected", 400, "invalid_request", "client_id_charset", id="crlf"),
        pytest.param("%ED%A0%80", 400, "invalid_request", "form_encoding", id="surrogate-utf8"),
        pytest.param("%FF%FE", 400, "invalid_request", "form_encoding", id="invalid-utf8"),
        pytest.param("c" * 10_000, 401, "invalid_client", None, id="10KB-mismatch"),
    ],
)
def test_hostile_client_id_param(broker: Broker, c1: TestClient, client_id: str, status: int, code: str,
                                 reason: str | None) -> None:
    body = str(httpx.QueryParams(form(c1.assertion(broker.clock.now)))) + "&client_id=" + client_id
    assert_error(broker.token(body), status, code, reason=reason)
    _one_event_per_line(broker)


def _rejected_reason(broker: Broker) -> str | None:
    """The logged reason of the last refusal (its answer is specific only before the client look-up)."""
    rejected = [e for e in broker.logs() if e["event"] == "token.rejected"]
    return rejected[-1]["reason"] if rejected else None


def _one_event_per_line(broker: Broker) -> list[dict[str, Any]]:
    text = broker.log_text()
    assert "\r" not in text and "\ud800" not in text
    lines = text.splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is one complete JSON event
    assert all(isinstance(e, dict) and "event" in e for e in parsed)
    assert not [e for e in parsed if e["event"].endswith("unexpected_error")]
    return parsed


def test_registered_jwks_uri_is_logged_without_its_query(broker: Broker) -> None:
    """A jwks_uri query may carry a tenant or an access key: the audit event keeps the URL, not the query."""
    uri = "https://93.184.216.34/jwks.json?tenant=secret-tenant-4f1c&sig=abc"
    metadata = {"client_id": "remote", "jwks_uri": uri, "scopes": ["read"], "audiences": [RS1],
                "token_endpoint_auth_signing_alg": "ES256"}
    r = broker.http.post("/admin/clients", json=metadata, headers=admin_headers(broker))
    assert r.status_code == 201, r.text
    registered = [e for e in broker.logs() if e["event"] == "admin.client_registered"]
    assert [e["jwks_uri"] for e in registered] == ["https://93.184.216.34/jwks.json?[query removed]"]
    assert "secret-tenant-4f1c" not in broker.log_text()
