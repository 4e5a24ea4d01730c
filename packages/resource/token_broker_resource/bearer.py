"""Bearer token transport and error answers: RFC 6750 §2 and §3.

Only the ``Authorization`` header (§2.1) is accepted. A token in the query (§2.3) is refused
(FAPI 2.0 resource servers "shall not accept access tokens in the query"), as is one in a form
body (§2.2); a request that carries a token by two methods is ``invalid_request`` (§3.1). The
scheme name is case-insensitive (RFC 9110 §11.1). Error descriptions are fixed text: nothing
from the request is echoed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl

from token_broker_jose.constants import ACCESS_TOKEN_MAX

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class BearerError(Exception):
    """An RFC 6750 §3 answer. ``error`` None means "no credentials": a bare challenge."""

    def __init__(self, status: int, error: str | None, description: str = "", *, scope: str | None = None,
                 reason: str | None = None) -> None:
        super().__init__(reason or error or "token_missing")
        self.status = status
        self.error = error
        self.description = description
        self.scope = scope
        self.reason = reason or error or "token_missing"

    def challenge(self, realm: str) -> str:
        params = [f'realm="{realm}"']
        if self.error:
            params.append(f'error="{self.error}"')
            params.append(f'error_description="{self.description}"')
        if self.scope:
            params.append(f'scope="{self.scope}"')
        return "Bearer " + ", ".join(params)

    def body(self) -> bytes:
        return json.dumps({"error": self.error, "error_description": self.description} if self.error else {}).encode()

    def headers(self, realm: str) -> list[tuple[bytes, bytes]]:
        return [
            (b"www-authenticate", self.challenge(realm).encode()),
            (b"content-type", b"application/json"),
            (b"cache-control", b"no-store"),
        ]


def missing() -> BearerError:
    return BearerError(401, None, reason="token_missing")


def invalid_request(reason: str, description: str = "The request is malformed.") -> BearerError:
    return BearerError(400, "invalid_request", description, reason=reason)


def invalid_token(reason: str) -> BearerError:
    return BearerError(401, "invalid_token", "The access token is invalid or expired.", reason=reason)


def insufficient_scope(scope: str) -> BearerError:
    return BearerError(403, "insufficient_scope", "The access token lacks the required scope.", scope=scope,
                       reason="insufficient_scope")


def query_has_token(query_string: bytes) -> bool:
    return b"access_token" in query_string and any(
        k == "access_token" for k, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    )


def form_has_token(content_type: str | None, body: bytes) -> bool:
    if not content_type or content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return False
    return any(k == "access_token" for k, _ in parse_qsl(body.decode("latin-1"), keep_blank_values=True))


def extract_bearer(authorization: Iterable[str], *, query_string: bytes = b"", form_token: bool = False) -> str:
    """The token from the request, or raise ``BearerError`` with the RFC 6750 answer."""
    if query_has_token(query_string):
        raise invalid_request("token_in_query", "Access tokens are accepted only in the Authorization header.")
    values = list(authorization)
    if len(values) > 1:
        raise invalid_request("authorization_repeated")
    if form_token:
        raise invalid_request("token_in_body", "Access tokens are accepted only in the Authorization header.")
    if not values:
        raise missing()
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise missing()  # another scheme: no Bearer credentials at all (§3.1)
    token = token.strip(" ")
    if not token:
        raise invalid_request("token_empty")
    if len(token) > ACCESS_TOKEN_MAX or not _B64TOKEN.fullmatch(token):
        raise invalid_token("token_syntax")
    return token
