"""The client library's errors and log lines say what was expected and what was found, in the
message itself (types, codes and attributes are covered by test_flow.py and test_client.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey

from token_broker_client import BrokerError, BrokerUnavailable, InvalidClientError
from token_broker_client.renewal import RenewalPolicy
from token_broker_client.responses import token_endpoint_from, token_from
from token_broker_jose.assertion import make_client_assertion
from token_broker_jose.credentials import ClientKey

ISS = "https://broker.test"
META = ISS + "/.well-known/oauth-authorization-server"
TOKEN_URL = ISS + "/token"


def _metadata(status: int, **kwargs: Any) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", META), **kwargs)


def _token(status: int, **kwargs: Any) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", TOKEN_URL), **kwargs)


def _raised(fn: Any, *args: Any, **kwargs: Any) -> BrokerError:
    with pytest.raises(BrokerError) as err:
        fn(*args, **kwargs)
    return err.value


@pytest.mark.parametrize(("response", "error", "message"), [
    (_metadata(200, json={"issuer": "http://localhost:8000", "token_endpoint": TOKEN_URL}), "metadata_invalid",
     f"metadata_invalid: the broker at {META} says its issuer is 'http://localhost:8000'; expected "
     "'https://broker.test', byte for byte (RFC 8414 §3.3): set issuer='http://localhost:8000' in the client if that "
     "is the broker meant, or fix BROKER_ISSUER on the broker"),
    (_metadata(200, json={"token_endpoint": TOKEN_URL}), "metadata_invalid",
     f"metadata_invalid: the broker at {META} says its issuer is None; expected 'https://broker.test', byte for byte "
     "(RFC 8414 §3.3): set issuer=None in the client if that is the broker meant, or fix BROKER_ISSUER on the broker"),
    (_metadata(200, json={"issuer": ISS, "token_endpoint": "http://broker.test/token"}), "metadata_invalid",
     f"metadata_invalid: the metadata at {META} names token_endpoint 'http://broker.test/token'; expected an https "
     "URL (plain http only for a broker on loopback: 127.0.0.1, localhost, ::1), as credentials go there"),
    (_metadata(200, json={"issuer": ISS}), "metadata_invalid",
     f"metadata_invalid: the metadata at {META} has token_endpoint None; expected the token endpoint URL"),
    (_metadata(404, text="not here"), "metadata_unavailable",
     f"metadata_unavailable: GET {META} answered HTTP 404, not the broker's metadata: is https://broker.test the "
     "broker's issuer, and is the broker up?"),
    (_metadata(200, text="<html>", headers={"content-type": "text/html"}), "metadata_unavailable",
     f"metadata_unavailable: GET {META} answered with a body that is not JSON ('text/html'), not the broker's "
     "metadata (a JSON object)"),
], ids=["other-issuer", "no-issuer", "plain-http-endpoint", "no-endpoint", "404", "html"])
def test_metadata_errors_name_both_sides(response: httpx.Response, error: str, message: str) -> None:
    exc = _raised(token_endpoint_from, response, ISS)
    assert (exc.error, str(exc)) == (error, message)
    assert exc.status_code == response.status_code  # the attribute stays; "HTTP 200" is not in the message


@pytest.mark.parametrize(("body", "problem"), [
    ({"token_type": "Bearer", "expires_in": 300}, "expected a non-empty access_token string, found None"),
    ({"access_token": "at", "token_type": "DPoP", "expires_in": 300}, "expected token_type Bearer, found 'DPoP'"),
    ({"access_token": "at", "token_type": "Bearer", "expires_in": "300"},
     "expected expires_in as a positive whole number of seconds, found '300'"),
    (["at"], "expected a JSON object, found a JSON list"),
], ids=["no-token", "dpop", "expires-in-string", "list"])
def test_a_200_that_is_not_a_token_says_what_is_missing(body: Any, problem: str) -> None:
    exc = _raised(token_from, _token(200, json=body), client_id="c1", scope="", started=0.0, policy=RenewalPolicy())
    assert type(exc) is BrokerUnavailable
    assert str(exc) == f"invalid_response: {TOKEN_URL} answered HTTP 200 but not with a token: {problem}"


def test_a_refusal_carries_the_brokers_text_and_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    response = _token(401, headers={"x-request-id": "abc123"},
                      json={"error": "invalid_client", "error_description": "Client authentication failed."})
    with caplog.at_level(logging.WARNING, logger="token_broker.client"):
        exc = _raised(token_from, response, client_id="c1", scope="", started=0.0, policy=RenewalPolicy())
    assert type(exc) is InvalidClientError and exc.request_id == "abc123"
    assert str(exc) == ("invalid_client: Client authentication failed. (HTTP 401); request id abc123: the broker's "
                        "operator runs `broker_admin.py why abc123` on the broker's log for the reason")
    assert [r.getMessage() for r in caplog.records] == [
        "client.token_refused: the broker refused a token to client c1: invalid_client (HTTP 401): "
        "Client authentication failed.; request id abc123"]


@pytest.mark.parametrize(("status", "kind", "message"), [
    (502, BrokerUnavailable, f"unavailable: {TOKEN_URL} answered HTTP 502 without an OAuth error body (a proxy in "
                             "front of the broker, or no broker replica up?)"),
    (404, BrokerError, f"invalid_response: {TOKEN_URL} answered HTTP 404 without an OAuth error body; expected a "
                       "token or an RFC 6749 error (is that the broker's token endpoint?)"),
], ids=["502", "404"])
def test_an_answer_without_an_oauth_error_says_so(status: int, kind: type, message: str) -> None:
    exc = _raised(token_from, _token(status, text="nope"), client_id="c1", scope="", started=0.0,
                  policy=RenewalPolicy())
    assert (type(exc), str(exc)) == (kind, message)


def test_a_token_log_line_says_what_it_is_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="token_broker.client"):
        token_from(_token(200, json={"access_token": "at", "token_type": "Bearer", "expires_in": 300, "scope": "read"}),
                   client_id="c1", scope="", started=0.0, policy=RenewalPolicy())
    assert [r.getMessage() for r in caplog.records] == [
        "client.token_obtained: client c1 got a token for scope 'read', expires in 300 s"]


def test_unreachable_names_the_url(make_client: Any, transport: Any) -> None:
    transport.mode = "down"
    with pytest.raises(BrokerUnavailable) as err:
        make_client().get_token()
    assert str(err.value).startswith(f"unreachable: could not reach {META}: ")


def test_key_errors_name_what_was_given(tmp_path: Path) -> None:
    public = ECKey.generate_key("P-256").as_dict(private=False)
    with pytest.raises(ValueError, match=r"^the client key is a public key: expected the private JWK"):
        ClientKey(public)
    two = tmp_path / "two.jwk"
    two.write_text(json.dumps({"keys": [public, public]}))
    with pytest.raises(ValueError, match=r"holds a JWK set of 2 keys: expected one private JWK"):
        ClientKey(two)
    listed = tmp_path / "list.jwk"
    listed.write_text("[1]")
    with pytest.raises(ValueError, match=r"holds a JSON list: expected a private JWK \(a JSON object\)$"):
        ClientKey(listed)
    with pytest.raises(ValueError, match=r"^the client key is a int: expected a private JWK"):
        ClientKey(7)
    with pytest.raises(ValueError, match=r"^assertion lifetime must be 1-60 seconds, not 600$"):
        make_client_assertion(ECKey.generate_key("P-256"), client_id="c1", issuer=ISS, alg="ES256", lifetime=600)
