"""Whether the client registry this broker serves is still there: created once, a loss detected.

The registry (every client's keys, scopes and audiences, and the admin client) lives in Redis
only. A Redis that restarts without persistence, a ``FLUSHALL`` or a failover to an empty replica
empties it, and an empty registry must not pass for a registry with no clients. So the registry
carries a marker, its id (``{tb:registry}:id``), and the deployment remembers that id outside
Redis, in a file every replica reads: ``BROKER_REGISTRY_RECORD``, by default ``<keys_dir>/registry.id``
in the shared keys folder. On Kubernetes the pods read it from the signing-keys Secret's read-only
mount, and only the keys-init Job writes it (on its writable copy of the Secret).

At start (``open_registry``), with R = the marker in Redis and F = the recorded id:

======================  ===============================================================
R missing, F missing    the first start of this deployment: create the registry (marker
                        ``SET NX``: of several starting replicas one id wins) and record
                        its id in F. If F cannot be written (a read-only folder), no
                        registry is created: ``uninitialized`` until ``keys init`` (or
                        ``registry recreate``) runs where the folder is writable.
R missing, F = X        the registry was **lost**: nothing is created, nothing written
                        (no admin record either); 503 until it is restored.
R = X, F missing        a registry made elsewhere (``keys init``): adopt it, record it
                        (a replica whose F is read-only adopts it without recording it).
R = X, F = X            normal.
R = Y, F = X            Redis holds another deployment's registry: treated as lost.
======================  ===============================================================

Restoring is explicit: put back the data with its marker (a Redis backup), or accept the loss with
``python -m app registry recreate``, which sets the marker to F again (an empty registry, into
which ``broker_admin.py import`` puts back an export). The one automatic path: a clients file that
declares itself complete (``"restore_lost_registry": true``) lets a replica set a *missing* marker
to F again (``app.service.clients_file``). Every replica polls the marker with the epoch (``ClientDirectory.refresh``, one
``MGET``) and follows (``RegistryWatch``): marker gone → ``registry.lost`` (error, once),
``broker_registry_lost`` 1, ``/readyz`` 503, clients answered 503; marker back → the start-up
registrations (admin client, clients file) are re-asserted, then ``registry.restored``.

A replica never writes F where it cannot (a read-only mount): it logs why instead. The operator's
commands (``keys init``, ``registry init|recreate``) exist to record F, so there an F that must be
written and cannot be is a one-line ``ConfigError`` naming ``BROKER_REGISTRY_RECORD``, raised
before anything is created in Redis.

The embedded store (fakeredis) lives and dies with the process: each start creates its registry
and nothing is recorded.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import msgspec

from app.config import ConfigError, Settings
from app.keystore import read_only
from app.metrics import REGISTRY_LOST, Metrics
from app.oauth.clients import new_registration_id
from app.store.base import ClientRegistry, StoreUnavailable

#: The file in the keys folder that records the id of the registry this deployment created,
#: unless BROKER_REGISTRY_RECORD names another path.
RECORD_FILE = "registry.id"

State = Literal["ok", "lost", "uninitialized"]


class RegistryRecord:
    """The file that holds the registry id (``BROKER_REGISTRY_RECORD``, default
    ``<keys_dir>/registry.id``), written once per deployment (mode 0644, not secret)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_settings(cls, settings: Settings) -> RegistryRecord:
        return cls(Path(settings.registry_record) if settings.registry_record else settings.keys_dir / RECORD_FILE)

    def read(self) -> str | None:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"BROKER_REGISTRY_RECORD={self.path}: cannot read it ({type(exc).__name__})") from None
        return text or None

    def writable(self) -> bool:
        return self._unwritable() is None

    def _unwritable(self) -> str | None:
        """Why this process cannot write the record, or None. Read-only is the mount's flag
        (``statvfs``), which holds for root too; the folder is the nearest one that exists
        (``write`` creates the missing ones)."""
        existing = next(p for p in self.path.parents if p.exists())
        if read_only(existing):
            return f"{existing} is read-only"
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            return f"{existing} is not a folder this user can write"
        return None

    def require_writable(self) -> None:
        """For the commands that exist to record the id: one line naming the setting, not a traceback."""
        reason = self._unwritable()
        if reason is not None:
            raise ConfigError(f"BROKER_REGISTRY_RECORD={self.path}: the registry's id must be recorded there and "
                              f"{reason}; run this where it can be written (on Kubernetes: the keys-init Job, "
                              f"docs/kubernetes.md), or point BROKER_REGISTRY_RECORD elsewhere")

    def write(self, registry_id: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{RECORD_FILE}.{os.getpid()}")
        temporary.write_text(registry_id + "\n", encoding="ascii")
        os.replace(temporary, self.path)  # whole or absent, also with several replicas writing


class RegistryStatus(msgspec.Struct, frozen=True):
    state: State
    #: The registry id this broker serves (None: not known yet).
    expected: str | None
    marker: str | None
    #: For ``lost``: ``missing`` (no marker) or ``replaced`` (another registry's marker).
    reason: str | None = None


async def open_registry(registry: ClientRegistry, record: RegistryRecord | None, *, log: Any) -> RegistryStatus:
    """Decide the start-up state (module docstring) and point the store's writes at the registry.

    ``record`` is None for the embedded store. Raises ``StoreUnavailable`` when Redis cannot answer.
    """
    marker = (await registry.poll()).marker
    known = record.read() if record is not None else None
    if marker is None and known is None:
        if record is not None and not record.writable():
            log.error("registry.uninitialized", path=str(record.path),
                      note="no registry yet and BROKER_REGISTRY_RECORD cannot be written here: run `python -m app keys init` "
                           "where it is writable")
            return RegistryStatus("uninitialized", None, None)
        marker = await registry.create(new_registration_id())
        log.info("registry.created", registry_id=marker)
    elif marker is None or (known is not None and marker != known):
        registry.registry_id = known
        return RegistryStatus("lost", known, marker, "missing" if marker is None else "replaced")
    if record is not None and known != marker:
        _remember(record, marker, log)
    registry.registry_id = marker
    return RegistryStatus("ok", marker, marker)


def _remember(record: RegistryRecord, registry_id: str, log: Any) -> None:
    if record.writable():
        record.write(registry_id)
        log.info("registry.recorded", registry_id=registry_id, path=str(record.path))
    else:  # adopted from Redis without a record: a loss is still seen while running, not at a restart
        log.warning("registry.unrecorded", registry_id=registry_id, path=str(record.path),
                    note="BROKER_REGISTRY_RECORD cannot be written here: run `python -m app keys init` where it is "
                         "writable to record the registry")


class RegistryWatch:
    """One replica's view of the registry's marker, updated by every registry poll."""

    def __init__(self, registry: ClientRegistry, record: RegistryRecord | None, *, log: Any, metrics: Metrics) -> None:
        self._registry = registry
        self._record = record
        self._log = log
        self._metrics = metrics
        self.status = RegistryStatus("uninitialized", None, None)
        #: True while the registry cannot be served (lost, or not created yet). A plain attribute:
        #: every client lookup reads it.
        self.lost = True
        #: Re-asserts the start-up registrations (admin client, clients file) on a restored registry.
        self.on_restored: Callable[[], Awaitable[None]] | None = None
        self._restore_error: str | None = None

    def _set(self, status: RegistryStatus) -> None:
        self.status = status
        self.lost = status.state != "ok"
        self._metrics.set(REGISTRY_LOST, 1.0 if self.lost else 0.0)

    def started(self, status: RegistryStatus) -> None:
        self._set(status)
        if status.state == "lost":
            self._log_lost(status)

    async def observe(self, marker: str | None) -> None:
        """The marker as the latest poll read it: note a loss, or follow a restore."""
        expected = self.status.expected
        if marker is not None and (expected is None or marker == expected):
            if self.lost:
                await self._restore(marker)
            return
        if not self.lost:
            self._set(RegistryStatus("lost", expected, marker, "missing" if marker is None else "replaced"))
            self._log_lost(self.status)

    async def _restore(self, marker: str) -> None:
        if self.status.expected is None and self._record is not None:
            _remember(self._record, marker, self._log)
        self._registry.registry_id = marker
        if self.on_restored is not None:
            try:
                await self.on_restored()
            except Exception as exc:  # stay "lost": the next poll tries again (logged once per cause)
                cause = f"{type(exc).__name__}: {exc}"
                if cause != self._restore_error:
                    self._log.error("registry.restore_pending", error=cause[:300])
                self._restore_error = cause
                return
        self._restore_error = None
        self._set(RegistryStatus("ok", marker, marker))
        self._log.warning("registry.restored", registry_id=marker)

    def _log_lost(self, status: RegistryStatus) -> None:
        self._log.error("registry.lost", reason=status.reason, registry_id=status.expected, marker=status.marker,
                        note="every client is unknown until the registry is restored: see docs/operations.md")


async def warn_without_persistence(registry: Any, log: Any) -> None:
    """At start: the registry is the system of record, so a Redis that keeps nothing is worth a warning."""
    persists = await registry.persistence()
    if persists is None:
        log.warning("redis.persistence_unknown",
                    note="CONFIG GET is not allowed: make sure this Redis persists its data (AOF or RDB)")
    elif not persists:
        log.warning("redis.no_persistence",
                    note="appendonly is off and save is empty: a Redis restart loses every registered client")


# -- the operator's commands (python -m app keys init / registry ...) ----------------------------


def command(settings: Any, action: str, log: Any) -> int:
    """``init``: what a first start does (create or adopt, and record the id). ``status``: print the
    state as JSON. ``recreate``: after a loss, set the marker to the recorded id again: the
    registry is served again, empty but for what was restored into it.

    Returns: the exit status: 0 the registry is served, 1 it is not (lost, uninitialized, or a
    recreate refused), 3 Redis did not answer."""
    from app.store.redis import RedisClientRegistry, connect

    async def run() -> int:
        client = connect(settings.redis_url, timeout=settings.redis_timeout, retries=settings.redis_retries,
                         cluster=settings.redis_cluster, sentinels=settings.redis_sentinels,
                         sentinel_master=settings.redis_sentinel_master)
        try:
            registry = RedisClientRegistry(client, timeout=settings.redis_timeout, retries=settings.redis_retries)
            return await _command(registry, RegistryRecord.for_settings(settings), action, log)
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except StoreUnavailable as exc:
        print(f"token-broker: Redis did not answer ({exc}); nothing was changed", file=sys.stderr)
        return 3


async def _command(registry: ClientRegistry, record: RegistryRecord, action: str, log: Any) -> int:
    if action != "status" and record.read() is None:
        record.require_writable()  # init and recreate record the id when none is: before Redis is touched
    if action == "recreate":
        known, marker = record.read(), (await registry.poll()).marker
        if marker is not None and known is not None and marker != known:
            print(f"token-broker: Redis holds another registry ({marker}); this deployment's is {known}. "
                  f"To serve the one in Redis instead, delete {record.path} and run `registry init`.", file=sys.stderr)
            return 1
        if marker is None:
            marker = await registry.create(known or new_registration_id())
            log.warning("registry.recreated", registry_id=marker,
                        note="an empty registry: restore or re-register the clients; replicas re-add the admin client")
        if known is None:
            _remember(record, marker, log)
    status = await open_registry(registry, record, log=log) if action != "status" else await _status(registry, record)
    if status.state == "lost":  # (open_registry logs "uninitialized" itself)
        log.error("registry.lost", reason=status.reason, registry_id=status.expected, marker=status.marker)
    print(msgspec.json.encode({"registry": status.state, "registry_id": status.expected, "marker": status.marker,
                               "reason": status.reason}).decode())
    return 0 if status.state == "ok" else 1


async def _status(registry: ClientRegistry, record: RegistryRecord) -> RegistryStatus:
    known, marker = record.read(), (await registry.poll()).marker
    if marker is not None and known in (None, marker):
        return RegistryStatus("ok", marker, marker)
    if marker is None and known is None:
        return RegistryStatus("uninitialized", None, None)
    return RegistryStatus("lost", known, marker, "missing" if marker is None else "replaced")
