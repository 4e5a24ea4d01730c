"""Broker settings: one frozen struct built from ``BROKER_*`` variables at start.

Nothing here is read at import time. ``Settings.from_env`` is called by the entry points only:
the command line (``app/__main__.py``, which checks the settings before it starts the server and
runs ``keys init``), the ASGI module the server imports (``app/web/asgi.py``, which passes the
result to the composition root ``app.web.app.create_app``) and ``scripts/rotate_signing_key.py``.
``create_app`` never reads the environment; tests build ``Settings`` directly. A bad value stops
the start with the variable's name in the message.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from app.oauth.constants import ASSERTION_ALGS, ASSERTION_MAX, BODY_MAX, JTI_MAX_LENGTH, SIGNING_ALGS
from token_broker_jose.dpop import DPOP_ALGS


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


#: BROKER_TRACING values: no spans (nothing of OpenTelemetry imported), spans printed, spans exported.
TRACING_MODES = ("off", "console", "otlp")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    issuer: str = "http://127.0.0.1:8000"
    redis_url: str | None = None
    # Redis beyond one server (docs/operations.md): a Cluster reached through BROKER_REDIS_URL
    # (any node), or a Sentinel-managed master (BROKER_REDIS_URL then gives only db/password/TLS).
    redis_cluster: bool = False
    redis_sentinels: tuple[str, ...] = ()
    redis_sentinel_master: str | None = None
    # Seconds /readyz reports "draining" after SIGTERM before the graceful shutdown starts (app/web/drain.py).
    shutdown_drain: float = 0.0
    keys_dir: Path = Path("keys")
    # File recording the client registry's id (docs/operations.md); unset: <keys_dir>/registry.id.
    registry_record: str | None = None
    # Client assertion policy (RFC 7523 §3, RFC 10070).
    leeway: int = 10
    assertion_max_lifetime: int = 300
    assertion_max_age: int = 300
    clock_skew: int = 30
    jti_max_length: int = JTI_MAX_LENGTH
    allow_single_element_aud_array: bool = False
    assertion_algs: tuple[str, ...] = ASSERTION_ALGS
    # Access tokens (RFC 9068).
    token_lifetime: int = 900
    signing_alg: str = "ES256"
    # Request bounds.
    body_max: int = BODY_MAX
    assertion_max: int = ASSERTION_MAX
    # Redis client behaviour: explicit, short, bounded (redis-py's defaults take 4-9 s).
    redis_timeout: float = 0.3
    redis_retries: int = 1
    retry_after: int = 2
    # How often each replica checks the shared client registry for changes.
    registry_poll_interval: float = 0.25
    # Failed-authentication rate limits (per source address and per client, shared in Redis).
    ratelimit_failures: int = 20
    ratelimit_window: int = 60
    ratelimit_mode: str = "enforce"
    # Reverse proxies (IP addresses or CIDR networks) whose X-Forwarded-For names the client, for
    # the per-address limit and the logs. Empty: the TCP peer is the client and the header is ignored.
    trusted_proxies: tuple[str, ...] = ()
    # Bootstrap admin client: its public key(s) as JWKS JSON; unset → the key pair in <keys_dir>/admin.jwk
    # (generated on first start).
    admin_jwks: str | None = None
    admin_client_id: str = "broker-admin"
    # Client onboarding: jwks_uri clients, declarative clients file, reserved ids.
    jwks_uri_allow_http_loopback: bool = False
    jwks_uri_cache_ttl: int = 300
    jwks_uri_refetch_cooldown: float = 10.0
    jwks_uri_max_stale: int = 3600
    jwks_uri_timeout: float = 2.0
    clients_file: str | None = None
    reserved_client_id_prefixes: tuple[str, ...] = ()
    log_level: str = "info"
    # One JSON ``http.access`` line per public request (app/web/access.py): off, on, or the share of
    # requests to log (0.01: one in a hundred, chosen at random). Written at info level.
    access_log: str = "off"
    # Issued-token cache: a cached token is served only while at least this share of its
    # lifetime is left; concurrent misses wait up to cache_stampede_wait s for one replica's mint.
    cache_min_remaining_share: float = 0.5
    cache_stampede_wait: float = 0.2
    # Per-client request quota: at most client_quota recorded assertions (/token, /revoke,
    # /introspect) per client per client_quota_window s, shared in Redis; 0 = off (the default:
    # the right ceiling depends on the Redis size and the number of clients, see docs/operations.md).
    client_quota: int = 0
    client_quota_window: int = 60
    # HTTP server bounds per worker (app/web/server.py): bytes of request line + headers, seconds
    # to receive the header section and the declared body, and connections before requests get 503.
    http_header_max: int = 16384
    http_header_timeout: float = 10.0
    http_body_timeout: float = 10.0
    http_max_connections: int = 1000
    # The management listener (app/web/listeners.py): /metrics, /healthz, /readyz, never on the
    # public port. Loopback by default: the rejection counters by reason would tell a prober which
    # client_ids and kids exist. The port is fixed rather than derived from --port (a second local
    # broker on --port 8001 then fails loudly instead of moving it): 8002, next to the public 8000
    # and clear of common neighbours' defaults (8001 kubectl proxy, 8080, 9090 Prometheus, 9100 node_exporter).
    management_host: str = "127.0.0.1"
    management_port: int = 8002
    # OpenTelemetry spans (app/tracing.py): off, console or otlp; needs the [otel] install extra.
    tracing: str = "off"
    # A BROKER_* variable that is neither a field here nor in OTHER_VARIABLES stops the start;
    # true: it is only warned about.
    allow_unknown_settings: bool = False
    # DPoP (RFC 9449, docs/dpop.md): proof algorithms, how old a proof's iat may be (s), and
    # server-provided nonces (§8) shared by every replica, each valid for one lifetime window and the next.
    dpop_algs: tuple[str, ...] = DPOP_ALGS
    dpop_proof_max_age: int = 60
    dpop_nonce: bool = False
    dpop_nonce_lifetime: int = 300

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/token"

    @property
    def authorization_endpoint(self) -> str:
        return self.issuer + "/authorize"

    @property
    def revocation_endpoint(self) -> str:
        return self.issuer + "/revoke"

    @property
    def introspection_endpoint(self) -> str:
        return self.issuer + "/introspect"

    @property
    def jwks_uri(self) -> str:
        return self.issuer + "/jwks.json"

    @property
    def admin_audience(self) -> str:
        return self.issuer + "/admin"

    @property
    def access_log_sample(self) -> float:
        """``access_log`` as the share of requests logged: 0.0 (off) to 1.0 (on)."""
        text = self.access_log.strip().lower()
        return _ACCESS_LOG_WORDS[text] if text in _ACCESS_LOG_WORDS else float(text)

    @property
    def embedded(self) -> bool:
        return self.redis_url is None and not self.redis_sentinels

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``BROKER_<FIELD>`` variables of ``env`` (default: the process environment);
        unset or empty variables keep the default."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for field in msgspec.structs.fields(cls):
            var = "BROKER_" + field.name.upper()
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[field.name] = _coerce(var, raw, field.type)
        try:
            settings = msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:  # pragma: no cover - _coerce catches most
            raise ConfigError(f"invalid broker setting: {exc}") from None
        settings.validate()
        unknown = unknown_settings(env)
        if unknown and not settings.allow_unknown_settings:
            more = f" (and {len(unknown) - 1} more: {', '.join(u.name for u in unknown[1:])})" if len(unknown) > 1 else ""
            raise ConfigError(unknown[0].message() + more)
        return settings

    @staticmethod
    def _validate_redis_url(url: str) -> None:
        try:  # urlsplit raises on a malformed host ("[::1" without its bracket); parse the port too
            parts = urlsplit(url)
            parts.port  # noqa: B018 - read for its ValueError
        except ValueError as exc:
            raise ConfigError(f"BROKER_REDIS_URL: not a valid URL ({exc}); write it as "
                              "redis://[user]:PASSWORD@host:port/db (an IPv6 host in brackets)") from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ConfigError("BROKER_REDIS_URL must be a redis://, rediss:// or unix:// URL")

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first variable whose value is out of bounds."""
        self._validate_issuer()
        if self.redis_url is not None:
            self._validate_redis_url(self.redis_url)
        for name in ("leeway", "assertion_max_lifetime", "assertion_max_age", "clock_skew", "jti_max_length", "token_lifetime", "body_max", "assertion_max",
                     "retry_after"):
            if getattr(self, name) < (0 if name in ("leeway", "clock_skew") else 1):
                raise ConfigError(f"BROKER_{name.upper()} must be a positive integer")
        if self.leeway > 60:
            raise ConfigError("BROKER_LEEWAY must be at most 60 seconds (FAPI 2.0 §5.3.2.1 future iat/nbf ceiling)")
        if self.token_lifetime > 86400:
            raise ConfigError("BROKER_TOKEN_LIFETIME must be at most 86400 seconds")
        if not 0 < self.redis_timeout <= 10:
            raise ConfigError("BROKER_REDIS_TIMEOUT must be between 0 and 10 seconds")
        if not 0 <= self.redis_retries <= 3:
            raise ConfigError("BROKER_REDIS_RETRIES must be between 0 and 3")
        if not self.assertion_algs or any(a not in ASSERTION_ALGS for a in self.assertion_algs):
            raise ConfigError(f"BROKER_ASSERTION_ALGS must be a comma-separated subset of {','.join(ASSERTION_ALGS)}")
        if self.signing_alg not in SIGNING_ALGS:
            raise ConfigError(f"BROKER_SIGNING_ALG must be one of {','.join(SIGNING_ALGS)}")
        if not 1 <= self.jwks_uri_cache_ttl <= 86400:
            raise ConfigError("BROKER_JWKS_URI_CACHE_TTL must be between 1 and 86400 seconds")
        if not 0.1 <= self.jwks_uri_refetch_cooldown <= 3600:
            raise ConfigError("BROKER_JWKS_URI_REFETCH_COOLDOWN must be between 0.1 and 3600 seconds")
        if not self.jwks_uri_cache_ttl <= self.jwks_uri_max_stale <= 604800:
            raise ConfigError("BROKER_JWKS_URI_MAX_STALE must be between BROKER_JWKS_URI_CACHE_TTL and 604800 seconds")
        if not 0.1 <= self.jwks_uri_timeout <= 10:
            raise ConfigError("BROKER_JWKS_URI_TIMEOUT must be between 0.1 and 10 seconds")
        if not 0 < self.cache_min_remaining_share <= 1:
            raise ConfigError("BROKER_CACHE_MIN_REMAINING_SHARE must be above 0 and at most 1")
        if not 0 <= self.cache_stampede_wait <= 2:
            raise ConfigError("BROKER_CACHE_STAMPEDE_WAIT must be between 0 and 2 seconds")
        if self.ratelimit_mode not in ("enforce", "observe", "off"):
            raise ConfigError("BROKER_RATELIMIT_MODE must be enforce, observe or off")
        if not 1 <= self.ratelimit_failures <= 1_000_000 or not 1 <= self.ratelimit_window <= 86400:
            raise ConfigError("BROKER_RATELIMIT_FAILURES and BROKER_RATELIMIT_WINDOW must be positive (window at most 86400 s)")
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry)  # strict: "10.0.0.1/8" is refused, not read as something else
            except ValueError:
                raise ConfigError(f"BROKER_TRUSTED_PROXIES must be IP addresses or CIDR networks, got {entry!r}") from None
        if not 0 <= self.shutdown_drain <= 300:
            raise ConfigError("BROKER_SHUTDOWN_DRAIN must be between 0 and 300 seconds")
        if self.redis_cluster and (self.redis_url is None or self.redis_sentinels):
            raise ConfigError("BROKER_REDIS_CLUSTER needs BROKER_REDIS_URL (a cluster node) and no BROKER_REDIS_SENTINELS")
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise ConfigError("BROKER_REDIS_SENTINELS and BROKER_REDIS_SENTINEL_MASTER are set together")
        for address in self.redis_sentinels:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"BROKER_REDIS_SENTINELS must be host:port,host:port..., got {_without_credentials(address)!r}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("BROKER_LOG_LEVEL must be debug, info, warning or error")
        if self.tracing not in TRACING_MODES:
            raise ConfigError(f"BROKER_TRACING must be {', '.join(TRACING_MODES[:-1])} or {TRACING_MODES[-1]}")
        _check_request_bounds(self)
        _check_management_listener(self)
        _check_access_log(self)
        _check_dpop(self)

    def _validate_issuer(self) -> None:
        parts = urlsplit(self.issuer)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(
                "BROKER_ISSUER must be an absolute http(s) URL with no query or fragment "
                f"(RFC 8414 §2), got {self.issuer!r}"
            )
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError("BROKER_ISSUER must use https except on loopback")
        if self.issuer.endswith("/"):
            raise ConfigError("BROKER_ISSUER must not end with '/' (it is compared byte for byte)")


def _check_request_bounds(settings: Settings) -> None:
    """The per-client quota and the HTTP server's bounds (app/web/server.py)."""
    if not 0 <= settings.client_quota <= 100_000_000:
        raise ConfigError("BROKER_CLIENT_QUOTA must be between 0 (off) and 100000000 requests")
    if not 1 <= settings.client_quota_window <= 86400:
        raise ConfigError("BROKER_CLIENT_QUOTA_WINDOW must be between 1 and 86400 seconds")
    if not 1024 <= settings.http_header_max <= 1_048_576:
        raise ConfigError("BROKER_HTTP_HEADER_MAX must be between 1024 and 1048576 bytes")
    for name in ("http_header_timeout", "http_body_timeout"):
        if not 0.1 <= getattr(settings, name) <= 3600:
            raise ConfigError(f"BROKER_{name.upper()} must be between 0.1 and 3600 seconds")
    if not 1 <= settings.http_max_connections <= 1_000_000:
        raise ConfigError("BROKER_HTTP_MAX_CONNECTIONS must be between 1 and 1000000")


def _check_management_listener(settings: Settings) -> None:
    try:
        ipaddress.ip_address(settings.management_host)
    except ValueError:
        raise ConfigError("BROKER_MANAGEMENT_HOST must be an IP address (127.0.0.1 by default; 0.0.0.0 only where "
                          f"the network around it is private), got {settings.management_host!r}") from None
    if not 1 <= settings.management_port <= 65535:
        raise ConfigError("BROKER_MANAGEMENT_PORT must be between 1 and 65535")


_ACCESS_LOG_WORDS = {"off": 0.0, "on": 1.0}


def _check_access_log(settings: Settings) -> None:
    try:
        sample = settings.access_log_sample
    except ValueError:
        sample = -1.0
    if not 0 <= sample <= 1:
        raise ConfigError(f"BROKER_ACCESS_LOG must be off, on or a share between 0 and 1, got {settings.access_log!r}")


def _check_dpop(settings: Settings) -> None:
    if not settings.dpop_algs or any(a not in DPOP_ALGS for a in settings.dpop_algs):
        raise ConfigError(f"BROKER_DPOP_ALGS must be a comma-separated subset of {','.join(DPOP_ALGS)}")
    if not 1 <= settings.dpop_proof_max_age <= 3600:
        raise ConfigError("BROKER_DPOP_PROOF_MAX_AGE must be between 1 and 3600 seconds")
    if not 10 <= settings.dpop_nonce_lifetime <= 86400:
        raise ConfigError("BROKER_DPOP_NONCE_LIFETIME must be between 10 and 86400 seconds")


def _coerce(var: str, raw: str, typ: object) -> object:
    text = raw.strip()
    try:
        if typ is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(text)
        if typ is float:
            return float(text)
        if typ == tuple[str, ...]:
            return tuple(p.strip() for p in text.split(",") if p.strip())
        if typ is Path:
            return Path(text)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid {getattr(typ, '__name__', typ)}") from None
    return text


# -- The settings' documentation: the one source of docs/settings.md and `token-broker settings` --


class SettingDoc(NamedTuple):
    """What an operator needs to know about one ``Settings`` field. Type and default are read from
    the field itself (``scripts/gen_settings_doc.py``); ``range`` repeats what ``validate`` checks."""

    group: str
    meaning: str
    range: str = ""
    security: str = ""


_TOKENS, _ASSERTIONS, _REDIS, _KEYS, _CLIENTS = "Issuer and tokens", "Client assertions", "Redis", "Keys and admin", "Clients"
_LIMITS, _HTTP, _CACHE, _OPS = "Limits", "HTTP server and listeners", "Issued-token cache", "Logs, tracing, start-up"
#: The sections of docs/settings.md, in order.
SETTING_GROUPS = (_TOKENS, _ASSERTIONS, _CLIENTS, _KEYS, _REDIS, _LIMITS, _CACHE, _HTTP, _OPS)

#: One entry per ``Settings`` field, in field order (a test checks that both lists agree).
SETTING_DOCS: dict[str, SettingDoc] = {
    "issuer": SettingDoc(_TOKENS, "Issuer identifier: the `iss` of every access token and the only accepted assertion "
                         "`aud`. `serve` defaults it to `http://127.0.0.1:<--port>`.",
                         "absolute http(s) URL, no query, fragment or trailing `/`",
                         "https except on loopback; compared byte for byte (attack matrix `aud-*` entries)"),
    "redis_url": SettingDoc(_REDIS, "The shared Redis (`redis://`, `rediss://` or `unix://`). Unset: an embedded "
                            "in-process store, for one process only (no `--workers`, no replicas).",
                            "a redis://, rediss:// or unix:// URL",
                            "the password in it is redacted by `token-broker settings` and in start-up errors; "
                            "use `rediss://` off the host (Redis faults entries): the server's certificate is "
                            "checked against the system's CAs, or `?ssl_ca_certs=/path/ca.pem`; a client "
                            "certificate with `ssl_certfile` and `ssl_keyfile` (docs/operations.md)"),
    "redis_cluster": SettingDoc(_REDIS, "Treat `BROKER_REDIS_URL` as one node of a Redis Cluster.",
                                "needs `BROKER_REDIS_URL` and no `BROKER_REDIS_SENTINELS`"),
    "redis_sentinels": SettingDoc(_REDIS, "Sentinels (`host:port,host:port`) that name the master; "
                                  "`BROKER_REDIS_URL` then gives only db, password and TLS (to the master; "
                                  "the Sentinels are asked over plain TCP).",
                                  "host:port list; set together with `BROKER_REDIS_SENTINEL_MASTER`"),
    "redis_sentinel_master": SettingDoc(_REDIS, "The master's name at the Sentinels.", "set together with `BROKER_REDIS_SENTINELS`"),
    "shutdown_drain": SettingDoc(_OPS, "Seconds `/readyz` answers 503 `draining` after SIGTERM before the graceful "
                                 "shutdown starts, so a load balancer stops sending first.", "0-300"),
    "keys_dir": SettingDoc(_KEYS, "The keys folder: signing keys (`signing/*.json`), the development admin key, the "
                           "registry record. Every replica must see the same folder.",
                           "a folder the broker can write, or a read-only mount that already holds the keys "
                           "(a Kubernetes Secret: docs/kubernetes.md)",
                           "private files are created 0600 in 0700 folders; a start refuses a folder group or others "
                           "can write, or key files they can read (on a read-only mount: key files others can read "
                           "or the group can write)"),
    "registry_record": SettingDoc(_KEYS, "File recording the client registry's id, which tells a lost registry from a "
                                  "new one (docs/operations.md). Unset: `<BROKER_KEYS_DIR>/registry.id`.",
                                  "a file path; read-only is fine once the record exists",
                                  "`registry-loss`: a replica that cannot read its record cannot tell a flushed Redis "
                                  "from a first start"),
    "leeway": SettingDoc(_ASSERTIONS, "Clock leeway (s) for assertion `exp`/`nbf`, and the ceiling for a future `iat`/`nbf`.",
                         "0-60", "FAPI 2.0 §5.3.2.1 caps it at 60 s (`exp-expired`, `iat-nbf-in-future`)"),
    "assertion_max_lifetime": SettingDoc(_ASSERTIONS, "Longest assertion accepted: the cap on `exp − now` and `exp − iat` (s).",
                                         "1 or more", "bounds how long replay records live (`assertion-lifetime-cap`)"),
    "assertion_max_age": SettingDoc(_ASSERTIONS, "Oldest assertion accepted: the cap on `now − iat` (s).", "1 or more",
                                    "`iat-too-old`"),
    "clock_skew": SettingDoc(_ASSERTIONS, "Largest clock difference between replicas (s); pads the replay records' lifetime.",
                             "0 or more", "too small lets a jti be replayed on a replica whose clock is behind "
                             "(`replay-ttl-and-clock-edges`)"),
    "jti_max_length": SettingDoc(_ASSERTIONS, "Longest `jti` accepted (characters).", "1 or more", "`jti-invalid`"),
    "allow_single_element_aud_array": SettingDoc(_ASSERTIONS, "Also accept `aud: [issuer]` (RFC 7523 allows an array; "
                                                 "FAPI 2.0 and OIDC say a string).", "true or false",
                                                 "`aud-single-element-array`"),
    "assertion_algs": SettingDoc(_ASSERTIONS, "Assertion algorithms accepted at all; each client key is also stamped "
                                 "with exactly one.", "comma-separated subset of the default",
                                 "`alg-none`, `hmac-key-confusion`, `alg-not-registered`"),
    "token_lifetime": SettingDoc(_TOKENS, "Access-token lifetime (s); a client's registration may set its own.",
                                 "1-86400", "`success-contract`"),
    "signing_alg": SettingDoc(_TOKENS, "Algorithm of the signing keys `keys init` and rotation create.",
                              "ES256, ES384, PS256, RS256 or Ed25519", "`signing-key-rotation`"),
    "body_max": SettingDoc(_LIMITS, "Request body cap (bytes), enforced before the body is read whole; more → 413.",
                           "1 or more", "`oversized-body`"),
    "assertion_max": SettingDoc(_LIMITS, "Assertion cap (characters); more → 401.", "1 or more",
                                "`oversized-body`, `oversized-segments`"),
    "redis_timeout": SettingDoc(_REDIS, "Socket and connect timeout of one Redis attempt (s).", "above 0, at most 10",
                                "`redis-unreachable`, `redis-hung-or-slow`"),
    "redis_retries": SettingDoc(_REDIS, "Retries after a Redis connection error or timeout; every call also has a hard "
                                "deadline of `timeout × (retries + 1) + 0.05` s, then fails closed.", "0-3",
                                "`replay-reply-lost`, `redis-hung-or-slow`"),
    "retry_after": SettingDoc(_LIMITS, "`Retry-After` (s) on a 503 when Redis does not answer.", "1 or more",
                              "`redis-unreachable`, `redis-command-errors`"),
    "registry_poll_interval": SettingDoc(_CLIENTS, "How often (s) each replica checks the shared client registry for "
                                         "changes: how fast a client change reaches every replica.",
                                         "seconds; keep it above 0 (not checked at start)",
                                         "`client-key-rotation-and-jwks-uri`"),
    "ratelimit_failures": SettingDoc(_LIMITS, "Failed authentications per window, per source address and per client "
                                     "(failures its own key signed), before 429.", "1-1000000"),
    "ratelimit_window": SettingDoc(_LIMITS, "The failure window (s), starting at the first failure.", "1-86400"),
    "ratelimit_mode": SettingDoc(_LIMITS, "`enforce` (429), `observe` (count and log `ratelimit.exceeded` only) or `off`.",
                                 "enforce, observe or off"),
    "trusted_proxies": SettingDoc(_HTTP, "Reverse proxies (IP addresses or CIDR networks) whose `X-Forwarded-For` "
                                  "names the caller. Unset: the TCP peer is the caller and the header is ignored.",
                                  "comma-separated IPs or networks",
                                  "list only your own proxies: the per-address rate limit and the logs trust it"),
    "admin_jwks": SettingDoc(_KEYS, "The bootstrap admin client's public key(s), as a JWKS or one JWK (JSON). Unset: "
                             "a key pair is generated in `<keys_dir>/admin.jwk` on first start (development).",
                             "JSON: `{\"keys\": [...]}` or one public JWK",
                             "set it in production; private members are redacted by `token-broker settings`"),
    "admin_client_id": SettingDoc(_KEYS, "client_id of the bootstrap admin client."),
    "jwks_uri_allow_http_loopback": SettingDoc(_CLIENTS, "Let `jwks_uri` clients use plain http to loopback (tests, "
                                               "sidecars).", "true or false", "never for other hosts (SSRF filter)"),
    "jwks_uri_cache_ttl": SettingDoc(_CLIENTS, "How long (s) a fetched `jwks_uri` key set is cached in Redis.", "1-86400",
                                     "`client-key-rotation-and-jwks-uri`"),
    "jwks_uri_refetch_cooldown": SettingDoc(_CLIENTS, "Least time (s) between two fetches of one `jwks_uri` prompted "
                                            "by an unknown kid.", "0.1-3600", "bounds what unknown kids can make the broker fetch"),
    "jwks_uri_max_stale": SettingDoc(_CLIENTS, "How long (s) after its last successful fetch a `jwks_uri` (or trusted "
                                     "issuer's) key set is still used while fetches fail; after that its tokens are "
                                     "refused until a fetch succeeds.", "`BROKER_JWKS_URI_CACHE_TTL`-604800",
                                     "bounds how long a withdrawn key works when its fetch can be blocked"),
    "jwks_uri_timeout": SettingDoc(_CLIENTS, "Timeout (s) of one `jwks_uri` fetch.", "0.1-10"),
    "clients_file": SettingDoc(_CLIENTS, "A declarative clients file (JSON), applied at start and whenever it changes "
                               "(docs/onboarding.md).", "a readable JSON file"),
    "reserved_client_id_prefixes": SettingDoc(_CLIENTS, "client_id prefixes no registration may take, added to the "
                                              "built-in ones (e.g. `emp-,staff:`).", "comma-separated prefixes",
                                              "keeps client tokens' `sub` out of your user namespaces"),
    "log_level": SettingDoc(_OPS, "Lowest level of the broker's JSON log lines.", "debug, info, warning or error",
                            "`hostile-input-in-logs`"),
    "access_log": SettingDoc(_OPS, "One JSON `http.access` line per public request (method, route template, status, "
                             "duration, source, request id; never the query string), at info level.",
                             "off, on, or a share between 0 and 1 (0.01: one request in a hundred, at random)",
                             "off by default: it costs about 19 µs per logged request (docs/operations.md)"),
    "cache_min_remaining_share": SettingDoc(_CACHE, "Serve a cached token only while at least this share of its "
                                            "lifetime is left.", "above 0, at most 1", "`cache-invalidation`"),
    "cache_stampede_wait": SettingDoc(_CACHE, "How long (s) a replica that lost the mint lock waits for the winner's "
                                      "token.", "0-2"),
    "client_quota": SettingDoc(_LIMITS, "Recorded assertions (`/token`, `/revoke`, `/introspect`) per client per window, "
                               "shared by replicas; over it 429 `slow_down`. 0: off (docs/operations.md, sizing Redis).",
                               "0-100000000", "`client-request-flood`"),
    "client_quota_window": SettingDoc(_LIMITS, "The quota window (s).", "1-86400"),
    "http_header_max": SettingDoc(_HTTP, "Bytes of request line + headers; more → 431 and the connection closes.",
                                  "1024-1048576", "bounds memory per connection"),
    "http_header_timeout": SettingDoc(_HTTP, "Seconds to receive a request's line and headers; then 408 and close.",
                                      "0.1-3600", "slow-header clients cannot hold connections"),
    "http_body_timeout": SettingDoc(_HTTP, "Seconds to receive the declared body after the headers; then 408 and close.",
                                    "0.1-3600"),
    "http_max_connections": SettingDoc(_HTTP, "Open connections per worker; a request on one more gets 503.", "1-1000000"),
    "management_host": SettingDoc(_HTTP, "IP address of the management listener (`/metrics`, `/healthz`, `/readyz`), "
                                  "in every worker.", "an IP address",
                                  "keep it off networks callers reach: the rejection counters tell which clients exist"),
    "management_port": SettingDoc(_HTTP, "Port of the management listener.", "1-65535, not the public `--port`"),
    "tracing": SettingDoc(_OPS, "OpenTelemetry spans for `/token`, Redis calls and `jwks_uri` fetches: `off` (nothing "
                          "imported), `console` (one JSON span per line on stderr) or `otlp` (exported with the "
                          "standard `OTEL_EXPORTER_OTLP_*` variables). Needs `.venv/bin/python -m pip install -e '.[otel]'`.",
                          "off, console or otlp", "spans carry client_ids and error codes, never assertions or tokens"),
    "allow_unknown_settings": SettingDoc(_OPS, "A `BROKER_*` variable the broker does not know stops the start "
                                         "(a misspelt setting would otherwise be silently ignored); true: only warn.",
                                         "true or false"),
    "dpop_algs": SettingDoc(_TOKENS, "DPoP proof algorithms accepted at `/token` (RFC 9449 §4.2), advertised as "
                            "`dpop_signing_alg_values_supported` (docs/dpop.md).", "comma-separated subset of the default",
                            "asymmetric only (`dpop-proof-rules`)"),
    "dpop_proof_max_age": SettingDoc(_TOKENS, "Oldest DPoP proof accepted: the cap on `now − iat` (s); proof jtis are "
                                     "kept this long plus twice the leeway and the clock skew.", "1-3600",
                                     "`dpop-proof-replay`"),
    "dpop_nonce": SettingDoc(_TOKENS, "Server-provided DPoP nonces (RFC 9449 §8): a proof without the current nonce gets "
                             "400 `use_dpop_nonce` and a `DPoP-Nonce` header.", "true or false (on or off)",
                             "bounds how long a proof made in advance stays usable (`dpop-proof-pre-generated`)"),
    "dpop_nonce_lifetime": SettingDoc(_TOKENS, "How long (s) one DPoP nonce window lasts; the current and the previous "
                                      "window's nonce are accepted.", "10-86400"),
}

#: ``BROKER_*`` variables that are not ``Settings`` fields but are read by a command: not "unknown".
OTHER_VARIABLES: dict[str, str] = {
    "BROKER_URL": "the broker's base URL for `scripts/broker_admin.py` (`--broker`)",
    "BROKER_ADMIN_KEY": "the admin private key file for `scripts/broker_admin.py` (`--admin-key`)",
}


def variable(field: str) -> str:
    return "BROKER_" + field.upper()


class UnknownSetting(NamedTuple):
    name: str
    suggestion: str | None

    def message(self) -> str:
        if self.suggestion:
            return f"unknown setting {self.name}; did you mean {self.suggestion}?"
        return (f"unknown setting {self.name}; remove it, or set BROKER_ALLOW_UNKNOWN_SETTINGS=true "
                "(the settings: token-broker settings, docs/settings.md)")


def known_variables() -> list[str]:
    return [variable(f.name) for f in msgspec.structs.fields(Settings)] + list(OTHER_VARIABLES)


def unknown_settings(env: Mapping[str, str]) -> list[UnknownSetting]:
    """The ``BROKER_*`` variables of ``env`` nothing reads, each with the closest known name (difflib)."""
    known = known_variables()
    unknown = sorted(name for name in env if name.startswith("BROKER_") and name not in known)
    return [UnknownSetting(name, next(iter(difflib.get_close_matches(name, known, n=1, cutoff=0.8)), None))
            for name in unknown]


# -- Redaction: what `token-broker settings` and start-up errors may print -------------------------

_SECRET_WORDS = ("pass", "secret", "token", "key", "auth", "credential")
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
REDACTED = "***"


def redact_url(url: str) -> str:
    """``url`` with the password (and any secret-looking query value) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        name = user.partition(":")[0]
        netloc = f"{name}:{REDACTED}@{host}"
    query = urlencode([(k, REDACTED if any(w in k.lower() for w in _SECRET_WORDS) else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _without_credentials(address: str) -> str:
    """A sentinel address as shown: ``host:port``, with a pasted ``user:password@`` redacted."""
    return REDACTED + "@" + address.rpartition("@")[2] if "@" in address else address


def _redact_jwks(text: str) -> str:
    """The JWKS with every private member redacted, at any depth and whatever its shape (a bare
    array or a nested object is what an operator pastes when the start has just refused it)."""
    try:
        data = json.loads(text)
    except ValueError:
        return "(not valid JSON)"
    return json.dumps(_redact_members(data), separators=(",", ":"))


def _redact_members(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if k in _PRIVATE_JWK_MEMBERS else _redact_members(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_members(v) for v in value]
    return value


def effective(settings: Settings, env: Mapping[str, str]) -> list[tuple[str, Any, str]]:
    """(variable, value as JSON would hold it, ``env`` or ``default``) per field, secrets redacted."""
    rows = []
    for field in msgspec.structs.fields(Settings):
        value: Any = getattr(settings, field.name)
        if field.name == "redis_url" and value is not None:
            value = redact_url(value)
        elif field.name == "redis_sentinels":  # host:port, but a pasted user:password@host is not shown
            value = [_without_credentials(entry) for entry in value]
        elif field.name == "admin_jwks" and value is not None:
            value = _redact_jwks(value)
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        name = variable(field.name)
        rows.append((name, value, "env" if env.get(name) else "default"))
    return rows
