"""Bounded input (attack matrix: `oversized-body`, `form-charset` and the JSON entries for headers
and claims): every hostile body or assertion gets its RFC 6749 error, and a bounded amount of CPU
time and memory.

Budgets are generous (shared, noisy 2-core machines): they catch an accidental quadratic parser
or a body read into memory whole, not a few milliseconds.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Broker
from tests.expect import assert_error, assert_invalid_client, assert_token
from tests.helpers import TestClient, b64u, form, padded_assertion, raw

CT = "application/x-www-form-urlencoded"
TOO_LARGE = {"error": "invalid_request", "error_description": "The request body is too large."}
WALL_BUDGET = 1.0  # seconds per request, in process
MEM_BUDGET = 8 * 2**20  # bytes allocated at peak by one request, beyond the body itself
HEADER_MAX, SIGNATURE_MAX, ASSERTION_MAX = 512, 1024, 8192  # base64url characters (app.oauth.assertion)


def timed(broker: Broker, body: str | bytes, content_type: str = CT) -> tuple[httpx.Response, float, int]:
    """One request with its wall time and tracemalloc peak (the body is built before measuring)."""
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        resp = broker.http.post("/token", content=body, headers={"content-type": content_type})
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return resp, elapsed, peak


def valid_form(c1: TestClient, now: float, **params: str) -> str:
    return str(httpx.QueryParams(form(c1.assertion(now), **params)))


# -- body size (attack matrix: `oversized-body`): 413 before parsing --------------------------------


@pytest.mark.parametrize("size", [pytest.param(65537, id="BODY_MAX+1"), pytest.param(10_000_000, id="10MB")])
def test_body_over_limit_is_413(broker: Broker, c1: TestClient, size: int) -> None:
    base = valid_form(c1, broker.clock.now)
    body = (base + "&pad=" + "a" * size)[:size].encode()
    resp, elapsed, peak = timed(broker, body)
    assert (resp.status_code, resp.json()) == (413, TOO_LARGE)
    assert resp.headers["cache-control"] == "no-store"
    assert elapsed < WALL_BUDGET * 3
    assert peak < size + MEM_BUDGET  # the test client holds the body once; the broker adds little
    assert not [e for e in broker.logs() if e["event"].endswith("unexpected_error")]


def test_body_at_limit_is_parsed(broker: Broker, c1: TestClient) -> None:
    base = valid_form(c1, broker.clock.now)
    body = base + "&pad=" + "a" * (65536 - len(base) - 5)
    assert len(body) == 65536
    assert_token(broker.token(body))


def _pathological(c1: TestClient, now: float) -> dict[str, tuple[str, int, str, str | None]]:
    """Bodies within BODY_MAX that stress the parser: (body, status, error, reason of a specific answer)."""
    base = valid_form(c1, now)
    return {
        "60k-ampersands": ("&" * 60_000 + base, 200, "", None),
        "8k-distinct-params": ("&".join(f"p{i}=v" for i in range(8_000)) + "&" + base, 200, "", None),
        "60k-dots-assertion": (valid_form(c1, now, client_assertion="." * 60_000), 401, "invalid_client",
                               "assertion_too_large"),
        # Validly signed: only the 8 KiB assertion cap refuses it.
        "assertion-over-8KiB": (valid_form(c1, now, client_assertion=_over_assertion_max(c1, now)), 401, "invalid_client",
                                "assertion_too_large"),
        "60k-percent-escapes": (base + "&x=" + "%41" * 20_000, 200, "", None),
        "repeated-param-at-end": ("&".join(f"p{i}=v" for i in range(5_000)) + "&" + base + "&scope=read&scope=read",
                                  400, "invalid_request", "parameter_repeated"),
    }


def _over_assertion_max(c1: TestClient, now: float, over: int = 1) -> str:
    """A validly signed assertion of ``ASSERTION_MAX + over`` characters or a little more (payload padded)."""
    natural = padded_assertion(c1, now)
    h64, p64, s64 = natural.split(".")
    length = ASSERTION_MAX + over - len(h64) - len(s64) - 2
    return padded_assertion(c1, now, payload=length + (length % 4 == 1))


@pytest.mark.parametrize("case", list(_pathological(TestClient("x"), 0)))
def test_pathological_bodies_within_budget(broker: Broker, c1: TestClient, case: str) -> None:
    body, status, error, reason = _pathological(c1, broker.clock.now)[case]
    assert len(body) <= 65536
    resp, elapsed, peak = timed(broker, body)
    if status == 200:
        assert_token(resp)
    elif reason == "parameter_repeated":  # the answer names the parameter
        assert (resp.status_code, resp.json()) == (status, {"error": error, "error_description": (
            "The parameter scope appears more than once: send each parameter once (only resource may repeat).")})
    else:
        assert_error(resp, status, error, reason=reason)
    assert elapsed < WALL_BUDGET, f"{case}: {elapsed:.3f}s"
    assert peak < MEM_BUDGET, f"{case}: {peak} bytes"


# -- size caps on the assertion: each refused by its own cap, and by nothing else -----------------
# Every oversized part is valid base64url (header and payload validly signed, whitespace-padded
# JSON), so without its cap the assertion would get further: a 200, or a different reason.


def last_rejection_reason(broker: Broker) -> str | None:
    return next((e.get("reason") for e in reversed(broker.logs()) if e.get("event") == "token.rejected"), None)


def _at_and_over_caps(c1: TestClient, now: float) -> dict[str, tuple[str, str | None]]:
    """(assertion, logged reason; None = a token is issued)."""
    over_header = HEADER_MAX + 2  # +1 is not a base64url length
    return {
        "header-at-cap": (padded_assertion(c1, now, header=HEADER_MAX), None),
        "header-over-cap": (padded_assertion(c1, now, header=over_header), "assertion_malformed"),
        "signature-over-cap": (padded_assertion(c1, now, signature=SIGNATURE_MAX + 2), "assertion_malformed"),
        "assertion-at-cap": (_over_assertion_max(c1, now, over=0), None),
        "assertion-over-cap": (_over_assertion_max(c1, now), "assertion_too_large"),
    }


@pytest.mark.parametrize("case", list(_at_and_over_caps(TestClient("x"), 0)))
def test_size_caps(broker: Broker, c1: TestClient, case: str) -> None:
    assertion, reason = _at_and_over_caps(c1, broker.clock.now)[case]
    h64, _, s64 = assertion.split(".")
    assert len(h64) <= HEADER_MAX or case.startswith("header-over")
    assert len(s64) <= SIGNATURE_MAX or case.startswith("signature-over")
    assert (len(assertion) > ASSERTION_MAX) == case.startswith("assertion-over"), len(assertion)
    resp = broker.token(form(assertion))
    if reason is None:
        assert_token(resp)
    else:
        assert_invalid_client(resp, reason)
        assert last_rejection_reason(broker) == reason


# -- form encoding (attack matrix: `form-charset`) --------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "status", "error", "reason"),
    [
        pytest.param("", 400, "invalid_request", "content_type_invalid", id="wrong-content-type"),
        pytest.param("&grant_type=client_credentials", 400, "invalid_request", "parameter_repeated",
                     id="duplicate-grant_type"),
        pytest.param("&client_id=%00", 400, "invalid_request", "client_id_charset", id="nul-in-client_id"),
        pytest.param("&client_id=c1%0D%0A", 400, "invalid_request", "client_id_charset", id="crlf-in-client_id"),
        pytest.param("&client_id=%FF%FE", 400, "invalid_request", "form_encoding", id="invalid-utf8-escape"),
        pytest.param("&client_id=%ED%A0%80", 400, "invalid_request", "form_encoding", id="surrogate-as-utf8"),
        pytest.param("&client_id=%C3%A9", 400, "invalid_request", "client_id_charset", id="non-ascii-client_id"),
        pytest.param("&scope=r%C3%A9ad", 400, "invalid_scope", None, id="non-ascii-scope"),
        # A stray "%" stays a literal (as in the WHATWG urlencoded parser): client_id "%" ≠ c1.
        pytest.param("&client_id=%", 401, "invalid_client", None, id="truncated-escape-literal"),
    ],
)
def test_form_encoding_errors(broker: Broker, c1: TestClient, suffix: str, status: int, error: str,
                              reason: str | None) -> None:
    body = valid_form(c1, broker.clock.now) + suffix
    content_type = "text/plain" if not suffix else CT
    resp = broker.token(body, headers={"content-type": content_type})
    if status == 401:
        assert_invalid_client(resp)
    elif reason == "parameter_repeated":  # the answer names the parameter
        assert resp.json()["error_description"].startswith("The parameter grant_type appears more than once")
        assert resp.status_code == status
    else:
        assert_error(resp, status, error, reason=reason)


@pytest.mark.parametrize(
    "body",
    [pytest.param(b"grant_type=client_credentials\xff", id="raw-0xff"), pytest.param(b"grant_type=\x00", id="raw-nul"),
     pytest.param("grant_type=client_credentials&client_id=\u00e9".encode(), id="raw-utf8"),
     pytest.param(b"grant_type=client_credentials\r\n&x=1", id="raw-crlf")],
)
def test_raw_bytes_outside_the_form_charset(broker: Broker, body: bytes) -> None:
    assert_error(broker.token(body), 400, "invalid_request", reason="form_charset")


# -- JSON inside the assertion (`header-not-an-object` and the claims entries): 401, bounded --------


def _claims_json(c1: TestClient, now: float, replace: tuple[str, str] | None = None, extra: str = "") -> str:
    text = json.dumps(c1.claims(now))
    if replace:
        text = text.replace(*replace, 1)
    return text[:-1] + extra + "}"


def _json_cases(c1: TestClient, now: float) -> dict[str, tuple[str, str]]:
    """(header JSON, payload JSON) pairs, all signed with c1's real key."""
    h = json.dumps({"alg": "ES256", "kid": c1.kid})
    exp = str(int(now) + 60)
    return {
        "huge-int-exp": (h, _claims_json(c1, now, (f'"exp": {exp}', '"exp": ' + "9" * 4000))),
        "huge-float-exp": (h, _claims_json(c1, now, (f'"exp": {exp}', '"exp": 1e400'))),
        "NaN-exp": (h, _claims_json(c1, now, (f'"exp": {exp}', '"exp": NaN'))),
        "Infinity-iat": (h, _claims_json(c1, now, (f'"iat": {int(now)}', '"iat": Infinity'))),
        "negative-exp": (h, _claims_json(c1, now, (f'"exp": {exp}', '"exp": -1'))),
        "deep-nesting": (h, _claims_json(c1, now, extra=', "x": ' + "[" * 2500 + "]" * 2500)),
        "deep-objects": (h, _claims_json(c1, now, extra=', "x": ' + '{"a":' * 1000 + "1" + "}" * 1000)),
        "duplicate-iss": (h, _claims_json(c1, now, extra=', "iss": "c2"')),
        "duplicate-exp": (h, _claims_json(c1, now, extra=f', "exp": {exp}')),
        "duplicate-header-alg": (h[:-1] + ', "alg": "ES256"}', _claims_json(c1, now)),
        "lone-surrogate-jti": (h, _claims_json(c1, now, extra=', "jti": "\\ud800"').replace('"jti"', '"_j"', 1)),
        "lone-surrogate-iss": (h, _claims_json(c1, now, ('"iss": "c1"', '"iss": "\\udc00"'))),
        "lone-surrogate-kid": (json.dumps({"alg": "ES256", "kid": "\ud800"}), _claims_json(c1, now)),
        "payload-array": (h, "[1, 2, 3]"),
        "payload-string": (h, '"c1"'),
        "payload-bom": (h, "\ufeff" + _claims_json(c1, now)),
        "header-null": ("null", _claims_json(c1, now)),
    }


@pytest.mark.parametrize("case", list(_json_cases(TestClient("x"), 0)))
def test_hostile_json_in_assertion(broker: Broker, c1: TestClient, case: str) -> None:
    header, payload = _json_cases(c1, broker.clock.now)[case]
    assertion = raw(header, payload, c1.key)
    resp, elapsed, peak = timed(broker, valid_form(c1, broker.clock.now, client_assertion=assertion))
    assert_invalid_client(resp, last_rejection_reason(broker))  # deep-objects is over the size cap
    assert elapsed < WALL_BUDGET and peak < MEM_BUDGET, (elapsed, peak)


def test_invalid_utf8_in_payload_segment(broker: Broker, c1: TestClient) -> None:
    h = b64u(json.dumps({"alg": "ES256", "kid": c1.kid}))
    p = b64u(b'{"iss":"c1\xff"}')
    assert_invalid_client(broker.token(form(f"{h}.{p}.{b64u(b'x' * 64)}")))


# -- live process: resident memory stays bounded -------------------------------------------------


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.live
def test_live_broker_memory_bounded_under_hostile_bodies(spawn_broker: Any) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc")
    live = spawn_broker()
    c1 = TestClient("x")
    bodies: list[tuple[bytes, set[int]]] = [
        (b"a" * 10_000_000, {413}),
        (b"&" * 1_000_000, {413}),
        (("&".join(f"p{i}=v" for i in range(100_000))).encode(), {413}),
        (str(httpx.QueryParams(form("." * 1_000_000))).encode(), {413}),
        (str(httpx.QueryParams(form("." * 60_000))).encode(), {401}),
        (str(httpx.QueryParams(form(c1.assertion(time.time()) + "a" * 9000))).encode(), {401}),
    ]
    with httpx.Client(timeout=10) as http:
        http.post(live.url + "/token", content=b"x", headers={"content-type": CT})  # warm up
        before = _peak_rss(live.proc.pid)
        for body, statuses in bodies * 3:
            t0 = time.perf_counter()
            try:
                resp = http.post(live.url + "/token", content=body, headers={"content-type": CT})
            except httpx.WriteError:  # the server may answer 413 and close before the body is sent
                continue
            assert resp.status_code in statuses, (len(body), resp.status_code, resp.text[:200])
            assert time.perf_counter() - t0 < 3.0
        growth = _peak_rss(live.proc.pid) - before
    print(f"broker peak RSS growth over 18 hostile requests: {growth / 2**20:.1f} MiB")
    assert growth < 32 * 2**20, growth
