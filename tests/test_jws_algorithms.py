"""The broker's ECDSA algorithms (``token_broker_jose.jose.EcdsaAlgorithm``) answer as joserfc's.

``ALGORITHMS`` replaces joserfc's ES256 / ES384 / ES512 with a version that makes its ``ECDSA``
object once and converts R || S without hex strings. Every signature either one makes, the other
verifies; every signature one refuses, the other refuses; a key either refuses, the other refuses
with the same error. joserfc's own registry is left untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from joserfc.errors import InvalidKeyCurveError, UnsupportedKeyOperationError
from joserfc.jwa import ESAlgorithm
from joserfc.jwk import ECKey
from joserfc.jws import JWSRegistry

from token_broker_jose.jose import ALGORITHMS, EcdsaAlgorithm

CURVES = {"ES256": ("P-256", 32), "ES384": ("P-384", 48), "ES512": ("P-521", 66)}
MESSAGE = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjMSJ9"


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "returns", call()
    except Exception as exc:  # the comparison is of which error, not whether one is raised
        return "raises", type(exc)


def public(key: ECKey, **members: Any) -> ECKey:
    return ECKey.import_key({**key.as_dict(private=False), **members})


@pytest.fixture(params=sorted(CURVES), ids=sorted(CURVES))
def alg(request: pytest.FixtureRequest) -> str:
    return request.param


def test_registry_replaces_exactly_the_ecdsa_algorithms() -> None:
    replaced = {name for name, algorithm in ALGORITHMS.items() if algorithm is not JWSRegistry.algorithms[name]}
    assert replaced == {name for name, algorithm in JWSRegistry.algorithms.items() if type(algorithm) is ESAlgorithm}
    assert {"ES256", "ES384", "ES512"} <= replaced
    assert all(type(ALGORITHMS[name]) is EcdsaAlgorithm for name in replaced)
    assert all(type(JWSRegistry.algorithms[name]) is ESAlgorithm for name in replaced)  # joserfc's own, untouched
    for name in replaced:
        ours, theirs = ALGORITHMS[name], JWSRegistry.algorithms[name]
        assert (ours.name, ours.curve, ours.algorithm_security, ours.recommended) == (
            theirs.name, theirs.curve, theirs.algorithm_security, theirs.recommended)


def test_signatures_cross_verify(alg: str) -> None:
    curve, size = CURVES[alg]
    key = ECKey.generate_key(curve)
    ours, theirs = ALGORITHMS[alg], JWSRegistry.algorithms[alg]
    for _ in range(20):  # R or S with leading zero octets come up now and then: each must keep its width
        mine, joserfcs = ours.sign(MESSAGE, key), theirs.sign(MESSAGE, key)
        assert len(mine) == len(joserfcs) == 2 * size
        assert theirs.verify(MESSAGE, mine, public(key)) is True
        assert ours.verify(MESSAGE, joserfcs, public(key)) is True
        assert ours.verify(MESSAGE, mine, key) is True  # a private key verifies with its public half


def _flip(sig: bytes, at: int) -> bytes:
    return sig[:at] + bytes([sig[at] ^ 0x01]) + sig[at + 1:]


#: Signatures either implementation must refuse, made from a good one (``sig``) of ``size``-octet R and S.
REFUSED: dict[str, Callable[[bytes, int], bytes]] = {
    "r-bit-flipped": lambda sig, size: _flip(sig, 0),
    "s-bit-flipped": lambda sig, size: _flip(sig, 2 * size - 1),
    "r-and-s-swapped": lambda sig, size: sig[size:] + sig[:size],
    "one-octet-short": lambda sig, size: sig[:-1],
    "one-octet-long": lambda sig, size: sig + b"\x00",
    "leading-zero-prepended": lambda sig, size: b"\x00" + sig[:-1],
    # The same S as a longer integer: a fixed-width split would still read the right value, so only
    # the length check refuses it (RFC 7518 §3.4: R and S are exactly the curve's octet length).
    "s-zero-padded": lambda sig, size: sig[:size] + b"\x00" + sig[size:],
    "empty": lambda sig, size: b"",
    "r-zero": lambda sig, size: bytes(size) + sig[size:],
    "s-zero": lambda sig, size: sig[:size] + bytes(size),
    "all-ones": lambda sig, size: b"\xff" * (2 * size),
    "der-encoded": lambda sig, size: b"0" + bytes([2 * size + 4]) + b"\x02" + bytes([size]) + sig[:size]
    + b"\x02" + bytes([size]) + sig[size:],
}


@pytest.mark.parametrize("mangle", REFUSED.values(), ids=REFUSED.keys())
def test_bad_signatures_refused_by_both(alg: str, mangle: Callable[[bytes, int], bytes]) -> None:
    curve, size = CURVES[alg]
    key = ECKey.generate_key(curve)
    bad = mangle(ALGORITHMS[alg].sign(MESSAGE, key), size)
    assert ALGORITHMS[alg].verify(MESSAGE, bad, public(key)) is False
    assert JWSRegistry.algorithms[alg].verify(MESSAGE, bad, public(key)) is False


def test_other_message_or_key_refused(alg: str) -> None:
    curve, _ = CURVES[alg]
    key, other = ECKey.generate_key(curve), ECKey.generate_key(curve)
    sig = ALGORITHMS[alg].sign(MESSAGE, key)
    assert ALGORITHMS[alg].verify(MESSAGE + b"x", sig, public(key)) is False
    assert ALGORITHMS[alg].verify(MESSAGE, sig, public(other)) is False


#: Keys joserfc refuses for an operation; ours must refuse them the same way.
KEY_CASES: dict[str, tuple[Callable[[ECKey], ECKey], str, type[Exception]]] = {
    "verify-with-key_ops-sign-only": (lambda key: public(key, key_ops=["sign"]), "verify", UnsupportedKeyOperationError),
    "sign-with-public-key": (public, "sign", UnsupportedKeyOperationError),
    "sign-with-key_ops-verify-only": (lambda key: ECKey.import_key({**key.as_dict(private=True), "key_ops": ["verify"]}),
                                      "sign", UnsupportedKeyOperationError),
}


@pytest.mark.parametrize("case", KEY_CASES.values(), ids=KEY_CASES.keys())
def test_key_refusals_match(alg: str, case: tuple[Callable[[ECKey], ECKey], str, type[Exception]]) -> None:
    make, operation, error = case
    curve, _ = CURVES[alg]
    signer = ECKey.generate_key(curve)
    key = make(signer)
    sig = JWSRegistry.algorithms[alg].sign(MESSAGE, signer)
    results = []
    for algorithm in (ALGORITHMS[alg], JWSRegistry.algorithms[alg]):
        call = (lambda a=algorithm: a.verify(MESSAGE, sig, key)) if operation == "verify" else (
            lambda a=algorithm: a.sign(MESSAGE, key))
        results.append(outcome(call))
    assert results == [("raises", error)] * 2


def test_key_of_another_curve_refused(alg: str) -> None:
    other_curve = next(curve for name, (curve, _) in CURVES.items() if name != alg)
    key = ECKey.generate_key(other_curve)
    assert outcome(lambda: ALGORITHMS[alg].check_key(key)) == outcome(
        lambda: JWSRegistry.algorithms[alg].check_key(key)) == ("raises", InvalidKeyCurveError)
