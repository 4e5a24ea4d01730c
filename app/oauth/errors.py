"""OAuth 2.0 error responses (RFC 6749 §5.2), one class per error code.

Each class carries a fixed public ``description`` (only RFC 6749 App. A.7 characters, never
anything taken from the request) and a ``reason``: a stable code for logs and metrics that never
reaches the client. Every ``invalid_client`` answer is byte-identical whatever its cause, so the
endpoint is no oracle for which clients exist. Only the web layer renders these.
"""

from __future__ import annotations

import functools

import msgspec


class OAuthError(Exception):
    error: str = "invalid_request"
    status_code: int = 400
    description: str = "The request is missing a parameter or is otherwise malformed."

    def __init__(self, reason: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = headers or {}

    def body(self) -> bytes:
        return _render(type(self))


class InvalidRequest(OAuthError):
    pass


class RequestTooLarge(OAuthError):
    status_code = 413
    description = "The request body is too large."


class InvalidClient(OAuthError):
    error = "invalid_client"
    status_code = 401
    description = "Client authentication failed."


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"
    description = "The client is not allowed to use this grant type."


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"
    description = "The grant type is not supported."


class InvalidScope(OAuthError):
    error = "invalid_scope"
    description = "The requested scope is invalid, unknown or not allowed."


class InvalidTarget(OAuthError):
    """RFC 8707 §2."""

    error = "invalid_target"
    description = "The requested resource is invalid or not allowed."


class AccessDenied(OAuthError):
    error = "access_denied"
    status_code = 403
    description = "The client is not allowed to perform this operation."


class MethodNotAllowed(OAuthError):
    status_code = 405
    description = "Use POST."


class SlowDown(OAuthError):
    """Too many failed authentications, or a client over its request quota; RFC 6749 has no code for
    this, 429 is RFC 6585. One neutral text for both: the answer does not say which limit applied."""

    error = "slow_down"
    status_code = 429
    description = "Too many requests; retry later."


class TemporarilyUnavailable(OAuthError):
    """RFC 6749 §4.1.2.1 code, used at the token endpoint when the replay store cannot answer."""

    error = "temporarily_unavailable"
    status_code = 503
    description = "The service is temporarily unavailable; retry later."


class ServerError(OAuthError):
    error = "server_error"
    status_code = 500
    description = "The server encountered an unexpected condition."


class _ErrorBody(msgspec.Struct):
    error: str
    error_description: str


@functools.cache
def _render(cls: type[OAuthError]) -> bytes:
    assert all(c in _DESCRIPTION_CHARS for c in cls.description), cls
    return msgspec.json.encode(_ErrorBody(cls.error, cls.description))


# RFC 6749 App. A.7: error_description = 1*( %x20-21 / %x23-5B / %x5D-7E )
_DESCRIPTION_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}

