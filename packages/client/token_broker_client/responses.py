"""What the broker's answers mean: RFC 8414 metadata, RFC 6749 §5.1 tokens and §5.2 errors.

Functions of a received ``httpx.Response`` (no I/O): each returns the value or raises the
``BrokerError`` a caller can act on. Bodies over 64 KiB are not parsed.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import httpx

from token_broker_client.errors import BrokerError, BrokerUnavailable, error_for
from token_broker_client.renewal import CachedToken, RenewalPolicy
from token_broker_jose.constants import METADATA_PATH

RESPONSE_MAX = 65536
#: How much of a value taken from an answer an error message quotes.
_QUOTED_MAX = 120

log = logging.getLogger("token_broker.client")


def token_endpoint_from(response: httpx.Response, issuer: str) -> str:
    """The metadata's ``token_endpoint``; RFC 8414 §3.3: its ``issuer`` must be ``issuer``, byte for byte."""
    url = issuer + METADATA_PATH
    doc = _json(response)
    if response.status_code != 200:
        raise BrokerUnavailable("metadata_unavailable", status_code=response.status_code, description=(
            f"GET {url} answered HTTP {response.status_code}, not the broker's metadata: is {issuer} the broker's "
            "issuer, and is the broker up?"))
    if not isinstance(doc, dict):
        raise BrokerUnavailable("metadata_unavailable", status_code=200, description=(
            f"GET {url} answered with {_kind(response, doc)}, not the broker's metadata (a JSON object)"))
    found = doc.get("issuer")
    if found != issuer:
        raise BrokerError("metadata_invalid", status_code=200, description=(
            f"the broker at {url} says its issuer is {_quote(found)}; expected {issuer!r}, byte for byte "
            f"(RFC 8414 §3.3): set issuer={_quote(found)} in the client if that is the broker meant, or fix "
            "BROKER_ISSUER on the broker"))
    endpoint = doc.get("token_endpoint")
    if not isinstance(endpoint, str):
        raise BrokerError("metadata_invalid", status_code=200, description=(
            f"the metadata at {url} has token_endpoint {_quote(endpoint)}; expected the token endpoint URL"))
    if not safe_url(endpoint):
        raise BrokerError("metadata_invalid", status_code=200, description=(
            f"the metadata at {url} names token_endpoint {_quote(endpoint)}; expected an https URL (plain http "
            "only for a broker on loopback: 127.0.0.1, localhost, ::1), as credentials go there"))
    return endpoint


def token_from(response: httpx.Response, *, client_id: str, scope: str, started: float,
               policy: RenewalPolicy, token_type: str = "Bearer") -> CachedToken:
    """The token to cache from a token response to a request for ``scope`` sent at ``started``;
    ``token_type`` is the one asked for: ``DPoP`` with a proof (RFC 9449 §5), else ``Bearer``."""
    body = _json(response)
    if response.status_code != 200:
        raise _refusal(response, body, client_id)
    if token_type != "Bearer" and isinstance(body, dict) and str(body.get("token_type", "")).lower() == "bearer":
        # RFC 9449 §5: a broker without DPoP answers a proof with a bearer token. The client asked
        # for a sender-constrained token: it refuses the downgrade rather than use a bearer token.
        raise BrokerError("dpop_not_supported", status_code=200, description=(
            f"{_url(response)} answered a DPoP token request with token_type Bearer: the broker does not bind "
            "tokens to the client's DPoP key (DPoP off at the broker?); the client refuses a bearer token while "
            "DPoP is on"))
    problem = _not_a_token(response, body, token_type)
    if problem is not None:
        raise BrokerUnavailable("invalid_response", status_code=200, description=(
            f"{_url(response)} answered HTTP 200 but not with a token: {problem}"))
    granted = body.get("scope") if isinstance(body.get("scope"), str) else scope
    log.info("client.token_obtained: client %s got a token for scope %r, expires in %d s", client_id, granted,
             body["expires_in"], extra={"client_id": client_id, "expires_in": body["expires_in"]})
    return policy.token(body["access_token"], granted, started, body["expires_in"])


def _not_a_token(response: httpx.Response, body: Any, token_type: str) -> str | None:
    """What makes a 200 answer unusable as an RFC 6749 §5.1 token response (expected vs found), or None."""
    if not isinstance(body, dict):
        return f"expected a JSON object, found {_kind(response, body)}"
    if not (isinstance(body.get("access_token"), str) and body["access_token"]):
        return f"expected a non-empty access_token string, found {_quote(body.get('access_token'))}"
    if str(body.get("token_type", "")).lower() != token_type.lower():
        return f"expected token_type {token_type}, found {_quote(body.get('token_type'))}"
    if not (type(body.get("expires_in")) is int and body["expires_in"] > 0):
        return f"expected expires_in as a positive whole number of seconds, found {_quote(body.get('expires_in'))}"
    return None


def _refusal(response: httpx.Response, body: Any, client_id: str) -> BrokerError:
    """An error answer: the broker's RFC 6749 §5.2 code when it sent one; 5xx/429 stay retryable."""
    code = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else None
    description = body.get("error_description") if isinstance(body, dict) and isinstance(body.get("error_description"), str) else None
    retry_after = _retry_after(response.headers.get("retry-after"))
    request_id = response.headers.get("x-request-id")
    status, url = response.status_code, _url(response)
    if code is None:
        if status >= 500 or status == 429:
            return BrokerUnavailable("unavailable", status_code=status, retry_after=retry_after, request_id=request_id,
                                     description=f"{url} answered HTTP {status} without an OAuth error body (a proxy "
                                                 "in front of the broker, or no broker replica up?)")
        return BrokerError("invalid_response", status_code=status, request_id=request_id, description=(
            f"{url} answered HTTP {status} without an OAuth error body; expected a token or an RFC 6749 error "
            "(is that the broker's token endpoint?)"))
    log.warning("client.token_refused: the broker refused a token to client %s: %s (HTTP %d)%s%s", client_id, code,
                status, f": {description}" if description else "", f"; request id {request_id}" if request_id else "",
                extra={"client_id": client_id, "error": code, "status": status, "request_id": request_id})
    return error_for(code, status, description, retry_after, request_id)


def _url(response: httpx.Response) -> str:
    """The URL the answer came from (a response built without a request has none)."""
    try:
        return str(response.request.url)
    except RuntimeError:
        return "the token endpoint"


def _kind(response: httpx.Response, body: Any) -> str:
    """What an answer that is not the expected JSON object held, in words."""
    if len(response.content) > RESPONSE_MAX:
        return f"a body over {RESPONSE_MAX} bytes"
    if body is None:
        media_type = response.headers.get("content-type", "no Content-Type")
        return f"a body that is not JSON ({_quote(media_type)})"
    return f"a JSON {type(body).__name__}"


def _quote(value: Any) -> str:
    """A value from an answer, quoted and cut short for a message."""
    text = repr(value)
    return text if len(text) <= _QUOTED_MAX else text[:_QUOTED_MAX] + "..."


def _json(response: httpx.Response) -> Any:
    if len(response.content) > RESPONSE_MAX:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def safe_url(url: str) -> bool:
    """Credentials go over TLS, except to a broker on loopback (development, the demo)."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1"))
