"""What the broker's answers mean: RFC 8414 metadata, RFC 6749 §5.1 tokens and §5.2 errors.

Functions of a received ``httpx.Response`` (no I/O): each returns the value or raises the
``BrokerError`` a caller can act on. Bodies over 64 KiB are not parsed.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.client.errors import BrokerError, BrokerUnavailable, error_for
from app.client.renewal import CachedToken, RenewalPolicy

RESPONSE_MAX = 65536

log = logging.getLogger("token_broker.client")


def token_endpoint_from(response: httpx.Response, issuer: str) -> str:
    """The metadata's ``token_endpoint``; RFC 8414 §3.3: its ``issuer`` must be ``issuer``, byte for byte."""
    doc = _json(response)
    if response.status_code != 200 or not isinstance(doc, dict):
        raise BrokerUnavailable("metadata_unavailable", status_code=response.status_code)
    endpoint = doc.get("token_endpoint")
    if doc.get("issuer") != issuer or not isinstance(endpoint, str) or not safe_url(endpoint):
        raise BrokerError("metadata_invalid", status_code=response.status_code,
                          description="issuer mismatch or unusable token_endpoint")
    return endpoint


def token_from(response: httpx.Response, *, client_id: str, scope: str, started: float,
               policy: RenewalPolicy) -> CachedToken:
    """The token to cache from a token response to a request for ``scope`` sent at ``started``."""
    body = _json(response)
    if response.status_code != 200:
        raise _refusal(response, body, client_id)
    if not (isinstance(body, dict) and isinstance(body.get("access_token"), str) and body["access_token"]
            and str(body.get("token_type", "")).lower() == "bearer"
            and type(body.get("expires_in")) is int and body["expires_in"] > 0):
        raise BrokerUnavailable("invalid_response", status_code=200, description="not a token response")
    log.info("client.token_obtained", extra={"client_id": client_id, "expires_in": body["expires_in"]})
    granted = body.get("scope") if isinstance(body.get("scope"), str) else scope
    return policy.token(body["access_token"], granted, started, body["expires_in"])


def _refusal(response: httpx.Response, body: Any, client_id: str) -> BrokerError:
    """An error answer: the broker's RFC 6749 §5.2 code when it sent one; 5xx/429 stay retryable."""
    code = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else None
    description = body.get("error_description") if isinstance(body, dict) and isinstance(body.get("error_description"), str) else None
    retry_after = _retry_after(response.headers.get("retry-after"))
    if code is None:
        if response.status_code >= 500 or response.status_code == 429:
            return BrokerUnavailable("unavailable", status_code=response.status_code, retry_after=retry_after)
        return BrokerError("invalid_response", status_code=response.status_code)
    log.warning("client.token_refused", extra={"client_id": client_id, "error": code, "status": response.status_code})
    return error_for(code, response.status_code, description, retry_after)


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
