"""Logs an operator can use, in process: the request id (``X-Request-Id`` on every answer, the same
value as ``request_id`` on every line written while handling the request, never the caller's),
the exact fields of the rejection, admin-failure, issued-token and access lines, and ``pid`` on
every line (``app.log``, ``app.web.access``)."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis

from app.config import ConfigError, Settings
from app.log import stdlib_formatter
from app.oauth.access_token import AccessTokenClaims
from app.oauth.assertion import jti_hash
from tests.conftest import Broker, FrozenClock
from tests.expect import assert_token
from tests.helpers import ISS, RS1, TestClient, decode_unverified, form, new_key
from tests.test_admin_api import admin_headers, meta

REQUEST_ID = re.compile(r"[0-9a-f]{24}")
BASE = {"event", "level", "timestamp", "pid", "request_id"}
ACCESS = BASE | {"method", "path", "status", "duration_ms", "source", "user_agent"}
REJECTED = BASE | {"client_id", "jti_hash", "error", "reason", "source"}
ISSUED = BASE | {"client_id", "jti_hash", "scope", "aud", "cache", "kid", "expires_in"}
ADMIN_REJECTED = BASE | {"admin", "client_id", "method", "path", "status", "error", "reason", "source"}
UNAVAILABLE = BASE | {"client_id", "error"}
FIELDS = {"token.issued": ISSUED | {"at_jti_hash"}, "token.rejected": REJECTED, "token.store_unavailable": UNAVAILABLE,
          "http.access": ACCESS}
#: Litestar's test client is the peer the app sees.
SOURCE = "testclient"


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def logged(tmp_path: Path, clock: FrozenClock, server: FakeServer) -> Iterator[Broker]:
    """A broker with the access log on, on a fakeredis server the test can disconnect."""
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, access_log="on")
    with Broker(settings, clock, redis=FakeRedis(server=server)) as b:
        yield b


@pytest.fixture
def svc(logged: Broker) -> TestClient:
    client = TestClient("svc", alg="ES256", kid="svc-1")
    logged.register(client)
    return client


def lines_of(broker: Broker, response: httpx.Response) -> list[dict[str, Any]]:
    """The log lines of the request that got ``response`` (by its X-Request-Id)."""
    request_id = response.headers["x-request-id"]
    assert REQUEST_ID.fullmatch(request_id), request_id
    return [line for line in broker.logs() if line.get("request_id") == request_id]


def access_line(method: str, path: str, status: int) -> dict[str, Any]:
    return {"event": "http.access", "level": "info", "method": method, "path": path, "status": status,
            "source": SOURCE, "user_agent": "testclient", "pid": os.getpid()}


Call = Callable[[Broker, TestClient, FakeServer], httpx.Response]


def _token(b: Broker, c: TestClient, server: FakeServer) -> httpx.Response:
    return b.get_token(c)


def _bad_request(b: Broker, c: TestClient, server: FakeServer) -> httpx.Response:
    return b.token(form(c.assertion(b.clock.now), grant_type="password"))


def _bad_signature(b: Broker, c: TestClient, server: FakeServer) -> httpx.Response:
    return b.token(form(c.assertion(b.clock.now, key=new_key("ES256"))))


def _not_found(b: Broker, c: TestClient, server: FakeServer) -> httpx.Response:
    return b.http.get("/no/such/path?secret=s3cret")


def _method_not_allowed(b: Broker, c: TestClient, server: FakeServer) -> httpx.Response:
    return b.http.get("/token?secret=s3cret")


def _store_down(b: Broker, c: TestClient, server: FakeServer) -> httpx.Response:
    server.connected = False  # every Redis call of the broker now fails: fail closed, 503
    return b.get_token(c)


#: id: (call, status, the request's events besides http.access, the access line's method and path)
CASES: dict[str, tuple[Call, int, list[str], str]] = {
    "200-issued": (_token, 200, ["token.issued"], "POST /token"),
    "400-bad-grant": (_bad_request, 400, ["token.rejected"], "POST /token"),
    "401-bad-signature": (_bad_signature, 401, ["token.rejected"], "POST /token"),
    "404-no-route": (_not_found, 404, [], "GET /no/such/path"),
    "405-get-token": (_method_not_allowed, 405, [], "GET /token"),
    "503-store-down": (_store_down, 503, ["token.store_unavailable"], "POST /token"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_request_id_header_is_the_logged_request_id(logged: Broker, svc: TestClient, server: FakeServer,
                                                      case: str) -> None:
    call, status, events, request = CASES[case]
    response = call(logged, svc, server)
    assert response.status_code == status, response.text
    lines = lines_of(logged, response)
    assert [line["event"] for line in lines] == [*events, "http.access"]
    assert [set(line) for line in lines] == [FIELDS[line["event"]] for line in lines]
    access = lines[-1]
    expected = access_line(*request.split(" "), status)
    assert {k: access[k] for k in expected} == expected
    assert isinstance(access["duration_ms"], float) and access["duration_ms"] >= 0
    assert "s3cret" not in logged.log_text()


def test_issued_token_is_one_line_with_the_grant_and_the_cache_outcome(broker: Broker, c1: TestClient) -> None:
    claims = c1.claims(broker.clock.now)
    first = broker.token(form(c1.assertion(broker.clock.now, jti=claims["jti"])))
    token = assert_token(first)["access_token"]
    second = broker.get_token(c1)
    assert assert_token(second)["access_token"] == token
    kid = broker.app.state.signer().kid
    [minted] = lines_of(broker, first)
    [hit] = lines_of(broker, second)
    assert set(minted) == ISSUED | {"at_jti_hash"} and set(hit) == ISSUED
    common = {"event": "token.issued", "level": "info", "pid": os.getpid(), "client_id": "c1", "scope": "read",
              "aud": RS1, "kid": kid}
    assert minted == {**common, "timestamp": minted["timestamp"], "request_id": first.headers["x-request-id"],
                      "jti_hash": jti_hash("c1", claims["jti"]), "cache": "mint", "expires_in": 300,
                      "at_jti_hash": jti_hash("c1", _jti(token))}
    assert {k: hit[k] for k in common} == common and (hit["cache"], hit["expires_in"]) == ("hit", 300)
    assert [line["event"] for line in broker.logs()].count("token.minted") == 0


def _jti(token: str) -> str:
    return decode_unverified(token)[1]["jti"]


def test_rejection_line_carries_source_reason_and_client_id(broker: Broker, c1: TestClient) -> None:
    response = broker.token(form(c1.assertion(broker.clock.now, key=new_key("ES256"))))
    [line] = lines_of(broker, response)
    assert set(line) == REJECTED
    assert {k: line[k] for k in ("event", "client_id", "error", "reason", "source", "pid")} == {
        "event": "token.rejected", "client_id": "c1", "error": "invalid_client", "reason": "signature_invalid",
        "source": SOURCE, "pid": os.getpid()}


def test_replay_lines_carry_the_source(broker: Broker, c1: TestClient) -> None:
    assertion = c1.assertion(broker.clock.now)
    assert_token(broker.token(form(assertion)))
    response = broker.token(form(assertion))
    assert [(line["event"], line["reason"], line["source"]) for line in lines_of(broker, response)] == [
        ("replay.rejected", "jti_replayed", SOURCE), ("token.rejected", "jti_replayed", SOURCE)]


def test_a_caller_supplied_request_id_is_ignored(broker: Broker) -> None:
    """A chosen id could pose as another request's in the logs, or as a retry of the request whose
    replay record holds it (docs/operations.md)."""
    response = broker.http.get("/jwks.json", headers={"x-request-id": "aaaaaaaaaaaaaaaaaaaaaaaa"})
    assert response.headers.get_list("x-request-id") != ["aaaaaaaaaaaaaaaaaaaaaaaa"]
    assert len(response.headers.get_list("x-request-id")) == 1
    assert "aaaaaaaaaaaaaaaaaaaaaaaa" not in broker.log_text()


def test_every_answer_has_its_own_request_id(broker: Broker) -> None:
    ids = [broker.http.get(path).headers["x-request-id"] for path in ("/jwks.json", "/jwks.json", "/nope", "/openapi.json")]
    ids.append(broker.management.get("/healthz").headers["x-request-id"])
    assert all(REQUEST_ID.fullmatch(i) for i in ids) and len(set(ids)) == 5


def test_access_log_is_off_by_default(broker: Broker) -> None:
    broker.http.get("/jwks.json")
    broker.http.get("/nope")
    assert [line for line in broker.logs() if line["event"] == "http.access"] == []


def test_management_listener_writes_no_access_lines(logged: Broker) -> None:
    assert logged.management.get("/healthz").status_code == 200
    assert [line for line in logged.logs() if line["event"] == "http.access"] == []


def test_access_line_path_is_the_route_template(logged: Broker) -> None:
    headers = admin_headers(logged)
    response = logged.http.get("/admin/clients/some-client?x=1", headers={**headers, "user-agent": "u" * 300})
    [*_, access] = lines_of(logged, response)
    assert (access["path"], access["status"], access["user_agent"]) == ("/admin/clients/{client_id}", 404, "u" * 100)


# -- admin API failures ------------------------------------------------------------------------------


def _admin_token_without_scope(b: Broker) -> dict[str, str]:
    now = int(b.clock.now)
    claims = AccessTokenClaims(ISS, "broker-admin", "broker-admin", ISS + "/admin", "read", "x", now, now + 60)
    return {"authorization": "Bearer " + b.app.state.signer().sign(claims)}


ADMIN_CASES = {
    # id: (method, path, headers(broker) or None, json body, status, error, reason, admin known)
    "401-no-token": ("GET", "/admin/clients", lambda b: {}, None, 401, None, "token_missing", False),
    "401-bad-token": ("GET", "/admin/clients/svc", lambda b: {"authorization": "Bearer x.y.z"}, None, 401,
                      "invalid_token", "header_invalid", False),
    "403-no-admin-scope": ("GET", "/admin/clients", _admin_token_without_scope, None, 403, "insufficient_scope",
                           "insufficient_scope", False),
    "400-bad-metadata": ("POST", "/admin/clients", admin_headers, {"client_id": "svc"}, 400,
                         "invalid_client_metadata", "jwks_missing", True),
    "404-unknown-client": ("GET", "/admin/clients/nobody", admin_headers, None, 404, "not_found", "not_found", True),
    "409-exists": ("POST", "/admin/clients", admin_headers, "exists", 409, "invalid_client_metadata", "exists", True),
}


@pytest.mark.parametrize("case", list(ADMIN_CASES))
def test_admin_failure_is_one_line_with_status_error_and_reason(broker: Broker, case: str) -> None:
    method, path, headers_of, body, status, error, reason, admin_known = ADMIN_CASES[case]
    headers = headers_of(broker)
    if body == "exists":
        body = meta("svc")
        assert broker.http.post("/admin/clients", json=body, headers=headers).status_code == 201
    response = broker.http.request(method, path, json=body, headers=headers)
    assert response.status_code == status, response.text
    [line] = lines_of(broker, response)
    assert set(line) == ADMIN_REJECTED
    template = "/admin/clients/{client_id}" if path.count("/") == 3 else "/admin/clients"
    expected = {"event": "admin.rejected", "level": "info", "admin": "broker-admin" if admin_known else None,
                "client_id": path.rsplit("/", 1)[1] if path.count("/") == 3 else None, "method": method,
                "path": template, "status": status, "error": error, "source": SOURCE, "pid": os.getpid()}
    assert {k: line[k] for k in expected} == expected
    assert line["reason"] == reason


def test_admin_store_failure_is_logged_at_error(logged: Broker, server: FakeServer) -> None:
    headers = admin_headers(logged)
    server.connected = False
    response = logged.http.get("/admin/clients", headers=headers)
    assert response.status_code == 503, response.text
    [line, _access] = lines_of(logged, response)
    assert set(line) == ADMIN_REJECTED
    assert {k: line[k] for k in ("event", "level", "status", "error", "reason")} == {
        "event": "admin.store_unavailable", "level": "error", "status": 503, "error": "temporarily_unavailable",
        "reason": "store_unavailable"}


# -- every line: pid, JSON ------------------------------------------------------------------------------


def test_every_line_has_the_pid(broker: Broker, c1: TestClient) -> None:
    broker.get_token(c1)
    broker.http.get("/nope")
    assert {line["pid"] for line in broker.logs()} == {os.getpid()}


def test_standard_library_lines_carry_pid() -> None:
    record = logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, "Invalid HTTP request received.", None, None)
    line = json.loads(stdlib_formatter().format(record))
    assert (line["event"], line["logger"], line["pid"]) == ("Invalid HTTP request received.", "uvicorn.error", os.getpid())


def test_stopped_line_ends_the_log(settings: Settings, clock: FrozenClock) -> None:
    with Broker(settings, clock) as b:
        pass
    assert b.logs()[-1]["event"] == "broker.stopped"


@pytest.mark.parametrize(("value", "sample"), [
    pytest.param("off", 0.0, id="off"), pytest.param("on", 1.0, id="on"), pytest.param(" ON ", 1.0, id="on-spaced"),
    pytest.param("0.01", 0.01, id="share"), pytest.param("1", 1.0, id="one"), pytest.param("0", 0.0, id="zero"),
])
def test_access_log_setting(value: str, sample: float) -> None:
    settings = Settings.from_env({"BROKER_ACCESS_LOG": value})
    assert settings.access_log_sample == sample


@pytest.mark.parametrize("value", ["yes", "2", "-0.5", "nan", "inf", "1%"])
def test_access_log_setting_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="^BROKER_ACCESS_LOG must be off, on or a share between 0 and 1, got "):
        Settings.from_env({"BROKER_ACCESS_LOG": value})
