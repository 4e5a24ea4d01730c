"""Access-token verification for resource servers: RFC 9068 §4 and RFC 6750 §3.1.

The JWT checks are ``token_broker_jose.access_token.verify_access_token``, the same function the broker
uses; this module adds where the keys come from (``keys.py``), the required-scope check (403
``insufficient_scope``), and optionally a revocation check through the broker's introspection
endpoint (RFC 7662). Authorisation is on ``client_id`` and ``scope``: a client-credentials token
names a client, never a user (RFC 9068 §5), so no "user" is derived from ``sub``.

A token with a ``cnf`` claim is sender-constrained (RFC 9449 §6.1, RFC 8705 §3.1): ``verify`` (the
Bearer scheme) refuses it, whether or not DPoP is on. ``verify_dpop`` is RFC 9449 §7.1, for a
verifier given a ``DPoPPolicy`` (``dpop.py``): the proof (stateless checks), the token, the proof's
key against ``cnf.jkt``, then the proof's ``jti`` recorded (replay), then scope and introspection.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from token_broker_jose.access_token import InvalidToken, verify_access_token
from token_broker_jose.constants import SIGNING_ALGS
from token_broker_jose.dpop import InvalidDPoPProof, UseDPoPNonce, normalize_htu, verify_proof
from token_broker_resource.bearer import BEARER, DPOP, BearerError, insufficient_scope, invalid_dpop_proof, invalid_token
from token_broker_resource.dpop import DPoPPolicy, replay_key
from token_broker_resource.keys import BrokerKeys, VerifierUnavailable


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A verified token: who the client is and what it may do."""

    client_id: str
    scopes: frozenset[str]
    jti: str
    expires_at: int
    claims: dict[str, Any]


#: Descriptions of proof refusals that would otherwise name the request's own URL or method
#: (built from its Host header): an answer echoes nothing from the request.
_FIXED_DESCRIPTIONS = {
    "dpop_htu_mismatch": "the DPoP proof's htu does not match the URL of this request",
    "dpop_htm_mismatch": "the DPoP proof's htm does not match the method of this request",
}


class ResourceVerifier:
    """Verify tokens issued by ``issuer`` for this resource server (``audience``): Bearer tokens, and
    DPoP-bound tokens with their proofs when ``dpop`` (a ``DPoPPolicy``) is given."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        leeway: int = 10,
        algorithms: Iterable[str] = SIGNING_ALGS,
        jwks_max_age: float = 300.0,
        unknown_kid_cooldown: float = 30.0,
        timeout: float = 3.0,
        introspection: Any = None,
        dpop: DPoPPolicy | None = None,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self._clock = clock
        self.keys = BrokerKeys(issuer, algorithms=algorithms, http=http, clock=clock, max_age=jwks_max_age,
                               cooldown=unknown_kid_cooldown, timeout=timeout)
        self.introspection = introspection
        self.dpop = dpop

    @property
    def schemes(self) -> tuple[str, ...]:
        """The authorization schemes accepted, in challenge order."""
        if self.dpop is None:
            return (BEARER,)
        return (DPOP,) if self.dpop.required else (BEARER, DPOP)

    def challenge_options(self) -> dict[str, Any]:
        """``BearerError.headers`` keywords: which schemes to challenge."""
        return {"bearer": BEARER in self.schemes, "dpop_algs": self.dpop.algs if self.dpop is not None else ()}

    async def verify(self, token: str, scopes: Iterable[str] = ()) -> AccessToken:
        """Return the verified Bearer token, or raise ``BearerError`` (401/403) or ``VerifierUnavailable``."""
        claims = await self._claims(token, BEARER)
        if "cnf" in claims:
            raise invalid_token("token_sender_constrained")  # its holder must prove the key: not a bearer token
        return await self._grant(token, claims, scopes, BEARER)

    async def verify_dpop(self, token: str, proofs: Sequence[str], *, method: str, url: str,
                          scopes: Iterable[str] = ()) -> AccessToken:
        """RFC 9449 §7.1: ``token`` sent as ``Authorization: DPoP`` with the request's ``DPoP`` header
        values ``proofs``, to ``method url`` (the URL as ``DPoPPolicy.request_url`` builds it)."""
        policy = self.dpop
        if policy is None:
            raise invalid_token("dpop_not_accepted", DPOP)
        if not token.isascii():  # extract_token's syntax check, for a direct caller (ath hashes ASCII)
            raise invalid_token("token_syntax", DPOP)
        if len(proofs) != 1:
            raise invalid_dpop_proof("dpop_proof_missing" if not proofs else "dpop_proof_repeated",
                                     "exactly one DPoP proof header is required")
        htu = normalize_htu(url)
        try:
            if htu is None:
                raise InvalidDPoPProof("dpop_htu_mismatch", "")
            proof = verify_proof(proofs[0], htm=method, htu=htu, now=self._clock(), algs=policy.algs,
                                 max_age=policy.max_age, leeway=policy.leeway, access_token=token,
                                 nonce_ok=None if policy.nonces is None else policy.nonces.valid)
        except UseDPoPNonce as exc:
            error = invalid_dpop_proof(exc.reason, "Resource server requires nonce in DPoP proof", exc.error)
            error.nonce = policy.nonces.current() if policy.nonces is not None else None
            raise error from None
        except InvalidDPoPProof as exc:
            raise invalid_dpop_proof(exc.reason, _FIXED_DESCRIPTIONS.get(exc.reason, exc.description)) from None
        claims = await self._claims(token, DPOP)
        cnf = claims.get("cnf")
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        if type(jkt) is not str:
            raise invalid_token("token_not_dpop_bound", DPOP)
        if not secrets.compare_digest(jkt.encode(), proof.jkt.encode()):
            raise invalid_dpop_proof("dpop_key_mismatch", "the DPoP proof is not signed by the key the token is bound to")
        if not await policy.replay.first_use(replay_key(proof.jkt, proof.jti), policy.window):
            raise invalid_dpop_proof("dpop_jti_replayed", "the DPoP proof has been used before")
        return await self._grant(token, claims, scopes, DPOP)

    async def _claims(self, token: str, scheme: str) -> dict[str, Any]:
        try:
            return self._check(token, await self.keys.current())
        except InvalidToken as exc:
            if exc.reason != "kid_unknown" or not await self.keys.refresh_for_unknown_kid():
                raise invalid_token(exc.reason, scheme) from None
            try:
                return self._check(token, await self.keys.current())
            except InvalidToken as again:
                raise invalid_token(again.reason, scheme) from None

    async def _grant(self, token: str, claims: dict[str, Any], scopes: Iterable[str], scheme: str) -> AccessToken:
        granted = frozenset(claims["scope"].split(" ")) - {""}
        needed = sorted(set(scopes))
        if not set(needed) <= granted:
            raise insufficient_scope(" ".join(needed), scheme)
        if self.introspection is not None and not await self.introspection.active(token):
            raise invalid_token("token_inactive", scheme)
        return AccessToken(claims["client_id"], granted, claims["jti"], int(claims["exp"]), claims)

    def _check(self, token: str, keys: Any) -> dict[str, Any]:
        return verify_access_token(token, keys, issuer=self.issuer, audience=self.audience, now=self._clock(), leeway=self.leeway)


__all__ = ["AccessToken", "BearerError", "DPoPPolicy", "ResourceVerifier", "VerifierUnavailable"]
