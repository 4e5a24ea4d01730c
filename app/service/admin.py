"""Client administration (shaped after RFC 7591 / RFC 7592) and the admin bootstrap.

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

from app.config import Settings
from app.keystore import generate_private_key, public_jwk, read_json, write_private, import_private_jwk
from app.oauth.access_token import InvalidToken, VerificationKey, verify_access_token
from app.oauth.clients import (
    CLIENT_ID_RE,
    ClientRecord,
    InvalidClientMetadata,
    validate_client_jwks,
    validate_scope_list,
)
from app.oauth.grant import check_resource
from app.oauth.errors import InvalidTarget
from app.service.directory import ClientDirectory
from app.store.base import ClientRegistry

ADMIN_SCOPE = "broker:admin"
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
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._directory = directory
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
        return claims["client_id"]

    # -- operations -------------------------------------------------------------------------

    async def register(self, admin: str, metadata: Any) -> ClientRecord:
        record = self._build(metadata, existing=None)
        if await self._registry.get(record.client_id) is not None:
            raise Conflict(record.client_id)
        await self._registry.put(record)
        self._log.info("admin.client_registered", admin=admin, client_id=record.client_id,
                       kids=[k["kid"] for k in record.jwks["keys"]])
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
        merged = {**msgspec.to_builtins(current), **changes}
        record = self._build(merged, existing=current)
        await self._registry.put(record)
        self._log.info("admin.client_updated", admin=admin, client_id=client_id, fields=sorted(changes))
        return record

    async def add_key(self, admin: str, client_id: str, jwk: Any) -> ClientRecord:
        current = await self.get(client_id)
        keys = list(current.jwks["keys"]) + [jwk]
        return await self.update(admin, client_id, {"jwks": {"keys": keys}})

    async def remove_key(self, admin: str, client_id: str, kid: str) -> ClientRecord:
        current = await self.get(client_id)
        keys = [k for k in current.jwks["keys"] if k["kid"] != kid]
        if len(keys) == len(current.jwks["keys"]):
            raise NotFound(kid)
        if not keys:
            raise InvalidClientMetadata("jwks_empty", "a client needs at least one key; add the new key first or disable the client")
        return await self.update(admin, client_id, {"jwks": {"keys": keys}})

    async def delete(self, admin: str, client_id: str) -> None:
        if client_id == self._settings.admin_client_id:
            raise InvalidClientMetadata("admin_protected", "the bootstrap admin client cannot be deleted")
        if not await self._registry.delete(client_id):
            raise NotFound(client_id)
        self._log.info("admin.client_deleted", admin=admin, client_id=client_id)

    # -- validation -------------------------------------------------------------------------

    def _build(self, metadata: Any, *, existing: ClientRecord | None) -> ClientRecord:
        if not isinstance(metadata, dict):
            raise InvalidClientMetadata("metadata_invalid", "the body must be a JSON object")
        client_id = metadata.get("client_id")
        if not isinstance(client_id, str) or not CLIENT_ID_RE.fullmatch(client_id):
            raise InvalidClientMetadata(
                "client_id_invalid", "client_id must be 1-128 characters of A-Z a-z 0-9 . _ : - starting with a letter or digit"
            )
        jwks = metadata.get("jwks")
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
            raise InvalidClientMetadata("jwks_missing", "jwks must be a JWK Set with at least one public key")
        checked = validate_client_jwks(jwks["keys"], default_alg=metadata.get("token_endpoint_auth_signing_alg"))
        scopes = validate_scope_list(_list(metadata, "scopes"), "scopes")
        defaults = validate_scope_list(_list(metadata, "default_scopes"), "default_scopes")
        if not set(defaults) <= set(scopes):
            raise InvalidClientMetadata("default_scopes_not_allowed", "default_scopes must be a subset of scopes")
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
        grant_types = tuple(_list(metadata, "grant_types") or ["client_credentials"])
        if not set(grant_types) <= _GRANT_TYPES:
            raise InvalidClientMetadata("grant_type_invalid", "grant_types may only contain client_credentials")
        lifetime = metadata.get("token_lifetime")
        if lifetime is not None and (type(lifetime) is not int or not 60 <= lifetime <= 86400):
            raise InvalidClientMetadata("token_lifetime_invalid", "token_lifetime must be an integer from 60 to 86400 seconds")
        enabled = metadata.get("enabled", True)
        if type(enabled) is not bool:
            raise InvalidClientMetadata("enabled_invalid", "enabled must be true or false")
        now = int(self._clock())
        return ClientRecord(
            client_id=client_id,
            jwks=checked,
            scopes=scopes,
            default_scopes=defaults,
            audiences=tuple(sorted(set(audiences))),
            default_audience=default_audience,
            grant_types=grant_types,
            token_lifetime=lifetime,
            enabled=enabled,
            created_at=existing.created_at if existing else now,
            updated_at=now,
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
