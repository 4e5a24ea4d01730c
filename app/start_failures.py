"""A start-up failure as one line for the operator: the setting, what is wrong, the fix.

``token-broker serve`` prints ``token-broker: <line>`` on stderr and exits with the failure's
status, never a traceback:

- ``CONFIGURATION`` (2): a setting's value is wrong, or what it names is wrong: a malformed or
  out-of-range value, an unknown ``BROKER_*`` variable, a bad ``BROKER_ADMIN_JWKS`` or clients
  file, a password Redis refuses, a keys folder open to other users. Starting again with the same
  settings fails again: change them.
- ``ENVIRONMENT`` (1): the settings may be right but something they need is not there: Redis does
  not answer, a port is taken, the keys folder is missing or not writable. Starting again can work
  once that is fixed (an orchestrator's restart may be enough).

``describe`` turns an exception raised while starting (in the starting process or in a worker's
start-up) into that line; an exception it does not know gives ``None``.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

from redis.exceptions import AuthenticationError, NoPermissionError, RedisClusterException, RedisError

from app.config import ConfigError, Settings, redact_url
from app.keystore import KeyFileError, KeysFolderUnusable
from app.oauth.clients import InvalidClientMetadata

CONFIGURATION = 2
ENVIRONMENT = 1


class StartupFailure(Exception):
    """The start cannot go on; ``line`` says why and what to do, ``status`` is the exit status."""

    def __init__(self, line: str, status: int) -> None:
        super().__init__(line)
        self.line = line
        self.status = status


def describe(exc: BaseException, settings: Settings | None) -> StartupFailure | None:
    """The failure ``exc`` (or an exception it wraps) stands for, or None when it is not one a
    user can cause."""
    for cause in _causes(exc):
        failure = _known(cause, settings)
        if failure is not None:
            return failure
    return None


def _known(exc: BaseException, settings: Settings | None) -> StartupFailure | None:
    if isinstance(exc, StartupFailure):
        return exc
    if isinstance(exc, KeyFileError):  # (KeyModeError is a ConfigError too: its message says what to run)
        return keys_failure(exc, settings.keys_dir if settings else None)
    if isinstance(exc, KeysFolderUnusable):  # names BROKER_KEYS_DIR and the fix itself
        return StartupFailure(str(exc), ENVIRONMENT)
    if isinstance(exc, ConfigError):
        return StartupFailure(str(exc), CONFIGURATION)
    if isinstance(exc, InvalidClientMetadata) and settings is not None and settings.admin_jwks:
        return admin_jwks_failure(exc.detail)
    if isinstance(exc, (RedisError, RedisClusterException)) and settings is not None:
        return redis_failure(exc, settings)
    if isinstance(exc, OSError) and settings is not None and _under(exc.filename, settings.keys_dir):
        return keys_failure(exc, settings.keys_dir)
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from, depth first through exception groups."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BaseExceptionGroup):
            stack.extend(reversed(current.exceptions))
            continue
        yield current
        nested = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
        if nested is not None:
            stack.append(nested)


def _under(filename: object, folder: Path) -> bool:
    if not isinstance(filename, (str, Path)):
        return False
    path, base = Path(filename).absolute(), folder.absolute()
    return path == base or base in path.parents or path in base.parents


# -- the failures, one function each ----------------------------------------------------------------


def admin_jwks_failure(detail: str) -> StartupFailure:
    detail = detail.removeprefix("BROKER_ADMIN_JWKS ")
    return StartupFailure(f"BROKER_ADMIN_JWKS: {detail}; set it to the admin client's public key(s) as JSON, "
                          '{"keys": [{"kty": ..., "alg": ..., ...}]} (or unset it to use keys/admin.jwk)', CONFIGURATION)


def keys_failure(exc: BaseException, keys_dir: Path | None) -> StartupFailure:
    folder = keys_dir if keys_dir is not None else "the keys folder"
    if isinstance(exc, ConfigError):  # open to other users: the message names the chmod to run
        return StartupFailure(f"BROKER_KEYS_DIR: {exc}", CONFIGURATION)
    if isinstance(exc, KeyFileError):
        return StartupFailure(f"BROKER_KEYS_DIR: {exc}; restore {folder} from its backup or point BROKER_KEYS_DIR "
                              "at the replicas' shared keys folder", CONFIGURATION)
    assert isinstance(exc, OSError)
    what = exc.strerror or type(exc).__name__
    where = f"{exc.filename}" if exc.filename is not None else str(folder)
    return StartupFailure(f"BROKER_KEYS_DIR: cannot use {where} ({what}); create {folder} as a folder the broker's "
                          "user can write (mode 700), or point BROKER_KEYS_DIR elsewhere", ENVIRONMENT)


def redis_failure(exc: BaseException, settings: Settings) -> StartupFailure:
    var, where = redis_target(settings)
    text = str(exc)
    if isinstance(exc, AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        # (redis-py opens with HELLO: Redis then answers that it wants AUTH first)
        if "NOAUTH" in text or "Authentication required" in text or "already authenticated" in text:
            return StartupFailure(f"BROKER_REDIS_URL: {where} requires a password (NOAUTH); put it in the URL: "
                                  "redis://[user]:PASSWORD@host:port/db", CONFIGURATION)
        if "without any password configured" in text or "no password is set" in text:
            return StartupFailure(f"BROKER_REDIS_URL: {where} has no password set but the URL gives one; remove it "
                                  "from the URL or configure it in Redis (requirepass or ACL)", CONFIGURATION)
        return StartupFailure(f"BROKER_REDIS_URL: {where} refused the user name or password (WRONGPASS); fix them in "
                              "the URL: redis://[user]:PASSWORD@host:port/db", CONFIGURATION)
    if isinstance(exc, NoPermissionError):
        return StartupFailure(f"BROKER_REDIS_URL: the Redis user may not run a command the broker needs ({text[:120]}); "
                              "grant it in the Redis ACL (the broker runs scripts and key commands on its keys)",
                              CONFIGURATION)
    tls = _tls_failure(exc, where)
    if tls is not None:
        return StartupFailure(f"{var}: {tls}", CONFIGURATION)
    reason = _network_reason(exc)
    return StartupFailure(f"{var}: cannot reach {where} ({reason}); start Redis or fix the "
                          f"{'addresses' if var == 'BROKER_REDIS_SENTINELS' else 'URL'}"
                          f"{_scheme_hint(settings, reason)}", ENVIRONMENT)


def _tls_failure(exc: BaseException, where: str) -> str | None:
    """A TLS handshake the broker or Redis refused (the settings are wrong, not the network)."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (f"{where} presented a TLS certificate the broker does not trust "
                    f"({(cause.verify_message or 'certificate verify failed')[:120]}); give the CA that signed it "
                    "in the URL (rediss://host:port/db?ssl_ca_certs=/path/ca.pem), and connect by a name or "
                    "address the certificate holds")
    if any("CERTIFICATE_REQUIRED" in str(cause) for cause in _causes(exc)):  # the server's TLS 1.3 alert
        return (f"{where} asks for a client certificate (tls-auth-clients); give it in the URL: "
                "rediss://host:port/db?ssl_certfile=/path/cert.pem&ssl_keyfile=/path/key.pem")
    return None


def _scheme_hint(settings: Settings, reason: str) -> str:
    """What a plain-text client meeting a TLS port (or the reverse) looks like, said once."""
    scheme = (settings.redis_url or "").partition(":")[0]
    if scheme == "redis" and reason == "connection reset by the server":
        return " (a port that speaks only TLS resets plain-text connections: use rediss://)"
    if scheme == "rediss" and reason == "connection reset by the server":  # (TLS 1.3: the alert may be lost)
        return (" (a server that asks for a client certificate resets a client that sends none: "
                "ssl_certfile and ssl_keyfile in the URL)")
    if scheme == "rediss" and reason == "no answer in time":
        return " (a plain-text port does not answer a TLS handshake: use redis://, or the server's tls-port)"
    return ""


def redis_target(settings: Settings) -> tuple[str, str]:
    """The setting that says where Redis is, and where that is (password redacted)."""
    if settings.redis_sentinels:
        return ("BROKER_REDIS_SENTINELS",
                f"master {settings.redis_sentinel_master!r} at Sentinels {','.join(settings.redis_sentinels)}")
    return "BROKER_REDIS_URL", redact_url(settings.redis_url or "")


def _network_reason(exc: BaseException) -> str:
    text = str(exc)
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror):
            return "host not found"
        if isinstance(cause, (TimeoutError, socket.timeout)) or "Timeout" in type(cause).__name__:
            return "no answer in time"
        number = getattr(cause, "errno", None)
        if number == errno.ECONNREFUSED or "Connection refused" in str(cause):
            return "connection refused"
        if number == errno.ECONNRESET or "reset by peer" in str(cause):
            return "connection reset by the server"
        if number == errno.ENOENT or "No such file" in str(cause):
            return "no such socket file"
        if "Name or service not known" in str(cause) or "nodename nor servname" in str(cause):
            return "host not found"
    return text.splitlines()[0][:120] if text else type(exc).__name__


def port_failure(exc: OSError, host: str, port: int, setting: str) -> StartupFailure:
    """A listener that cannot bind: ``setting`` is ``--port`` or ``BROKER_MANAGEMENT_PORT``."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        fix = "choose another --port" if setting == "--port" else f"set {setting} to a free port"
        return StartupFailure(f"{setting}: {address} is already in use; stop the process listening there or {fix}",
                              ENVIRONMENT)
    if exc.errno == errno.EACCES:
        return StartupFailure(f"{setting}: not allowed to listen on {address} (ports below 1024 need privileges); "
                              "use a port from 1024 up", ENVIRONMENT)
    host_setting = "--host" if setting == "--port" else "BROKER_MANAGEMENT_HOST"
    return StartupFailure(f"{host_setting}: cannot listen on {address} ({exc.strerror}); use an address of this "
                          "machine (127.0.0.1, or 0.0.0.0 for every interface)", CONFIGURATION)
