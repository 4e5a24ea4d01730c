"""What the broker publishes at /jwks.json (attack matrix: ``signing-key-revocation-and-jwks``).

Resource servers trust every key in this document, so it must hold public signature keys only:
no private members, no symmetric keys, every key with a unique ``kid``, ``use: sig`` and an
asymmetric ``alg`` that matches its key type — for every signing algorithm the broker supports,
and while a staged key is published next to the active one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.config import Settings
from app.oauth.constants import SIGNING_ALGS
from app.service import signing_keys
from tests.conftest import Broker, FrozenClock
from tests.helpers import ISS

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
KTY_FOR_ALG = {"ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"), "Ed25519": ("OKP", "Ed25519"),
               "PS256": ("RSA", None), "RS256": ("RSA", None)}


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _assert_public_signature_keys(keys: list[dict], expected_algs: list[str]) -> None:
    assert sorted(k["alg"] for k in keys) == sorted(expected_algs)
    assert len({k["kid"] for k in keys}) == len(keys), "kids must be unique"
    for key in keys:
        assert not PRIVATE_MEMBERS & set(key), f"private member published: {sorted(PRIVATE_MEMBERS & set(key))}"
        assert key["use"] == "sig"
        kty, crv = KTY_FOR_ALG[key["alg"]]
        assert key["kty"] == kty and key.get("crv") == crv
        assert isinstance(key["kid"], str) and key["kid"]


@pytest.mark.parametrize("alg", SIGNING_ALGS)
def test_published_keys_are_public_signature_keys(tmp_path: Path, alg: str) -> None:
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", signing_alg=alg)
    with Broker(settings, FrozenClock()) as broker:
        resp = broker.http.get("/jwks.json")
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/jwk-set+json"  # RFC 7517 §8.5
        _assert_public_signature_keys(resp.json()["keys"], [alg])

        # A staged key of another algorithm is published beside the active one, kids distinct.
        other = "RS256" if alg != "RS256" else "ES256"
        signing_keys.stage(settings.keys_dir, other)
        _wait_for(lambda: len(broker.http.get("/jwks.json").json()["keys"]) == 2)
        _assert_public_signature_keys(broker.http.get("/jwks.json").json()["keys"], [alg, other])
