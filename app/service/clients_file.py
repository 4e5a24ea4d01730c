"""The declarative clients file (``BROKER_CLIENTS_FILE``), kept applied while the broker runs.

Teams that keep their clients in git point every replica at the same file (a shared volume, a
ConfigMap). Each replica:

* applies it at start (an invalid file stops the start: ``serve`` checks it before any worker)
  and when a lost registry is restored (``AdminService.start_registrations`` calls ``load``);
* looks at it every ``POLL_INTERVAL`` seconds (one ``stat``: inode, size, modification time) and
  applies a new version without a restart. A version that does not validate (half-written, not
  JSON, an invalid entry, deleted) is logged once (``clients_file.invalid``) and counted
  (``broker_clients_file_errors_total``), and the version applied before stays in force. Write
  the new file next to the old one and rename it over it (``mv``, as git and config-management
  tools do), so a reader sees one version or the other;
* applies it again whenever the registry changed (its epoch moved): the file wins for the clients
  it lists. A listed client that no longer says what the file says, although its entry did not
  change, was changed elsewhere (the admin API, an import): it is put back, logged as
  ``clients_file.drift`` with the client_ids, and counted (``broker_clients_file_drift_total``).
  Clients the file does not list are left alone; removing an entry does not delete the client.

The file may also list trusted issuers of workload identity federation (``"trusted_issuers":
[...]``, records as ``app.oauth.trust.trusted_issuer`` accepts them, docs/workload-identity.md).
They follow the same rules, applied after the clients (a mapping rule may name a client the file
lists) through ``TrustAdmin.assert_issuer``: the file wins for the issuers it lists (drift is
logged with ``trusted_issuers``), an issuer dropped from the file stays stored, an entry the
registry refuses (a rule naming a client that is not registered) stops the start and is logged
once as ``clients_file.issuer_refused`` later, and they are re-asserted with the clients when a lost
registry is restored or re-created from the file.

Every write is ``AdminService.assert_record``: a compare-and-set that writes only what differs, so
replicas applying the same file write each change once and never undo each other. (Replicas that
see *different* versions, during a rollout of the file, each put back their own until they agree.)

A lost registry (``app.service.registry_state``) is normally brought back by the operator only
(``registry recreate`` or a Redis restore), because an empty registry must not pass for one with
no clients. A file that says ``"restore_lost_registry": true`` at the top declares that it lists
every client that matters: a replica that sees the registry's marker *missing* (not replaced by
another deployment's) sets it again to the deployment's recorded id (``SET NX``: of several
replicas one sets it) and logs ``clients_file.reseeded``; every replica then follows as after a
``registry recreate``, re-asserting the admin client and applying the file. Clients that were
registered only through the admin API are not in the file: they stay lost.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from app.config import ConfigError, Settings
from app.metrics import CLIENTS_FILE_DRIFT, CLIENTS_FILE_ERRORS, Metrics
from app.oauth.clients import InvalidClientMetadata
from app.oauth.trust import TrustedIssuer
from app.service.admin import AdminService
from app.service.client_metadata import ClientsDocument, read_clients_document, same_registration
from app.service.registry_state import RegistryWatch
from app.service.trust_admin import TrustAdmin
from app.store.base import ClientRegistry, StoreUnavailable

#: How often each replica looks at the file (seconds).
POLL_INTERVAL = 2.0
#: Marks a trusted issuer among the client_ids of the pending, refused and drifted sets (a
#: client_id cannot contain a space).
TRUST = "trusted issuer "


class ClientsFile:
    """One replica's view of the clients file: the version in force, and what is still to apply."""

    def __init__(self, path: str, *, settings: Settings, admin: AdminService, registry: ClientRegistry,
                 watch: RegistryWatch, log: Any, metrics: Metrics, clock: Callable[[], float],
                 interval: float = POLL_INTERVAL, trust: TrustAdmin | None = None) -> None:
        self.path = path
        self._settings = settings
        self._admin = admin
        self._registry = registry
        self._watch = watch
        self._log = log
        self._metrics = metrics
        self._clock = clock
        self._interval = interval
        self._trust = trust
        #: The version in force (the last one that validated).
        self._document: ClientsDocument | None = None
        #: (inode, size, mtime) of the last version read, valid or not.
        self._seen: tuple[int, int, int] | None = None
        #: Entries that changed in the file and are not applied yet (their writes are not drift):
        #: client_ids, and ``TRUST`` + issuer for trusted issuers.
        self._pending: set[str] = set()
        #: The registry epoch the file was last applied at (None: apply at the next check).
        self._epoch: int | None = None
        #: Clients the registry refused in the version in force (each logged once).
        self._refused: set[str] = set()
        self._reseeding = False
        #: One check or load at a time (the poller, and a restored registry's ``load``): a write
        #: is told apart from drift by what is pending, which a concurrent pass would clear.
        self._lock = asyncio.Lock()

    def _fingerprint(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _read(self) -> ClientsDocument:
        return read_clients_document(self._settings, self.path, now=self._clock())

    def _invalid(self, exc: ConfigError) -> None:
        self._log.error("clients_file.invalid", path=self.path, error=str(exc),
                        note="the version applied before stays in force")
        self._metrics.inc(CLIENTS_FILE_ERRORS)

    # -- start, and a restored registry ---------------------------------------------------------

    async def load(self) -> None:
        """Apply the file in full. Raises ``ConfigError`` (the start stops) for an invalid file at
        start, or a listed key registered for a client the file does not list; on a restored
        registry an invalid file is logged and the version in force is applied instead."""
        async with self._lock:
            await self._load()

    async def _load(self) -> None:
        seen = self._fingerprint()
        try:
            document = self._read()
        except ConfigError as exc:
            if self._document is None:
                raise
            if seen != self._seen:
                self._invalid(exc)
            document = self._document
        self._document, self._seen, self._pending, self._epoch, self._refused = document, seen, set(), None, set()
        written = 0
        for record in document.clients:
            try:
                if not await self._admin.assert_record(record):
                    continue
            except InvalidClientMetadata as exc:  # a key registered for a client not in the file
                raise ConfigError(f"BROKER_CLIENTS_FILE={self.path}: client {record.client_id!r}: {exc.detail}") from None
            written += 1
            self._log.info("admin.client_loaded", source="clients_file", client_id=record.client_id)
        for issuer in document.trusted_issuers:
            try:
                written += await self._assert_issuer(issuer)
            except InvalidClientMetadata as exc:  # e.g. a rule naming a client that is not registered
                raise ConfigError(f"BROKER_CLIENTS_FILE={self.path}: trusted issuer {issuer.issuer!r}: {exc.detail}") from None
        self._log.info("admin.clients_file_loaded", path=self.path, clients=len(document.clients), changed=written,
                       trusted_issuers=len(document.trusted_issuers))

    async def _assert_issuer(self, record: TrustedIssuer) -> bool:
        if self._trust is None:
            raise ConfigError("trusted issuers in the clients file need the trusted-issuer store")
        return await self._trust.assert_issuer(record, source="clients_file")

    # -- while running --------------------------------------------------------------------------

    async def check(self) -> None:
        """One poll: re-create a lost registry (when the file allows it), or apply the file when
        it or the registry changed."""
        async with self._lock:
            await self._check()

    async def _check(self) -> None:
        if self._watch.lost:
            await self._reseed()
            return
        self._reseeding = False
        changed = self._reread()
        epoch = await self._registry.epoch()
        if not changed and epoch == self._epoch:
            return
        await self._reconcile()
        self._epoch = epoch  # our own writes moved it on: the next check looks once more (and finds nothing)

    def _reread(self) -> bool:
        """Read the file if it changed on disk. Returns: whether a new version is in force."""
        seen = self._fingerprint()
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            document = self._read()
        except ConfigError as exc:
            self._invalid(exc)
            return False
        before = {r.client_id: r for r in self._document.clients} if self._document is not None else {}
        self._pending |= {r.client_id for r in document.clients
                          if r.client_id not in before or not same_registration(before[r.client_id], r)}
        issuers_before = self._document.trusted_issuers if self._document is not None else []
        self._pending |= {TRUST + r.issuer for r in document.trusted_issuers if r not in issuers_before}
        self._document, self._refused = document, set()
        self._log.info("clients_file.changed", path=self.path, clients=len(document.clients),
                       changed=sorted(self._pending))
        return True

    async def _reconcile(self) -> None:
        assert self._document is not None
        drift: list[str] = []
        for record in self._document.clients:
            try:
                wrote = await self._admin.assert_record(record)
            except (InvalidClientMetadata, ConfigError) as exc:
                self._refuse(record.client_id, getattr(exc, "detail", str(exc)))
                continue
            if wrote:
                self._log.info("admin.client_loaded", source="clients_file", client_id=record.client_id)
                if record.client_id not in self._pending:
                    drift.append(record.client_id)
        issuers = await self._reconcile_issuers()
        self._pending = set()
        if drift or issuers:
            self._log.warning("clients_file.drift", path=self.path, client_ids=drift,
                              **({"trusted_issuers": issuers} if issuers else {}),
                              note="changed outside the clients file (admin API, import) and put back to what the "
                                   "file says: the file wins for the clients it lists; change them there")
            self._metrics.inc(CLIENTS_FILE_DRIFT, len(drift) + len(issuers))

    async def _reconcile_issuers(self) -> list[str]:
        """Apply the file's trusted issuers. Returns: the issuers put back (drift)."""
        assert self._document is not None
        drift: list[str] = []
        for record in self._document.trusted_issuers:
            try:
                wrote = await self._assert_issuer(record)
            except (InvalidClientMetadata, ConfigError) as exc:
                self._refuse(TRUST + record.issuer, getattr(exc, "detail", str(exc)))
                continue
            if wrote and TRUST + record.issuer not in self._pending:
                drift.append(record.issuer)
        return drift

    def _refuse(self, client_id: str, detail: str) -> None:
        if client_id not in self._refused:
            self._refused.add(client_id)
            if client_id.startswith(TRUST):
                self._log.error("clients_file.issuer_refused", path=self.path, issuer=client_id[len(TRUST):],
                                error=detail[:300])
            else:
                self._log.error("clients_file.client_refused", path=self.path, client_id=client_id, error=detail[:300])
            self._metrics.inc(CLIENTS_FILE_ERRORS)

    async def _reseed(self) -> None:
        """A lost registry, re-created from the file when it says ``restore_lost_registry``."""
        status = self._watch.status
        self._reread()
        if (status.reason != "missing" or status.expected is None or self._document is None
                or not self._document.restore_lost_registry):
            return
        marker = await self._registry.create(status.expected)
        if not self._reseeding:
            self._reseeding = True
            self._log.warning("clients_file.reseeded", path=self.path, registry_id=marker,
                              clients=len(self._document.clients),
                              note="the lost registry was re-created for the clients file; clients registered only "
                                   "through the admin API are not in it and stay lost")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except StoreUnavailable:
                self._epoch = None  # Redis did not answer: apply again once it does
            except Exception as exc:  # never let the poller die: the file would silently stop applying
                self._log.error("clients_file.check_failed", error=type(exc).__name__)
