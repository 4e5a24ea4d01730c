"""Errors decided before any client is looked up say precisely what is wrong (attack matrix:
`response-hygiene`, `two-authentication-methods`, `client-enumeration`).

The table is the specification: request → exact status, exact JSON body and the one header that
varies (``WWW-Authenticate``). The bodies are written out here rather than taken from
``app.oauth.errors`` so that a change of wording shows up as a test change. Everything decided
after the assertion is parsed stays the one generic ``invalid_client`` answer
(``tests/test_token_endpoint.py::test_invalid_client_is_byte_identical_for_every_cause``); the
last test checks that no reason with a specific text is raised after the client look-up.
"""

from __future__ import annotations

import ast
import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.oauth.errors import PRE_CLIENT_DESCRIPTIONS
from tests.expect import assert_hygiene
from tests.helpers import URN, TestClient

FORM = {"content-type": "application/x-www-form-urlencoded"}
JSON = {"content-type": "application/json"}
BASIC = {"authorization": "Basic " + base64.b64encode(b"c1:secret").decode()}
GRANT = "grant_type=client_credentials"
AUTH = f"client_assertion_type={URN}&client_assertion=a.b.c"
USE_PKJ = ("This broker authenticates clients with private_key_jwt: send client_assertion_type="
           "urn:ietf:params:oauth:client-assertion-type:jwt-bearer and client_assertion (a JWT signed with the "
           "client's key)")
CHALLENGE = 'Basic realm="token-broker"'


def _body(error: str, description: str) -> dict[str, str]:
    return {"error": error, "error_description": description}


JSON_BODY = _body("invalid_request", "Send the parameters as an application/x-www-form-urlencoded form body, not JSON.")
BASIC_ONLY = _body("invalid_client", USE_PKJ + ", not HTTP Basic or any other Authorization header.")
SECRET_ONLY = _body("invalid_client", USE_PKJ + ", not client_secret.")
TWO_METHODS = _body("invalid_request", "Use one client authentication method: client_assertion alone, without "
                                       "client_secret or an Authorization header.")
NO_AUTH = _body("invalid_client", "No client authentication. " + USE_PKJ + ".")

# (path, headers, body) → (status, JSON body, WWW-Authenticate or None)
CASES: list[Any] = [
    pytest.param("/token", JSON, '{"grant_type": "client_credentials"}', 400, JSON_BODY, None, id="token-json"),
    pytest.param("/token", {"content-type": "application/jwt+json"}, GRANT, 400, JSON_BODY, None,
                 id="token-json-suffix"),
    pytest.param("/token", {}, GRANT, 400, _body(
        "invalid_request", "Content-Type is missing: send the parameters as an application/x-www-form-urlencoded "
                           "form body."), None, id="token-no-content-type"),
    pytest.param("/token", {"content-type": "text/plain"}, GRANT, 400, _body(
        "invalid_request", "Content-Type must be application/x-www-form-urlencoded."), None, id="token-text-plain"),
    pytest.param("/token", FORM, GRANT + "\r\n", 400, _body(
        "invalid_request", "The form body may hold only visible ASCII characters: percent-encode anything else "
                           "(a space as + or %20)."), None, id="token-raw-crlf"),
    pytest.param("/token", FORM, GRANT + "&scope=%FF", 400, _body(
        "invalid_request", "A percent-encoded form value does not decode to UTF-8."), None, id="token-bad-escape"),
    pytest.param("/token", FORM, GRANT + "&" + GRANT, 400, _body(
        "invalid_request", "The parameter grant_type appears more than once: send each parameter once (only "
                           "resource may repeat)."), None, id="token-repeated-grant_type"),
    pytest.param("/token", FORM, GRANT + "&x=1&x=2", 400, _body(
        "invalid_request", "A parameter appears more than once: send each parameter once (only resource may "
                           "repeat)."), None, id="token-repeated-unknown-parameter"),
    pytest.param("/token", {**FORM, **BASIC}, GRANT, 401, BASIC_ONLY, CHALLENGE, id="token-basic-instead"),
    pytest.param("/token", {**FORM, "authorization": "Bearer x"}, GRANT, 401, BASIC_ONLY, CHALLENGE,
                 id="token-bearer-header-instead"),
    pytest.param("/token", FORM, GRANT + "&client_id=c1&client_secret=s", 401, SECRET_ONLY, None,
                 id="token-client_secret-instead"),
    pytest.param("/token", {**FORM, **BASIC}, GRANT + "&" + AUTH, 400, TWO_METHODS, None, id="token-basic-too"),
    pytest.param("/token", FORM, GRANT + "&" + AUTH + "&client_secret=s", 400, TWO_METHODS, None,
                 id="token-client_secret-too"),
    pytest.param("/token", FORM, AUTH, 400, _body(
        "invalid_request", "The grant_type parameter is missing: this broker issues tokens for "
                           "grant_type=client_credentials."), None, id="token-no-grant_type"),
    pytest.param("/token", FORM, "grant_type=client%09credentials&" + AUTH, 400, _body(
        "invalid_request", "grant_type holds characters outside %x20-7E: this broker issues tokens for "
                           "grant_type=client_credentials."), None, id="token-grant_type-charset"),
    pytest.param("/token", FORM, "grant_type=password&" + AUTH, 400, _body(
        "unsupported_grant_type", "This broker issues tokens only for grant_type=client_credentials."), None,
        id="token-password-grant"),
    pytest.param("/token", FORM, GRANT + "&client_id=c1", 401, NO_AUTH, None, id="token-no-authentication"),
    pytest.param("/token", FORM, GRANT + "&client_assertion=a.b.c", 400, _body(
        "invalid_request", "client_assertion was sent without client_assertion_type: send client_assertion_type="
                           "urn:ietf:params:oauth:client-assertion-type:jwt-bearer."), None,
        id="token-no-assertion-type"),
    pytest.param("/token", FORM, GRANT + "&client_assertion_type=urn:x&client_assertion=a.b.c", 401, _body(
        "invalid_client", "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer."),
        None, id="token-wrong-assertion-type"),
    pytest.param("/token", FORM, f"{GRANT}&client_assertion_type={URN}", 401, _body(
        "invalid_client", "client_assertion is missing: send the signed JWT beside client_assertion_type."), None,
        id="token-no-assertion"),
    pytest.param("/token", FORM, f"{GRANT}&client_assertion_type={URN}&client_assertion={'a' * 8193}", 401, _body(
        "invalid_client", "client_assertion is longer than this broker accepts."), None, id="token-assertion-too-large"),
    pytest.param("/token", FORM, f"{GRANT}&client_assertion_type={URN}&client_assertion=a.b", 401, _body(
        "invalid_client", "client_assertion is not a compact JWS: three base64url parts separated by dots "
                          "(header.payload.signature)."), None, id="token-assertion-two-parts"),
    pytest.param("/token", FORM, f"{GRANT}&{AUTH}&client_id=c1%01", 400, _body(
        "invalid_request", "client_id holds characters outside %x20-7E."), None, id="token-client_id-charset"),
    pytest.param("/token", FORM, f"{GRANT}&{AUTH}&resource=https://a.test&resource=https://b.test", 400, _body(
        "invalid_target", "Send at most one resource parameter: each token is issued for one audience."), None,
        id="token-two-resources"),
    # RFC 7009 revocation and RFC 7662 introspection share the parsing and the texts.
    *[pytest.param(path, JSON, '{"token": "t"}', 400, JSON_BODY, None, id=path[1:] + "-json")
      for path in ("/revoke", "/introspect")],
    *[pytest.param(path, {**FORM, **BASIC}, "token=t", 401, BASIC_ONLY, CHALLENGE, id=path[1:] + "-basic-instead")
      for path in ("/revoke", "/introspect")],
    *[pytest.param(path, FORM, "token=t&client_secret=s", 401, SECRET_ONLY, None, id=path[1:] + "-secret-instead")
      for path in ("/revoke", "/introspect")],
    *[pytest.param(path, FORM, "token=t", 401, NO_AUTH, None, id=path[1:] + "-no-authentication")
      for path in ("/revoke", "/introspect")],
    *[pytest.param(path, FORM, AUTH, 400, _body("invalid_request", "The token parameter is missing."), None,
                   id=path[1:] + "-no-token") for path in ("/revoke", "/introspect")],
    *[pytest.param(path, FORM, AUTH + "&token=t&token=u", 400, _body(
        "invalid_request", "The parameter token appears more than once: send each parameter once (only resource "
                           "may repeat)."), None, id=path[1:] + "-repeated-token") for path in ("/revoke", "/introspect")],
]


@pytest.mark.parametrize(("path", "headers", "body", "status", "expected", "challenge"), CASES)
def test_pre_client_errors_say_what_is_wrong(broker, path: str, headers: dict[str, str], body: str, status: int,
                                             expected: dict[str, str], challenge: str | None) -> None:
    response = broker.http.post(path, content=body.encode(), headers=headers)
    assert (response.status_code, response.json()) == (status, expected)
    assert response.headers.get("www-authenticate") == challenge
    assert_hygiene(response)


def test_basic_instead_of_an_assertion_keeps_nothing_and_counts_as_an_authentication_failure(broker) -> None:
    """It is a failed client authentication (RFC 6749 §5.2): logged like every other one."""
    response = broker.http.post("/token", content=GRANT.encode(), headers={**FORM, **BASIC})
    assert response.status_code == 401
    rejected = [e for e in broker.logs() if e.get("event") == "token.rejected"]
    assert [(e["error"], e["reason"]) for e in rejected] == [("invalid_client", "authorization_unsupported")]
    assert "c1:secret" not in broker.log_text() and BASIC["authorization"][6:] not in broker.log_text()


def test_a_valid_request_with_basic_too_keeps_its_assertion(broker) -> None:
    c1 = TestClient("c1")
    broker.register(c1)
    assertion = c1.assertion(broker.clock.now)
    params = str(httpx.QueryParams({"grant_type": "client_credentials", "client_assertion_type": URN,
                                    "client_assertion": assertion}))
    assert broker.http.post("/token", content=params, headers={**FORM, **BASIC}).json() == TWO_METHODS
    assert broker.http.post("/token", content=params, headers=FORM).status_code == 200


# -- no reason with a specific text is decided after the client look-up -----------------------------

APP = Path(__file__).resolve().parent.parent / "app"
#: Where the request alone is judged: the form parsers, the strict-request middleware, the error
#: table itself, and the access-token verifier (its InvalidToken reasons are another vocabulary, as
#: are those of the resource-server library, token_broker_resource, outside app/).
PARSE_STAGE_FILES = {"oauth/request.py", "oauth/token_ops.py", "oauth/errors.py", "web/strict.py",
                     "oauth/access_token.py"}
#: In assertion.py only ``parse_assertion`` runs before the client look-up.
PARSE_STAGE_FUNCTIONS = {"oauth/assertion.py": {"parse_assertion"}}


def _string_uses(tree: ast.AST) -> list[tuple[str, str | None, str | None]]:
    """(string constant, enclosing top-level function, callee when it is a call's argument)."""
    found: list[tuple[str, str | None, str | None]] = []

    def visit(node: ast.AST, function: str | None, callee: str | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and function is None:
            function = node.name
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.value, function, callee))
        for child in ast.iter_child_nodes(node):
            name = callee
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            visit(child, function, name)

    visit(tree, None, None)
    return found


def test_specific_texts_only_for_reasons_decided_before_the_client_look_up() -> None:
    misplaced = []
    for path in sorted(APP.rglob("*.py")):
        rel = path.relative_to(APP).as_posix()
        if rel.startswith(("client/", "resource/")) or rel in PARSE_STAGE_FILES:
            continue
        for value, function, callee in _string_uses(ast.parse(path.read_text())):
            if value not in PRE_CLIENT_DESCRIPTIONS or function in PARSE_STAGE_FUNCTIONS.get(rel, ()):
                continue
            if callee in ("InvalidToken", "BearerError") or (rel == "web/routes.py" and value == "token_missing"):
                continue  # the bearer-token vocabulary of the admin API and the verifier, never rendered here
            misplaced.append((rel, function, value))
    assert misplaced == []
    # The scan sees the parse stage it exempts (it is not blind to where reasons are raised).
    seen = {(f, v) for v, f, _ in _string_uses(ast.parse((APP / "oauth/assertion.py").read_text()))}
    assert {("parse_assertion", "assertion_malformed"), ("parse_assertion", "assertion_too_large")} <= seen
