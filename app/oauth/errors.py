"""OAuth 2.0 error responses (RFC 6749 §5.2), one class per error code.

Each error carries a ``reason``: a stable code for logs and metrics, and a public
``description`` (only RFC 6749 App. A.7 characters, never anything taken from the request). The
description is the class's generic text unless the reason is one decided from the request alone,
before any client is looked up (``PRE_CLIENT_DESCRIPTIONS``): the form, its content type, the
authentication method, the grant type and the outer syntax of the assertion. Those say precisely
what is wrong, since they tell nothing about which clients exist. Every ``invalid_client`` decided
after that (unknown or disabled client, key, signature, claims, replay) renders byte-identically,
so the endpoint is no oracle for which clients exist. Only the web layer renders these.
"""

from __future__ import annotations

import functools

import msgspec


class OAuthError(Exception):
    error: str = "invalid_request"
    status_code: int = 400
    description: str = "The request is missing a parameter or is otherwise malformed."

    def __init__(self, reason: str, *, headers: dict[str, str] | None = None, description: str | None = None,
                 log_detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = headers or {}
        #: For the log line only (``detail``), never the answer: a fixed word or numbers the broker
        #: chose, never request content, so ``broker_admin.py why`` can name the exact fix.
        self.log_detail = log_detail
        # A fixed text chosen by the raiser (never request content), else the reason's, else the class's.
        public = description or PRE_CLIENT_DESCRIPTIONS.get(reason)
        if public is not None:
            self.description = public

    def body(self) -> bytes:
        return _render(type(self), self.description)


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


class UnsupportedResponseType(OAuthError):
    """RFC 6749 §4.1.2.1: the answer of ``/authorize``, which this broker has only for discovery
    parsers that insist on it (app.oauth.metadata); shown to the caller, never redirected."""

    error = "unsupported_response_type"
    description = ("This broker has no authorization endpoint to use: it issues tokens only with the "
                   "client_credentials grant at its token endpoint.")


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


class InvalidDPoPProof(OAuthError):
    """RFC 9449 §5: the token request's DPoP proof is missing (the client's registration requires
    one), malformed or fails a check; the description is the check's fixed text
    (``token_broker_jose.dpop``). Only an authenticated client ever gets it (``app.service.token``)."""

    error = "invalid_dpop_proof"
    description = "The DPoP proof is invalid."


class UseDPoPNonce(OAuthError):
    """RFC 9449 §8: the proof lacks the server's current nonce; the answer carries it in ``DPoP-Nonce``."""

    error = "use_dpop_nonce"
    description = "Authorization server requires nonce in DPoP proof"


class _ErrorBody(msgspec.Struct):
    error: str
    error_description: str


@functools.cache
def _render(cls: type[OAuthError], description: str) -> bytes:
    # Cached per (class, text): the texts are the fixed strings of this module and of the raisers.
    assert all(c in _DESCRIPTION_CHARS for c in description), description
    return msgspec.json.encode(_ErrorBody(cls.error, description))


# RFC 6749 App. A.7: error_description = 1*( %x20-21 / %x23-5B / %x5D-7E )
_DESCRIPTION_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}



_JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_USE_PRIVATE_KEY_JWT = (
    "This broker authenticates clients with private_key_jwt: send client_assertion_type="
    + _JWT_BEARER + " and client_assertion (a JWT signed with the client's key)"
)

#: The public text of each reason decided from the request alone, before any client is looked up
#: (RFC 6749 §5.2 codes unchanged; only the description is specific). A reason raised after the
#: client look-up must never be listed here: its ``invalid_client`` answer has to stay the generic one
#: (``tests/test_error_descriptions.py`` checks where each listed reason is raised).
PRE_CLIENT_DESCRIPTIONS: dict[str, str] = {
    # -- the form (invalid_request) --
    "content_type_missing": "Content-Type is missing: send the parameters as an "
                            "application/x-www-form-urlencoded form body.",
    "content_type_json": "Send the parameters as an application/x-www-form-urlencoded form body, not JSON.",
    "content_type_invalid": "Content-Type must be application/x-www-form-urlencoded.",
    "form_charset": "The form body may hold only visible ASCII characters: percent-encode anything else "
                    "(a space as + or %20).",
    "form_encoding": "A percent-encoded form value does not decode to UTF-8.",
    "parameter_repeated": "A parameter appears more than once: send each parameter once (only resource may repeat).",
    "multiple_auth_methods": "Use one client authentication method: client_assertion alone, without client_secret "
                             "or an Authorization header.",
    "grant_type_missing": "The grant_type parameter is missing: this broker issues tokens for "
                          "grant_type=client_credentials.",
    "grant_type_charset": "grant_type holds characters outside %x20-7E: this broker issues tokens for "
                          "grant_type=client_credentials.",
    "client_id_charset": "client_id holds characters outside %x20-7E.",
    "assertion_type_missing": "client_assertion was sent without client_assertion_type: send client_assertion_type="
                              + _JWT_BEARER + ".",
    "token_missing": "The token parameter is missing.",
    "repeated_header": "Content-Type or Content-Length appears more than once: send each once.",
    # -- unsupported_grant_type, invalid_target --
    "grant_type_unsupported": "This broker issues tokens only for grant_type=client_credentials.",
    "resource_multiple": "Send at most one resource parameter: each token is issued for one audience.",
    # -- client authentication decided before the client look-up (invalid_client) --
    "client_auth_missing": "No client authentication. " + _USE_PRIVATE_KEY_JWT + ".",
    "authorization_unsupported": _USE_PRIVATE_KEY_JWT + ", not HTTP Basic or any other Authorization header.",
    "client_secret_unsupported": _USE_PRIVATE_KEY_JWT + ", not client_secret.",
    "assertion_type_unsupported": "client_assertion_type must be " + _JWT_BEARER + ".",
    "assertion_missing": "client_assertion is missing: send the signed JWT beside client_assertion_type.",
    "assertion_too_large": "client_assertion is longer than this broker accepts.",
    "assertion_malformed": "client_assertion is not a compact JWS: three base64url parts separated by dots "
                           "(header.payload.signature).",
}
