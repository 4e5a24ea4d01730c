"""Prometheus ``/metrics``: counters share the log reason codes; latency histograms by endpoint."""

from __future__ import annotations

import pytest

from app.metrics import Metric, Metrics
from tests.conftest import Broker, FrozenClock
from tests.helpers import form


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_token_outcomes_are_counted_with_the_log_reason_codes(broker: Broker, c1) -> None:
    assertion = c1.assertion(broker.clock.now)
    assert broker.token(form(assertion)).status_code == 200
    assert broker.token(form(assertion)).status_code == 401  # replay
    assert broker.token(form(c1.assertion(broker.clock.now), grant_type="password")).status_code == 400

    resp = broker.management.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert resp.headers["cache-control"] == "no-store"
    samples = _samples(resp.text)
    reasons = sorted(e["reason"] for e in broker.logs() if e["event"] == "token.rejected")
    metric_reasons = sorted(
        name.split('reason="')[1].split('"')[0]
        for name in samples if name.startswith("broker_token_rejections_total{")
    )
    assert metric_reasons == reasons
    assert "jti_replayed" in reasons
    assert samples["broker_tokens_issued_total"] == 1
    assert samples["broker_replays_rejected_total"] == 1
    assert samples['broker_token_rejections_total{error="invalid_client",reason="jti_replayed"}'] == 1
    assert samples['broker_http_requests_total{endpoint="/token",status="200"}'] == 1
    assert samples['broker_http_requests_total{endpoint="/token",status="401"}'] == 1
    assert samples['broker_http_requests_total{endpoint="/token",status="400"}'] == 1
    assert samples['broker_http_request_duration_seconds_count{endpoint="/token",outcome="ok"}'] == 1
    assert samples['broker_http_request_duration_seconds_count{endpoint="/token",outcome="rejected"}'] == 2
    assert samples['broker_http_request_duration_seconds_bucket{endpoint="/token",outcome="ok",le="+Inf"}'] == 1
    assert samples['broker_redis_duration_seconds_count{op="replay"}'] == 2
    assert samples['broker_signing_keys{state="active"}'] == 1
    assert samples['broker_signing_keys{state="next"}'] == 0
    assert "# TYPE broker_http_request_duration_seconds histogram" in resp.text
    assert "# TYPE broker_tokens_issued_total counter" in resp.text


def test_route_templates_not_raw_paths_are_labels(broker: Broker) -> None:
    assert broker.http.get("/admin/clients/some-unique-id").status_code == 401
    text = broker.management.get("/metrics").text
    assert "some-unique-id" not in text
    assert 'endpoint="/admin/clients/{client_id}"' in text


@pytest.mark.redis
def test_redis_errors_are_counted(real_redis, tmp_path, clock: FrozenClock) -> None:
    from app.config import Settings
    from tests.helpers import ISS, TestClient

    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", redis_url=real_redis.url)
    with Broker(settings, clock) as b:
        c1 = TestClient("c1")
        b.register(c1)
        real_redis.stop()
        resp = b.token(form(c1.assertion(clock.now)))
        assert resp.status_code == 503
        samples = _samples(b.management.get("/metrics").text)
    real_redis.start()
    errors = {k: v for k, v in samples.items() if k.startswith("broker_redis_errors_total{")}
    assert errors and all('op="' in k for k in errors)
    assert samples['broker_token_rejections_total{error="temporarily_unavailable",reason="store_unavailable"}'] == 1


@pytest.mark.parametrize(
    ("value", "bucket"),
    [(0.0001, "0.0005"), (0.0005, "0.0005"), (0.003, "0.005"), (99.0, "+Inf")],
    ids=["below-first", "on-a-bound", "middle", "overflow"],
)
def test_histogram_buckets_are_cumulative_upper_bounds(value: float, bucket: str) -> None:
    m = Metrics([Metric("h_seconds", "histogram", "A test histogram.", ("endpoint",))])
    m.observe("h_seconds", value, endpoint="/token")
    samples = _samples(m.render().decode())
    first = next(k for k, v in samples.items() if k.startswith("h_seconds_bucket") and v == 1)
    assert f'le="{bucket}"' in first
    assert samples['h_seconds_bucket{endpoint="/token",le="+Inf"}'] == 1
    assert samples['h_seconds_count{endpoint="/token"}'] == 1


def test_a_store_counts_into_a_fresh_registry() -> None:
    """Every metric is declared in app.metrics: a store needs nothing registered by the web layer."""
    import asyncio

    from fakeredis.aioredis import FakeRedis

    from app.store.redis import RedisReplayGuard

    m = Metrics()
    guard = RedisReplayGuard(FakeRedis(), timeout=0.3, retries=1, metrics=m)
    assert asyncio.run(guard.first_use("c1", "jti-1", "r1", 60_000)) is True
    samples = _samples(m.render().decode())
    assert samples['broker_redis_duration_seconds_count{op="replay"}'] == 1


def test_every_exposed_family_is_declared_with_help_and_type(broker: Broker, c1) -> None:
    assert broker.token(form(c1.assertion(broker.clock.now))).status_code == 200
    text = broker.management.get("/metrics").text
    helped = {line.split(" ")[2] for line in text.splitlines() if line.startswith("# HELP ")}
    typed = {line.split(" ")[2]: line.split(" ")[3] for line in text.splitlines() if line.startswith("# TYPE ")}
    families = set()
    for name in _samples(text):
        base = name.split("{")[0]
        if typed.get(base.rsplit("_", 1)[0]) == "histogram":
            base = base.rsplit("_", 1)[0]
        families.add(base)
    assert families and families <= helped and families <= set(typed)
