"""Client public keys whose signatures prove nothing, refused wherever a client key enters.

Pure (no I/O). ``check_public_key`` takes the parsed public key (a ``cryptography`` key object,
what joserfc keys hold as ``raw_value``) and raises ``WeakKey`` for:

- **Ed25519 small-order points.** A public key A of order 1, 2, 4 or 8 lets one constant
  signature (R = a small-order point, S = 0) satisfy [S]B = R + [k]A for every message, so anyone
  can sign as that client (RFC 8032 §5.1.7 verifiers that skip the check accept it; OpenSSL does).
  The y coordinate is compared against the known small-order encodings with the x sign bit
  ignored, as libsodium's ``has_small_order`` does, which covers the 8 points in their canonical
  and non-canonical encodings. Also refused: any other y ≥ p (non-canonical, RFC 8032 §5.1.3)
  and a y that is not on the curve.
- **RSA moduli that are even or have a prime factor below 10,000**, and public exponents other
  than 65537 (the one exponent every sound key generator uses; small exponents such as 3 are what
  known attacks on padding need).

EC keys: cryptography refuses a point that is not on its curve when the key is imported, and
P-256 and P-384 have cofactor 1, so every point on them has the full prime order.
"""

from __future__ import annotations

import math
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

#: edwards25519 field prime and curve constant d (RFC 8032 §5.1).
_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P
#: y coordinates of the small-order points, as in libsodium's blocklist: order 1 (y = 1),
#: order 2 (y = p - 1), order 4 (y = 0), order 8 (the two below), and the non-canonical
#: y = p and y = p + 1 (encodings of 0 and 1). Each stands for both signs of x.
_SMALL_ORDER_Y = frozenset({
    1,
    _P - 1,
    0,
    2707385501144840649318225287225658788936804267575313519463743609750303402022,
    55188659117513257062467267217118295137698188065244968500265048394206261417927,
    _P,
    _P + 1,
})
_TRIAL_DIVISION_BOUND = 10_000
RSA_EXPONENT = 65537


def _primes_below(bound: int) -> list[int]:
    sieve = bytearray([1]) * bound
    sieve[:2] = b"\x00\x00"
    for i in range(2, math.isqrt(bound) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytearray(len(range(i * i, bound, i)))
    return [i for i in range(bound) if sieve[i]]


_SMALL_PRIMES = _primes_below(_TRIAL_DIVISION_BOUND)
#: One gcd with the product of the small primes replaces 1,229 divisions.
_SMALL_PRIMES_PRODUCT = math.prod(_SMALL_PRIMES)


class WeakKey(ValueError):
    """``reason`` is a stable code; ``detail`` is safe to show the administrator who sent the key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def check_public_key(key: Any) -> None:
    """Raise ``WeakKey`` when ``key`` (a cryptography public key) verifies forgeable signatures."""
    if isinstance(key, Ed25519PublicKey):
        _check_ed25519(key.public_bytes_raw())
    elif isinstance(key, RSAPublicKey):
        numbers = key.public_numbers()
        _check_rsa(numbers.n, numbers.e)


def _check_ed25519(encoded: bytes) -> None:
    y = int.from_bytes(encoded, "little") & ((1 << 255) - 1)  # bit 255 is the sign of x
    if y in _SMALL_ORDER_Y:
        raise WeakKey("jwk_ed25519_small_order", "the Ed25519 key is a small-order point: it would accept a forged signature")
    if y >= _P:
        raise WeakKey("jwk_ed25519_non_canonical", "the Ed25519 key is not canonically encoded (y must be below 2^255 - 19)")
    # x^2 = u / v with u = y^2 - 1, v = d y^2 + 1 (never 0: d is not a square) must have a root;
    # u / v is a square exactly when u v is (Euler's criterion), which spares the inversion.
    uv = (y * y - 1) * (_D * y * y + 1) % _P
    if uv and pow(uv, (_P - 1) // 2, _P) != 1:
        raise WeakKey("jwk_ed25519_not_on_curve", "the Ed25519 key is not a point on the curve")


def _check_rsa(n: int, e: int) -> None:
    if n % 2 == 0:
        raise WeakKey("jwk_rsa_modulus", "the RSA modulus is even")
    if math.gcd(n, _SMALL_PRIMES_PRODUCT) != 1:
        raise WeakKey("jwk_rsa_modulus", "the RSA modulus has a small prime factor")
    if e != RSA_EXPONENT:
        raise WeakKey("jwk_rsa_exponent", "RSA public exponent must be 65537")
