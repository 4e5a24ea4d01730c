"""Errors a client service can act on: RFC 6749 §5.2 error responses from the token endpoint.

Each exception carries the broker's ``error`` code (``error``), the HTTP status, and for
``BrokerUnavailable`` the ``Retry-After`` hint in seconds when the broker gave one.
"""

from __future__ import annotations


class BrokerError(Exception):
    """The token request failed; ``error`` is the broker's RFC 6749 §5.2 code (or a local one)."""

    def __init__(self, error: str, *, status_code: int | None = None, description: str | None = None) -> None:
        super().__init__(f"{error}" + (f" (HTTP {status_code})" if status_code else "") + (f": {description}" if description else ""))
        self.error = error
        self.status_code = status_code
        self.description = description


class BrokerUnavailable(BrokerError):
    """The broker is unreachable, timed out, answered 5xx (503 ``temporarily_unavailable``) or a 429
    without an error code, or sent something that is not a token response. Retrying later may succeed."""

    def __init__(self, error: str, *, status_code: int | None = None, description: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(error, status_code=status_code, description=description)
        self.retry_after = retry_after


class InvalidClientError(BrokerError):
    """401 ``invalid_client``: unknown or disabled client, wrong key, bad assertion. Not retryable."""


class InvalidScopeError(BrokerError):
    """400 ``invalid_scope``: a scope the client is not registered for."""


class InvalidTargetError(BrokerError):
    """400 ``invalid_target`` (RFC 8707 §2): a resource the client may not get tokens for."""


_BY_CODE: dict[str, type[BrokerError]] = {
    "invalid_client": InvalidClientError,
    "invalid_scope": InvalidScopeError,
    "invalid_target": InvalidTargetError,
}


def error_for(code: str, status_code: int, description: str | None, retry_after: float | None) -> BrokerError:
    """The exception for an error answer: ``BrokerUnavailable`` (retryable) for 5xx, ``server_error``
    and ``temporarily_unavailable``."""
    if status_code >= 500 or code in ("temporarily_unavailable", "server_error"):
        return BrokerUnavailable(code, status_code=status_code, description=description, retry_after=retry_after)
    return _BY_CODE.get(code, BrokerError)(code, status_code=status_code, description=description)
