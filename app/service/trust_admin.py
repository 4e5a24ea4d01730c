"""Trusted issuers (workload identity federation) through the admin API and the clients file.

A trusted issuer (``app.oauth.trust.TrustedIssuer``) lets workloads present the identity token
their platform gives them (Kubernetes, SPIRE, GitHub Actions) as their client assertion. Records
are validated by ``app.service.client_metadata.validate_trusted_issuer`` (``app.oauth.trust.trusted_issuer``
with ``allow_http_loopback`` = ``BROKER_JWKS_URI_ALLOW_HTTP_LOOPBACK``) and stored whole, one per issuer, in the ``TrustStore``
(a change moves the registry epoch: every replica reloads within its poll interval).

On top of that validation, a record is refused when:

- its issuer is the broker's own issuer (the broker's access tokens are not client assertions);
- a mapping rule names a client_id that is not registered (a typo would map no token, and the
  workload would only ever see ``invalid_client``: register the client first), or an admin client
  (admin rights come from the operator's keys, never from a platform token);
- the URL its keys would be fetched from (``jwks_uri``, or the issuer for OIDC discovery) is a
  private, loopback or link-local address, or a name resolving to one (best effort, as for a
  client's ``jwks_uri``: the fetch checks every address again);
- it would be issuer number ``MAX_ISSUERS + 1``.

Writes are create-or-replace (``put``): the issuer is the record's identity, the last write wins.
Every change is one audit line: ``trust.added``, ``trust.replaced``, ``trust.removed``, with
the admin (or ``source: clients_file``), the issuer, the key source and the mapped client_ids.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.config import Settings
from app.oauth.clients import InvalidClientMetadata
from app.oauth.trust import MAX_ISSUERS, TrustedIssuer
from app.service.admin import NotFound
from app.service.client_metadata import validate_trusted_issuer
from app.service.jwks_fetch import check_jwks_uri
from app.service.ssrf import refuse_inward_names
from app.store.base import ClientRegistry, RecordUnreadable, RegistryConflict, TrustStore


class IssuerNotFound(NotFound):
    """No trusted issuer with that identifier (404)."""


class Applied(msgspec.Struct, frozen=True):
    """What ``put`` did: ``created``, ``replaced`` or ``unchanged``, and the stored record."""

    result: str
    trusted_issuer: TrustedIssuer


def key_source(record: TrustedIssuer) -> str:
    """How the broker gets the issuer's keys: ``jwks``, ``jwks_uri`` or ``discovery``."""
    return "jwks" if record.jwks is not None else "jwks_uri" if record.jwks_uri is not None else "discovery"


class TrustAdmin:
    def __init__(self, settings: Settings, *, store: TrustStore, registry: ClientRegistry, log: Any) -> None:
        self._settings = settings
        self._store = store
        self._registry = registry
        self._log = log

    async def list(self) -> list[TrustedIssuer]:
        return sorted(await self._store.list_issuers(), key=lambda r: r.issuer)

    async def get(self, issuer: str) -> TrustedIssuer:
        record = await self._store.get_issuer(issuer)
        if record is None:
            raise IssuerNotFound(issuer)
        return record

    async def put(self, admin: str, body: Any) -> Applied:
        """Create or replace the trusted issuer ``body`` names (admin API)."""
        record = validate_trusted_issuer(self._settings, body)
        written = await self._write(record, admin=admin)
        return Applied("unchanged" if written is None else written, record)

    async def remove(self, admin: str, issuer: str) -> None:
        if not await self._store.delete_issuer(issuer):
            raise IssuerNotFound(issuer)
        self._log.info("trust.removed", admin=admin, issuer=issuer)

    async def assert_issuer(self, record: TrustedIssuer, *, source: str) -> bool:
        """Make the stored record ``record`` (the clients file). Returns: whether it wrote."""
        return await self._write(record, source=source) is not None

    async def _write(self, record: TrustedIssuer, **who: str) -> str | None:
        """Store ``record`` unless it is stored already: ``created``, ``replaced`` or None."""
        try:
            current: TrustedIssuer | None | bool = await self._store.get_issuer(record.issuer)
        except RecordUnreadable:  # written by something else: replaced whole
            current = False
        if current == record:
            return None
        await self._check(record, current or None)
        try:
            await self._store.put_issuer(record)
        except RegistryConflict:  # ``full``: another replica added one since _check counted
            raise _too_many() from None
        self._audit("trust.added" if current is None else "trust.replaced", record, **who)
        return "created" if current is None else "replaced"

    def _audit(self, event: str, record: TrustedIssuer, **who: str) -> None:
        self._log.info(event, **who, issuer=record.issuer, key_source=key_source(record), rules=len(record.rules),
                       client_ids=sorted({rule.client_id for rule in record.rules}), single_use=record.single_use)

    async def _check(self, record: TrustedIssuer, current: TrustedIssuer | None) -> None:
        """The checks that need the registry or the network (module docstring)."""
        if current is None and len(await self._store.list_issuers()) >= MAX_ISSUERS:
            raise _too_many()
        for client_id in sorted({rule.client_id for rule in record.rules}):
            client = await self._registry.get(client_id)
            if client is None:
                raise InvalidClientMetadata(
                    "trust_client_unknown", f"mapping rule client_id {client_id!r} is not registered: register the "
                    "client first (`broker_admin.py register`), then map tokens to it")
            if client.admin:
                raise InvalidClientMetadata(
                    "trust_client_admin", f"mapping rule client_id {client_id!r} is an admin client: admin rights "
                    "come from the operator's keys, never from a platform token")
        await self._refuse_inward(record, current)

    async def _refuse_inward(self, record: TrustedIssuer, current: TrustedIssuer | None) -> None:
        """Early, best-effort refusal of a key URL at a private address (the fetch re-checks)."""
        field, url = ("jwks_uri", record.jwks_uri) if record.jwks_uri is not None else ("issuer", record.discovery_url())
        if url is None or (current is not None and (current.jwks_uri, current.discovery_url()) == (
                record.jwks_uri, record.discovery_url())):
            return
        loopback = self._settings.jwks_uri_allow_http_loopback
        try:
            check_jwks_uri(url, allow_http_loopback=loopback)
            await refuse_inward_names(url, allow_loopback=loopback, timeout=self._settings.jwks_uri_timeout)
        except InvalidClientMetadata as exc:
            raise InvalidClientMetadata("trust_url_refused", exc.detail.replace("jwks_uri", field, 1)) from None


def _too_many() -> InvalidClientMetadata:
    return InvalidClientMetadata("trust_too_many", f"at most {MAX_ISSUERS} trusted issuers; remove one first")
