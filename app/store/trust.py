"""Redis implementation of ``TrustStore`` (``app.store.base``): trusted issuers in one hash of the
registry's hash tag, issuer -> JSON record (``app.oauth.trust.encode_issuer``).

Each write is one Lua script over the registry's keys: it checks the marker against the registry
this broker serves (a lost registry gets no writes, as for clients), writes or deletes the record
and bumps the registry epoch, so every replica's next poll (``ClientDirectory.refresh``) drops the
issuers it cached. A loss of the registry loses the issuers with it; they come back the way
clients do (a Redis backup, ``broker_admin.py import``, or the clients file re-asserted on restore).
With fakeredis (the embedded store) the same scripts run in-process.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.oauth.trust import MAX_ISSUERS, TrustedIssuer, decode_issuer, encode_issuer
from app.store import keyspace
from app.store.base import RecordUnreadable, RegistryConflict, RegistryLost
from app.store.redis import RedisStore

# KEYS: marker, issuers hash, epoch. ARGV: registry id, issuer[, record, MAX_ISSUERS].
_PUT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then
  return 'full'
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('INCR', KEYS[3])
return 'ok'
"""
_DELETE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
local deleted = redis.call('HDEL', KEYS[2], ARGV[2])
if deleted == 1 then redis.call('INCR', KEYS[3]) end
return deleted == 1 and 'deleted' or 'absent'
"""
_KEYS = [keyspace.REGISTRY_MARKER, keyspace.REGISTRY_ISSUERS, keyspace.REGISTRY_EPOCH]


class RedisTrustStore(RedisStore):
    """Writes go to the registry that ``registry`` (the ``ClientRegistry`` of this broker) serves:
    its ``registry_id``, learnt at start and followed across a restore."""

    metric_op = "registry"

    def __init__(self, redis: Any, *, registry: Any, **options: Any) -> None:
        super().__init__(redis, **options)
        self._registry = registry
        self._put = redis.register_script(_PUT)
        self._delete = redis.register_script(_DELETE)

    def _registry_id(self) -> str:
        registry_id = self._registry.registry_id
        if registry_id is None:
            raise RegistryLost("registry_unknown")
        return str(registry_id)

    async def get_issuer(self, issuer: str) -> TrustedIssuer | None:
        raw = await self._run(self.redis.hget(keyspace.REGISTRY_ISSUERS, issuer))
        if raw is None:
            return None
        record = _decode(raw)
        if record is None:
            raise RecordUnreadable(issuer)
        return record if record.issuer == issuer else None

    async def put_issuer(self, record: TrustedIssuer) -> None:
        args = [self._registry_id(), record.issuer, encode_issuer(record), MAX_ISSUERS]
        outcome = _text(await self._run(self._put(keys=_KEYS, args=args)))
        if outcome == "lost":
            raise RegistryLost("registry_lost")
        if outcome != "ok":
            raise RegistryConflict(outcome)

    async def delete_issuer(self, issuer: str) -> bool:
        outcome = _text(await self._run(self._delete(keys=_KEYS, args=[self._registry_id(), issuer])))
        if outcome == "lost":
            raise RegistryLost("registry_lost")
        return outcome == "deleted"

    async def list_issuers(self) -> list[TrustedIssuer]:
        stored = await self._run(self.redis.hgetall(keyspace.REGISTRY_ISSUERS))
        records = [_decode(raw) for field, raw in stored.items()]
        return sorted((r for r, field in zip(records, stored) if r is not None and r.issuer == _text(field)),
                      key=lambda r: r.issuer)


def _decode(raw: Any) -> TrustedIssuer | None:
    try:
        return decode_issuer(bytes(raw))
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
