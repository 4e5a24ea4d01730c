"""Workload identity sources of the client library (``token_broker_client.workload``): the platform's
token file, read again for every token request (a new version and a kubelet-style rotation are
picked up; an expired token is never sent), the assertion types and the client_id sent, caching,
renewal and the 401 retry unchanged, the Workload API source with a stand-in client, and the token
never in a repr or a log line.

The broker side of federation is not needed here: a token endpoint on httpx's in-memory transport
answers every request and records the form it got. tests/test_workload_identity_client_live.py runs
the projected-token source against a real broker."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from tests.client.conftest import ResourceServer
from tests.conftest import FrozenClock
from token_broker_client import (
    BrokerClient,
    HttpSettings,
    WorkloadApiSvid,
    WorkloadTokenUnavailable,
    jwt_svid_file,
    projected_token,
)
from token_broker_client.workload import SPIFFE_ASSERTION_TYPE, TokenFile

BROKER = "https://broker.test"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def platform_token(exp: float, sub: str = "system:serviceaccount:payments:api", **claims: Any) -> str:
    """A token shaped like a platform's (the signature is not checked by the client)."""
    return ".".join([_b64({"alg": "RS256", "kid": "k1"}), _b64({"sub": sub, "exp": int(exp), **claims}), "c2ln"])


class TokenEndpoint(httpx.BaseTransport):
    """The broker's metadata and token endpoint: records each token form, answers a new token."""

    def __init__(self) -> None:
        self.forms: list[dict[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/oauth-authorization-server":
            return httpx.Response(200, json={"issuer": BROKER, "token_endpoint": BROKER + "/token"})
        self.forms.append({k: v[0] for k, v in parse_qs(request.read().decode()).items()})
        return httpx.Response(200, json={"access_token": f"at-{len(self.forms)}", "token_type": "Bearer",
                                         "expires_in": 300})


@pytest.fixture
def endpoint() -> TokenEndpoint:
    return TokenEndpoint()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


def client(source: Any, endpoint: TokenEndpoint, clock: FrozenClock, **kw: Any) -> BrokerClient:
    http = HttpSettings(client=httpx.Client(transport=endpoint), async_client=httpx.AsyncClient(transport=_Async(endpoint)))
    return BrokerClient(BROKER, "payments-api", source, http=http, clock=clock, **kw)


class _Async(httpx.AsyncBaseTransport):
    def __init__(self, inner: TokenEndpoint) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        return self.inner.handle_request(request)


def write(path: Path, text: str) -> None:
    """As the kubelet does: the new version is written beside the old one, then swapped in."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@pytest.mark.parametrize("make, assertion_type", [
    (projected_token, JWT_BEARER), (jwt_svid_file, SPIFFE_ASSERTION_TYPE),
], ids=["projected-token-jwt-bearer", "jwt-svid-file-jwt-spiffe"])
def test_the_file_is_sent_as_the_assertion_with_its_type(tmp_path: Path, endpoint: TokenEndpoint, clock: FrozenClock,
                                                         make: Any, assertion_type: str) -> None:
    path = tmp_path / "token"
    token = platform_token(clock.now + 3600)
    write(path, token + "\n")  # a trailing newline, as files often end
    broker = client(make(path), endpoint, clock, scope="read")
    assert broker.get_token() == "at-1"
    assert endpoint.forms == [{"grant_type": "client_credentials", "client_assertion_type": assertion_type,
                               "client_assertion": token, "client_id": "payments-api", "scope": "read"}]


def test_a_file_that_changes_between_requests_is_read_each_time(tmp_path: Path, endpoint: TokenEndpoint,
                                                                clock: FrozenClock) -> None:
    path = tmp_path / "token"
    first, second = platform_token(clock.now + 3600, jti="1"), platform_token(clock.now + 3600, jti="2")
    write(path, first)
    broker = client(projected_token(path), endpoint, clock)
    assert broker.get_token("read") == "at-1"
    write(path, second)
    assert broker.get_token("write") == "at-2"
    assert [f["client_assertion"] for f in endpoint.forms] == [first, second]


def test_caching_and_renewal_are_unchanged(tmp_path: Path, endpoint: TokenEndpoint, clock: FrozenClock) -> None:
    path = tmp_path / "token"
    write(path, platform_token(clock.now + 3600, jti="1"))
    broker = client(projected_token(path), endpoint, clock)
    assert [broker.get_token() for _ in range(3)] == ["at-1"] * 3
    assert len(endpoint.forms) == 1
    rotated = platform_token(clock.now + 3600, jti="2")
    write(path, rotated)
    clock.advance(300 * 0.9 + 1)  # past the renewal point (80-90 % of expires_in)
    assert broker.get_token() == "at-2"
    assert endpoint.forms[-1]["client_assertion"] == rotated


def test_a_kubelet_rotation_through_the_data_symlink_is_picked_up(tmp_path: Path, endpoint: TokenEndpoint,
                                                                  clock: FrozenClock) -> None:
    """The kubelet's atomic writer: token -> ..data/token, ..data -> a timestamped directory that a
    rotation replaces by swapping the ..data symlink."""
    volume = tmp_path / "volume"
    volume.mkdir()
    first, second = platform_token(clock.now + 3600, jti="a"), platform_token(clock.now + 7200, jti="b")
    for name, text in (("..2026_12_01_10_00_00.1", first), ("..2026_12_01_10_48_00.2", second)):
        (volume / name).mkdir()
        (volume / name / "token").write_text(text)
    (volume / "..data").symlink_to("..2026_12_01_10_00_00.1")
    (volume / "token").symlink_to("..data/token")
    broker = client(projected_token(volume / "token"), endpoint, clock)
    assert broker.get_token("read") == "at-1"
    (volume / "..data_tmp").symlink_to("..2026_12_01_10_48_00.2")
    os.replace(volume / "..data_tmp", volume / "..data")
    assert broker.get_token("write") == "at-2"
    assert [f["client_assertion"] for f in endpoint.forms] == [first, second]


def test_a_401_gets_one_new_token_with_the_current_file(tmp_path: Path, endpoint: TokenEndpoint,
                                                        clock: FrozenClock) -> None:
    path = tmp_path / "token"
    write(path, platform_token(clock.now + 3600, jti="1"))
    broker = client(projected_token(path), endpoint, clock)
    rs = ResourceServer(reject=1)
    with httpx.Client(transport=httpx.MockTransport(rs.handler), auth=broker.auth()) as http:
        rotated = platform_token(clock.now + 3600, jti="rotated")
        broker.get_token()  # cached before the rotation
        write(path, rotated)
        assert http.get("https://api.example.test/items").status_code == 200
    assert [auth for auth, _ in rs.seen] == ["Bearer at-1", "Bearer at-2"]
    assert endpoint.forms[-1]["client_assertion"] == rotated


@pytest.mark.parametrize("content, description", [
    (None, "cannot read the workload token file {path} (FileNotFoundError): is the volume mounted there?"),
    ("", "{path} is empty: the platform has not written the workload token yet"),
    ("not a jwt", "{path} does not hold a JWT with an exp (a compact JWS is expected)"),
    ("expired", "the workload token in {path} expired 5 s ago: the platform is not renewing it (the kubelet's "
                "projected volume, spiffe-helper)"),
    ("x" * 20000, "{path} holds more than 16384 bytes: not a workload token"),
    ("e30." + base64.urlsafe_b64encode(b'{"exp":1' + b"0" * 400 + b"}").decode().rstrip("=") + ".c2ln",
     "{path} does not hold a JWT with an exp (a compact JWS is expected)"),
    ("e30." + base64.urlsafe_b64encode(b'{"exp":Infinity}').decode().rstrip("=") + ".c2ln",
     "{path} does not hold a JWT with an exp (a compact JWS is expected)"),
    ("e30." + base64.urlsafe_b64encode(b'{"exp":NaN}').decode().rstrip("=") + ".c2ln",
     "{path} does not hold a JWT with an exp (a compact JWS is expected)"),
], ids=["missing", "empty", "not-a-jwt", "expired", "oversized", "exp-too-large-for-a-float", "exp-infinity",
        "exp-nan"])
def test_an_unusable_file_is_never_sent(tmp_path: Path, endpoint: TokenEndpoint, clock: FrozenClock,
                                        content: str | None, description: str) -> None:
    path = tmp_path / "token"
    if content is not None:
        write(path, platform_token(clock.now - 5) if content == "expired" else content)
    broker = client(projected_token(path), endpoint, clock)
    with pytest.raises(WorkloadTokenUnavailable) as info:
        broker.get_token()
    assert (info.value.error, info.value.description) == ("workload_token_unavailable", description.format(path=path))
    assert endpoint.forms == []


def test_a_still_valid_access_token_is_served_while_the_file_is_stale(tmp_path: Path, endpoint: TokenEndpoint,
                                                                      clock: FrozenClock) -> None:
    """The platform may write a fresh token any moment: like an unreachable broker, not a refusal."""
    path = tmp_path / "token"
    write(path, platform_token(clock.now + 280))
    broker = client(projected_token(path), endpoint, clock)
    assert broker.get_token() == "at-1"
    clock.advance(290)  # past renewal and past the workload token's exp, before the access token's
    assert broker.get_token() == "at-1"
    assert len(endpoint.forms) == 1


def test_async_callers_read_the_file_too(tmp_path: Path, endpoint: TokenEndpoint, clock: FrozenClock) -> None:
    path = tmp_path / "token"
    token = platform_token(clock.now + 3600)
    write(path, token)
    broker = client(jwt_svid_file(path), endpoint, clock)
    assert asyncio.run(broker.aget_token()) == "at-1"
    assert endpoint.forms[0]["client_assertion_type"] == SPIFFE_ASSERTION_TYPE


class WorkloadApi:
    """Stands in for ``spiffe.WorkloadApiClient``: a new JWT-SVID per fetch, the audiences asked for."""

    def __init__(self, clock: FrozenClock) -> None:
        self.clock = clock
        self.audiences: list[set[str]] = []

    def fetch_jwt_svid(self, audience: set[str]) -> Any:
        self.audiences.append(audience)
        token = platform_token(self.clock.now + 300, sub="spiffe://prod.example/ns/payments/sa/api",
                               n=len(self.audiences))
        return type("JwtSvid", (), {"token": token})()


def test_the_workload_api_is_asked_for_every_token_request(endpoint: TokenEndpoint, clock: FrozenClock) -> None:
    api = WorkloadApi(clock)
    broker = client(WorkloadApiSvid(BROKER, client=api), endpoint, clock)
    assert broker.get_token("read") == "at-1" and broker.get_token("write") == "at-2"
    assert api.audiences == [{BROKER}, {BROKER}]
    assert {f["client_assertion_type"] for f in endpoint.forms} == {SPIFFE_ASSERTION_TYPE}
    assert len({f["client_assertion"] for f in endpoint.forms}) == 2


def test_the_workload_api_without_the_spiffe_package_says_what_to_install(endpoint: TokenEndpoint, clock: FrozenClock,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "spiffe", None)  # not installed (the [spiffe] extra)
    with pytest.raises(WorkloadTokenUnavailable) as info:
        client(WorkloadApiSvid(BROKER), endpoint, clock).get_token()
    assert "pip install 'token-broker-client[spiffe]'" in str(info.value)


def test_the_token_is_never_in_a_repr_or_a_log_line(tmp_path: Path, endpoint: TokenEndpoint, clock: FrozenClock,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "token"
    token = platform_token(clock.now + 3600)
    write(path, token)
    broker = client(projected_token(path), endpoint, clock)
    caplog.set_level(logging.DEBUG)
    broker.get_token()
    write(path, platform_token(clock.now - 1))
    clock.advance(300)
    with pytest.raises(WorkloadTokenUnavailable) as info:
        broker.get_token()
    signature_free = token.rsplit(".", 1)[0]
    for text in (repr(broker), repr(TokenFile(path)), caplog.text, str(info.value)):
        assert signature_free not in text and token.split(".")[1] not in text
    assert repr(projected_token(path)) == (f"TokenFile({str(path)!r}, assertion_type="
                                           "'urn:ietf:params:oauth:client-assertion-type:jwt-bearer')")


@pytest.mark.parametrize("path", [
    pytest.param("/var/run/secrets/kubernetes.io/serviceaccount/token", id="text"),
    pytest.param(Path("/var/run/secrets/kubernetes.io/serviceaccount/token"), id="path"),
    pytest.param("/var/run/secrets/kubernetes.io//serviceaccount/./token", id="same-path-spelled-otherwise"),
])
def test_the_api_server_token_is_never_a_source(path: str | Path) -> None:
    """The pod's default token is for the Kubernetes API server: the broker refuses it, and sending
    it with every renewal would hand the pod's API credential to a third party. There is no default
    path: the projected volume's is always named."""
    with pytest.raises(ValueError, match="the pod's token for the Kubernetes API server"):
        projected_token(path)
    with pytest.raises(TypeError):
        projected_token()  # type: ignore[call-arg]
