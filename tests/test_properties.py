"""Property-based tests (hypothesis): the form parser, the header and claims checks, and the whole
token endpoint never fail with anything but their RFC 6749 errors, whatever the input.

Each test records how many inputs it ran in ``GENERATED_INPUTS``; the terminal summary prints the
counts (``tests/conftest.py``). No example database is written (``database=None``).
"""

from __future__ import annotations

import hashlib
import json
import string
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.config import Settings
from app.oauth.assertion import AssertionPolicy, VerifiedAssertion, pair_hash, parse_assertion, verify_assertion
from app.oauth.clients import ClientRecord, prepare_client, validate_client_jwks
from app.oauth.constants import CLIENT_ASSERTION_TYPE
from app.oauth.errors import InvalidClient, OAuthError
from app.oauth.request import parse_token_request
from tests.conftest import GENERATED_INPUTS, Broker, FrozenClock
from tests.helpers import ISS, TestClient, form, raw

FAST = settings(max_examples=1000, deadline=None, database=None)
MEDIUM = settings(max_examples=600, deadline=None, database=None)
ENDPOINT = settings(max_examples=400, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NOW = 1_800_000_000
NASTY = ["\ud800", "a\r\nb", "\x00", "\u2028", "%", "%ZZ", "%FF", "+", "=", "&", " ", "", "é", "\ufeff"]

# -- the names of replay records ------------------------------------------------------------------

@FAST
@given(st.text(), st.text())
@example("ab", "c")
@example("\ud800", "\udfff")
@example('"\\', "\x00\u2028\ufeff")
def test_pair_hash_is_the_hash_of_the_json_array(first: str, second: str) -> None:
    """Replay and token records keep the names they had with ``json.dumps``: replicas of the old
    and the new version share one Redis during an upgrade."""
    expected = hashlib.sha256(json.dumps([first, second]).encode("ascii")).hexdigest()
    assert pair_hash(first, second) == expected


@FAST
@given(st.text(), st.lists(st.text(), max_size=4), st.text(), st.text(), st.integers(min_value=-2**70, max_value=2**70),
       st.text(), st.none() | st.tuples(st.text(), st.text()), st.none() | st.text())
@example("a", ["\ud800"], "\u2028", '"', 0, "\\", ("\x00", "é"), "\ufeff")
def test_token_cache_id_is_the_hash_of_the_compact_json_array(client_id: str, scopes: list[str], audience: str,
                                                              registration: str, version: int, kid: str,
                                                              federation: tuple[str, str] | None, jkt: str | None) -> None:
    """Token cache entries keep the names they had with ``json.dumps``: replicas of the old and the
    new version share one Redis during an upgrade."""
    from app.store.keyspace import token_cache_id

    fields: list[Any] = [client_id, scopes, audience, registration, version, kid]
    fields += [list(federation)] if federation is not None else []
    fields += [jkt] if jkt is not None else []
    expected = hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode("ascii")).hexdigest()
    assert token_cache_id(client_id, tuple(scopes), audience, registration, version, kid, federation, jkt) == expected


@FAST
@given(st.text(alphabet=st.sampled_from("ab \"\\!~\x7f\té"), max_size=300) | st.sampled_from(
    ["read", "read write", "write read read", "", " ", "a" * 257, " ".join(["s"] * 101), "x" * 4097]))
def test_scope_parsing_remembered_or_not(scope: str) -> None:
    """``parse_scope`` answers, or refuses, exactly as the parsing it remembers, every time."""
    from app.oauth.grant import _parse_scope, parse_scope

    def outcome(parse: Any) -> Any:
        try:
            return parse(scope)
        except OAuthError as exc:
            return (type(exc), exc.reason)

    assert outcome(parse_scope) == outcome(parse_scope) == outcome(_parse_scope)


# -- the form parser ------------------------------------------------------------------------------

@FAST
@given(st.binary(max_size=40).map(lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E)) | st.sampled_from(
    [b"a%2Bb", b"a+b", b"%", b"%ZZ", b"%C3%A9", b"%FF", b"urn%3Aietf", b"eyJ.e30.sig-_"]))
def test_form_value_decoding_is_urllibs(raw_value: bytes) -> None:
    """A form name or value decodes as ``unquote_to_bytes`` + UTF-8 does, with or without ``%``/``+``
    (the parser skips unquoting when neither is there)."""
    from urllib.parse import unquote_to_bytes

    from app.oauth.request import _decode

    try:
        expected: str | type = unquote_to_bytes(raw_value.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        expected = UnicodeDecodeError
    try:
        got: str | type = _decode(raw_value)
    except UnicodeDecodeError:
        got = UnicodeDecodeError
    assert got == expected


names = st.sampled_from(["grant_type", "client_assertion_type", "client_assertion", "client_id", "scope",
                         "resource", "client_secret", "foo", ""]) | st.text(max_size=8)
values = (
    st.sampled_from(["client_credentials", CLIENT_ASSERTION_TYPE, "a.b.c", "read write", "https://api.example.test", *NASTY])
    | st.text(max_size=20)
)


def encode_pair(pair: tuple[str, str, bool]) -> str:
    name, value, escape = pair
    if escape:
        return quote(name.encode("utf-8", "surrogatepass"), safe="") + "=" + quote(value.encode("utf-8", "surrogatepass"), safe="")
    return name + "=" + value


form_bodies = st.lists(st.tuples(names, values, st.booleans()), max_size=10).map(lambda ps: "&".join(map(encode_pair, ps)))
content_types = st.sampled_from([
    "application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-8",
    "APPLICATION/X-WWW-FORM-URLENCODED", "application/json", "text/plain", "multipart/form-data", "",
]) | st.none() | st.text(max_size=30)


def test_form_parser_raises_only_oauth_errors() -> None:
    count = 0

    @FAST
    @given(
        body=st.one_of(form_bodies.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=200)),
        content_type=content_types,
        has_authorization=st.booleans(),
    )
    def check(body: bytes, content_type: str | None, has_authorization: bool) -> None:
        nonlocal count
        count += 1
        try:
            request = parse_token_request(body, content_type, has_authorization=has_authorization)
        except OAuthError as exc:
            assert exc.status_code in (400, 401), exc
            return
        # Whatever gets through is clean: the charset rules hold after decoding.
        assert request.client_assertion and request.client_assertion.isprintable()
        assert request.client_id is None or all(0x20 <= ord(c) <= 0x7E for c in request.client_id)

    check()
    GENERATED_INPUTS["form parser"] = count


# -- header and claims checks ---------------------------------------------------------------------

json_leaf = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
             | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=10) | st.sampled_from(NASTY))
json_values = st.recursive(json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                           max_leaves=6)
times = st.sampled_from([NOW, NOW - 1, NOW + 5, NOW + 11, NOW + 60, NOW + 299, NOW + 311, NOW + 3600, NOW - 301, 0,
                         float(NOW + 30), NOW + 0.5])
DROP = object()


def member(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Keep the good value (None here), drop the member, a plausible variant, or any JSON value."""
    return st.one_of(st.none(), st.just(DROP), plausible, json_values)


headers = st.fixed_dictionaries({
    "alg": member(st.sampled_from(["ES256", "ES384", "RS256", "HS256", "none", "es256", "EdDSA"])),
    "kid": member(st.sampled_from(["c1-1", "c2-1", "", "../k"])),
    "typ": member(st.sampled_from(["JWT", "client-authentication+jwt", "application/client-authentication+JWT",
                                   "at+jwt", ""])),
    "crit": st.one_of(st.just(DROP), json_values),
    "jwk": st.one_of(st.just(DROP), json_values),
})
claims = st.fixed_dictionaries({
    "iss": member(st.sampled_from(["c1", "c2", ""])),
    "sub": member(st.sampled_from(["c1", "c2"])),
    "aud": member(st.sampled_from([ISS, ISS + "/", ISS + "/token", [ISS], [ISS, "x"], "https://other.test"])),
    "exp": member(times),
    "iat": member(times),
    "nbf": st.one_of(st.just(DROP), times, json_values),
    "jti": member(st.sampled_from(["j" * 256, "j" * 257, "", "\ud800"]) | st.text(max_size=12)),
    "extra": st.one_of(st.just(DROP), json_values),
})


def apply(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in changes.items():
        if v is DROP:
            out.pop(k, None)
        elif v is not None:
            out[k] = v
    return out


def test_header_and_claims_checks_raise_only_invalid_client() -> None:
    c1 = TestClient("c1", kid="c1-1")
    client = prepare_client(ClientRecord(client_id="c1", jwks=validate_client_jwks([c1.public_jwk()])))
    policy = AssertionPolicy(issuer=ISS, algs=frozenset({"ES256", "ES384", "PS256", "RS256", "Ed25519"}))
    good_header = {"alg": "ES256", "kid": "c1-1", "typ": "client-authentication+jwt"}
    good_claims = {"iss": "c1", "sub": "c1", "aud": ISS, "exp": NOW + 60, "iat": NOW, "jti": "j1"}
    count = accepted = 0

    @MEDIUM
    @given(header=headers, payload=claims, duplicate=st.sampled_from([None, "iss", "exp", "alg"]))
    # The unchanged good assertion, always tried: "accepted > 0" below must not depend on chance.
    @example(header={"alg": None, "kid": None, "typ": None, "crit": DROP, "jwk": DROP},
             payload={"iss": None, "sub": None, "aud": None, "exp": None, "iat": None, "nbf": DROP, "jti": None,
                      "extra": DROP},
             duplicate=None)
    def check(header: dict[str, Any], payload: dict[str, Any], duplicate: str | None) -> None:
        nonlocal count, accepted
        count += 1
        h, p = apply(good_header, header), apply(good_claims, payload)
        h_text, p_text = json.dumps(h), json.dumps(p)  # NaN/Infinity and escaped surrogates kept
        if duplicate in p and len(p) > 1:
            p_text = p_text[:-1] + f', "{duplicate}": {json.dumps(p[duplicate])}}}'
        if duplicate in h and len(h) > 1:
            h_text = h_text[:-1] + f', "{duplicate}": {json.dumps(h[duplicate])}}}'
        try:
            result = verify_assertion(parse_assertion(raw(h_text, p_text, c1.key), policy), client, policy, NOW)
        except InvalidClient:
            return
        # Accepted: then every rule really held.
        accepted += 1
        assert isinstance(result, VerifiedAssertion)
        assert p["iss"] == p["sub"] == "c1" and p["aud"] == ISS and h["alg"] == "ES256"
        assert set(h) <= {"alg", "kid", "typ"}
        assert duplicate is None or (duplicate not in p and duplicate not in h)  # duplicate members are refused
        assert NOW - 10 <= p["exp"] <= NOW + 310 and type(p["jti"]) is str and 1 <= len(p["jti"]) <= 256

    check()
    assert accepted > 0, "the generator never produced a valid assertion"
    GENERATED_INPUTS["header and claims checks"] = count


# -- the whole endpoint ---------------------------------------------------------------------------

PARAMS = ["grant_type", "client_assertion_type", "client_assertion", "client_id", "scope", "resource"]
ALLOWED = {200: None, 400: {"invalid_request", "unsupported_grant_type", "invalid_scope", "invalid_target",
                            "unauthorized_client", "invalid_grant"},
           401: {"invalid_client"}, 403: {"access_denied"}, 405: {"invalid_request"}, 413: {"invalid_request"}}


def mutate_assertion(assertion: str, how: int, data: st.DataObject) -> str:
    if how == 0:
        return assertion
    if how == 1:
        i = data.draw(st.integers(0, len(assertion) - 1))
        return assertion[:i] + data.draw(st.sampled_from(string.printable + "é\ud800")) + assertion[i + 1:]
    if how == 2:
        return assertion[: data.draw(st.integers(0, len(assertion)))]
    h, p, s = assertion.split(".")
    return data.draw(st.sampled_from([f"{p}.{h}.{s}", f"{h}.{p}", f"{h}..{s}", f"{h}.{p}.{s}.{s}", f"{h}.{p}.", assertion * 2]))


def test_token_endpoint_never_500(tmp_path: Path) -> None:
    clock = FrozenClock(float(NOW))
    config = Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, ratelimit_mode="off")
    count = 0
    statuses: Counter[int] = Counter()
    with Broker(config, clock) as broker:
        c1 = TestClient("c1", kid="c1-1")
        broker.register(c1)

        @ENDPOINT
        @given(data=st.data())
        def check(data: st.DataObject) -> None:
            nonlocal count
            count += 1
            params: list[tuple[str, str]] = list(form(c1.assertion(clock.now)).items())
            params[2] = ("client_assertion", mutate_assertion(params[2][1], data.draw(st.integers(0, 3)), data))
            for _ in range(data.draw(st.integers(0, 3))):
                op = data.draw(st.integers(0, 3))
                name = data.draw(st.sampled_from(PARAMS) | st.text(max_size=6))
                value = data.draw(values)
                if op == 0:
                    params = [(k, v) for k, v in params if k != name]
                elif op == 1:
                    params.append((name, value))
                else:
                    params = [(k, value if k == name else v) for k, v in params]
            escape = data.draw(st.sampled_from([True, True, True, False]))  # mostly well-formed escapes
            body = "&".join(encode_pair((k, v, escape)) for k, v in params).encode("utf-8", "surrogatepass")
            body += data.draw(st.sampled_from([b"", b"&", b"\x00", b"%", b"&=&", b"\xff"]))
            content_type = data.draw(content_types.filter(lambda c: c is not None)) or "x"
            headers: dict[str, Any] = {"content-type": content_type.encode("utf-8", "surrogatepass")}  # raw bytes on the wire
            if data.draw(st.integers(0, 9)) == 0:
                headers["authorization"] = "Basic " + data.draw(st.text(alphabet=string.ascii_letters, max_size=8))
            method = data.draw(st.sampled_from(["POST"] * 8 + ["GET", "PUT"]))
            query = data.draw(st.sampled_from(["", "?client_assertion=x", "?a=%ff"]))
            resp = broker.http.request(method, "/token" + query, content=body, headers=headers)
            assert resp.status_code in ALLOWED, (resp.status_code, resp.text)
            statuses[resp.status_code] += 1
            assert resp.headers["cache-control"] == "no-store"
            payload = resp.json()
            if resp.status_code == 200:
                assert set(payload) == {"access_token", "token_type", "expires_in", "scope"}
            else:
                assert payload["error"] in ALLOWED[resp.status_code], payload
                assert set(payload) == {"error", "error_description"}

        check()
        events = {e["event"] for e in broker.logs()}
    assert not {e for e in events if e.endswith("unexpected_error")}, events
    GENERATED_INPUTS["token endpoint"] = count
    for status, n in statuses.items():
        GENERATED_INPUTS[f"token endpoint, answered {status}"] = n

