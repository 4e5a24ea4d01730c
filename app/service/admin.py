"""Client administration (shaped after RFC 7591 / RFC 7592) and the admin client's bootstrap.

A client has either ``jwks`` (registered public keys) or ``jwks_uri`` (keys fetched by the broker,
see ``app.service.jwks_fetch``), never both. ``legacy_token_endpoint_aud_until`` opens a
time-boxed migration window (at most ``LEGACY_AUD_MAX_WINDOW`` ahead) in which the token endpoint
URL is also accepted as the assertion ``aud``. client_ids in a user-subject namespace (reserved
prefixes such as ``user:``: an access token's ``sub`` is the client_id) are refused at registration. ``load_clients_file`` applies an optional
declarative clients file (``BROKER_CLIENTS_FILE``) at start.

Every admin call carries a broker-issued access token (RFC 6750 Bearer) whose audience is
``<issuer>/admin`` and whose scope holds ``broker:admin``; the admin client got it from ``/token``
with private_key_jwt like any other client. There is no unauthenticated admin operation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from app.config import ConfigError, Settings
from app.keystore import generate_private_key, import_private_jwk, public_jwk, read_json, write_private
from app.oauth.access_token import InvalidToken, VerificationKey, verify_access_token
from app.oauth.clients import (
    CLIENT_ID_RE,
    RESERVED_CLIENT_ID_PREFIXES,
    ClientRecord,
    InvalidClientMetadata,
    client_id_reserved,
    validate_client_jwks,
    validate_scope_list,
)
from app.oauth.constants import ADMIN_SCOPE, ALG_KEY_TYPES
from app.service.ssrf import refuse_inward_names
from app.oauth.errors import InvalidTarget
from app.oauth.grant import check_resource
from app.service.directory import ClientDirectory
from app.service.jwks_fetch import check_jwks_uri
from app.store.base import ClientRegistry, TokenStore

LEGACY_AUD_MAX_WINDOW = 366 * 86400
_GRANT_TYPES = frozenset({"client_credentials"})


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


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
        if ADMIN_SCOPE not in claims["scope"].split(" "):
            raise InsufficientScope(ADMIN_SCOPE)
        client = await self._directory.get(claims["client_id"])
        if client is None or not client.record.enabled:
            raise InvalidToken("client_gone")
        # A revoked admin token (RFC 7009) is refused until it expires.
        if await self._tokens.is_revoked(claims["client_id"], claims["jti"]):
            raise InvalidToken("token_revoked")
        return claims["client_id"]

    async def bootstrap_admin(self) -> None:
        """Register the admin client at start (``bootstrap_admin_record``), or bring the stored one
        up to date when its keys or audience changed; an unchanged record is not rewritten."""
        admin = bootstrap_admin_record(self._settings, self._log, int(self._clock()))
        existing = await self._registry.get(admin.client_id)
        if existing is not None and existing.jwks == admin.jwks and existing.audiences == admin.audiences:
            return
        if existing is not None:  # a new registration version: the token cache keys on it
            admin = msgspec.structs.replace(admin, version=existing.version + 1)
        await self._registry.put(admin)

    # -- operations -------------------------------------------------------------------------

    async def register(self, admin: str, metadata: Any) -> ClientRecord:
        record = self._build(metadata, existing=None)
        if client_id_reserved(record.client_id, (*RESERVED_CLIENT_ID_PREFIXES, *self._settings.reserved_client_id_prefixes)):
            raise InvalidClientMetadata(
                "client_id_reserved",
                "client_id starts with a prefix reserved for user subjects (user:, usr:, uid:, ...); "
                "an access token's sub is the client_id, so pick a service name such as 'billing-api'",
            )
        if await self._registry.get(record.client_id) is not None:
            raise Conflict(record.client_id)
        await self._refuse_inward_jwks_uri(record, previous=None)
        await self._registry.put(record)
        self._directory.invalidate()  # this replica at once; the others within the epoch poll
        self._log.info("admin.client_registered", admin=admin, client_id=record.client_id,
                       kids=[k["kid"] for k in record.jwks.get("keys", ())], jwks_uri=record.jwks_uri)
        return record

    async def get(self, client_id: str) -> ClientRecord:
        record = await self._registry.get(client_id)
        if record is None:
            raise NotFound(client_id)
        return record

    async def list(self) -> list[ClientRecord]:
        out = []
        for cid in await self._registry.list_ids():
            record = await self._registry.get(cid)
            if record is not None:
                out.append(record)
        return out

    async def update(self, admin: str, client_id: str, changes: Any) -> ClientRecord:
        current = await self.get(client_id)
        if not isinstance(changes, dict) or "client_id" in changes and changes["client_id"] != client_id:
            raise InvalidClientMetadata("metadata_invalid", "send a JSON object; client_id cannot change")
        if client_id == self._settings.admin_client_id and changes.get("enabled") is False:
            raise InvalidClientMetadata("admin_protected", "the bootstrap admin client cannot be disabled")
        merged = {**msgspec.to_builtins(current), **changes}
        # Switching between registered keys and a jwks_uri replaces the other one.
        if "jwks_uri" in changes and changes["jwks_uri"] is not None and "jwks" not in changes:
            merged.pop("jwks", None)
        if "jwks" in changes and "jwks_uri" not in changes:
            merged.pop("jwks_uri", None)
        record = self._build(merged, existing=current)
        await self._refuse_inward_jwks_uri(record, previous=current.jwks_uri)
        await self._registry.put(record)
        self._directory.invalidate()  # this replica at once; the others within the epoch poll
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
        keys = [k for k in current.jwks["keys"] if k["kid"] != kid]
        if len(keys) == len(current.jwks["keys"]):
            raise NotFound(kid)
        if not keys:
            raise InvalidClientMetadata("jwks_empty", "a client needs at least one key; add the new key first or disable the client")
        return await self.update(admin, client_id, {"jwks": {"keys": keys}})

    async def delete(self, admin: str, client_id: str) -> None:
        if client_id == self._settings.admin_client_id:
            raise InvalidClientMetadata("admin_protected", "the bootstrap admin client cannot be deleted")
        deleted = await self._registry.delete(client_id)
        self._directory.invalidate()
        if not deleted:
            raise NotFound(client_id)
        self._log.info("admin.client_deleted", admin=admin, client_id=client_id)

    async def load_clients_file(self, path: str) -> int:
        """Create or replace every client listed in a JSON file (see ``read_clients_file``).

        Clients not in the file are left alone; a client whose stored record already matches is
        not rewritten (so every replica can load the same file at start).
        """
        records = read_clients_file(self._settings, path, now=self._clock())
        changed = 0
        for record in records:
            current = await self._registry.get(record.client_id)
            if current is not None and _same(current, record):
                continue
            if current is not None:
                record = msgspec.structs.replace(record, created_at=current.created_at, version=current.version + 1)
            await self._registry.put(record)
            self._directory.invalidate()
            changed += 1
            self._log.info("admin.client_loaded", source="clients_file", client_id=record.client_id)
        self._log.info("admin.clients_file_loaded", path=path, clients=len(records), changed=changed)
        return changed

    # -- validation -------------------------------------------------------------------------

    def _build(self, metadata: Any, *, existing: ClientRecord | None) -> ClientRecord:
        return build_record(self._settings, metadata, existing=existing, now=self._clock())

    async def _refuse_inward_jwks_uri(self, record: ClientRecord, *, previous: str | None) -> None:
        """Early, best-effort refusal of a new jwks_uri whose name resolves inward (the fetch re-checks)."""
        if record.jwks_uri is not None and record.jwks_uri != previous:
            await refuse_inward_names(record.jwks_uri, allow_loopback=self._settings.jwks_uri_allow_http_loopback,
                                      timeout=self._settings.jwks_uri_timeout)


def read_clients_file(settings: Settings, path: str, *, now: float) -> list[ClientRecord]:
    """The clients of a JSON file (``{"clients": [...]}`` or a list), validated; no I/O but reading it.

    Any invalid entry raises ``ConfigError`` naming the file and the client, so ``serve`` can check
    the file before it starts (one line, exit 2) and the start-up load cannot half-apply it.
    """
    try:
        data = msgspec.json.decode(Path(path).read_bytes())
    except (OSError, msgspec.DecodeError) as exc:
        raise ConfigError(f"BROKER_CLIENTS_FILE={path}: cannot read JSON ({type(exc).__name__})") from None
    entries = data.get("clients") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ConfigError(f"BROKER_CLIENTS_FILE={path}: expected a list of clients or {{\"clients\": [...]}}")
    records = []
    for index, metadata in enumerate(entries):
        name = metadata.get("client_id") if isinstance(metadata, dict) else None
        try:
            if name == settings.admin_client_id:
                raise InvalidClientMetadata("admin_protected", "the admin client comes from BROKER_ADMIN_JWKS")
            record = build_record(settings, metadata, existing=None, now=now)
            if client_id_reserved(record.client_id, (*RESERVED_CLIENT_ID_PREFIXES, *settings.reserved_client_id_prefixes)):
                raise InvalidClientMetadata("client_id_reserved", "client_id is in a reserved user-subject namespace")
            if any(r.client_id == record.client_id for r in records):
                raise InvalidClientMetadata("client_id_duplicate", "client_id appears twice in the file")
        except InvalidClientMetadata as exc:
            raise ConfigError(f"BROKER_CLIENTS_FILE={path}: client #{index} ({str(name)[:64]!r}): {exc.detail}") from None
        records.append(record)
    return records


def build_record(settings: Settings, metadata: Any, *, existing: ClientRecord | None, now: float) -> ClientRecord:
    """Validate RFC 7591-style client metadata into a record (no I/O): ``InvalidClientMetadata`` on any fault."""
    if not isinstance(metadata, dict):
        raise InvalidClientMetadata("metadata_invalid", "the body must be a JSON object")
    client_id = metadata.get("client_id")
    if not isinstance(client_id, str) or not CLIENT_ID_RE.fullmatch(client_id):
        raise InvalidClientMetadata(
            "client_id_invalid", "client_id must be 1-128 characters of A-Z a-z 0-9 . _ : - starting with a letter or digit"
        )
    signing_alg = metadata.get("token_endpoint_auth_signing_alg")
    if signing_alg is not None and signing_alg not in ALG_KEY_TYPES:
        raise InvalidClientMetadata(
            "signing_alg_invalid", f"token_endpoint_auth_signing_alg must be one of {', '.join(ALG_KEY_TYPES)}"
        )
    jwks_uri, checked = _client_keys(settings, metadata, signing_alg)
    legacy_until = metadata.get("legacy_token_endpoint_aud_until")
    if legacy_until is not None and (
        type(legacy_until) is not int or not 0 <= legacy_until <= now + LEGACY_AUD_MAX_WINDOW
    ):
        raise InvalidClientMetadata(
            "legacy_aud_window_invalid",
            "legacy_token_endpoint_aud_until must be a unix time at most 366 days ahead (the window is time-boxed)",
        )
    scopes = validate_scope_list(_list(metadata, "scopes"), "scopes")
    defaults = validate_scope_list(_list(metadata, "default_scopes"), "default_scopes")
    if not set(defaults) <= set(scopes):
        raise InvalidClientMetadata("default_scopes_not_allowed", "default_scopes must be a subset of scopes")
    audiences, default_audience = _audiences(metadata)
    grant_types = tuple(_list(metadata, "grant_types")) if "grant_types" in metadata else ("client_credentials",)
    if not set(grant_types) <= _GRANT_TYPES:
        raise InvalidClientMetadata("grant_type_invalid", "grant_types may only contain client_credentials")
    lifetime = metadata.get("token_lifetime")
    if lifetime is not None and (type(lifetime) is not int or not 60 <= lifetime <= 86400):
        raise InvalidClientMetadata("token_lifetime_invalid", "token_lifetime must be an integer from 60 to 86400 seconds")
    enabled = metadata.get("enabled", True)
    if type(enabled) is not bool:
        raise InvalidClientMetadata("enabled_invalid", "enabled must be true or false")
    now = int(now)
    return ClientRecord(
        client_id=client_id,
        jwks=checked,
        jwks_uri=jwks_uri,
        token_endpoint_auth_signing_alg=signing_alg,
        legacy_token_endpoint_aud_until=legacy_until,
        scopes=scopes,
        default_scopes=defaults,
        audiences=tuple(sorted(set(audiences))),
        default_audience=default_audience,
        grant_types=grant_types,
        token_lifetime=lifetime,
        enabled=enabled,
        created_at=existing.created_at if existing else now,
        updated_at=now,
        # Monotonic even within one second: the token cache keys on it.
        version=existing.version + 1 if existing else 1,
    )


def _client_keys(settings: Settings, metadata: dict[str, Any],
                 signing_alg: str | None) -> tuple[str | None, dict[str, list[dict[str, Any]]]]:
    """(jwks_uri, validated jwks): a client has one or the other (RFC 7591 §2)."""
    jwks = metadata.get("jwks") or None
    jwks_uri = metadata.get("jwks_uri")
    if jwks is not None and jwks_uri is not None:
        raise InvalidClientMetadata("jwks_and_jwks_uri", "give jwks or jwks_uri, not both (RFC 7591 §2)")
    if jwks_uri is not None:
        return check_jwks_uri(jwks_uri, allow_http_loopback=settings.jwks_uri_allow_http_loopback), {}
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise InvalidClientMetadata("jwks_missing", "give jwks (a JWK Set with at least one public key) or a jwks_uri")
    return None, validate_client_jwks(jwks["keys"], default_alg=signing_alg)


def _audiences(metadata: dict[str, Any]) -> tuple[list[str], str]:
    """(every audience the client may ask for; the one it gets when it names none)."""
    audiences = []
    for aud in _list(metadata, "audiences"):
        try:
            audiences.append(check_resource(aud) if isinstance(aud, str) else "")
        except InvalidTarget:
            audiences.append("")
        if not audiences[-1]:
            raise InvalidClientMetadata("audience_invalid", f"audience {str(aud)[:60]!r} must be an absolute URI without fragment")
    default_audience = metadata.get("default_audience") or (audiences[0] if audiences else None)
    if default_audience is not None and default_audience not in audiences:
        audiences.append(default_audience)
        try:
            check_resource(default_audience) if isinstance(default_audience, str) else None
        except InvalidTarget:
            raise InvalidClientMetadata("audience_invalid", "default_audience must be an absolute URI") from None
    if default_audience is None:
        raise InvalidClientMetadata("audience_missing", "give at least one audience (the resource servers this client calls)")
    return audiences, default_audience


def _same(a: ClientRecord, b: ClientRecord) -> bool:
    return msgspec.structs.replace(a, created_at=0, updated_at=0, version=0) == msgspec.structs.replace(
        b, created_at=0, updated_at=0, version=0
    )


def _has_static_keys(record: ClientRecord) -> None:
    if record.jwks_uri is not None:
        raise InvalidClientMetadata(
            "client_uses_jwks_uri", "this client's keys come from its jwks_uri: rotate them there (the broker refetches on a new kid)"
        )


def _list(metadata: dict[str, Any], name: str) -> list[Any]:
    value = metadata.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return value.split(" ") if value else []
    if not isinstance(value, (list, tuple)):
        raise InvalidClientMetadata(f"{name}_invalid", f"{name} must be a list or a space-separated string")
    return list(value)


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
    )
