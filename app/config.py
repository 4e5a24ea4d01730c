"""Broker settings: one frozen struct built from ``BROKER_*`` variables at start.

Nothing here is read at import time; ``Settings.from_env`` is called once by the composition root
(``app.web.app.create_app``) or the CLI, and the result is passed down. A bad value stops the
start with the variable's name in the message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

#: Assertion algorithms the broker can ever accept (a deployment may narrow the list).
SUPPORTED_ASSERTION_ALGS = ("ES256", "ES384", "PS256", "RS256", "Ed25519")
#: Algorithms the broker can sign access tokens with.
SUPPORTED_SIGNING_ALGS = ("ES256", "ES384", "Ed25519", "PS256", "RS256")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    issuer: str = "http://127.0.0.1:8000"
    redis_url: str | None = None
    keys_dir: Path = Path("keys")
    # Client assertion policy (RFC 7523 §3, RFC 10070).
    leeway: int = 10
    assertion_max_lifetime: int = 300
    assertion_max_age: int = 300
    clock_skew: int = 30
    jti_max_length: int = 256
    allow_single_element_aud_array: bool = False
    assertion_algs: tuple[str, ...] = SUPPORTED_ASSERTION_ALGS
    # Access tokens (RFC 9068).
    token_lifetime: int = 900
    signing_alg: str = "ES256"
    # Request bounds.
    body_max: int = 65536
    assertion_max: int = 8192
    # Redis client behaviour: explicit, short, bounded (redis-py's defaults take 4-9 s).
    redis_timeout: float = 0.3
    redis_retries: int = 1
    retry_after: int = 2
    # How often each replica checks the shared client registry for changes.
    registry_poll_interval: float = 0.25
    # Bootstrap admin client (issue: onboarding). JWKS JSON; empty in embedded mode → generated.
    admin_jwks: str | None = None
    admin_client_id: str = "broker-admin"
    log_level: str = "info"

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/token"

    @property
    def jwks_uri(self) -> str:
        return self.issuer + "/jwks.json"

    @property
    def admin_audience(self) -> str:
        return self.issuer + "/admin"

    @property
    def embedded(self) -> bool:
        return self.redis_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for field in msgspec.structs.fields(cls):
            var = "BROKER_" + field.name.upper()
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[field.name] = _coerce(var, raw, field.type)
        values.update(overrides)
        try:
            settings = msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:  # pragma: no cover - _coerce catches most
            raise ConfigError(f"invalid broker setting: {exc}") from None
        settings.validate()
        return settings

    def validate(self) -> None:
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
        if not self.assertion_algs or any(a not in SUPPORTED_ASSERTION_ALGS for a in self.assertion_algs):
            raise ConfigError(
                f"BROKER_ASSERTION_ALGS must be a comma-separated subset of {','.join(SUPPORTED_ASSERTION_ALGS)}"
            )
        if self.signing_alg not in SUPPORTED_SIGNING_ALGS:
            raise ConfigError(f"BROKER_SIGNING_ALG must be one of {','.join(SUPPORTED_SIGNING_ALGS)}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("BROKER_LOG_LEVEL must be debug, info, warning or error")


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
