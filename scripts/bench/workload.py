"""Data generation: benchmark clients and their pre-generated, single-use request bodies.

Assertions are signed with raw ``cryptography`` (fast to pre-generate in bulk) before each timed
window, so the load generator only sends bytes.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from app.oauth.constants import CLIENT_ASSERTION_TYPE

RS = "https://api.bench.test"
MISS_SCOPES = [f"m{i:02d}" for i in range(64)]  # C(64,1..3) = 43,744 distinct scope sets per client, then C(64,4)
N_MISS_CLIENTS = 24
N_HIT_CLIENTS = 4


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class BenchClient:
    """An ES256 client whose assertions are signed with raw ``cryptography`` (fast to pre-generate)."""

    def __init__(self, client_id: str, scopes: list[str], default_scope: str) -> None:
        from joserfc.jwk import ECKey

        self.client_id = client_id
        self.scopes = scopes
        self.default_scope = default_scope
        self.jwk = ECKey.generate_key("P-256")
        self.kid = self.jwk.thumbprint()
        self.private = self.jwk.private_key
        self.header = b64url(json.dumps({"alg": "ES256", "typ": "client-authentication+jwt", "kid": self.kid},
                                        separators=(",", ":")).encode())

    def metadata(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "jwks": {"keys": [{**self.jwk.as_dict(private=False), "kid": self.kid, "alg": "ES256", "use": "sig"}]},
            "scopes": self.scopes,
            "default_scopes": [self.default_scope],
            "audiences": [RS],
            "default_audience": RS,
        }

    def assertion(self, issuer: str, now: int, lifetime: int = 240, key: Any = None) -> str:
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": issuer, "jti": secrets.token_urlsafe(16),
                  "iat": now, "exp": now + lifetime}
        signing_input = self.header + "." + b64url(json.dumps(claims, separators=(",", ":")).encode())
        r, s = decode_dss_signature((key or self.private).sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def form(assertion: str, scope: str | None) -> str:
    body = "grant_type=client_credentials&client_assertion_type=" + quote(CLIENT_ASSERTION_TYPE, safe="") + "&client_assertion=" + assertion
    if scope:
        body += "&scope=" + quote(scope, safe="")
    return body


def miss_scope_sets() -> Iterator[str]:
    """Distinct scope sets (1-3 of 64 tokens, then 4 of them for long runs: --compare-rev's
    rounds), so each miss request has its own cache key."""
    n = len(MISS_SCOPES)
    for i in range(n):
        for j in range(i + 1, n):
            for k in range(j + 1, n):
                yield f"{MISS_SCOPES[i]} {MISS_SCOPES[j]} {MISS_SCOPES[k]}"
    for i in range(n):
        for j in range(i + 1, n):
            yield f"{MISS_SCOPES[i]} {MISS_SCOPES[j]}"
    for i in range(n):
        yield MISS_SCOPES[i]
    for four in itertools.combinations(MISS_SCOPES, 4):
        yield " ".join(four)


class Workload:
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.miss_clients = [BenchClient(f"bench-miss-{i}", MISS_SCOPES, MISS_SCOPES[0]) for i in range(N_MISS_CLIENTS)]
        self.hit_clients = [BenchClient(f"bench-hit-{i}", ["read", "write"], "read") for i in range(N_HIT_CLIENTS)]
        self.wrong_key = ec.generate_private_key(ec.SECP256R1())
        # One global stream of (client, scope set): no cache key repeats within a run.
        self._miss = ((c, s) for s in miss_scope_sets() for c in self.miss_clients)

    @property
    def clients(self) -> list[BenchClient]:
        return self.miss_clients + self.hit_clients

    def for_issuer(self, issuer: str) -> Workload:
        """The same clients (and the same miss stream) for another broker's issuer (assertion aud)."""
        other = Workload.__new__(Workload)
        other.__dict__.update(self.__dict__, issuer=issuer)
        return other

    def miss_bodies(self, n: int) -> list[str]:
        now = int(time.time())
        out = []
        for _ in range(n):
            try:
                client, scope = next(self._miss)
            except StopIteration:
                raise RuntimeError("ran out of distinct miss scope sets; raise N_MISS_CLIENTS") from None
            out.append(form(client.assertion(self.issuer, now), scope))
        return out

    def hit_bodies(self, n: int) -> list[str]:
        now = int(time.time())
        return [form(self.hit_clients[i % N_HIT_CLIENTS].assertion(self.issuer, now), "read") for i in range(n)]

    def dpop_bodies(self, n: int) -> list[str]:
        """The dpop scenario: miss bodies, each line "<body>\t<its own DPoP proof>" (a tab never
        occurs in a urlencoded body; post_bodies.lua sends the proof as the DPoP header)."""
        return [body + "\t" + proof for body, proof in zip(self.miss_bodies(n), self.dpop_proofs(n), strict=True)]

    def dpop_proofs(self, n: int) -> list[str]:
        """``n`` fresh ES256 proofs for ``POST <issuer>/token``, one proof key for the whole run, as
        a client keeps one key."""
        from joserfc.jwk import ECKey

        key = ECKey.generate_key("P-256")
        jwk = {k: v for k, v in key.as_dict(private=False).items() if k in ("crv", "kty", "x", "y")}
        header = b64url(json.dumps({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}, separators=(",", ":")).encode())
        now = int(time.time())
        return [dpop_proof(key.private_key, header, self.issuer + "/token", now) for _ in range(n)]

    def bad_signature_bodies(self, n: int) -> list[str]:
        now = int(time.time())
        return [form(self.hit_clients[i % N_HIT_CLIENTS].assertion(self.issuer, now, key=self.wrong_key), "read")
                for i in range(n)]


def dpop_proof(private: Any, header: str, htu: str, now: int) -> str:
    """A DPoP proof (RFC 9449 §4.2) for ``POST htu``, signed with raw ``cryptography`` like the assertions."""
    claims = {"jti": secrets.token_urlsafe(16), "htm": "POST", "htu": htu, "iat": now}
    signing_input = header + "." + b64url(json.dumps(claims, separators=(",", ":")).encode())
    r, s = decode_dss_signature(private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def write_bodies(prefix: Path, bodies: list[str], threads: int) -> None:
    """One file per wrk thread, ``<prefix>.<thread>.txt``, one body per line (post_bodies.lua)."""
    for t in range(threads):
        prefix.with_name(f"{prefix.name}.{t}.txt").write_text("\n".join(bodies[t::threads]) + "\n")


def remove_bodies(prefix: Path, threads: int) -> None:
    for t in range(threads):
        prefix.with_name(f"{prefix.name}.{t}.txt").unlink(missing_ok=True)
