"""Client metadata (shaped after RFC 7591 §2) → a validated ``ClientRecord``; the clients file
(its clients and its trusted issuers, ``validate_trusted_issuer``).

``build_record`` is the one gate every registration passes (admin API, clients file, bootstrap):
each field is checked for its type and value, and the finished record is read back through the
registry's typed decoder (``check_storable``), so wrongly typed metadata is a 400
``invalid_client_metadata``, never a 500 and never a stored record that breaks every later read.

Admin privileges come from the operator only: the ``broker:`` scope namespace (all of it but
``broker:introspect``, which resource servers get through an ordinary registration) and the admin
audience ``<issuer>/admin`` are refused unless the record is an admin client, and only the
operator's configuration makes one (``BROKER_ADMIN_JWKS``, or ``"admin": true`` in the clients
file). No I/O here but reading the clients file.

A record's identity (``registration_id``, ``version``, ``created_at``, ``updated_at``) is the
broker's to set, except when a record is put back as it was: an export (``broker_admin.py
export``) carries it, the import endpoint and the clients file take it (``with_identity``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec

from app.config import ConfigError, Settings
from app.oauth.clients import (
    CLIENT_ID_RE,
    RESERVED_CLIENT_ID_PREFIXES,
    ClientRecord,
    InvalidClientMetadata,
    check_storable,
    client_id_reserved,
    compat_profile,
    new_registration_id,
    record_thumbprints,
    validate_client_jwks,
    validate_scope_list,
)
from app.oauth.constants import ALG_KEY_TYPES, GRANT_CLIENT_CREDENTIALS, INTROSPECT_SCOPE
from app.oauth.errors import InvalidTarget
from app.oauth.grant import check_resource
from app.oauth.trust import TrustedIssuer, trusted_issuer
from app.service.jwks_fetch import check_jwks_uri

LEGACY_AUD_MAX_WINDOW = 366 * 86400
_GRANT_TYPES = frozenset({GRANT_CLIENT_CREDENTIALS})
#: The one ``broker:`` scope an ordinary registration may hold.
_ORDINARY_BROKER_SCOPES = frozenset({INTROSPECT_SCOPE})
#: Record fields only the broker or the operator sets; metadata sent to the admin API may not name them.
OPERATOR_FIELDS = ("admin", "registration_id")
#: The fields that make a stored record the same registration at the same point of its history.
IDENTITY_FIELDS = ("registration_id", "version", "created_at", "updated_at")
#: ``new_registration_id`` makes 16 URL-safe characters; the empty string is a legacy registration.
#: Never a '.': an access token's jti is ``<registration_id>.<random>``.
_REGISTRATION_ID_RE = re.compile(r"[A-Za-z0-9_-]{0,64}")
#: A bound on version and times that JSON and Lua (doubles) carry exactly.
_MAX_INT = 2**53 - 1


def build_record(settings: Settings, metadata: Any, *, existing: ClientRecord | None, now: float,
                 admin: bool = False) -> ClientRecord:
    """Validate client metadata into a record: ``InvalidClientMetadata`` on any fault.

    Args:
        existing: The registration this replaces (its id, creation time and version carry over).
        admin: Whether the operator configured this client as an admin client.
    """
    try:
        record = _build(settings, metadata, existing=existing, now=int(now), admin=admin)
    except InvalidClientMetadata:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError):  # a shape no check foresaw
        raise InvalidClientMetadata("metadata_invalid", "the client metadata has a field of the wrong type") from None
    check_storable(record)
    return record


def _build(settings: Settings, metadata: Any, *, existing: ClientRecord | None, now: int, admin: bool) -> ClientRecord:
    if not isinstance(metadata, dict):
        raise InvalidClientMetadata("metadata_invalid", "the body must be a JSON object")
    client_id = metadata.get("client_id")
    if not isinstance(client_id, str) or not CLIENT_ID_RE.fullmatch(client_id):
        raise InvalidClientMetadata(
            "client_id_invalid", "client_id must be 1-128 characters of A-Z a-z 0-9 . _ : - starting with a letter or digit"
        )
    signing_alg = metadata.get("token_endpoint_auth_signing_alg")
    if signing_alg is not None and (not isinstance(signing_alg, str) or signing_alg not in ALG_KEY_TYPES):
        raise InvalidClientMetadata(
            "signing_alg_invalid", f"token_endpoint_auth_signing_alg must be one of {', '.join(ALG_KEY_TYPES)}"
        )
    jwks_uri, checked = _client_keys(settings, metadata, signing_alg)
    scopes, defaults = _scopes(metadata, admin)
    audiences, default_audience = _audiences(metadata, settings.admin_audience, admin)
    return ClientRecord(
        client_id=client_id,
        registration_id=existing.registration_id if existing else new_registration_id(),
        jwks=checked,
        jwks_uri=jwks_uri,
        token_endpoint_auth_signing_alg=signing_alg,
        legacy_token_endpoint_aud_until=_legacy_until(metadata, now),
        scopes=scopes,
        default_scopes=defaults,
        audiences=tuple(sorted(set(audiences))),
        default_audience=default_audience,
        grant_types=_grant_types(metadata),
        token_lifetime=_lifetime(metadata),
        enabled=_flag(metadata, "enabled", True),
        created_at=existing.created_at if existing else now,
        updated_at=now,
        # Monotonic even within one second: the token cache keys on it.
        version=existing.version + 1 if existing else 1,
        admin=admin,
        allow_shared_key=_flag(metadata, "allow_shared_key", False),
        compat=compat_profile(metadata.get("compat")),
        dpop_bound_access_tokens=_flag(metadata, "dpop_bound_access_tokens", False),
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
    if isinstance(jwks, dict) and jwks == {"keys": []}:
        # Said explicitly: no key of its own. The client authenticates only with its platform's
        # token through a trusted issuer (workload identity federation, app.oauth.trust).
        return None, {"keys": []}
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise InvalidClientMetadata("jwks_missing", "give jwks (a JWK Set with at least one public key) or a jwks_uri")
    return None, validate_client_jwks(jwks["keys"], default_alg=signing_alg)


def _scopes(metadata: dict[str, Any], admin: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    scopes = validate_scope_list(_list(metadata, "scopes"), "scopes")
    defaults = validate_scope_list(_list(metadata, "default_scopes"), "default_scopes")
    if not set(defaults) <= set(scopes):
        raise InvalidClientMetadata("default_scopes_not_allowed", "default_scopes must be a subset of scopes")
    reserved = sorted(s for s in scopes if s.startswith("broker:") and s not in _ORDINARY_BROKER_SCOPES)
    if reserved and not admin:
        raise InvalidClientMetadata(
            "scope_reserved", f"scope {reserved[0][:40]!r} is reserved for admin clients the operator configures "
            "(BROKER_ADMIN_JWKS, or \"admin\": true in the clients file)")
    return scopes, defaults


def _audiences(metadata: dict[str, Any], admin_audience: str, admin: bool) -> tuple[list[str], str]:
    """(every audience the client may ask for; the one it gets when it names none)."""
    audiences = []
    for aud in _list(metadata, "audiences"):
        audiences.append(_audience(aud, "audience"))
    default_audience = metadata.get("default_audience") or (audiences[0] if audiences else None)
    if default_audience is not None:
        default_audience = _audience(default_audience, "default_audience")
        if default_audience not in audiences:
            audiences.append(default_audience)
    if default_audience is None:
        raise InvalidClientMetadata("audience_missing", "give at least one audience (the resource servers this client calls)")
    if not admin and any(a.rstrip("/").lower() == admin_audience.lower() for a in audiences):
        raise InvalidClientMetadata(
            "audience_reserved", "the admin audience is reserved for admin clients the operator configures "
            "(BROKER_ADMIN_JWKS, or \"admin\": true in the clients file)")
    return audiences, default_audience


def _audience(value: Any, field: str) -> str:
    try:
        if isinstance(value, str) and check_resource(value):
            return value
    except InvalidTarget:
        pass
    raise InvalidClientMetadata("audience_invalid", f"{field} {str(value)[:60]!r} must be an absolute URI without fragment")


def _legacy_until(metadata: dict[str, Any], now: int) -> int | None:
    legacy_until = metadata.get("legacy_token_endpoint_aud_until")
    if legacy_until is not None and (
        type(legacy_until) is not int or not 0 <= legacy_until <= now + LEGACY_AUD_MAX_WINDOW
    ):
        raise InvalidClientMetadata(
            "legacy_aud_window_invalid",
            "legacy_token_endpoint_aud_until must be a unix time at most 366 days ahead (the window is time-boxed)",
        )
    return legacy_until


def _grant_types(metadata: dict[str, Any]) -> tuple[str, ...]:
    grant_types = tuple(_list(metadata, "grant_types")) if "grant_types" in metadata else (GRANT_CLIENT_CREDENTIALS,)
    if not all(isinstance(g, str) and g in _GRANT_TYPES for g in grant_types):
        raise InvalidClientMetadata("grant_type_invalid", "grant_types may only contain client_credentials")
    return grant_types


def _lifetime(metadata: dict[str, Any]) -> int | None:
    lifetime = metadata.get("token_lifetime")
    if lifetime is not None and (type(lifetime) is not int or not 60 <= lifetime <= 86400):
        raise InvalidClientMetadata("token_lifetime_invalid", "token_lifetime must be an integer from 60 to 86400 seconds")
    return lifetime


def _flag(metadata: dict[str, Any], name: str, default: bool) -> bool:
    value = metadata.get(name, default)
    if type(value) is not bool:
        raise InvalidClientMetadata(f"{name}_invalid", f"{name} must be true or false")
    return value


def _list(metadata: dict[str, Any], name: str) -> list[Any]:
    value = metadata.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return value.split(" ") if value else []
    if not isinstance(value, (list, tuple)):
        raise InvalidClientMetadata(f"{name}_invalid", f"{name} must be a list or a space-separated string")
    return list(value)


def with_identity(record: ClientRecord, metadata: dict[str, Any], *, required: bool) -> ClientRecord:
    """``record`` with the identity fields ``metadata`` carries (as ``export`` writes them).

    ``required``: ``registration_id`` and ``version`` must be there (the import endpoint restores a
    record as it was); otherwise missing ones keep the record's (a clients-file entry).
    """
    missing = [name for name in IDENTITY_FIELDS[:2] if name not in metadata]
    if required and missing:
        raise InvalidClientMetadata("record_incomplete", f"{missing[0]} is missing: send a whole record, as "
                                    "`broker_admin.py export` writes it")
    changes: dict[str, Any] = {}
    registration = metadata.get("registration_id", record.registration_id)
    if not isinstance(registration, str) or not _REGISTRATION_ID_RE.fullmatch(registration):
        raise InvalidClientMetadata("registration_id_invalid",
                                    "registration_id must be up to 64 characters of A-Z a-z 0-9 _ -")
    changes["registration_id"] = registration
    for name in IDENTITY_FIELDS[1:]:
        value = metadata.get(name, getattr(record, name))
        if type(value) is not int or not 0 <= value <= _MAX_INT:
            raise InvalidClientMetadata(f"{name}_invalid", f"{name} must be a whole number from 0 to 2^53 - 1")
        changes[name] = value
    return msgspec.structs.replace(record, **changes)


def same_registration(a: ClientRecord, b: ClientRecord) -> bool:
    """Whether two records say the same thing (times, version and registration id aside)."""
    blank = {"created_at": 0, "updated_at": 0, "version": 0, "registration_id": ""}
    return msgspec.structs.replace(a, **blank) == msgspec.structs.replace(b, **blank)


def refuse_reserved_client_id(settings: Settings, client_id: str) -> None:
    if client_id == settings.admin_client_id:
        raise InvalidClientMetadata("admin_protected", "the admin client comes from BROKER_ADMIN_JWKS")
    if client_id_reserved(client_id, (*RESERVED_CLIENT_ID_PREFIXES, *settings.reserved_client_id_prefixes)):
        raise InvalidClientMetadata(
            "client_id_reserved",
            "client_id starts with a prefix reserved for user subjects (user:, usr:, uid:, ...); "
            "an access token's sub is the client_id, so pick a service name such as 'billing-api'",
        )


class ClientsDocument(msgspec.Struct, frozen=True):
    """A clients file, validated."""

    clients: list[ClientRecord]
    #: ``"restore_lost_registry": true`` at the top: the file lists every client that matters, so a
    #: lost registry may be re-created from it without the operator (``app.service.clients_file``).
    restore_lost_registry: bool = False
    #: ``"trusted_issuers": [...]`` at the top: workload identity federation (``app.oauth.trust``).
    trusted_issuers: list[TrustedIssuer] = []


def read_clients_file(settings: Settings, path: str, *, now: float) -> list[ClientRecord]:
    """The clients of a JSON file (``{"clients": [...]}`` or a list), validated (``read_clients_document``)."""
    return read_clients_document(settings, path, now=now).clients


def read_clients_document(settings: Settings, path: str, *, now: float) -> ClientsDocument:
    """A clients file (``{"clients": [...]}`` or a list), validated; no I/O but reading it.

    An entry may say ``"admin": true``: an admin client (``broker:admin`` scope, admin audience)
    configured by the operator. An entry may carry its identity (``registration_id``, ``version``,
    ``created_at``, ``updated_at``, as ``export`` writes them): a client created from the file gets
    it, so a registry re-seeded from an export holds the same registrations. Any invalid entry, a
    client_id listed twice or one public key in two entries (unless both allow it) raises
    ``ConfigError`` naming the file and the client, so ``serve`` can check the file before it
    starts (one line, exit 2) and neither the start-up load nor a reload can half-apply it.
    """
    try:
        data = msgspec.json.decode(Path(path).read_bytes())
    except (OSError, msgspec.DecodeError) as exc:
        raise ConfigError(f"BROKER_CLIENTS_FILE={path}: cannot read JSON ({type(exc).__name__})") from None
    entries = data.get("clients") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ConfigError(f"BROKER_CLIENTS_FILE={path}: expected a list of clients or {{\"clients\": [...]}}")
    restore = data.get("restore_lost_registry", False) if isinstance(data, dict) else False
    if type(restore) is not bool:
        raise ConfigError(f"BROKER_CLIENTS_FILE={path}: restore_lost_registry must be true or false")
    issuers = data.get("trusted_issuers", []) if isinstance(data, dict) else []
    return ClientsDocument(_file_entries(settings, path, entries, now), restore, _file_issuers(settings, path, issuers))


def _file_entries(settings: Settings, path: str, entries: list[Any], now: float) -> list[ClientRecord]:
    records: list[ClientRecord] = []
    for index, metadata in enumerate(entries):
        name = metadata.get("client_id") if isinstance(metadata, dict) else None
        try:
            records.append(_file_entry(settings, metadata, records, now))
        except InvalidClientMetadata as exc:
            raise ConfigError(f"BROKER_CLIENTS_FILE={path}: client #{index} ({str(name)[:64]!r}): {exc.detail}") from None
    return records


def _file_entry(settings: Settings, metadata: Any, earlier: list[ClientRecord], now: float) -> ClientRecord:
    if isinstance(metadata, dict) and metadata.get("client_id") == settings.admin_client_id:
        raise InvalidClientMetadata("admin_protected", "the admin client comes from BROKER_ADMIN_JWKS")
    admin = _flag(metadata, "admin", False) if isinstance(metadata, dict) else False
    record = with_identity(build_record(settings, metadata, existing=None, now=now, admin=admin), metadata,
                           required=False)
    if client_id_reserved(record.client_id, (*RESERVED_CLIENT_ID_PREFIXES, *settings.reserved_client_id_prefixes)):
        raise InvalidClientMetadata("client_id_reserved", "client_id is in a reserved user-subject namespace")
    if any(r.client_id == record.client_id for r in earlier):
        raise InvalidClientMetadata("client_id_duplicate", "client_id appears twice in the file")
    mine = set(record_thumbprints(record))
    for other in earlier:
        if mine & set(record_thumbprints(other)) and not (record.allow_shared_key and other.allow_shared_key):
            raise InvalidClientMetadata("jwk_shared", f"a public key is also listed for {other.client_id!r} "
                                        "(set allow_shared_key on both to share it)")
    return record


def validate_trusted_issuer(settings: Settings, value: Any) -> TrustedIssuer:
    """A trusted issuer from untrusted JSON (admin API, clients file): ``app.oauth.trust.trusted_issuer``,
    and never the broker itself (its access tokens are not client assertions)."""
    record = trusted_issuer(value, allow_http_loopback=settings.jwks_uri_allow_http_loopback)
    if record.issuer.rstrip("/") == settings.issuer.rstrip("/"):
        raise InvalidClientMetadata("trust_issuer_self", "the broker's own issuer cannot be a trusted issuer: "
                                    "its access tokens are not client assertions")
    return record


def _file_issuers(settings: Settings, path: str, entries: Any) -> list[TrustedIssuer]:
    if not isinstance(entries, list):
        raise ConfigError(f"BROKER_CLIENTS_FILE={path}: trusted_issuers must be a list of trusted issuers")
    records: list[TrustedIssuer] = []
    for index, value in enumerate(entries):
        name = value.get("issuer") if isinstance(value, dict) else None
        try:
            record = validate_trusted_issuer(settings, value)
        except InvalidClientMetadata as exc:
            raise ConfigError(f"BROKER_CLIENTS_FILE={path}: trusted issuer #{index} ({str(name)[:80]!r}): "
                              f"{exc.detail}") from None
        if any(r.issuer == record.issuer for r in records):
            raise ConfigError(f"BROKER_CLIENTS_FILE={path}: trusted issuer #{index} ({record.issuer[:80]!r}) "
                              "appears twice in the file")
        records.append(record)
    return records
