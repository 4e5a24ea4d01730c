"""Every metric the broker exposes, declared once, and the registry behind ``/metrics``.

Each metric (name, type, help text, label names) is declared below and nowhere else; the stores,
services and web layer import the name and count into the one ``Metrics`` that ``create_app``
builds. A ``Metrics`` knows every declared metric from the start, so any part works without
another having registered something first, and a name that was never declared fails at once
(``KeyError``) instead of producing an undocumented series. Every declared family is on the first
scrape: HELP and TYPE always, and ``0`` for a counter without labels. Label values are the reason
codes used in the logs.

A counter is a dict update on the hot path. With ``serve --workers N`` (N > 1) each worker also
mirrors every value into its own file in a directory the parent process made
(``app.metrics_files``: one slice assignment into an mmapped file per counter, two per histogram
observation), and ``/metrics`` on any worker adds up all the workers' files: one scrape is the
whole container. How workers combine:

- counters and histograms: summed over every worker this run has had, including workers that
  exited or were restarted, so a total never goes down;
- gauges (live workers only; a dead worker's reading is stale), per ``merge`` below:
  ``broker_registry_lost`` is the max (one worker that sees the registry lost is enough);
  the Redis memory gauges and the signing-key gauges read the same server and the same keys
  folder in every worker, so they are the family as the worker that wrote it last sees it
  (``latest``).

One worker, or an app built in-process (tests), keeps the values in process memory only.
``value`` is always this process's own value. ``process_*`` (CPU, memory, file descriptors,
start time) come per worker process, labelled ``pid`` (``app.metrics_exposition``).
"""

from __future__ import annotations

import math
import os
import time
from bisect import bisect_left
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import msgspec

from app.metrics_exposition import Histogram, Labels, exposition
from app.metrics_files import WorkerFile, read_workers, worker_directory

#: Request latency buckets (seconds): the token endpoint's normal range is 0.5-20 ms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metric(msgspec.Struct, frozen=True):
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...] = ()
    #: Bucket upper bounds (seconds), histograms only.
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    #: How the workers' values add up in one scrape (module docstring): counters and histograms
    #: "sum"; a gauge "max", "latest" or "sum" of the live workers.
    merge: Literal["sum", "max", "latest"] = "sum"


DECLARED: list[Metric] = []


def _declare(name: str, kind: Literal["counter", "gauge", "histogram"], help_text: str, *labels: str,
             merge: Literal["sum", "max", "latest"] = "sum") -> str:
    DECLARED.append(Metric(name, kind, help_text, labels, merge=merge))
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
# -- workload identity federation (app.service.federation) ----------------------------------------
FEDERATED_ASSERTIONS = _declare("broker_federated_assertions_total", "counter",
                                "Workload tokens accepted as client assertions, by trusted issuer, mapped client and "
                                "use (single_use, first, reuse: the same token presented again before its exp).",
                                "issuer", "client_id", "use")
# -- client registry (app.service.registry_state) -------------------------------------------------
REGISTRY_LOST = _declare("broker_registry_lost", "gauge",
                         "1 while the client registry's marker is missing from Redis (restarted empty, flushed, "
                         "failed over to an empty replica) or the registry was never created; 0 when it is served.",
                         merge="max")
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
                             "Memory used by Redis (INFO used_memory); on a Cluster, of the primary nearest its limit.",
                             merge="latest")
REDIS_MEMORY_MAX = _declare("broker_redis_memory_max_bytes", "gauge",
                            "Redis maxmemory of the same server; 0 means no limit is set.", merge="latest")
REDIS_MAXMEMORY_POLICY = _declare("broker_redis_maxmemory_policy_info", "gauge",
                                  "1 for the same server's maxmemory-policy (the broker needs noeviction).", "policy",
                                  merge="latest")
# -- signing keys (app.service.signing_keys) ------------------------------------------------------
SIGNING_KEYS = _declare("broker_signing_keys", "gauge", "Signing keys in the keys folder, by rotation state.", "state",
                         merge="latest")
SIGNING_KEY_INFO = _declare("broker_signing_key_info", "gauge",
                            "1 for each signing key (kid) and its rotation state.", "kid", "state", merge="latest")
SIGNING_KEY_RELOAD_ERRORS = _declare("broker_signing_key_reload_errors_total", "counter",
                                     "Reloads of the keys folder that failed (the previous keys stay in use).")


class Metrics:
    """The facade every part counts into: ``inc``, ``set``, ``clear_gauge``, ``observe``; ``value``
    (this process's own) and ``render`` (``/metrics``: every worker's, added up, when the parent
    made a directory for them; ``directory`` names one explicitly)."""

    def __init__(self, declared: Iterable[Metric] = DECLARED, directory: str | Path | None = None) -> None:
        self._declared = {m.name: m for m in declared}
        # Counters and gauges: labels -> value. Histograms: labels -> Histogram.
        self._series: dict[str, dict[Labels, float]] = {name: {} for name in self._declared}
        self._histograms: dict[str, dict[Labels, Histogram]] = {
            name: {} for name, m in self._declared.items() if m.kind == "histogram"
        }
        self._directory = directory if directory is not None else worker_directory()
        #: This worker's file in that directory; None: values in process memory only.
        self._file = WorkerFile(self._directory) if self._directory is not None else None

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        series = self._series[name]
        key = tuple(sorted(labels.items()))
        value = series[key] = series.get(key, 0.0) + amount
        if self._file is not None:
            self._file.write(name, key, value)

    def set(self, name: str, value: float, **labels: str) -> None:
        """A gauge: the current value of something (key rotation state, ...)."""
        key = tuple(sorted(labels.items()))
        self._series[name][key] = value
        if self._file is not None:
            self._file.write(name, key, value, time.time())

    def clear_gauge(self, name: str) -> None:
        series = self._series[name]
        if self._file is not None:
            now = time.time()
            for key in series:  # NaN: no longer there (a file entry cannot be removed)
                self._file.write(name, key, math.nan, now)
        series.clear()

    def value(self, name: str, **labels: str) -> float:
        return self._series[name].get(tuple(sorted(labels.items())), 0.0)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """One bisect and three additions (and two file writes with several workers)."""
        series = self._histograms[name]
        key = tuple(sorted(labels.items()))
        hist = series.get(key)
        if hist is None:
            hist = series[key] = Histogram(self._declared[name].buckets)
            if self._file is not None:
                hist.keys = self._file.histogram_keys(name, key, len(hist.counts))
        slot = bisect_left(hist.bounds, value)
        hist.counts[slot] += 1
        hist.sum += value
        hist.count += 1
        if self._file is not None:
            self._file.write_histogram(hist, slot)

    def render(self) -> bytes:
        """Prometheus text format 0.0.4: every declared family, then ``process_*`` per worker."""
        if self._directory is None:
            return exposition(self._declared, self._series, self._histograms, [os.getpid()])
        series, histograms, live = read_workers(self._directory, self._declared)
        return exposition(self._declared, series, histograms, live)
