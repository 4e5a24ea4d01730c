"""Exact-response assertions for the token endpoint: every client-authentication failure is the
same 401 ``invalid_client`` body, whatever the reason (which only the log tells)."""

from __future__ import annotations

from typing import Any

from app.oauth import errors

_BY_CODE = {
    "invalid_request": errors.InvalidRequest,
    "invalid_client": errors.InvalidClient,
    "invalid_grant": errors.InvalidGrant,
    "unauthorized_client": errors.UnauthorizedClient,
    "unsupported_grant_type": errors.UnsupportedGrantType,
    "invalid_scope": errors.InvalidScope,
    "invalid_target": errors.InvalidTarget,
    "temporarily_unavailable": errors.TemporarilyUnavailable,
    "server_error": errors.ServerError,
}
INVALID_CLIENT_BODY = {"error": "invalid_client", "error_description": "Client authentication failed."}


def error_body(code: str, cls: type[errors.OAuthError] | None = None) -> dict[str, str]:
    cls = cls or _BY_CODE[code]
    return {"error": code, "error_description": cls.description}


def assert_hygiene(response: Any) -> None:
    """Every token-endpoint answer: not cacheable, JSON."""
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert response.headers["content-type"].split(";")[0] == "application/json"


def assert_error(response: Any, status: int, code: str, cls: type[errors.OAuthError] | None = None) -> None:
    assert (response.status_code, response.json()) == (status, error_body(code, cls)), response.text
    assert_hygiene(response)
    assert "access_token" not in response.text


def assert_invalid_client(response: Any) -> None:
    assert_error(response, 401, "invalid_client")


def assert_token(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert_hygiene(response)
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer"
    return body
