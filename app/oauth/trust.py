"""Trusted issuers for workload identity federation: the platforms whose signed workload tokens
(Kubernetes projected service-account tokens, SPIFFE JWT-SVIDs, GitHub Actions OIDC tokens...) a
client may present as its client assertion instead of signing one with a key of its own.

``TrustedIssuer`` is what the registry stores (JSON, one record per issuer) and the admin API and
clients file accept; ``trusted_issuer`` validates one from untrusted JSON. ``match_rules`` maps a
verified token's claims to the one registered client it stands for. Pure code: no I/O, no clock.

Keys come from exactly one source: ``jwks`` (a static JWKS, for an issuer the broker cannot reach,
e.g. a cluster's ``kubectl get --raw /openid/v1/jwks``), ``jwks_uri``, or, when neither is set,
OIDC discovery (``<issuer>/.well-known/openid-configuration`` → ``jwks_uri``).

``issuer`` is the ``iss`` the tokens carry. A SPIFFE trust domain (``spiffe://example.org``) names
an issuer of JWT-SVIDs, which may carry no ``iss``: a token is then looked up by its ``sub``'s
trust domain, and its ``sub`` must lie in it.

Mapping rules (``MappingRule``), each naming one ``client_id``; a rule matches when every
condition it sets holds, and it must set at least one:

- ``sub``: the token's ``sub``, exactly (``system:serviceaccount:payments:api``);
- ``sub_pattern``: the token's ``sub`` against a pattern where ``*`` stands for one or more
  characters other than ``/`` and ``:`` (one path segment or name part) and ``**`` for one or more
  of any character (``spiffe://example.org/ns/payments/sa/*``, ``repo:octo/app:ref:refs/heads/*``);
- ``claims``: claim path → exact string value. A path's segments are separated by ``.``; at each
  level the longest member name that matches is taken, so ``kubernetes.io.namespace`` reads
  ``{"kubernetes.io": {"namespace": ...}}`` and ``kubernetes.io.serviceaccount.name`` the service
  account's name. GitHub: ``repository``, ``ref``, ``environment``...

A token that matches no rule maps to no client; one that matches rules naming two different
clients is refused (``AmbiguousMapping``), never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import msgspec

from app.oauth.clients import CLIENT_ID_RE, InvalidClientMetadata, validate_client_jwk
from app.oauth.constants import ALG_KEY_TYPES, ASSERTION_ALGS

#: Algorithms a trusted issuer may sign with unless its record narrows them (all asymmetric).
DEFAULT_ALGS: tuple[str, ...] = ASSERTION_ALGS
#: Defaults of a record's bounds, in seconds: the oldest ``iat`` accepted, the longest ``exp - iat``.
DEFAULT_MAX_TOKEN_AGE = 3600
DEFAULT_MAX_LIFETIME = 3600
#: Hard caps an operator cannot exceed (a day: projected service-account tokens may live that long).
MAX_TOKEN_AGE_CAP = 86400
MAX_LIFETIME_CAP = 86400
MAX_RULES = 100
MAX_CLAIM_CONDITIONS = 10
MAX_ISSUERS = 100
_SPIFFE_PREFIX = "spiffe://"
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_CLAIM_PATH = re.compile(r"[A-Za-z0-9_.:/-]{1,200}")


class AmbiguousMapping(Exception):
    """A token matched rules naming different clients."""

    def __init__(self, client_ids: tuple[str, ...]) -> None:
        super().__init__(", ".join(client_ids))
        self.client_ids = client_ids


class MappingRule(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    client_id: str
    sub: str | None = None
    sub_pattern: str | None = None
    claims: dict[str, str] = {}


class TrustedIssuer(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    #: The ``iss`` of its tokens (an https URL), or a SPIFFE trust domain ``spiffe://<domain>``.
    issuer: str
    #: Key source: a static JWKS, a JWKS URL, or neither (OIDC discovery below the issuer).
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    #: The audience a token must carry; None: the broker's issuer identifier.
    audience: str | None = None
    #: Accept an ``aud`` array holding the audience next to other members (off: it must be alone).
    allow_other_audiences: bool = False
    algs: tuple[str, ...] = DEFAULT_ALGS
    max_token_age: int = DEFAULT_MAX_TOKEN_AGE
    max_lifetime: int = DEFAULT_MAX_LIFETIME
    #: True: a token must carry a ``jti`` and is accepted once; False: reuse until ``exp``, counted.
    single_use: bool = False
    rules: tuple[MappingRule, ...] = ()

    @property
    def spiffe(self) -> bool:
        return self.issuer.startswith(_SPIFFE_PREFIX)

    def discovery_url(self) -> str | None:
        """Where OIDC discovery is read when no key source is set (None for a SPIFFE trust domain)."""
        if self.jwks is not None or self.jwks_uri is not None or self.spiffe:
            return None
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


_decode_issuer = msgspec.json.Decoder(TrustedIssuer).decode
_encode = msgspec.json.Encoder().encode


def encode_issuer(record: TrustedIssuer) -> bytes:
    return _encode(record)


def decode_issuer(raw: bytes) -> TrustedIssuer:
    return _decode_issuer(raw)


def _check_url(value: Any, field: str, *, allow_http_loopback: bool) -> str:
    if type(value) is not str or len(value) > 2048 or not value.isascii():
        raise InvalidClientMetadata("trust_url_invalid", f"{field} must be an https URL of at most 2048 ASCII characters")
    try:
        parts = urlsplit(value)
        _ = parts.port  # parsed lazily: a bad port would raise later, at the first fetch
    except ValueError:
        raise InvalidClientMetadata("trust_url_invalid", f"{field} is not a URL") from None
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if not parts.hostname or parts.fragment or parts.username or parts.password or not (
            parts.scheme == "https" or (parts.scheme == "http" and loopback and allow_http_loopback)):
        raise InvalidClientMetadata("trust_url_invalid", f"{field} must be an https URL without credentials or fragment")
    return value


def _check_issuer(value: Any, allow_http_loopback: bool) -> str:
    if type(value) is str and value.startswith(_SPIFFE_PREFIX):
        if not _TRUST_DOMAIN.fullmatch(value[len(_SPIFFE_PREFIX):]):
            raise InvalidClientMetadata("trust_issuer_invalid", "a SPIFFE issuer is spiffe://<trust domain> (lower-case, no path)")
        return value
    return _check_url(value, "issuer", allow_http_loopback=allow_http_loopback)


def _check_rule(value: Any) -> MappingRule:
    try:
        rule = msgspec.convert(value, MappingRule)
    except msgspec.ValidationError as exc:
        raise InvalidClientMetadata("trust_rule_invalid", f"mapping rule: {exc}") from None
    if not CLIENT_ID_RE.fullmatch(rule.client_id):
        raise InvalidClientMetadata("trust_rule_invalid", f"mapping rule client_id {rule.client_id[:40]!r} is not a valid client_id")
    if rule.sub is None and rule.sub_pattern is None and not rule.claims:
        raise InvalidClientMetadata("trust_rule_invalid", "a mapping rule must set sub, sub_pattern or claims (a rule matching "
                                         "every token of the issuer is refused)")
    for text in (rule.sub, rule.sub_pattern):
        if text is not None and not 1 <= len(text) <= 512:
            raise InvalidClientMetadata("trust_rule_invalid", "sub and sub_pattern must be 1-512 characters")
        if text is not None and not text.isprintable():  # a token's sub is printable: such a rule never matches
            raise InvalidClientMetadata("trust_rule_invalid", "sub and sub_pattern must be printable (no control characters)")
    if rule.sub_pattern is not None and rule.sub_pattern.strip("*/:") == "":
        raise InvalidClientMetadata("trust_rule_invalid", "sub_pattern must have a literal part")
    if rule.sub_pattern is not None and not _pattern_is_linear(rule.sub_pattern):
        raise InvalidClientMetadata("trust_rule_invalid", "sub_pattern may hold one ** and one * per segment between "
                                                          "/ and : (more would make matching a long sub slow)")
    if len(rule.claims) > MAX_CLAIM_CONDITIONS:
        raise InvalidClientMetadata("trust_rule_invalid", f"at most {MAX_CLAIM_CONDITIONS} claim conditions per rule")
    for path, expected in rule.claims.items():
        if not _CLAIM_PATH.fullmatch(path) or not 1 <= len(expected) <= 512:
            raise InvalidClientMetadata("trust_rule_invalid", f"claim condition {path[:40]!r}: a claim path and a 1-512 character value")
    return rule


def trusted_issuer(value: Any, *, allow_http_loopback: bool = False) -> TrustedIssuer:
    """Validate a trusted-issuer record from untrusted JSON (admin API, clients file)."""
    if not isinstance(value, Mapping):
        raise InvalidClientMetadata("trust_invalid", "a trusted issuer must be a JSON object")
    raw = dict(value)
    rules = raw.pop("rules", [])
    try:
        record = msgspec.convert(raw, TrustedIssuer)
    except msgspec.ValidationError as exc:
        raise InvalidClientMetadata("trust_invalid", f"trusted issuer: {exc}") from None
    _check_issuer(record.issuer, allow_http_loopback)
    if record.jwks is not None and record.jwks_uri is not None:
        raise InvalidClientMetadata("trust_keys_invalid", "set at most one of jwks and jwks_uri (neither: OIDC discovery)")
    if record.spiffe and record.jwks is None and record.jwks_uri is None:
        raise InvalidClientMetadata("trust_keys_invalid", "a SPIFFE trust domain needs jwks or jwks_uri (its bundle endpoint)")
    if record.jwks_uri is not None:
        _check_url(record.jwks_uri, "jwks_uri", allow_http_loopback=allow_http_loopback)
    if record.jwks is not None:
        keys = record.jwks.get("keys")
        if type(keys) is not list or not 1 <= len(keys) <= 20:
            raise InvalidClientMetadata("trust_keys_invalid", "jwks must be a JWKS with 1-20 keys")
        for jwk in keys:
            if isinstance(jwk, dict) and jwk.get("use") == "x509-svid":  # a SPIFFE bundle's X.509 authorities
                continue
            if isinstance(jwk, dict) and "use" in jwk and jwk["use"] == "jwt-svid":  # a SPIFFE bundle's keys
                jwk = {k: v for k, v in jwk.items() if k != "use"}
            validate_client_jwk(jwk, default_alg=_default_alg(jwk, record.algs))
    if record.audience is not None and not 1 <= len(record.audience) <= 512:
        raise InvalidClientMetadata("trust_invalid", "audience must be 1-512 characters")
    if not record.algs or set(record.algs) - set(ASSERTION_ALGS):
        raise InvalidClientMetadata("trust_algs_invalid", f"algs must be a non-empty subset of {', '.join(ASSERTION_ALGS)}")
    if not 1 <= record.max_token_age <= MAX_TOKEN_AGE_CAP or not 1 <= record.max_lifetime <= MAX_LIFETIME_CAP:
        raise InvalidClientMetadata("trust_invalid", f"max_token_age and max_lifetime must be 1-{MAX_LIFETIME_CAP} seconds")
    if type(rules) is not list or len(rules) > MAX_RULES:
        raise InvalidClientMetadata("trust_rule_invalid", f"rules must be a list of at most {MAX_RULES} mapping rules")
    return msgspec.structs.replace(record, rules=tuple(_check_rule(rule) for rule in rules))


def _default_alg(jwk: Any, algs: tuple[str, ...]) -> str | None:
    """The alg a published key without ``alg`` is checked for: the first of the issuer's algs its type
    fits, RS256 first for an RSA key (what Kubernetes, SPIRE and the cloud issuers sign with)."""
    if not isinstance(jwk, dict) or "alg" in jwk:
        return None
    kty, crv = jwk.get("kty"), jwk.get("crv")
    # An EC or OKP key by its curve too: a P-384 key is ES384's, never ES256's.
    for alg in sorted(algs, key=lambda a: a != "RS256"):
        want_kty, want_crv = ALG_KEY_TYPES[alg]
        if kty == want_kty and (want_crv is None or crv == want_crv):
            return alg
    return None


def spiffe_trust_domain(sub: Any) -> str | None:
    """``spiffe://<domain>`` of a SPIFFE ID, or None for anything else."""
    if type(sub) is not str or not sub.startswith(_SPIFFE_PREFIX):
        return None
    domain = sub[len(_SPIFFE_PREFIX):].split("/", 1)[0]
    return _SPIFFE_PREFIX + domain if _TRUST_DOMAIN.fullmatch(domain) else None


_pattern_cache: dict[str, re.Pattern[str]] = {}


def _pattern_is_linear(text: str) -> bool:
    """Whether matching ``text`` (``_pattern``) stays cheap on any ``sub`` of up to 1024 characters:
    several ``**`` (``.+``), or two ``*`` (``[^/:]+``) in one segment, let a backtracking match of a
    crafted ``sub`` take seconds to minutes on the event loop, for anyone who can get a token with a
    valid signature (a GitHub Actions token: anyone; its ``sub`` holds their branch name)."""
    if text.count("**") > 1:
        return False
    return all(segment.count("*") <= 1 for segment in re.split(r"[/:]", text.replace("**", "")))


def _pattern(text: str) -> re.Pattern[str]:
    compiled = _pattern_cache.get(text)
    if compiled is None:
        parts = re.split(r"(\*\*|\*)", text)
        regex = "".join(".+" if p == "**" else "[^/:]+" if p == "*" else re.escape(p) for p in parts)
        if len(_pattern_cache) > 1000:
            _pattern_cache.clear()
        compiled = _pattern_cache[text] = re.compile(regex, re.DOTALL)
    return compiled


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted claim path, the longest matching member name at each level (docstring)."""
    node: Any = claims
    rest = path
    while rest:
        if not isinstance(node, Mapping):
            return None
        for name in sorted((n for n in node if type(n) is str and (rest == n or rest.startswith(n + "."))),
                           key=len, reverse=True):
            node, rest = node[name], rest[len(name) + 1:]
            break
        else:
            return None
    return node


def rule_matches(rule: MappingRule, claims: Mapping[str, Any]) -> bool:
    sub = claims.get("sub")
    if rule.sub is not None and sub != rule.sub:
        return False
    if rule.sub_pattern is not None and (type(sub) is not str or not _pattern(rule.sub_pattern).fullmatch(sub)):
        return False
    return all(claim_at(claims, path) == expected for path, expected in rule.claims.items())


def match_rules(issuer: TrustedIssuer, claims: Mapping[str, Any]) -> str | None:
    """The client a verified token maps to, None when no rule matches; ``AmbiguousMapping`` when
    rules naming different clients match."""
    found = {rule.client_id for rule in issuer.rules if rule_matches(rule, claims)}
    if len(found) > 1:
        raise AmbiguousMapping(tuple(sorted(found)))
    return next(iter(found), None)
