"""One spelling per request, against a live broker over raw sockets (an HTTP client library would
normalise these paths): each endpoint answers on its canonical path only, and a repeated
Content-Type or Content-Length is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from app.web.strict import strict_request_middleware
from tests.conftest import BrokerProcess
from tests.expect import error_body
from tests.rawhttp import exchange, request_bytes, start_broker

NOT_FOUND = {"error": "not_found"}
INVALID = {"error": "invalid_request", "error_description": "The request is missing a parameter or is otherwise malformed."}
NO_CLIENT = error_body("invalid_client", reason="client_auth_missing")
REPEATED = error_body("invalid_request", reason="repeated_header")
NO_BEARER: dict[str, str] = {}  # RFC 6750 §3.1: no credentials, a bare challenge without an error code
FORM = [("Content-Type", "application/x-www-form-urlencoded")]
GRANT = b"grant_type=client_credentials"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    bp = start_broker(tmp_path_factory.mktemp("strict"))
    yield bp
    bp.stop()


def _case(method: str, target: str, status: int, body: object, *, headers: list[tuple[str, str]] | None = None,
          content: bytes = b"", id: str) -> object:
    return pytest.param(request_bytes(method, target, headers, content), status, body, id=id)


PATHS = [
    _case("POST", "/token", 401, NO_CLIENT, headers=FORM, content=GRANT, id="token canonical"),
    _case("POST", "/token/", 404, NOT_FOUND, headers=FORM, content=GRANT, id="token trailing slash"),
    _case("POST", "//token", 404, NOT_FOUND, headers=FORM, content=GRANT, id="token double slash"),
    _case("POST", "/%74oken", 404, NOT_FOUND, headers=FORM, content=GRANT, id="token percent-encoded letter"),
    _case("POST", "/revoke/", 404, NOT_FOUND, headers=FORM, content=b"token=x", id="revoke trailing slash"),
    _case("GET", "/jwks.json/", 404, NOT_FOUND, id="jwks trailing slash"),
    _case("GET", "/%6Awks.json", 404, NOT_FOUND, id="jwks percent-encoded letter"),
    _case("GET", "//jwks.json", 404, NOT_FOUND, id="jwks double slash"),
    _case("GET", "/.well-known//oauth-authorization-server", 404, NOT_FOUND, id="metadata double slash"),
    _case("GET", "/.well-known//openid-configuration", 404, NOT_FOUND, id="openid configuration double slash"),
    _case("GET", "/.well-known/%6Fpenid-configuration", 404, NOT_FOUND, id="openid configuration percent-encoded"),
    _case("GET", "/admin/clients", 401, NO_BEARER, id="admin list canonical"),
    _case("GET", "/admin/clients/", 404, NOT_FOUND, id="admin list trailing slash"),
    _case("GET", "/admin//clients", 404, NOT_FOUND, id="admin list double slash"),
    _case("GET", "/admin/clients/svc-a", 401, NO_BEARER, id="client id canonical"),
    _case("GET", "/admin/clients/svc:a", 401, NO_BEARER, id="client id with a literal colon"),
    _case("GET", "/admin/clients/svc%3Aa", 404, NOT_FOUND, id="client id colon percent-encoded"),
    _case("GET", "/admin/clients/svc%2Da", 404, NOT_FOUND, id="client id unreserved char percent-encoded"),
    _case("GET", "/admin/clients/a%2Fb", 404, NOT_FOUND, id="client id with an encoded slash"),
    _case("GET", "/admin/clients/..", 404, NOT_FOUND, id="client id dot-dot"),
    _case("GET", "/admin/clients/%2E%2E", 404, NOT_FOUND, id="client id encoded dot-dot"),
    _case("GET", "/admin/clients/.", 404, NOT_FOUND, id="client id dot"),
    _case("GET", "/admin/clients//svc-a", 404, NOT_FOUND, id="client id after a double slash"),
    _case("GET", "/admin/clients/svc-a/", 404, NOT_FOUND, id="client id trailing slash"),
    _case("DELETE", "/admin/clients/svc-a/keys/k1", 401, NO_BEARER, id="key path canonical"),
    _case("DELETE", "/admin/clients/svc-a//keys/k1", 404, NOT_FOUND, id="key path double slash"),
    _case("DELETE", "/admin/clients/svc-a/keys/k%31", 404, NOT_FOUND, id="kid percent-encoded digit"),
    _case("DELETE", "/admin/clients/svc-a/keys/k1/", 404, NOT_FOUND, id="key path trailing slash"),
    _case("DELETE", "/admin/clients/svc-a/keys/..", 404, NOT_FOUND, id="kid dot-dot"),
]

HEADERS = [
    _case("POST", "/token", 400, REPEATED, headers=[("Content-Type", "application/json"), *FORM], content=GRANT,
          id="token two content types"),
    _case("POST", "/token", 400, REPEATED, headers=[*FORM, *FORM], content=GRANT, id="token same content type twice"),
    # The HTTP parser refuses this one before the broker sees it: the generic text.
    _case("POST", "/token", 400, INVALID, headers=[*FORM, *[("Content-Length", str(len(GRANT)))] * 2],
          content=GRANT, id="token content length twice"),
    _case("POST", "/revoke", 400, REPEATED, headers=[("Content-Type", "text/plain"), *FORM], content=b"token=x",
          id="revoke two content types"),
    _case("POST", "/admin/clients", 400, REPEATED,
          headers=[("Content-Type", "application/json"), ("Content-Type", "application/json")], content=b"{}",
          id="admin two content types"),
]


@pytest.mark.live
@pytest.mark.parametrize(("request_", "status", "body"), PATHS + HEADERS)
def test_one_spelling_per_request(broker: BrokerProcess, request_: bytes, status: int, body: object) -> None:
    response = exchange(broker.port, request_)
    assert (response.status, response.json()) == (status, body)
    assert response.headers["content-type"] == "application/json"


@pytest.mark.live
def test_unparsable_request_gets_the_json_error(broker: BrokerProcess) -> None:
    response = exchange(broker.port, b"GARBAGE\r\n\r\n")
    assert (response.status, response.json()) == (400, INVALID)


@pytest.mark.parametrize(("scope", "status"), [
    pytest.param({"raw_path": b"/token"}, None, id="canonical"),
    pytest.param({"raw_path": b"/token?a=b"}, None, id="query left on raw_path by a test client"),
    pytest.param({"raw_path": b"/broker/token", "root_path": "/broker"}, None, id="behind a root path"),
    pytest.param({"raw_path": b"/broker//token", "root_path": "/broker"}, 404, id="behind a root path, double slash"),
    pytest.param({}, 404, id="no raw_path: what was sent is unknown"),
])
def test_raw_path_forms(scope: dict[str, Any], status: int | None) -> None:
    """The same check on ASGI scopes uvicorn does not produce (other servers, test clients)."""
    sent: list[Any] = []
    reached: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)

    async def send(message: Any) -> None:
        sent.append(message)

    full = {"type": "http", "path": "/token", "path_template": "/token", "path_params": {}, "headers": [], **scope}
    asyncio.run(strict_request_middleware(app)(full, None, send))
    assert (sent[0]["status"] if sent else None, bool(reached)) == (status, status is None)
