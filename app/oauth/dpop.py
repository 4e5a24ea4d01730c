"""DPoP (RFC 9449) at the token endpoint: the broker's side of ``token_broker_jose.dpop``.

The proof checks themselves (§4.3 steps 2-11) are the shared implementation's ``verify_proof``;
this module fixes what they are checked against at ``/token`` (``ProofPolicy``: ``htm`` POST, the
token endpoint's external URL from the issuer, so it holds behind a proxy, the allowed algorithms
and the acceptance window) and turns its refusals into the OAuth errors the web layer renders
(``invalid_dpop_proof``, RFC 9449 §5). Recording the proof's ``jti`` (§4.3 step 11's uniqueness)
is the token store's, in the script call that records the assertion's jti; the server nonce
(§8) is ``app.oauth.dpop_nonce``.
"""

from __future__ import annotations

import msgspec

from app.config import Settings
from app.oauth.errors import InvalidDPoPProof
from token_broker_jose import dpop as proofs
from token_broker_jose.dpop import DPOP_ALGS, HEADER, NONCE_HEADER, TOKEN_TYPE, DPoPProof, jwk_thumbprint, normalize_htu

#: The token endpoint accepts only POST (RFC 6749 §3.2), so every proof there names it.
HTM = "POST"


class ProofPolicy(msgspec.Struct, frozen=True):
    """What a token-request proof is checked against, built once from the settings."""

    htu: str
    algs: frozenset[str]
    max_age: int
    leeway: int
    #: How long a proof's jti is kept: its whole acceptance window (``iat`` from ``max_age + leeway``
    #: ago to ``leeway`` ahead) plus the replicas' clock skew, as for assertion jtis.
    record_ttl_ms: int


def proof_policy(settings: Settings) -> ProofPolicy:
    htu = normalize_htu(settings.token_endpoint)
    assert htu is not None, "the issuer is an absolute http(s) URL (Settings.validate)"
    window = settings.dpop_proof_max_age + 2 * settings.leeway + settings.clock_skew
    return ProofPolicy(htu, frozenset(settings.dpop_algs), settings.dpop_proof_max_age, settings.leeway, window * 1000)


def verify_token_proof(headers: tuple[str, ...], policy: ProofPolicy, now: float) -> DPoPProof:
    """The one proof of a token request, checked (RFC 9449 §4.3 steps 1-10); ``InvalidDPoPProof``
    otherwise. Two headers are refused (§4.3 step 1: "not more than one DPoP HTTP request header"),
    also when a proxy folded them into one comma-separated value (RFC 9110 §5.3; a JWS has no comma)."""
    if len(headers) != 1 or "," in headers[0]:
        raise InvalidDPoPProof("dpop_multiple", description="Send exactly one DPoP header.")
    try:
        return proofs.verify_proof(headers[0], htm=HTM, htu=policy.htu, now=now, algs=policy.algs,
                                   max_age=policy.max_age, leeway=policy.leeway)
    except proofs.InvalidDPoPProof as exc:
        raise InvalidDPoPProof(exc.reason, description=exc.description) from None


def proof_required() -> InvalidDPoPProof:
    """RFC 9449 §5.2: a client registered with ``dpop_bound_access_tokens`` sent no proof. The RFC
    says only that such a request MUST be rejected; ``invalid_dpop_proof`` is the code a DPoP client
    already acts on (it attaches a proof), where ``invalid_request`` would say nothing."""
    return InvalidDPoPProof("dpop_required", description="This client must send a DPoP proof with every token request.")


def proof_replayed() -> InvalidDPoPProof:
    return InvalidDPoPProof("dpop_replayed", description="The DPoP proof was used before: send a new proof.")


__all__ = ["DPOP_ALGS", "HEADER", "HTM", "NONCE_HEADER", "TOKEN_TYPE", "DPoPProof", "ProofPolicy", "jwk_thumbprint",
           "normalize_htu", "proof_policy", "proof_replayed", "proof_required", "verify_token_proof"]
