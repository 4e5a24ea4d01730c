"""Exact-response assertions for the token endpoint (docs/attack-matrix.md, "Conventions")."""

from __future__ import annotations

from typing import Any

from app.oauth import errors

_BY_CODE = {
    "invalid_request": errors.InvalidRequest,
    "invalid_client": errors.InvalidClient,
    "unauthorized_client": errors.UnauthorizedClient,
    "unsupported_grant_type": errors.UnsupportedGrantType,
    "invalid_scope": errors.InvalidScope,
    "invalid_target": errors.InvalidTarget,
    "temporarily_unavailable": errors.TemporarilyUnavailable,
    "server_error": errors.ServerError,
}
INVALID_CLIENT_BODY = {"error": "invalid_client", "error_description": "Client authentication failed."}


def error_body(code: str, cls: type[errors.OAuthError] | None = None, reason: str | None = None) -> dict[str, str]:
    """The body of ``code``: the class's fixed text, or the specific one of a ``reason`` decided
    before any client is looked up (``errors.PRE_CLIENT_DESCRIPTIONS``)."""
    cls = cls or _BY_CODE[code]
    description = cls.description if reason is None else errors.PRE_CLIENT_DESCRIPTIONS[reason]
    return {"error": code, "error_description": description}


def assert_hygiene(response: Any) -> None:
    """Every token-endpoint answer (attack matrix: `response-hygiene`)."""
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert response.headers["content-type"].split(";")[0] == "application/json"


def assert_error(response: Any, status: int, code: str, cls: type[errors.OAuthError] | None = None,
                 reason: str | None = None) -> None:
    assert (response.status_code, response.json()) == (status, error_body(code, cls, reason)), response.text
    assert_hygiene(response)
    assert "access_token" not in response.text


def assert_invalid_client(response: Any, reason: str | None = None) -> None:
    """401 ``invalid_client``: the one generic body, or the specific one when ``reason`` (the
    logged cause) was decided before any client is looked up."""
    assert_error(response, 401, "invalid_client",
                 reason=reason if reason in errors.PRE_CLIENT_DESCRIPTIONS else None)


def assert_token(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert_hygiene(response)
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer"
    return body
