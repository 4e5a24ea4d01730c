"""Checks ``serve`` runs in the starting process, before any worker: each failure is one line.

What a worker would otherwise find in its start-up (and report as a traceback, once per worker)
is checked here once: the admin JWKS parses, the keys folder is usable (its first signing key is
created here, before workers start), the clients file is valid, Redis answers and accepts the
credentials. The listeners' ports are bound by ``bind`` (``app.web.listeners``) before the app
starts, so a taken port is reported the same way.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from app.config import Settings
from app.keystore import KeyFileError
from app.oauth.clients import InvalidClientMetadata
from app.start_failures import CONFIGURATION, StartupFailure, admin_jwks_failure, keys_failure, port_failure, redis_failure

#: Seconds the one Redis check may take to connect and answer (the serving timeouts are shorter:
#: a first TLS connection, or a Sentinel lookup, may need more than one command's budget).
REDIS_CHECK_TIMEOUT = 2.0


def check(settings: Settings) -> None:
    """Raise ``StartupFailure`` for the first check that fails."""
    tracing_packages(settings)
    admin_jwks(settings)
    keys_folder(settings)
    clients_file(settings)
    redis(settings)


def tracing_packages(settings: Settings) -> None:
    from app.tracing import missing_packages

    problem = missing_packages(settings)
    if problem:
        raise StartupFailure(problem, CONFIGURATION)


def admin_jwks(settings: Settings) -> None:
    from app.service.admin import bootstrap_admin_record

    if not settings.admin_jwks:  # the development key pair is made (or read) by keys_folder's start
        return
    try:
        record = bootstrap_admin_record(settings, None, int(time.time()))
    except InvalidClientMetadata as exc:
        raise admin_jwks_failure(exc.detail) from None
    if not record.jwks.get("keys"):
        raise admin_jwks_failure("holds no key")


def keys_folder(settings: Settings) -> None:
    """Load the signing keys, creating the first one in an empty folder (once, before workers fork)."""
    from app.keystore import ensure_signing_keys

    try:
        ensure_signing_keys(settings.keys_dir, settings.signing_alg)
    except (KeyFileError, OSError) as exc:
        raise keys_failure(exc, settings.keys_dir) from None


def clients_file(settings: Settings) -> None:
    """The same check the start-up load makes (its ``ConfigError`` names the file and the client)."""
    from app.service.admin import read_clients_file

    if settings.clients_file:
        read_clients_file(settings, settings.clients_file, now=time.time())


def redis(settings: Settings) -> None:
    """One PING with a short timeout: reachable, and the credentials accepted."""
    if settings.embedded:
        return
    try:
        asyncio.run(_ping(settings))
    except Exception as exc:
        raise redis_failure(exc, settings) from None


async def _ping(settings: Settings) -> None:
    from app.store.redis import connect

    client: Any = connect(settings.redis_url, timeout=REDIS_CHECK_TIMEOUT, retries=0, cluster=settings.redis_cluster,
                          sentinels=settings.redis_sentinels, sentinel_master=settings.redis_sentinel_master)
    try:
        async with asyncio.timeout(REDIS_CHECK_TIMEOUT * 2):
            await client.ping()
    finally:
        await client.aclose()


def bind_listeners(settings: Settings, host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """The public (``--host``/``--port``) and the management listener's sockets, bound."""
    public = bind(host, port, "--port")
    try:
        return public, bind(settings.management_host, settings.management_port, "BROKER_MANAGEMENT_PORT")
    except BaseException:
        public.close()
        raise


def bind(host: str, port: int, setting: str) -> socket.socket:
    """A bound, inheritable TCP socket (listening starts in each worker); ``setting`` names the
    port in the failure: ``--port`` or ``BROKER_MANAGEMENT_PORT``."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise port_failure(exc, host, port, setting) from None
    sock.set_inheritable(True)
    return sock


__all__ = ["REDIS_CHECK_TIMEOUT", "StartupFailure", "bind", "bind_listeners", "check"]
