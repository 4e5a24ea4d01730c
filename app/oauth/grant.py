"""The client-credentials grant decision: RFC 6749 §4.4 and §3.3 (scope), RFC 8707 (resource).

``decide_grant`` turns an authenticated client and its request into what the token will say:
the canonical scope set and the audience. Scope and audience never come from the assertion's
claims (RFC 7521 §4.2: the assertion only authenticates), only from the form intersected with the
client's registration.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import urlsplit

import msgspec

from app.oauth.access_token import FederatedIdentity
from app.oauth.clients import SCOPE_TOKEN, Client
from app.oauth.constants import GRANT_CLIENT_CREDENTIALS, URI_MAX
from app.oauth.errors import InvalidRequest, InvalidScope, InvalidTarget, UnauthorizedClient

# RFC 6749 App. A.4: scope = scope-token *( SP scope-token )
_SCOPE = re.compile(f"{SCOPE_TOKEN}(?: {SCOPE_TOKEN})*")
SCOPE_MAX_LENGTH = 4096
SCOPE_MAX_TOKENS = 100


class Grant(msgspec.Struct, frozen=True):
    client_id: str
    scopes: tuple[str, ...]  # sorted, unique
    audience: str
    lifetime: int
    #: The client's registration (``ClientRecord.registration_id``): the token's jti names it.
    registration_id: str = ""
    #: The workload a federated client authenticated as (the token's ``federation`` claim), or None.
    federation: FederatedIdentity | None = None

    @property
    def scope(self) -> str:
        return " ".join(self.scopes)


def parse_scope(scope: str) -> tuple[str, ...]:
    """The sorted, unique scope tokens. A client asks for the same few scope strings again and
    again: those up to 256 characters are remembered (at most 1,024 of them: a few hundred KiB)."""
    return _parse_scope_short(scope) if len(scope) <= 256 else _parse_scope(scope)


def _parse_scope(scope: str) -> tuple[str, ...]:
    if len(scope) > SCOPE_MAX_LENGTH:
        raise InvalidRequest("scope_too_large")
    if not _SCOPE.fullmatch(scope):
        raise InvalidScope("scope_syntax")
    tokens = scope.split(" ")
    if len(tokens) > SCOPE_MAX_TOKENS:
        raise InvalidRequest("scope_too_large")
    return tuple(sorted(set(tokens)))


_parse_scope_short = functools.lru_cache(maxsize=1024)(_parse_scope)


def check_resource(resource: str) -> str:
    """RFC 8707 §2: an absolute URI without a fragment."""
    if len(resource) > URI_MAX or not resource.isascii() or not resource.isprintable() or " " in resource:
        raise InvalidTarget("resource_invalid")
    try:
        parts = urlsplit(resource)
    except ValueError:
        raise InvalidTarget("resource_invalid") from None
    if not parts.scheme or "#" in resource or not (parts.netloc or parts.path):
        raise InvalidTarget("resource_invalid")
    return resource


def decide_grant(client: Client, scope: str | None, resource: str | None, default_lifetime: int) -> Grant:
    record = client.record
    if GRANT_CLIENT_CREDENTIALS not in record.grant_types:
        raise UnauthorizedClient("grant_not_allowed")

    if scope is None:
        scopes = record.default_scopes
        if not scopes:
            raise InvalidScope("scope_none_default")
    else:
        scopes = parse_scope(scope)
        if not client.scopes.issuperset(scopes):
            raise InvalidScope("scope_not_allowed")

    if resource is None:
        audience = record.default_audience
        if audience is None:
            raise InvalidTarget("resource_required")
    else:
        audience = check_resource(resource)
        if audience not in record.audiences and audience != record.default_audience:
            raise InvalidTarget("resource_not_allowed")

    return Grant(record.client_id, tuple(scopes), audience, record.token_lifetime or default_lifetime,
                 record.registration_id)
