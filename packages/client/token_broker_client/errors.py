"""Errors a client service can act on: RFC 6749 §5.2 error responses from the token endpoint.

Each exception carries the broker's ``error`` code (``error``), the HTTP status, the broker's
``error_description`` or, for a local code, what was expected and what was found
(``description``), the answer's ``X-Request-Id`` when it had one (``request_id``), and for
``BrokerUnavailable`` the ``Retry-After`` hint in seconds when the broker gave one. The message
(``str(exc)``) reads as one sentence: the code, the description, the status of an error answer
(never "HTTP 200", which reads like success) and, with a request id, how the broker's operator
finds the logged reason (``broker_admin.py why``).
"""

from __future__ import annotations


class BrokerError(Exception):
    """The token request failed; ``error`` is the broker's RFC 6749 §5.2 code (or a local one)."""

    def __init__(self, error: str, *, status_code: int | None = None, description: str | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(_message(error, status_code, description, request_id))
        self.error = error
        self.status_code = status_code
        self.description = description
        self.request_id = request_id


def _message(error: str, status_code: int | None, description: str | None, request_id: str | None) -> str:
    text = error + (f": {description}" if description else "")
    if status_code is not None and status_code >= 300 and f"HTTP {status_code}" not in text:
        text += f" (HTTP {status_code})"
    if request_id:
        text += (f"; request id {request_id}: the broker's operator runs `broker_admin.py why {request_id}` "
                 "on the broker's log for the reason")
    return text


class BrokerUnavailable(BrokerError):
    """The broker is unreachable, timed out, answered 5xx (503 ``temporarily_unavailable``) or a 429
    without an error code, or sent something that is not a token response. Retrying later may succeed."""

    def __init__(self, error: str, *, status_code: int | None = None, description: str | None = None,
                 retry_after: float | None = None, request_id: str | None = None) -> None:
        super().__init__(error, status_code=status_code, description=description, request_id=request_id)
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


def error_for(code: str, status_code: int, description: str | None, retry_after: float | None,
              request_id: str | None = None) -> BrokerError:
    """The exception for an error answer: ``BrokerUnavailable`` (retryable) for 5xx, ``server_error``
    and ``temporarily_unavailable``."""
    if status_code >= 500 or code in ("temporarily_unavailable", "server_error"):
        return BrokerUnavailable(code, status_code=status_code, description=description, retry_after=retry_after,
                                 request_id=request_id)
    return _BY_CODE.get(code, BrokerError)(code, status_code=status_code, description=description,
                                           request_id=request_id)
