"""Every refusal after the assertion is parsed costs one signature verification (attack matrix:
`client-existence-timing`), except a kid-less bad signature, which costs one per key of the client
that fits the alg (each is tried).

An unknown client, a disabled one, an unknown kid, a kid that is not the key's algorithm and a
``jwks_uri`` client whose keys cannot be fetched would otherwise be refused with no signature work,
measurably faster than a registered client's bad signature: the answer's timing would tell which
clients and kids exist. The broker verifies such an assertion against a decoy key of the header's
algorithm (made once at start) before refusing it. This suite asserts no timings: it counts the
verifications the broker's algorithms perform and checks which key each used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey

from app.config import Settings
from app.keystore import public_jwk
from app.oauth.constants import ALG_KEY_TYPES
from tests.conftest import Broker, FrozenClock, free_port
from tests.helpers import ISS, TestClient, decode_unverified, form
from token_broker_jose.jose import ALGORITHMS

INVALID_CLIENT = {"error": "invalid_client", "error_description": "Client authentication failed."}


class CountingAlgorithm:
    """The broker's algorithm for one ``alg`` (``token_broker_jose.jose.ALGORITHMS``), recording the
    public key of every ``verify`` call."""

    def __init__(self, inner: Any, calls: list[tuple[str, str]]) -> None:
        self._inner = inner
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def verify(self, msg: bytes, sig: bytes, key: Any) -> bool:
        self._calls.append((self._inner.name, key.thumbprint()))
        return self._inner.verify(msg, sig, key)


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Installed before the broker starts, so its decoys and its clients' keys both use it."""
    calls: list[tuple[str, str]] = []
    for alg in ALG_KEY_TYPES:
        monkeypatch.setitem(ALGORITHMS, alg, CountingAlgorithm(ALGORITHMS[alg], calls))
    return calls


@pytest.fixture
def counted(tmp_path: Path, clock: FrozenClock, verifications: list[tuple[str, str]]) -> Iterator[Broker]:
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, jwks_uri_allow_http_loopback=True,
                        jwks_uri_timeout=0.5)
    with Broker(settings, clock) as broker:
        yield broker


def _register_unreachable_uri_client(broker: Broker, client: TestClient) -> None:
    metadata = client.metadata()
    metadata.pop("jwks")
    uri = f"http://127.0.0.1:{free_port()}/jwks"  # nothing listens: every fetch fails
    broker.call(broker.app.state.admin_service.register, "tests", {**metadata, "jwks_uri": uri})
    broker.app.state.directory.invalidate()


@pytest.fixture
def clients(counted: Broker) -> dict[str, TestClient]:
    """c1 (one key), off (disabled), two (two keys), remote (jwks_uri nobody serves)."""
    out = {
        "c1": TestClient("c1"),
        "off": TestClient("off", enabled=False),
        "two": TestClient("two", extra_keys=[public_jwk(ECKey.generate_key("P-256"), alg="ES256", kid="two-2")]),
    }
    for client in out.values():
        counted.register(client)
    out["remote"] = TestClient("remote")
    _register_unreachable_uri_client(counted, out["remote"])
    return out


Make = Callable[[dict[str, TestClient], float], str]
DECOY, OWN = "decoy", "own"

# (id, assertion maker, whose key the one verification used, reason in the log)
ROWS: list[tuple[str, Make, str, str]] = [
    ("client_unknown", lambda c, now: TestClient("ghost").assertion(now), DECOY, "client_unknown"),
    ("client_disabled", lambda c, now: c["off"].assertion(now), DECOY, "client_disabled"),
    ("kid_unknown", lambda c, now: c["c1"].assertion(now, header={"alg": "ES256", "kid": "nope"}), DECOY,
     "kid_unknown"),
    ("no_kid_no_key_of_the_alg", lambda c, now: c["two"].assertion(now, header={"alg": "ES384"},
                                                                   key=ECKey.generate_key("P-384")), DECOY,
     "alg_not_allowed"),
    ("x5t_unknown", lambda c, now: c["two"].assertion(now, header={"alg": "ES256", "x5t#S256": "nope"}), DECOY,
     "x5t_unknown"),
    ("alg_not_the_keys", lambda c, now: c["c1"].assertion(now, header={"alg": "ES384", "kid": c["c1"].kid},
                                                          key=ECKey.generate_key("P-384")), DECOY, "alg_not_allowed"),
    ("jwks_uri_unavailable", lambda c, now: c["remote"].assertion(now), DECOY, "kid_unknown"),
    ("signature_invalid", lambda c, now: c["c1"].assertion(now, key=ECKey.generate_key("P-256")), OWN,
     "signature_invalid"),
    ("exp_expired", lambda c, now: c["c1"].assertion(now, exp=now - 30, iat=now - 90), OWN, "exp_expired"),
]


@pytest.mark.parametrize("make, used, reason", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_each_refusal_costs_one_signature_verification(counted: Broker, clients: dict[str, TestClient],
                                                       verifications: list[tuple[str, str]],
                                                       make: Make, used: str, reason: str) -> None:
    registered = {c.key.thumbprint() for c in clients.values()}
    assertion = make(clients, counted.clock.now)
    verifications.clear()
    resp = counted.token(form(assertion))
    assert (resp.status_code, resp.json()) == (401, INVALID_CLIENT)
    assert [e["reason"] for e in counted.logs() if e["event"] == "token.rejected"] == [reason]
    assert len(verifications) == 1, verifications
    alg, thumbprint = verifications[0]
    assert alg == decode_unverified(assertion)[0]["alg"]
    if used == OWN:
        assert thumbprint == clients["c1"].key.thumbprint()
    else:
        assert thumbprint not in registered


def test_the_decoys_are_made_once(counted: Broker, verifications: list[tuple[str, str]]) -> None:
    """The same decoy key answers every refusal of an algorithm: nothing is generated per request."""
    now = counted.clock.now
    for n in range(3):
        assert counted.token(form(TestClient(f"ghost-{n}").assertion(now))).status_code == 401
    assert len(verifications) == 3 and len(set(verifications)) == 1


def test_a_good_assertion_costs_one_verification(counted: Broker, clients: dict[str, TestClient],
                                                  verifications: list[tuple[str, str]]) -> None:
    verifications.clear()
    assert counted.get_token(clients["c1"]).status_code == 200
    assert verifications == [("ES256", clients["c1"].key.thumbprint())]


def test_a_kidless_bad_signature_costs_one_verification_per_key(counted: Broker, clients: dict[str, TestClient],
                                                                verifications: list[tuple[str, str]]) -> None:
    """Without a kid every key of the client that fits the alg is tried, in registration order: a
    bad signature against the two-key client costs two verifications (docs/security.md)."""
    two = clients["two"]
    assertion = two.assertion(counted.clock.now, header={"alg": "ES256"}, key=ECKey.generate_key("P-256"))
    verifications.clear()
    resp = counted.token(form(assertion))
    assert (resp.status_code, resp.json()) == (401, INVALID_CLIENT)
    assert [e["reason"] for e in counted.logs() if e["event"] == "token.rejected"] == ["signature_invalid"]
    second = ECKey.import_key(two.extra_keys[0]).thumbprint()
    assert verifications == [("ES256", two.key.thumbprint()), ("ES256", second)]
