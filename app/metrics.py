"""Every metric the broker exposes, declared once, and the in-process registry behind ``/metrics``.

Each metric (name, type, help text, label names) is declared below and nowhere else; the stores,
services and web layer import the name and count into the one ``Metrics`` that ``create_app``
builds. A ``Metrics`` knows every declared metric from the start, so any part works without
another having registered something first, and a name that was never declared fails at once
(``KeyError``) instead of producing an undocumented series.

Deliberately tiny (no client library): a counter is a dict update on the hot path. Each worker
process has its own counters; scrape every worker or run one worker per container. Label values
are the reason codes used in the logs.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Literal

import msgspec

#: Request latency buckets (seconds): the token endpoint's normal range is 0.5-20 ms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metric(msgspec.Struct, frozen=True):
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...] = ()
    #: Bucket upper bounds (seconds), histograms only.
    buckets: tuple[float, ...] = LATENCY_BUCKETS


DECLARED: list[Metric] = []


def _declare(name: str, kind: Literal["counter", "gauge", "histogram"], help_text: str, *labels: str) -> str:
    DECLARED.append(Metric(name, kind, help_text, labels))
    return name


# -- HTTP (app.web.metrics) -------------------------------------------------------------------------
HTTP_REQUESTS = _declare("broker_http_requests_total", "counter",
                         "HTTP requests by route template and status code.", "endpoint", "status")
HTTP_REQUEST_SECONDS = _declare("broker_http_request_duration_seconds", "histogram",
                                "HTTP request latency by route template and outcome.", "endpoint", "outcome")
# -- token endpoint outcomes (app.web.routes) -----------------------------------------------------
TOKENS_ISSUED = _declare("broker_tokens_issued_total", "counter", "Access tokens issued.")
TOKEN_REJECTIONS = _declare("broker_token_rejections_total", "counter",
                            "Token requests refused, by RFC 6749 error and log reason code.", "error", "reason")
REPLAYS_REJECTED = _declare("broker_replays_rejected_total", "counter",
                            "Client assertions refused because their jti was already used.")
# -- issued-token cache (app.service.token_cache) -------------------------------------------------
CACHE_HITS = _declare("broker_token_cache_hits_total", "counter", "Token requests answered from the issued-token cache.")
CACHE_MISSES = _declare("broker_token_cache_misses_total", "counter",
                        "Token requests the cache could not answer, by reason (absent, stale, corrupt, mismatch, error).",
                        "reason")
TOKENS_MINTED = _declare("broker_tokens_minted_total", "counter", "Access tokens signed.")
CACHE_STAMPEDE_WAITS = _declare("broker_token_cache_stampede_waits_total", "counter",
                                "Cache misses that waited for another request's mint, in this process or on another replica.",
                                "via")
TOKENS_REVOKED = _declare("broker_tokens_revoked_total", "counter", "Access tokens revoked (RFC 7009).")
# -- client authentication (app.service.directory) ------------------------------------------------
LEGACY_AUD_ACCEPTED = _declare("broker_client_auth_legacy_aud_accepted_total", "counter",
                               "Assertions accepted with the token endpoint URL as aud (migration window).", "client_id")
CLIENT_COMPAT_USED = _declare("broker_client_compat_used_total", "counter",
                              "Client assertions accepted through a feature of the client's compat profile.", "client_id", "feature")
# -- client registry (app.service.registry_state) -------------------------------------------------
REGISTRY_LOST = _declare("broker_registry_lost", "gauge",
                         "1 while the client registry's marker is missing from Redis (restarted empty, flushed, "
                         "failed over to an empty replica) or the registry was never created; 0 when it is served.")
# -- the clients file (app.service.clients_file) --------------------------------------------------
CLIENTS_FILE_DRIFT = _declare("broker_clients_file_drift_total", "counter",
                              "Clients the clients file lists that were changed elsewhere (admin API, import) and put "
                              "back to what the file says.")
CLIENTS_FILE_ERRORS = _declare("broker_clients_file_errors_total", "counter",
                               "Versions of the clients file that could not be read or validated (the version applied "
                               "before stays in force), and listed clients the registry refused (a key another client holds).")
# -- stores (app.store) ---------------------------------------------------------------------------
REDIS_ERRORS = _declare("broker_redis_errors_total", "counter",
                        "Redis calls that failed (timeout, refused, error reply), by store.", "op", "error")
REDIS_SECONDS = _declare("broker_redis_duration_seconds", "histogram", "Redis call latency by store.", "op")
# -- Redis memory (app.service.redis_memory: INFO memory every few seconds; absent if INFO is refused)
REDIS_MEMORY_USED = _declare("broker_redis_memory_used_bytes", "gauge",
                             "Memory used by Redis (INFO used_memory); on a Cluster, of the primary nearest its limit.")
REDIS_MEMORY_MAX = _declare("broker_redis_memory_max_bytes", "gauge",
                            "Redis maxmemory of the same server; 0 means no limit is set.")
REDIS_MAXMEMORY_POLICY = _declare("broker_redis_maxmemory_policy_info", "gauge",
                                  "1 for the same server's maxmemory-policy (the broker needs noeviction).", "policy")
# -- signing keys (app.service.signing_keys) ------------------------------------------------------
SIGNING_KEYS = _declare("broker_signing_keys", "gauge", "Signing keys in the keys folder, by rotation state.", "state")
SIGNING_KEY_INFO = _declare("broker_signing_key_info", "gauge",
                            "1 for each signing key (kid) and its rotation state.", "kid", "state")
SIGNING_KEY_RELOAD_ERRORS = _declare("broker_signing_key_reload_errors_total", "counter",
                                     "Reloads of the keys folder that failed (the previous keys stay in use).")

_Labels = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self, declared: Iterable[Metric] = DECLARED) -> None:
        self._declared = {m.name: m for m in declared}
        # Counters and gauges: labels -> value. Histograms: labels -> _Histogram.
        self._series: dict[str, dict[_Labels, float]] = {name: {} for name in self._declared}
        self._histograms: dict[str, dict[_Labels, _Histogram]] = {
            name: {} for name, m in self._declared.items() if m.kind == "histogram"
        }

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        series = self._series[name]
        key = tuple(sorted(labels.items()))
        series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        """A gauge: the current value of something (key rotation state, ...)."""
        self._series[name][tuple(sorted(labels.items()))] = value

    def clear_gauge(self, name: str) -> None:
        self._series[name].clear()

    def value(self, name: str, **labels: str) -> float:
        return self._series[name].get(tuple(sorted(labels.items())), 0.0)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """One bisect and three additions: cheap enough for every request."""
        series = self._histograms[name]
        key = tuple(sorted(labels.items()))
        hist = series.get(key)
        if hist is None:
            hist = series[key] = _Histogram(self._declared[name].buckets)
        hist.counts[bisect_left(hist.bounds, value)] += 1
        hist.sum += value
        hist.count += 1

    def render(self) -> bytes:
        lines: list[str] = []
        for name in sorted(self._declared):
            metric = self._declared[name]
            if not self._series[name] and not self._histograms.get(name):
                continue  # a family appears with its first sample
            lines.append(f"# HELP {name} {metric.help}")
            lines.append(f"# TYPE {name} {metric.kind}")
            if metric.kind != "histogram":
                lines.extend(_sample(name, labels, value) for labels, value in sorted(self._series[name].items()))
                continue
            for labels, hist in sorted(self._histograms[name].items(), key=lambda item: item[0]):
                cumulative = 0
                for bound, count in zip((*hist.bounds, float("inf")), hist.counts):
                    cumulative += count
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(_sample(name + "_bucket", (*labels, ("le", le)), cumulative))
                lines.append(_sample(name + "_sum", labels, hist.sum))
                lines.append(_sample(name + "_count", labels, hist.count))
        return ("\n".join(lines) + "\n").encode()


class _Histogram:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.count = 0


def _sample(name: str, labels: _Labels, value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{label_text}}} {_number(value)}"


def _number(value: float) -> str:
    # Exact: "{:g}" keeps 6 digits, so a byte count or a counter past 999,999 came out rounded.
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
