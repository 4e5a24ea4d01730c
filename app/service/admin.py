"""Client administration (shaped after RFC 7591 / RFC 7592) and the admin client's bootstrap.

A client has either ``jwks`` (registered public keys) or ``jwks_uri`` (keys fetched by the broker,
see ``app.service.jwks_fetch``), never both. Metadata is validated by
``app.service.client_metadata.build_record``. ``legacy_token_endpoint_aud_until`` opens a
time-boxed migration window in which the token endpoint URL is also accepted as the assertion
``aud``; ``compat`` (``app.oauth.clients.CompatProfile``) relaxes named assertion rules for one
client whose library cannot follow them, for good. The optional declarative clients file
(``BROKER_CLIENTS_FILE``) is applied at start and on every change by ``app.service.clients_file``,
through ``assert_record``. ``import_record`` puts
back a whole record as ``broker_admin.py export`` wrote it (``PUT /admin/clients/{id}/record``).

Every write is conditional and atomic in the registry (``ClientRegistry.put``): a register
creates only an absent client_id (409 otherwise), an update replaces only the registration and
version it read (409 if the client changed, or was deleted and registered again, meanwhile), and
a public key registered for another client is refused (400 ``jwk_shared``) unless both
registrations set ``allow_shared_key``.

Admin clients (``ClientRecord.admin``) are the operator's: the bootstrap admin (from
``BROKER_ADMIN_JWKS`` or ``<keys_dir>/admin.jwk``), re-asserted in full at every start, and
clients-file entries with ``"admin": true``. The admin API cannot change or delete them, nor make
one.

Every admin call carries a broker-issued access token (RFC 6750 Bearer) whose audience is
``<issuer>/admin`` and whose scope holds ``broker:admin``, issued to an admin client's current
registration; the admin client got it from ``/token`` with private_key_jwt like any other
client. A DPoP-bound token (``cnf``) is refused: the admin API checks no DPoP proof, so accepting
one as Bearer would make its binding worthless. There is no unauthenticated admin operation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from app.config import ConfigError, Settings
from app.keystore import generate_private_key, import_private_jwk, public_jwk, read_json, write_private
from app.log import without_query
from app.oauth.access_token import InvalidToken, VerificationKey, verify_access_token
from app.oauth.clients import (
    ClientRecord,
    InvalidClientMetadata,
    jti_registration,
    new_registration_id,
    validate_client_jwks,
)
from app.oauth.constants import ADMIN_SCOPE
from app.service.client_metadata import (
    LEGACY_AUD_MAX_WINDOW,
    OPERATOR_FIELDS,
    build_record,
    read_clients_file,
    refuse_reserved_client_id,
    same_registration,
    with_identity,
)
from app.service.directory import ClientDirectory
from app.service.ssrf import refuse_inward_names
from app.store.base import CREATE, ClientRegistry, KeyShared, RecordUnreadable, RegistryConflict, TokenStore

__all__ = ["LEGACY_AUD_MAX_WINDOW", "AdminService", "Conflict", "Imported", "InsufficientScope", "NotFound",
           "admin_key_path",
           "bootstrap_admin_record", "build_record", "read_clients_file"]


class NotFound(Exception):
    pass


class Conflict(Exception):
    """409: ``exists`` (the client_id is registered) or ``changed`` (changed since it was read); an
    import also ``registration_differs``, ``newer`` or ``diverged``, with a ``detail`` saying how."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class Imported(msgspec.Struct, frozen=True):
    """What ``import_record`` did: ``created``, ``updated`` or ``unchanged``, and the stored record."""

    result: str
    client: ClientRecord


class InsufficientScope(Exception):
    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.scope = scope


class AdminService:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: ClientRegistry,
        directory: ClientDirectory,
        verification_keys: Callable[[], dict[str, VerificationKey]],
        log: Any,
        clock: Callable[[], float] = time.time,
        tokens: TokenStore,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._directory = directory
        self._tokens = tokens
        self._keys = verification_keys
        self._log = log
        self._clock = clock
        #: The clients file's watcher (``app.service.clients_file.ClientsFile``), when
        #: ``BROKER_CLIENTS_FILE`` is set: ``start_registrations`` applies the file through it.
        self.clients_file: Any = None

    async def authenticate(self, authorization: str | None) -> str:
        """Return the admin's client_id, or raise InvalidToken / InsufficientScope."""
        if not authorization:
            raise InvalidToken("token_missing")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise InvalidToken("token_missing")
        claims = verify_access_token(
            token.strip(), self._keys(), issuer=self._settings.issuer, audience=self._settings.admin_audience,
            now=self._clock(), leeway=self._settings.leeway,
        )
        if "cnf" in claims:  # sender-constrained (DPoP, RFC 9449 §7.2): its proof is not checked here
            raise InvalidToken("token_sender_constrained")
        if ADMIN_SCOPE not in claims["scope"].split(" "):
            raise InsufficientScope(ADMIN_SCOPE)
        client = await self._directory.get(claims["client_id"])
        if client is None or not client.record.enabled or not client.record.admin:
            raise InvalidToken("client_gone")
        if jti_registration(claims["jti"]) != client.record.registration_id:
            raise InvalidToken("registration_gone")  # issued to a deleted registration of this client_id
        # A revoked admin token (RFC 7009) is refused until it expires.
        if await self._tokens.is_revoked(claims["client_id"], claims["jti"]):
            raise InvalidToken("token_revoked")
        return claims["client_id"]

    # -- start-up (and again when a lost registry is restored) ---------------------------------

    async def start_registrations(self) -> None:
        """What every start asserts: the admin client, the clients file, the key index."""
        await self.bootstrap_admin()
        if self.clients_file is not None:
            await self.clients_file.load()
        await self.index_keys()

    async def bootstrap_admin(self) -> None:
        """Assert the admin client in full (``bootstrap_admin_record``): keys, scopes, audience,
        grant types, lifetime. A stored record that differs in anything is replaced (same
        registration, next version); an unchanged one is not rewritten."""
        admin = bootstrap_admin_record(self._settings, self._log, int(self._clock()))
        try:
            wrote = await self.assert_record(msgspec.structs.replace(admin, registration_id=new_registration_id()))
        except InvalidClientMetadata as exc:  # its key is registered for another client
            raise ConfigError(f"the admin client ({admin.client_id!r}): {exc.detail}") from None
        if wrote:
            self._log.info("admin.bootstrap_asserted", client_id=admin.client_id)

    async def assert_record(self, wanted: ClientRecord) -> bool:
        """Make the stored record say what ``wanted`` says (times, version and registration id
        aside, ``same_registration``). Absent: ``wanted`` is created as it is. Different: replaced
        in the same registration at the next version. Returns: whether it wrote.

        Every write is a compare-and-set, so replicas asserting the same record at the same moment
        write it once: the others find it already there."""
        for _ in range(3):
            current = await self._read(wanted.client_id)
            if current is not None and same_registration(current, wanted):
                return False
            record = wanted
            if current is not None:
                record = msgspec.structs.replace(wanted, registration_id=current.registration_id,
                                                 created_at=current.created_at, updated_at=int(self._clock()),
                                                 version=current.version + 1)
            try:
                await self._write(record, current if current is not None else CREATE)
            except Conflict:
                continue
            return True
        raise ConfigError(f"client {wanted.client_id!r} keeps changing under this start; start again")

    async def index_keys(self) -> None:
        """Bring records stored before the key index existed into it (keys they already share
        with another client are kept: only new registrations are refused)."""
        indexed = await self._registry.indexed_ids()
        for client_id in await self._registry.list_ids():
            record = None if client_id in indexed else await self._read(client_id)
            if record is None or not record.jwks.get("keys"):
                continue
            try:
                await self._registry.put(record, record, grandfather=True)
            except RegistryConflict:
                continue  # changed meanwhile: that write indexed it
            self._log.info("registry.keys_indexed", client_id=client_id)

    # -- operations -------------------------------------------------------------------------

    async def register(self, admin: str, metadata: Any) -> ClientRecord:
        _refuse_operator_fields(metadata)
        record = build_record(self._settings, metadata, existing=None, now=self._clock())
        refuse_reserved_client_id(self._settings, record.client_id)
        await self._refuse_inward_jwks_uri(record, previous=None)
        await self._write(record, CREATE)
        self._log.info("admin.client_registered", admin=admin, client_id=record.client_id,
                       kids=[k["kid"] for k in record.jwks.get("keys", ())], jwks_uri=without_query(record.jwks_uri))
        return record

    async def get(self, client_id: str) -> ClientRecord:
        record = await self._registry.get(client_id)
        if record is None:
            raise NotFound(client_id)
        return record

    async def list(self) -> list[ClientRecord]:
        out = []
        for cid in await self._registry.list_ids():
            record = await self._read(cid)
            if record is not None:
                out.append(record)
        return out

    async def update(self, admin: str, client_id: str, changes: Any) -> ClientRecord:
        current = await self.get(client_id)
        if not isinstance(changes, dict) or "client_id" in changes and changes["client_id"] != client_id:
            raise InvalidClientMetadata("metadata_invalid", "send a JSON object; client_id cannot change")
        _refuse_operator_fields(changes)
        self._refuse_admin_change(current, changes)
        merged = {**msgspec.to_builtins(current), **changes}
        # Switching between registered keys and a jwks_uri replaces the other one.
        if "jwks_uri" in changes and changes["jwks_uri"] is not None and "jwks" not in changes:
            merged.pop("jwks", None)
        if "jwks" in changes and "jwks_uri" not in changes:
            merged.pop("jwks_uri", None)
        record = build_record(self._settings, merged, existing=current, now=self._clock(), admin=current.admin)
        await self._refuse_inward_jwks_uri(record, previous=current.jwks_uri)
        await self._write(record, current)
        self._log.info("admin.client_updated", admin=admin, client_id=client_id, fields=sorted(changes))
        return record

    async def add_key(self, admin: str, client_id: str, jwk: Any) -> ClientRecord:
        current = await self.get(client_id)
        _has_static_keys(current)
        keys = list(current.jwks["keys"]) + [jwk]
        return await self.update(admin, client_id, {"jwks": {"keys": keys}})

    async def remove_key(self, admin: str, client_id: str, kid: str) -> ClientRecord:
        current = await self.get(client_id)
        _has_static_keys(current)
        keys = [k for k in current.jwks["keys"] if k.get("kid") != kid]
        if len(keys) == len(current.jwks["keys"]):
            raise NotFound(kid)
        if not keys:
            raise InvalidClientMetadata("jwks_empty", "a client needs at least one key; add the new key first or disable the client")
        return await self.update(admin, client_id, {"jwks": {"keys": keys}})

    async def delete(self, admin: str, client_id: str) -> None:
        if client_id == self._settings.admin_client_id:
            raise InvalidClientMetadata("admin_protected", "the bootstrap admin client cannot be deleted")
        try:
            current = await self._registry.get(client_id)
        except RecordUnreadable:
            current = None  # a record nothing can read may still be deleted
        if current is not None and current.admin:
            raise InvalidClientMetadata("admin_protected", _FILE_ADMIN)
        deleted = await self._registry.delete(client_id)
        self._directory.invalidate()
        if not deleted:
            raise NotFound(client_id)
        self._log.info("admin.client_deleted", admin=admin, client_id=client_id)

    # -- restore ----------------------------------------------------------------------------------

    async def import_record(self, admin: str, client_id: str, body: Any, *, force: bool) -> Imported:
        """Put back a whole record as ``broker_admin.py export`` wrote it, its registration id,
        version and times included, in one compare-and-set write (atomic per client).

        Absent → created; the very same record → unchanged (nothing written); the same registration
        at a lower version → updated. Another registration of the client_id, a newer version, or
        other content at the same version is refused (409) unless ``force``. Admin clients are
        never imported: they come from the operator's configuration."""
        record = self._imported_record(client_id, body)
        current = await self._registry.get(client_id)
        if current is not None and current.admin:
            raise InvalidClientMetadata("admin_protected", _FILE_ADMIN)
        if current == record:
            return Imported("unchanged", record)
        if current is not None:
            record = _over(current, record, force=force)
        await self._refuse_inward_jwks_uri(record, previous=current.jwks_uri if current else None)
        await self._write(record, current if current is not None else CREATE)
        result = "created" if current is None else "updated"
        self._log.info("admin.client_imported", admin=admin, client_id=client_id, result=result,
                       registration_id=record.registration_id, version=record.version, forced=force)
        return Imported(result, record)

    def _imported_record(self, client_id: str, body: Any) -> ClientRecord:
        if not isinstance(body, dict) or body.get("client_id", client_id) != client_id:
            raise InvalidClientMetadata("metadata_invalid", "send a JSON object (a whole record) whose client_id "
                                        "is the one in the path")
        if body.get("admin", False) is not False or client_id == self._settings.admin_client_id:
            raise InvalidClientMetadata("admin_protected", _NOT_IMPORTED)
        body = {**body, "client_id": client_id}
        record = build_record(self._settings, body, existing=None, now=self._clock())
        refuse_reserved_client_id(self._settings, client_id)
        return with_identity(record, body, required=True)

    # -- helpers --------------------------------------------------------------------------------

    async def _read(self, client_id: str) -> ClientRecord | None:
        try:
            return await self._registry.get(client_id)
        except RecordUnreadable:  # written by something else: reported, never breaks a listing
            self._log.error("admin.record_unreadable", client_id=client_id)
            return None

    async def _write(self, record: ClientRecord, expect: ClientRecord | str) -> None:
        try:
            await self._registry.put(record, expect)
        except RegistryConflict as exc:
            raise Conflict(exc.reason) from None
        except KeyShared as exc:
            raise InvalidClientMetadata(
                "jwk_shared", f"a public key (RFC 7638 thumbprint {exc.thumbprint[:64]}) is registered for another "
                f"client ({exc.holder[:128]!r}); give this client its own key, or set allow_shared_key on both") from None
        self._directory.invalidate()  # this replica at once; the others within the epoch poll

    def _refuse_admin_change(self, current: ClientRecord, changes: dict[str, Any]) -> None:
        if not current.admin and current.client_id != self._settings.admin_client_id:
            return
        stored = msgspec.to_builtins(current)
        changed = [name for name, value in changes.items() if stored.get(name) != value]
        if not changed:
            return
        if current.client_id != self._settings.admin_client_id:
            raise InvalidClientMetadata("admin_protected", _FILE_ADMIN)
        if changes.get("enabled") is False:
            raise InvalidClientMetadata("admin_protected", "the bootstrap admin client cannot be disabled")
        raise InvalidClientMetadata(
            "admin_protected", "the bootstrap admin client is configured by the operator (BROKER_ADMIN_JWKS or "
            "the admin key file) and re-asserted at every start; change it there")

    async def _refuse_inward_jwks_uri(self, record: ClientRecord, *, previous: str | None) -> None:
        """Early, best-effort refusal of a new jwks_uri whose name resolves inward (the fetch re-checks)."""
        if record.jwks_uri is not None and record.jwks_uri != previous:
            await refuse_inward_names(record.jwks_uri, allow_loopback=self._settings.jwks_uri_allow_http_loopback,
                                      timeout=self._settings.jwks_uri_timeout)


_FILE_ADMIN = "this admin client is configured by the operator in the clients file; change it there"
_NOT_IMPORTED = ("admin clients are not imported through the admin API: they come from the operator's configuration "
                 "(BROKER_ADMIN_JWKS, or \"admin\": true in the clients file)")


def _over(current: ClientRecord, record: ClientRecord, *, force: bool) -> ClientRecord:
    """The imported record to write over ``current``; ``Conflict`` when the stored one is another
    registration or not older, unless ``force``."""
    if current.registration_id != record.registration_id:
        reason, detail = "registration_differs", ("the registry holds another registration of this client_id "
                                                  "(deleted and registered again since the export)")
    elif current.version > record.version:
        reason, detail = "newer", (f"the registry holds a newer version of this registration (version "
                                   f"{current.version}; the record is version {record.version})")
    elif current.version == record.version:
        reason, detail = "diverged", f"the registry holds version {current.version} of this registration with other content"
    else:
        return record
    if not force:
        raise Conflict(reason, detail + "; force=true replaces it")
    if current.registration_id == record.registration_id:
        # Above the replaced version: the token cache keys on (registration, version), so nothing
        # cached for the replaced record is ever served for this one.
        return msgspec.structs.replace(record, version=current.version + 1)
    return record


def _refuse_operator_fields(metadata: Any) -> None:
    if isinstance(metadata, dict):
        named = [name for name in OPERATOR_FIELDS if name in metadata]
        if named:
            raise InvalidClientMetadata(
                "admin_protected", f"{named[0]} is set by the broker and the operator's configuration, not the admin API")


def _has_static_keys(record: ClientRecord) -> None:
    if record.jwks_uri is not None:
        raise InvalidClientMetadata(
            "client_uses_jwks_uri", "this client's keys come from its jwks_uri: rotate them there (the broker refetches on a new kid)"
        )


def admin_key_path(keys_dir: Path) -> Path:
    return keys_dir / "admin.jwk"


def bootstrap_admin_record(settings: Settings, log: Any, now: int) -> ClientRecord:
    """The admin client: public keys from BROKER_ADMIN_JWKS, or a key pair generated in keys/."""
    if settings.admin_jwks:
        try:
            source = msgspec.json.decode(settings.admin_jwks)
        except msgspec.DecodeError:
            raise InvalidClientMetadata("admin_jwks", "BROKER_ADMIN_JWKS is not valid JSON") from None
        keys = source.get("keys", [source]) if isinstance(source, dict) else []
    else:
        path = admin_key_path(settings.keys_dir)
        if not path.exists():
            key = generate_private_key("ES256")
            write_private(path, {**key.as_dict(private=True), "kid": key.thumbprint(), "alg": "ES256"})
            log.warning("admin.key_generated", path=str(path),
                        note="development bootstrap: keep this file private; set BROKER_ADMIN_JWKS in production")
        data = read_json(path)
        priv = import_private_jwk(data)
        keys = [public_jwk(priv, alg=data.get("alg", "ES256"), kid=data.get("kid"))]
    jwks = validate_client_jwks(keys)
    return ClientRecord(
        client_id=settings.admin_client_id,
        jwks=jwks,
        scopes=(ADMIN_SCOPE,),
        default_scopes=(ADMIN_SCOPE,),
        audiences=(settings.admin_audience,),
        default_audience=settings.admin_audience,
        token_lifetime=300,
        created_at=now,
        updated_at=now,
        admin=True,
    )
