"""Token request parsing: RFC 6749 §3.2 and §4.4.2, RFC 7521 §4.2, RFC 8707 §2.

The body is parsed from raw bytes (never through the web framework's form parser, which keeps
the first of duplicate values and silently normalises bad encodings). Rules, in order:

- ``Content-Type`` must be ``application/x-www-form-urlencoded`` (parameters allowed);
- the body must be visible ASCII (SP only encoded), percent-escapes must decode to UTF-8;
- no parameter may appear twice, except ``resource`` (RFC 8707 allows several; we issue tokens
  for one audience, so several are ``invalid_target``);
- blank values count as absent (RFC 6749 §3.2); unknown parameters are ignored;
- one authentication method only (RFC 6749 §2.3): an ``Authorization`` header or a
  ``client_secret`` beside the assertion is ``invalid_request`` ("more than one mechanism");
  either one *instead of* an assertion is ``invalid_client`` (RFC 6749 §5.2: "unsupported
  authentication method"), 401 with ``WWW-Authenticate: Basic`` when it came in an
  ``Authorization`` header (§5.2 asks for the scheme the client used; Basic, RFC 6749 §2.3.1, is
  the one a client sends to a token endpoint, and the request carries no more than the fact that
  some header was sent);
- character sets are checked after decoding (RFC 6749 App. A).

Every refusal here is decided before any client is looked up, so its ``error_description`` says
precisely what is wrong (``app.oauth.errors.PRE_CLIENT_DESCRIPTIONS``).
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote_to_bytes

import msgspec

from app.oauth.constants import CLIENT_ASSERTION_TYPE, GRANT_CLIENT_CREDENTIALS
from app.oauth.errors import InvalidClient, InvalidRequest, InvalidTarget, UnsupportedGrantType
from app.oauth.federation import SPIFFE_ASSERTION_TYPE

_KNOWN = frozenset(
    {"grant_type", "client_assertion_type", "client_assertion", "client_id", "scope", "resource"}
)
# RFC 6749 App. A.1: client-id = *VSCHAR, and VSCHAR (%x20-7E) includes SP, so a client_id with a
# space passes this check. Registration is stricter (``CLIENT_ID_RE`` has no SP), so such a
# client_id names no registered client and the request fails as ``invalid_client`` (a mismatch
# with the assertion's ``iss``, or an unknown client).
# grant_type (A.10: a grant-name or a URI, both within VSCHAR) is held to the same set.
_VSCHAR = re.compile(r"[\x20-\x7e]*")
# The raw body: visible ASCII only (SP arrives encoded, as "+" or "%20").
_FORM_BYTES = re.compile(rb"[\x21-\x7e]*")
# The answer names a repeated parameter only when it is one of the fixed names below (never text
# taken from the request); any other name gets the reason's generic text.
_REPEATED = {
    name: f"The parameter {name} appears more than once: send each parameter once (only resource may repeat)."
    for name in sorted((_KNOWN | {"client_secret", "token", "token_type_hint"}) - {"resource"})
}


class TokenRequest(msgspec.Struct, frozen=True):
    client_assertion: str
    client_id: str | None
    scope: str | None
    resource: str | None
    #: ``CLIENT_ASSERTION_TYPE``, or ``SPIFFE_ASSERTION_TYPE`` for a SPIFFE JWT-SVID.
    assertion_type: str = CLIENT_ASSERTION_TYPE


def parse_token_request(body: bytes, content_type: str | None, *, has_authorization: bool) -> TokenRequest:
    _check_content_type(content_type)
    params, resources = _parse_form(body)
    _one_auth_method(params, has_authorization)

    grant_type = params.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("grant_type_missing")
    if not _VSCHAR.fullmatch(grant_type):
        raise InvalidRequest("grant_type_charset")
    if grant_type != GRANT_CLIENT_CREDENTIALS:
        raise UnsupportedGrantType("grant_type_unsupported")

    assertion, client_id, assertion_type = client_auth_params(params, has_authorization=has_authorization)

    if len(resources) > 1:
        raise InvalidTarget("resource_multiple")
    return TokenRequest(assertion, client_id, params.get("scope"), resources[0] if resources else None, assertion_type)


def client_auth_params(params: dict[str, str], *, has_authorization: bool) -> tuple[str, str | None, str]:
    """RFC 7523 §2.2 client authentication parameters: (client_assertion, client_id or None,
    client_assertion_type). The type is ``CLIENT_ASSERTION_TYPE``, or the SPIFFE one of
    draft-ietf-oauth-spiffe-client-auth (``SPIFFE_ASSERTION_TYPE``: a JWT-SVID, checked as a
    workload token of a trusted issuer, ``app.service.federation``).

    Shared by every client-authenticated endpoint (token, RFC 7009 revocation, RFC 7662
    introspection) so each refuses a second method and a bad assertion type identically.
    """
    _one_auth_method(params, has_authorization)
    client_id = params.get("client_id")
    if client_id is not None and not _VSCHAR.fullmatch(client_id):
        raise InvalidRequest("client_id_charset")

    assertion_type = params.get("client_assertion_type")
    assertion = params.get("client_assertion")
    if assertion_type is None:
        if assertion is not None:
            raise InvalidRequest("assertion_type_missing")
        raise InvalidClient("client_auth_missing")
    if assertion_type != CLIENT_ASSERTION_TYPE and assertion_type != SPIFFE_ASSERTION_TYPE:
        raise InvalidClient("assertion_type_unsupported")
    if assertion is None:
        raise InvalidClient("assertion_missing")
    return assertion, client_id, assertion_type


def parse_form(body: bytes, content_type: str | None, known: frozenset[str]) -> dict[str, str]:
    """A form-encoded body for an endpoint whose parameters are ``known`` (none may repeat)."""
    _check_content_type(content_type)
    params, _ = _parse_form(body, known)  # unknown parameters (``resource`` too) are ignored
    return params


def _check_content_type(content_type: str | None) -> None:
    if content_type is None:
        raise InvalidRequest("content_type_missing")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        return
    # application/json and the structured-syntax suffix (RFC 6839 §3.1): client libraries that
    # default to JSON bodies are the usual cause, so the answer names it.
    if media_type == "application/json" or media_type.endswith("+json"):
        raise InvalidRequest("content_type_json")
    raise InvalidRequest("content_type_invalid")


# WWW-Authenticate for a refused Authorization header (module docstring); the realm is fixed text.
_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="token-broker"'}


def _one_auth_method(params: dict[str, str], has_authorization: bool) -> None:
    """RFC 6749 §2.3: one method, and it must be private_key_jwt (module docstring)."""
    if not has_authorization and "client_secret" not in params:
        return
    if "client_assertion" in params:
        raise InvalidRequest("multiple_auth_methods")
    if has_authorization:
        raise InvalidClient("authorization_unsupported", headers=dict(_BASIC_CHALLENGE))
    raise InvalidClient("client_secret_unsupported")


def _decode(raw: bytes) -> str:
    """One name or value of the form: ``+`` is a space, ``%XX`` a byte, the bytes UTF-8. Most
    (an assertion, ``client_credentials``) have neither ``%`` nor ``+``: printable ASCII (the
    body's charset, ``_FORM_BYTES``) that decodes as it is."""
    if b"%" in raw or b"+" in raw:
        return _unquote_short(raw) if len(raw) <= _MEMO_MAX else _unquote(raw)
    return raw.decode("ascii")


def _unquote(raw: bytes) -> str:
    return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")


#: Quoted values up to this many bytes (client_assertion_type, a multi-word scope: the same bytes
#: on every request) are remembered, at most 256 of them (under 200 KiB, whatever the requests).
_MEMO_MAX = 256
_unquote_short = functools.lru_cache(maxsize=256)(_unquote)


def _parse_form(body: bytes, known: frozenset[str] = _KNOWN) -> tuple[dict[str, str], list[str]]:
    """Split ``a=b&c=d`` strictly; blank values are dropped, duplicates refused."""
    if not _FORM_BYTES.fullmatch(body):
        raise InvalidRequest("form_charset")
    params: dict[str, str] = {}
    resources: list[str] = []
    seen: set[str] = set()
    if not body:
        return params, resources
    for field in body.split(b"&"):
        if not field:
            continue
        name_b, sep, value_b = field.partition(b"=")
        try:
            name = _decode(name_b)
            value = _decode(value_b)
        except UnicodeDecodeError:
            raise InvalidRequest("form_encoding") from None
        if name in seen and name != "resource":
            raise InvalidRequest("parameter_repeated", description=_REPEATED.get(name))
        seen.add(name)
        if name == "resource":
            if value:
                resources.append(value)
            continue
        if value and (name in known or name == "client_secret"):
            params[name] = value
    return params, resources
