"""Bearer token transport and error answers: RFC 6750 §2 and §3.

Only the ``Authorization`` header (§2.1) is accepted. A token in the query (§2.3) is refused
(FAPI 2.0 resource servers "shall not accept access tokens in the query"), as is one in a form
body (§2.2); a request that carries a token by two methods is ``invalid_request`` (§3.1). The
scheme name is case-insensitive (RFC 9110 §11.1). Error descriptions are fixed text: nothing
from the request is echoed.

With DPoP accepted (RFC 9449 §7.1), ``Authorization: DPoP <token>`` is the other scheme. Every
answer challenges each accepted scheme (one ``WWW-Authenticate`` field per scheme, RFC 9449 §7.2):
the scheme the request used carries the error, the others are bare; the DPoP challenge names the
accepted proof algorithms (``algs``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from urllib.parse import parse_qsl

from token_broker_jose.constants import ACCESS_TOKEN_MAX

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
#: The two authorization schemes (RFC 6750 §2.1, RFC 9449 §7.1), as challenges spell them.
BEARER = "Bearer"
DPOP = "DPoP"


class BearerError(Exception):
    """An RFC 6750 §3 answer. ``error`` None means "no credentials": a bare challenge."""

    def __init__(self, status: int, error: str | None, description: str = "", *, scope: str | None = None,
                 reason: str | None = None, scheme: str = BEARER) -> None:
        super().__init__(reason or error or "token_missing")
        self.status = status
        self.error = error
        self.description = description
        self.scope = scope
        self.reason = reason or error or "token_missing"
        self.scheme = scheme  # the scheme the request used: its challenge carries the error
        self.nonce: str | None = None  # RFC 9449 §9: sent as DPoP-Nonce with use_dpop_nonce

    def challenge(self, realm: str, algs: Sequence[str] = ()) -> str:
        """This error's challenge in its scheme (``algs`` for DPoP, RFC 9449 §7.1)."""
        params = [f'realm="{realm}"']
        if self.error:
            params.append(f'error="{self.error}"')
            params.append(f'error_description="{self.description}"')
        if self.scope:
            params.append(f'scope="{self.scope}"')
        if self.scheme == DPOP and algs:
            params.append(f'algs="{" ".join(algs)}"')
        return f"{self.scheme} " + ", ".join(params)

    def body(self) -> bytes:
        return json.dumps({"error": self.error, "error_description": self.description} if self.error else {}).encode()

    def headers(self, realm: str, *, bearer: bool = True, dpop_algs: Sequence[str] = ()) -> list[tuple[bytes, bytes]]:
        """The answer's headers: a challenge per accepted scheme (Bearer unless ``bearer`` is False,
        DPoP when ``dpop_algs`` are given), this error in the scheme it is about."""
        # An error met before the scheme was known (a token in the query) goes in the first accepted one.
        home = self.scheme if (bearer if self.scheme == BEARER else bool(dpop_algs)) else BEARER if bearer else DPOP
        challenges = []
        if bearer:
            challenges.append(self._challenge_in(BEARER, home, realm, ()))
        if dpop_algs:
            challenges.append(self._challenge_in(DPOP, home, realm, dpop_algs))
        return [
            *((b"www-authenticate", value.encode()) for value in challenges),
            *([(b"dpop-nonce", self.nonce.encode())] if self.nonce else []),
            (b"content-type", b"application/json"),
            (b"cache-control", b"no-store"),
        ]

    def _challenge_in(self, scheme: str, home: str, realm: str, algs: Sequence[str]) -> str:
        if scheme == home:
            return BearerError(self.status, self.error, self.description, scope=self.scope, scheme=scheme).challenge(realm, algs)
        return BearerError(401, None, scheme=scheme).challenge(realm, algs)


def missing() -> BearerError:
    return BearerError(401, None, reason="token_missing")


def invalid_request(reason: str, description: str = "The request is malformed.", scheme: str = BEARER) -> BearerError:
    return BearerError(400, "invalid_request", description, reason=reason, scheme=scheme)


def invalid_token(reason: str, scheme: str = BEARER) -> BearerError:
    return BearerError(401, "invalid_token", "The access token is invalid or expired.", reason=reason, scheme=scheme)


def insufficient_scope(scope: str, scheme: str = BEARER) -> BearerError:
    return BearerError(403, "insufficient_scope", "The access token lacks the required scope.", scope=scope,
                       reason="insufficient_scope", scheme=scheme)


def invalid_dpop_proof(reason: str, description: str, error: str = "invalid_dpop_proof") -> BearerError:
    """RFC 9449 §7.1: 401 ``invalid_dpop_proof`` (or §9 ``use_dpop_nonce``) in a DPoP challenge."""
    return BearerError(401, error, description, reason=reason, scheme=DPOP)


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
    return extract_token(authorization, query_string=query_string, form_token=form_token)[1]


def extract_token(authorization: Iterable[str], *, query_string: bytes = b"", form_token: bool = False,
                  schemes: Iterable[str] = (BEARER,)) -> tuple[str, str]:
    """(scheme, token) for a request using one of ``schemes`` (``Bearer``, ``DPoP``), or raise
    ``BearerError``; a scheme not accepted counts as no credentials (RFC 6750 §3.1)."""
    accepted = {name.lower(): name for name in schemes}
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
    scheme = accepted.get(scheme.lower(), "")
    if not scheme:
        raise missing()  # another scheme: no credentials this server accepts at all (§3.1)
    token = token.strip(" ")
    if not token:
        raise invalid_request("token_empty", scheme=scheme)
    if len(token) > ACCESS_TOKEN_MAX or not _B64TOKEN.fullmatch(token):
        raise invalid_token("token_syntax", scheme)
    return scheme, token
