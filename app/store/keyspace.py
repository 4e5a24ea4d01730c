"""Every Redis key name the broker uses, built in one place.

Registry keys share the hash tag ``{tb:registry}`` so that the multi-key transaction of a
registry change stays in one Redis Cluster slot. Replay keys are a SHA-256 of the JSON array
``[client_id, jti]``: a delimiter-free concatenation could collide (client ``ab`` + jti ``c`` vs
client ``a`` + jti ``bc``), and ``json.dumps`` escapes lone surrogates to pure ASCII.
"""

from __future__ import annotations

import functools
import hashlib
import json

from app.oauth.assertion import jti_hash

PREFIX = "tb"
REGISTRY_EPOCH = "{tb:registry}:epoch"
REGISTRY_INDEX = "{tb:registry}:index"


def client(client_id: str) -> str:
    return "{tb:registry}:client:" + hashlib.sha256(client_id.encode()).hexdigest()


def replay(client_id: str, jti: str) -> str:
    """The replay record of (client_id, jti). It shares the client's hash tag with the token-cache
    keys, so the token endpoint's one script call (replay + cache read + mint lock) stays in one
    Redis Cluster slot."""
    return f"{_token_tag(client_id)}:replay:{jti_hash(client_id, jti)}"


def _jwks_uri_id(client_id: str, jwks_uri: str) -> str:
    # Keyed by the URI too: re-registering a client with another jwks_uri never reads the old set.
    return hashlib.sha256(json.dumps([client_id, jwks_uri]).encode("ascii")).hexdigest()


def jwks_uri_cache(client_id: str, jwks_uri: str) -> str:
    """The validated key set fetched from a client's jwks_uri, shared by every replica."""
    return f"{PREFIX}:jwks_uri:{_jwks_uri_id(client_id, jwks_uri)}"


def jwks_uri_refetch(client_id: str, jwks_uri: str) -> str:
    """Cooldown marker: at most one unknown-kid refetch per client per interval, across replicas."""
    return f"{PREFIX}:jwks_uri_refetch:{_jwks_uri_id(client_id, jwks_uri)}"


# -- issued-token cache, revocation (RFC 7009) ----------------------------------------------------
# Every key of one client's cache shares the hash tag ``{tb:tok:<sha256(client_id)>}`` so that an
# entry and its revocation pointer are written in one MULTI inside one Redis Cluster slot.


@functools.lru_cache(maxsize=4096)  # three keys per token request share it: hash once per client
def _token_tag(client_id: str) -> str:
    return "{tb:tok:" + hashlib.sha256(json.dumps(client_id).encode("ascii")).hexdigest()[:32] + "}"


def token_cache_id(client_id: str, scopes: tuple[str, ...], audience: str, version: int, kid: str) -> str:
    """SHA-256 of the canonical JSON of everything that makes two tokens interchangeable.

    JSON, not a string join: client ``a:b`` + scope ``c`` never equals client ``a`` + scope ``b:c``
    (attack matrix: `cache-key-injection`). ``scopes`` must already be sorted and unique (``Grant.scopes`` is).
    """
    canonical = json.dumps([client_id, list(scopes), audience, version, kid], separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


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


#: Failure counters for rate limiting share one hash tag: a failure counts against the source
#: address and the client in one MULTI, which must stay in one Redis Cluster slot.
def failures(kind: str, subject: str) -> str:
    return "{tb:rl}:" + kind + ":" + hashlib.sha256(json.dumps(subject).encode("ascii")).hexdigest()
