"""Broker settings: one frozen struct built from ``BROKER_*`` variables at start.

Nothing here is read at import time. ``Settings.from_env`` is called by the entry points only:
the command line (``app/__main__.py``, which checks the settings before it starts the server and
runs ``keys init``), the ASGI module the server imports (``app/web/asgi.py``, which passes the
result to the composition root ``app.web.app.create_app``) and ``scripts/rotate_signing_key.py``.
``create_app`` never reads the environment; tests build ``Settings`` directly. A bad value stops
the start with the variable's name in the message.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from app.oauth.constants import ASSERTION_ALGS, ASSERTION_MAX, BODY_MAX, JTI_MAX_LENGTH, SIGNING_ALGS


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


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
        return settings

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first variable whose value is out of bounds."""
        self._validate_issuer()
        if self.redis_url is not None and urlsplit(self.redis_url).scheme not in (
            "redis",
            "rediss",
            "unix",
        ):
            raise ConfigError("BROKER_REDIS_URL must be a redis://, rediss:// or unix:// URL")
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
                raise ConfigError(f"BROKER_REDIS_SENTINELS must be host:port,host:port..., got {address!r}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("BROKER_LOG_LEVEL must be debug, info, warning or error")
        _check_request_bounds(self)
        _check_management_listener(self)
        _check_access_log(self)

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
