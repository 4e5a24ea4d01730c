"""Opt-in tracing (``BROKER_TRACING``, app/tracing.py): the spans of ``POST /token`` and its Redis
calls with their attributes, and nothing of OpenTelemetry imported when it is off."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from app import tracing
from app.config import Settings
from tests.conftest import ROOT, Broker, FrozenClock
from tests.helpers import ISS, TestClient, form

if os.environ.get("CI", "").lower() == "true":  # the test extra installs the SDK: CI never skips these
    import opentelemetry.sdk  # noqa: F401
pytest.importorskip("opentelemetry.sdk", reason="the [otel] extra is not installed")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.start(exporter)
    try:
        yield exporter
    finally:
        tracing.stop()


@pytest.fixture
def traced(tmp_path: Path, spans: InMemorySpanExporter) -> Iterator[Broker]:
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, tracing="console")
    with Broker(settings, FrozenClock()) as broker:
        yield broker


def _token_spans(spans: InMemorySpanExporter) -> list[Any]:
    return [s for s in spans.get_finished_spans() if s.name == "POST /token"]


def _children(spans: InMemorySpanExporter, parent: Any) -> list[str]:
    return sorted(s.name for s in spans.get_finished_spans()
                  if s.parent is not None and s.parent.span_id == parent.context.span_id)


def test_a_token_request_is_one_span_with_client_outcome_and_cache(traced: Broker, spans: InMemorySpanExporter) -> None:
    client = TestClient("svc-a", alg="ES256", kid="a-1")
    traced.register(client)
    spans.clear()
    first = traced.get_token(client)
    second = traced.get_token(client)  # a fresh assertion: the cached token is served
    assert (first.status_code, second.status_code) == (200, 200)
    minted, hit = _token_spans(spans)
    assert dict(minted.attributes) == {
        "http.request.method": "POST", "url.path": "/token", "http.response.status_code": 200,
        "broker.token.outcome": "issued", "oauth.client_id": "svc-a",
        "broker.token.cache": "mint", "broker.token.cache_hit": False,
    }
    assert (hit.attributes["broker.token.cache"], hit.attributes["broker.token.cache_hit"]) == ("hit", True)
    # The token endpoint's Redis calls are children of its span, one per store call: the registry
    # read (the directory's cache was just emptied), the one replay + cache lookup script, the
    # minted token's write; a cache hit is the script alone.
    # The mint is stored by the lookup itself (its token signed ahead): no cache write after it.
    assert _children(spans, minted) == ["redis registry", "redis replay"]
    assert _children(spans, hit) == ["redis replay"]
    assert {s.attributes["broker.redis.op"] for s in spans.get_finished_spans() if s.name.startswith("redis ")} == {
        "registry", "replay"}


@pytest.mark.parametrize(("case", "status", "outcome", "error", "client_id"), [
    pytest.param("replayed", 401, "rejected", "invalid_client", "svc-b", id="replayed-assertion"),
    pytest.param("unknown-client", 401, "rejected", "invalid_client", "nobody", id="unknown-client"),
    pytest.param("no-assertion", 401, "rejected", "invalid_client", None, id="no-assertion"),
    pytest.param("hostile-iss", 401, "rejected", "invalid_client", None, id="iss-not-a-client-id"),
])
def test_a_refused_request_carries_its_error(traced: Broker, spans: InMemorySpanExporter, case: str, status: int,
                                             outcome: str, error: str, client_id: str | None) -> None:
    client = TestClient("svc-b", alg="ES256", kid="b-1")
    traced.register(client)
    if case == "replayed":
        body = form(client.assertion(traced.clock.now))
        assert traced.token(body).status_code == 200
        spans.clear()
        response = traced.token(body)
    elif case == "unknown-client":
        spans.clear()
        response = traced.get_token(TestClient("nobody", alg="ES256", kid="n-1"))
    elif case == "hostile-iss":  # an unverified iss that is no client_id stays out of the span
        spans.clear()
        response = traced.get_token(TestClient("x\n\x1b[2J" + "y" * 300, alg="ES256", kid="n-1"))
    else:
        spans.clear()
        response = traced.token({"grant_type": "client_credentials"})
    assert response.status_code == status
    (span,) = _token_spans(spans)
    attributes = dict(span.attributes)
    assert (attributes["broker.token.outcome"], attributes["oauth.error"], attributes.get("oauth.client_id")) == (
        outcome, error, client_id)
    assert "broker.token.cache" not in attributes


def test_spans_never_carry_the_assertion_or_the_token(traced: Broker, spans: InMemorySpanExporter) -> None:
    client = TestClient("svc-c", alg="ES256", kid="c-1")
    traced.register(client)
    assertion = client.assertion(traced.clock.now)
    token = msgspec.json.decode(traced.token(form(assertion)).content)["access_token"]
    exported = " ".join(s.to_json() for s in spans.get_finished_spans())
    assert assertion not in exported and token not in exported


_SERVE_ONE_TOKEN = """
import sys, time
from pathlib import Path
{prelude}
from litestar.testing import TestClient as Http
from app.config import Settings
from app.web.app import create_app
from tests.helpers import ISS, TestClient, form
app = create_app(Settings(issuer=ISS, keys_dir=Path({keys!r})))
with Http(app, base_url=ISS) as http:
    client = TestClient("svc-d", alg="ES256", kid="d-1")
    http.blocking_portal.call(app.state.admin_service.register, "tests", client.metadata())
    app.state.directory.invalidate()
    answer = http.post("/token", data=form(client.assertion(time.time())))
    assert answer.status_code == 200, answer.text
from app import tracing
print(tracing.on, tracing._trace, [m for m in sys.modules if m.startswith(("opentelemetry.sdk.trace", "app.tracing."))])
"""

#: Makes every ``opentelemetry`` import fail, as in an installation without the [otel] extra.
_NO_OTEL = """
import importlib.abc
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, _Absent())
"""


@pytest.mark.parametrize("prelude", [pytest.param("", id="otel-installed"), pytest.param(_NO_OTEL, id="otel-absent")])
def test_with_tracing_off_opentelemetry_is_not_imported(tmp_path: Path, prelude: str) -> None:
    """A real app serving a token request with BROKER_TRACING unset imports nothing of OpenTelemetry
    tracing, and works where OpenTelemetry is not installed at all. (redis-py 8 imports parts of
    the OpenTelemetry API and metrics SDK by itself whenever they are installed; the tracing SDK is
    imported only by app.tracing.start.)"""
    script = _SERVE_ONE_TOKEN.format(prelude=prelude, keys=str(tmp_path / "keys"))
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout.splitlines()[-1:]) == (0, ["False None []"]), out.stderr[-2000:]


def test_tracing_setting_values() -> None:
    assert Settings().tracing == "off"
    assert Settings.from_env({"BROKER_TRACING": "console"}).tracing == "console"
    with pytest.raises(ValueError, match="^BROKER_TRACING must be off, console or otlp$"):
        Settings.from_env({"BROKER_TRACING": "jaeger"})


@pytest.mark.parametrize(("mode", "status", "outcome"), [
    pytest.param("ok", 200, "ok", id="fetched"),
    pytest.param("status500", 401, "http_500", id="server-error"),
])
def test_a_jwks_uri_fetch_is_a_child_span(tmp_path: Path, spans: InMemorySpanExporter, mode: str, status: int,
                                           outcome: str) -> None:
    from tests.keyserver import KeyServer

    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", jwks_uri_allow_http_loopback=True, tracing="console")
    client = TestClient("svc-uri", alg="ES256", kid="u-1")
    with KeyServer() as server, Broker(settings, FrozenClock()) as broker:
        server.keys = [client.public_jwk()]
        server.mode = mode
        metadata = {k: v for k, v in client.metadata().items() if k != "jwks"}
        broker.call(broker.app.state.admin_service.register, "tests", {**metadata, "jwks_uri": server.url + "?tenant=t1"})
        broker.app.state.directory.invalidate()
        spans.clear()
        assert broker.get_token(client).status_code == status
    (token,) = _token_spans(spans)
    (fetch,) = [s for s in spans.get_finished_spans() if s.name == "jwks_uri fetch"]
    assert fetch.parent is not None and fetch.parent.span_id == token.context.span_id
    assert dict(fetch.attributes) == {"url.full": server.url + "?[query removed]", "broker.jwks.outcome": outcome}
