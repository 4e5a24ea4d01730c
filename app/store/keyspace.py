"""Every Redis key name the broker uses, built in one place.

Private to the Redis implementations in ``app/store``: services pass subjects (client_id, jti,
grant fields) to the store interfaces (``app.store.base``) and never see these names.

A key touched together with others by one transaction or script shares their hash tag, so that
the command stays in one Redis Cluster slot: ``{tb:registry}`` for a registry change,
``{tb:tok:...}`` per client for the token endpoint and the token cache, ``{tb:rl}`` for the
failure counters. Replay keys carry ``jti_hash`` (SHA-256 of the JSON array ``[client_id, jti]``):
a delimiter-free concatenation could collide (client ``ab`` + jti ``c`` vs client ``a`` + jti
``bc``), and ``json.dumps`` escapes lone surrogates to pure ASCII.
"""

from __future__ import annotations

import functools
import hashlib
import json
from json.encoder import encode_basestring_ascii as _json_string

from app.oauth.assertion import jti_hash, pair_hash

PREFIX = "tb"
REGISTRY_EPOCH = "{tb:registry}:epoch"
REGISTRY_INDEX = "{tb:registry}:index"
#: The registry's marker: its id, created with the registry. Missing means the registry is lost
#: (Redis restarted empty, FLUSHALL, failover to an empty replica).
REGISTRY_MARKER = "{tb:registry}:id"
#: Registered public keys: RFC 7638 thumbprint -> JSON object {client_id: "1" shared / "0" not}.
REGISTRY_KEY_HOLDERS = "{tb:registry}:key_holders"
#: The other direction: client_id -> JSON array of the thumbprints its record holds.
REGISTRY_CLIENT_KEYS = "{tb:registry}:client_keys"
#: Trusted issuers of workload identity federation: issuer -> JSON record (``app.oauth.trust``).
#: In the registry's hash tag: a write checks the marker and bumps the epoch in one script.
REGISTRY_ISSUERS = "{tb:registry}:issuers"


def client(client_id: str) -> str:
    return "{tb:registry}:client:" + hashlib.sha256(client_id.encode()).hexdigest()


def replay(client_id: str, jti: str) -> str:
    """The replay record of (client_id, jti). It shares the client's hash tag with the token-cache
    keys, so the token endpoint's one script call (replay + cache read + mint lock) stays in one
    Redis Cluster slot."""
    return f"{_token_tag(client_id)}:replay:{jti_hash(client_id, jti)}"


def _jwks_uri_id(client_id: str, jwks_uri: str) -> str:
    # Keyed by the URI too: re-registering a client with another jwks_uri never reads the old set.
    return pair_hash(client_id, jwks_uri)


def jwks_uri_cache(client_id: str, jwks_uri: str) -> str:
    """The validated key set fetched from a client's jwks_uri, shared by every replica."""
    return f"{PREFIX}:jwks_uri:{_jwks_uri_id(client_id, jwks_uri)}"


def jwks_uri_refetch(client_id: str, jwks_uri: str) -> str:
    """Cooldown marker: at most one unknown-kid refetch per client per interval, across replicas."""
    return f"{PREFIX}:jwks_uri_refetch:{_jwks_uri_id(client_id, jwks_uri)}"


# -- issued-token cache, revocation (RFC 7009), request quota -------------------------------------
# Every key of one client's cache shares the hash tag ``{tb:tok:<sha256(client_id)>}``: the Lua
# scripts that read or write an entry, its lock, its revocation pointer and the quota counter, and
# the MULTI of a revocation, each touch one Redis Cluster slot.


@functools.lru_cache(maxsize=4096)  # every key of a token request shares it: hash once per client
def _token_tag(client_id: str) -> str:
    return "{tb:tok:" + hashlib.sha256(json.dumps(client_id).encode("ascii")).hexdigest()[:32] + "}"


# A hit's grant repeats: its id is worked out once (typed: a version of True is not 1).
@functools.lru_cache(maxsize=4096, typed=True)
def token_cache_id(client_id: str, scopes: tuple[str, ...], audience: str, registration_id: str, version: int,
                   kid: str, federation: tuple[str, str] | None = None, jkt: str | None = None) -> str:
    """SHA-256 of the canonical JSON of everything that makes two tokens interchangeable.

    JSON, not a string join: client ``a:b`` + scope ``c`` never equals client ``a`` + scope ``b:c``
    (no entry can be planted under another grant's id). ``scopes`` must already be sorted and
    unique (``Grant.scopes`` is). The registration id keeps a client_id registered again after a
    delete (whose version starts over) away from the deleted registration's tokens. ``federation``
    (a federated workload's issuer and sub, a JSON array) and a DPoP-bound token's ``jkt`` (a JSON
    string) are appended only when set: every other id is what it was before them, a token bound to
    one key is never served to another key or to a bearer request, and two workloads mapped to one
    client never share a token.
    """
    fields: list[object] = [client_id, list(scopes), audience, registration_id, version, kid]
    if federation is not None:
        fields.append(list(federation))
    if jkt is not None:
        fields.append(jkt)
    return hashlib.sha256(_canonical(fields).encode("ascii")).hexdigest()


def _canonical(fields: list[object]) -> str:
    """``json.dumps(fields, separators=(",", ":"))``, byte for byte, for fields that are str, int
    or lists of str, without the JSON encoder's per-call set-up: each string through the C escaping
    function ``json.dumps`` uses (ASCII only). Anything else goes to ``json.dumps`` itself.
    ``tests/test_properties.py`` checks the equality."""
    parts = []
    for field in fields:
        kind = type(field)
        if kind is str:
            parts.append(_json_string(field))
        elif kind is int:
            parts.append(int.__repr__(field))
        elif kind is list and all(type(item) is str for item in field):
            parts.append("[" + ",".join(map(_json_string, field)) + "]")
        else:
            return json.dumps(fields, separators=(",", ":"))
    return "[" + ",".join(parts) + "]"


def token_entry(client_id: str, cache_id: str) -> str:
    return f"{_token_tag(client_id)}:entry:{cache_id}"


def token_lock(client_id: str, cache_id: str) -> str:
    """Stampede lock: the one replica allowed to mint for this entry right now."""
    return f"{_token_tag(client_id)}:lock:{cache_id}"


def token_pointer(client_id: str, token_jti: str) -> str:
    """Which entry holds the token with this jti, so revocation can purge it."""
    return f"{_token_tag(client_id)}:jti:{jti_hash(client_id, token_jti)}"


def token_revoked(client_id: str, token_jti: str) -> str:
    return f"{_token_tag(client_id)}:revoked:{jti_hash(client_id, token_jti)}"


def token_quota(client_id: str) -> str:
    """The client's request counter for the current quota window (``BROKER_CLIENT_QUOTA``). It
    shares the client's hash tag: the token endpoint's one script call counts it with the replay
    record, in one Redis Cluster slot."""
    return f"{_token_tag(client_id)}:quota"


def dpop_proof(client_id: str, jkt: str, jti: str) -> str:
    """The record of a DPoP proof's jti (RFC 9449 §11.1), unique per proof key (``jkt``). It has the
    client's hash tag: the token endpoint's one script call records it with the assertion's jti."""
    return f"{_token_tag(client_id)}:dpop:" + pair_hash(jkt, jti)


#: The secret every replica derives the DPoP server nonces from (``app.oauth.dpop_nonce``); set once.
DPOP_NONCE_SECRET = f"{PREFIX}:dpop_nonce_secret"


def failures(kind: str, subject: str) -> str:
    """A rate-limit failure counter. One hash tag for all: a failure counts against the source
    address and the client in one Lua script call, which must stay in one Redis Cluster slot."""
    return "{tb:rl}:" + kind + ":" + hashlib.sha256(json.dumps(subject).encode("ascii")).hexdigest()


def failure_seen(kind: str, subject: str, once: str) -> str:
    """Marks that the failure ``once`` (e.g. a signed assertion's hash) was counted toward the
    subject in this window; same hash tag as the counters, set by the same script call."""
    return "{tb:rl}:seen:" + hashlib.sha256(json.dumps([kind, subject, once]).encode("ascii")).hexdigest()
