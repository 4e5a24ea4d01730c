"""DPoP (RFC 9449) for the client: the proof key, the proofs, and the servers' nonces.

``DPoPKey`` is the key a client proves possession of: generated in memory (ES256) by default, or
loaded like the client's own key (a JWK or PEM file, a key object). It never leaves the process:
only proofs signed with it do, and its ``repr`` shows the algorithm and the RFC 7638 thumbprint
(the token's ``cnf.jkt``), never key material.

``DPoPSession`` signs one proof per HTTP request (``token_broker_jose.dpop.create_proof``, dated by
the client's clock) and keeps the latest ``DPoP-Nonce`` each server sent, per origin
(scheme://host:port, RFC 9449 §8 and §9: a nonce is valid for the server that issued it), for the
next proof to that origin. It does no I/O: the token flow (``flow.py``) and the resource-request
flow (``auth.py``) hand it the responses they received.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import httpx

from token_broker_jose.credentials import ClientKey
from token_broker_jose.dpop import (
    DPOP_ALGS,
    HEADER,
    NONCE_HEADER,
    TOKEN_TYPE,
    check_proof_key,
    create_proof,
    jwk_thumbprint,
)
from token_broker_jose.jose import generate_private_key

#: The algorithm of a generated key: the one every DPoP server supports in practice (RFC 9449 §4.2).
DEFAULT_ALG = "ES256"
#: Origins whose nonce is kept; a client talks to a handful, so this bounds memory, not behaviour.
_NONCES_MAX = 256
#: A nonce the client will echo: RFC 9449 §8.1 NQCHAR (printable ASCII but ``"`` and ``\``), bounded.
_NONCE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,512}")
#: RFC 9449 §9: the resource server's ``use_dpop_nonce`` challenge.
_USE_NONCE_CHALLENGE = re.compile(r'(?:^|,)\s*dpop\s[^\r\n]*?error\s*=\s*"?use_dpop_nonce"?', re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}


class DPoPKey:
    """The private key DPoP proofs are signed with; ``jkt`` is its RFC 7638 thumbprint."""

    def __init__(self, key: Any = None, *, alg: str | None = None) -> None:
        if key is None:
            key = generate_private_key(alg or DEFAULT_ALG)
            alg = alg or DEFAULT_ALG
        loaded = key if isinstance(key, ClientKey) else ClientKey(key, alg=alg)
        if loaded.alg not in DPOP_ALGS:
            raise ValueError(f"DPoP proofs are signed with one of {', '.join(DPOP_ALGS)}; found alg {loaded.alg[:20]!r}")
        try:
            check_proof_key(loaded.key)
        except ValueError:
            raise ValueError("an RSA DPoP key must be 2048-4096 bits with exponent 65537: "
                             "servers refuse proofs signed with other RSA keys") from None
        self.key = loaded.key
        self.alg = loaded.alg
        self.jkt = jwk_thumbprint(self.key.as_dict(private=False))

    def __repr__(self) -> str:  # never show key material
        return f"DPoPKey(alg={self.alg!r}, jkt={self.jkt!r})"


def origin(url: str | httpx.URL) -> str:
    """scheme://host:port, the default port written out: one spelling per server."""
    parsed = httpx.URL(str(url))
    return f"{parsed.scheme}://{parsed.host}:{parsed.port or _DEFAULT_PORTS.get(parsed.scheme, 0)}"


class DPoPSession:
    """One client's DPoP key, its clock, and the latest nonce per origin."""

    token_type = TOKEN_TYPE

    def __init__(self, key: DPoPKey, clock: Callable[[], float]) -> None:
        self.key = key
        self.clock = clock
        self._nonces: dict[str, str] = {}
        self._guard = threading.Lock()  # threads share one client: the bound check and the eviction stay atomic

    def __repr__(self) -> str:
        return f"DPoPSession(key={self.key!r})"

    def nonce(self, url: str | httpx.URL) -> str | None:
        return self._nonces.get(origin(url))

    def proof(self, method: str, url: str | httpx.URL, access_token: str | None = None) -> str:
        """A fresh proof for ``method url`` (with ``ath`` when ``access_token`` is given)."""
        return create_proof(self.key.key, alg=self.key.alg, htm=method, htu=str(url), access_token=access_token,
                            nonce=self.nonce(url), now=self.clock())

    def headers(self, method: str, url: str | httpx.URL) -> dict[str, str]:
        """The headers of a token request: its proof."""
        return {HEADER: self.proof(method, url)}

    def observe(self, url: str | httpx.URL, response: httpx.Response) -> bool:
        """Keep the response's ``DPoP-Nonce`` for ``url``'s origin; True when it is a new value."""
        value = response.headers.get(NONCE_HEADER)
        if value is None or not _NONCE.fullmatch(value):
            return False
        key = origin(url)
        with self._guard:
            if self._nonces.get(key) == value:
                return False
            if key not in self._nonces and len(self._nonces) >= _NONCES_MAX:
                self._nonces.pop(next(iter(self._nonces)))  # the oldest origin: it gets a use_dpop_nonce again
            self._nonces[key] = value
        return True

    def retry_token_request(self, url: str | httpx.URL, response: httpx.Response) -> bool:
        """RFC 9449 §8: the token endpoint answered 400 ``use_dpop_nonce`` with a new nonce."""
        new = self.observe(url, response)
        return new and response.status_code == 400 and _error(response) == "use_dpop_nonce"

    def retry_resource_request(self, url: str | httpx.URL, response: httpx.Response) -> bool:
        """RFC 9449 §9: the resource server answered 401 ``WWW-Authenticate: DPoP error="use_dpop_nonce"``
        with a new nonce."""
        new = self.observe(url, response)
        return new and response.status_code == 401 and any(
            _USE_NONCE_CHALLENGE.search(value) for value in response.headers.get_list("www-authenticate"))


def _error(response: httpx.Response) -> str | None:
    """The RFC 6749 §5.2 ``error`` of a small JSON error body (the body is read by then)."""
    if len(response.content) > 65536:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None
