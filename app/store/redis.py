"""Redis implementations of the store interfaces (redis-py asyncio, or fakeredis embedded).

Every Redis error, timeout or refusal becomes ``StoreUnavailable``: the caller decides whether
that fails closed (replay guard) or open (token cache).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from time import perf_counter
from typing import Any
from urllib.parse import urlsplit

import msgspec
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry  # the sync Retry never retries a coroutine
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app import tracing
from app.metrics import REDIS_ERRORS, REDIS_SECONDS, Metrics
from app.oauth.clients import ClientRecord, decode_record, encode_record, record_thumbprints
from app.store import deadline, keyspace
from app.store.autopipeline import AutoPipeline
from app.store.base import ANY, KeyShared, RecordUnreadable, RegistryConflict, RegistryLost, RegistryPoll, StoreUnavailable

_STORE_ERRORS = (RedisError, OSError, asyncio.TimeoutError, UnicodeError)


def connect(url: str | None, *, timeout: float, retries: int, cluster: bool = False,
            sentinels: tuple[str, ...] = (), sentinel_master: str | None = None) -> Any:
    """A real Redis client with explicit short timeouts, or an embedded fakeredis when url is None.

    ``cluster``: a ``RedisCluster`` that discovers the other nodes from ``url`` (every multi-key
    transaction or script uses one hash tag, see ``app.store.keyspace``). ``sentinels``: the master
    that the Sentinels name ``sentinel_master``, followed across failovers.
    """
    opts: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), retries),
        "health_check_interval": 0,
        "max_connections": 256,
    }
    pipelined = {"timeout": timeout, "retries": retries}
    if sentinels:
        from redis.asyncio.sentinel import Sentinel

        if url is not None:  # db, username, password, TLS from the URL; its host is not used
            opts.update(_master_options(url))
        nodes = [(host, int(port)) for host, _, port in (a.rpartition(":") for a in sentinels)]
        sentinel = Sentinel(nodes, sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout})
        opts.pop("max_connections")
        master = sentinel.master_for(sentinel_master, redis_class=_SentinelMaster, **opts)
        master.sentinel = sentinel
        master.scripts = AutoPipeline(master, **pipelined)
        return master
    if url is None:
        from fakeredis.aioredis import FakeRedis

        return FakeRedis()
    if cluster:
        client = _Cluster.from_url(url, **opts)
        client.scripts = AutoPipeline(client, cluster=True, **pipelined)
        return client
    client = _Redis.from_url(url, **opts)
    client.scripts = AutoPipeline(client, **pipelined)
    return client


def _master_options(url: str) -> dict[str, Any]:
    """What a Sentinel-managed master's connections take from ``BROKER_REDIS_URL``: db, ACL user and
    password, and for ``rediss://`` TLS with the URL's ``ssl_*`` options (``ssl_ca_certs``,
    ``ssl_certfile``, ``ssl_keyfile``, ...). redis-py's URL parsing says TLS by a connection class,
    not by an ``ssl`` flag, and the Sentinel pool picks its own class: without ``ssl=True`` here a
    ``rediss://`` URL would give plain-text connections to the master."""
    pool_kwargs = ConnectionPool.from_url(url).connection_kwargs
    opts = {k: v for k, v in pool_kwargs.items() if k in ("db", "username", "password")}
    if urlsplit(url).scheme == "rediss":
        opts["ssl"] = True
        opts.update({k: v for k, v in pool_kwargs.items() if k.startswith("ssl_")})
    return opts


class _PipelinedScripts:
    """A redis-py client whose Lua scripts run auto-pipelined (``app.store.autopipeline``); every
    other command goes through redis-py's pool as before."""

    scripts: AutoPipeline | None = None

    def register_script(self, script: str) -> Any:
        if self.scripts is None:
            return super().register_script(script)  # type: ignore[misc]
        return self.scripts.script(script)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self.scripts is not None:
            await self.scripts.aclose()
        await super().aclose(close_connection_pool)  # type: ignore[misc]


class _Redis(_PipelinedScripts, Redis):
    pass


class _Cluster(_PipelinedScripts, RedisCluster):
    async def aclose(self, *args: Any, **kwargs: Any) -> None:  # RedisCluster.aclose takes no pool flag
        if self.scripts is not None:
            await self.scripts.aclose()
        await RedisCluster.aclose(self, *args, **kwargs)


class _SentinelMaster(_PipelinedScripts, Redis):
    """The master named by the Sentinels; closing it also closes the connections to the Sentinels."""

    sentinel: Any = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for node in getattr(self.sentinel, "sentinels", ()):
            await node.aclose()


class RedisStore:
    """Base: runs one Redis call (a command, a MULTI transaction or a Lua script) under a hard
    deadline, mapping every failure to ``StoreUnavailable``."""

    #: The ``op`` label of this store's Redis metrics (``broker_redis_*``).
    metric_op = "store"

    def __init__(self, redis: Any, *, timeout: float, retries: int, metrics: Metrics | None = None) -> None:
        self.redis = redis
        self._deadline = timeout * (retries + 1) + 0.05
        self._metrics = metrics

    async def _run(self, coro: Any, op: str | None = None) -> Any:
        op = op or self.metric_op
        if tracing.on:  # BROKER_TRACING: one span per store call (app.tracing)
            coro = tracing.redis_call(coro, op)
        start = perf_counter()
        deadlines = deadline.for_loop()
        call: deadline.Call | None = deadlines.enter(self._deadline)  # the whole call, retries included
        try:
            return await coro
        except asyncio.CancelledError:
            assert call is not None
            expired, call = deadlines.leave(call, cancelled=True), None
            if not expired:
                raise  # somebody else's cancellation
            self._count_error(op, "TimeoutError")
            raise StoreUnavailable("TimeoutError") from None
        except _STORE_ERRORS as exc:
            self._count_error(op, type(exc).__name__)
            raise StoreUnavailable(type(exc).__name__) from exc
        finally:
            if call is not None:
                deadlines.leave(call, cancelled=False)
            if self._metrics is not None:
                self._metrics.observe(REDIS_SECONDS, perf_counter() - start, op=op)

    def _count_error(self, op: str, error: str) -> None:
        if self._metrics is not None:
            self._metrics.inc(REDIS_ERRORS, op=op, error=error)


class RedisReplayGuard(RedisStore):
    metric_op = "replay"

    async def first_use(self, client_id: str, jti: str, request_id: str, ttl_ms: int) -> bool:
        # SET NX PX GET (Redis >= 7.0): one atomic command; the old value tells a replay (another
        # request's id) from our own retried write (our id).
        previous = await self._run(
            self.redis.set(keyspace.replay(client_id, jti), request_id, nx=True, px=ttl_ms, get=True), op="replay"
        )
        return previous is None or previous == request_id.encode()


# Every registry write is one script over keys of the one hash tag {tb:registry}. KEYS: marker,
# record, client_id set, epoch, key holders, client keys. ARGV[1]: the registry id the write is
# meant for (a missing or other marker refuses it), ARGV[2]: the client_id.
_MARKER_CHECK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'lost'} end
local cid = ARGV[2]
local old = redis.call('HGET', KEYS[6], cid)
local held = {}
if old then for _, tp in ipairs(cjson.decode(old)) do held[tp] = true end end
"""
# Drop the client from every thumbprint it held (an emptied entry is deleted).
_UNINDEX = """
for tp in pairs(held) do
  local holders = redis.call('HGET', KEYS[5], tp)
  if holders then
    local set = cjson.decode(holders)
    set[cid] = nil
    if next(set) == nil then redis.call('HDEL', KEYS[5], tp) else redis.call('HSET', KEYS[5], tp, cjson.encode(set)) end
  end
end
"""
# ARGV: 3 record, 4 expectation (create / any / replace), 5 + 6 the replaced registration id and
# version, 7 '1' when this registration allows shared keys, 8 '1' to index without the shared-key
# check, 9... the record's key thumbprints. Keys the client already held are not re-checked.
_PUT = _MARKER_CHECK + """
local current = redis.call('GET', KEYS[2])
if ARGV[4] == 'create' and current then return {'exists'} end
if ARGV[4] == 'replace' then
  if not current then return {'changed'} end
  local ok, stored = pcall(cjson.decode, current)
  if not ok or type(stored) ~= 'table' or (stored.registration_id or '') ~= ARGV[5]
     or (tonumber(stored.version) or 0) ~= tonumber(ARGV[6]) then return {'changed'} end
end
if ARGV[8] ~= '1' then
  for i = 9, #ARGV do
    local holders = not held[ARGV[i]] and redis.call('HGET', KEYS[5], ARGV[i])
    if holders then
      for holder, shared in pairs(cjson.decode(holders)) do
        if holder ~= cid and (ARGV[7] ~= '1' or shared ~= '1') then return {'shared', ARGV[i], holder} end
      end
    end
  end
end
""" + _UNINDEX + """
local mine = {}
for i = 9, #ARGV do
  local holders = redis.call('HGET', KEYS[5], ARGV[i])
  local set = holders and cjson.decode(holders) or {}
  set[cid] = ARGV[7]
  redis.call('HSET', KEYS[5], ARGV[i], cjson.encode(set))
  mine[#mine + 1] = ARGV[i]
end
if #mine > 0 then redis.call('HSET', KEYS[6], cid, cjson.encode(mine)) else redis.call('HDEL', KEYS[6], cid) end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], cid)
redis.call('INCR', KEYS[4])
return {'ok'}
"""
_DELETE = _MARKER_CHECK + _UNINDEX + """
redis.call('HDEL', KEYS[6], cid)
local deleted = redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], cid)
redis.call('INCR', KEYS[4])
return {'ok', deleted}
"""


class RedisClientRegistry(RedisStore):
    """``ClientRegistry`` (``app.store.base``): records, key index, epoch and marker in Redis."""

    metric_op = "registry"

    def __init__(self, redis: Any, **options: Any) -> None:
        super().__init__(redis, **options)
        self.registry_id: str | None = None
        self._put = redis.register_script(_PUT)
        self._delete = redis.register_script(_DELETE)

    def _keys(self, client_id: str) -> list[str]:
        return [keyspace.REGISTRY_MARKER, keyspace.client(client_id), keyspace.REGISTRY_INDEX, keyspace.REGISTRY_EPOCH,
                keyspace.REGISTRY_KEY_HOLDERS, keyspace.REGISTRY_CLIENT_KEYS]

    async def get(self, client_id: str) -> ClientRecord | None:
        raw = await self._run(self.redis.get(keyspace.client(client_id)))
        if raw is None:
            return None
        try:
            record = decode_record(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise RecordUnreadable(client_id) from None
        return record if record.client_id == client_id else None

    async def put(self, record: ClientRecord, expect: ClientRecord | str = ANY, *, grandfather: bool = False) -> None:
        if isinstance(expect, ClientRecord):
            mode, registration, version = "replace", expect.registration_id, expect.version
        else:
            mode, registration, version = expect, "", 0
        args = [self._registry_id(), record.client_id, encode_record(record), mode, registration, version,
                "1" if record.allow_shared_key else "0", "1" if grandfather else "0", *record_thumbprints(record)]
        reply = await self._run(self._put(keys=self._keys(record.client_id), args=args))
        outcome = _text(reply[0])
        if outcome == "lost":
            raise RegistryLost("registry_lost")
        if outcome == "shared":
            raise KeyShared(_text(reply[1]), _text(reply[2]))
        if outcome != "ok":
            raise RegistryConflict(outcome)

    async def delete(self, client_id: str) -> bool:
        reply = await self._run(self._delete(keys=self._keys(client_id), args=[self._registry_id(), client_id]))
        if _text(reply[0]) == "lost":
            raise RegistryLost("registry_lost")
        return bool(reply[1])

    def _registry_id(self) -> str:
        if self.registry_id is None:
            raise RegistryLost("registry_unknown")
        return self.registry_id

    async def list_ids(self) -> list[str]:
        members = await self._run(self.redis.smembers(keyspace.REGISTRY_INDEX))
        return sorted(m.decode() for m in members)

    async def indexed_ids(self) -> set[str]:
        return {_text(m) for m in await self._run(self.redis.hkeys(keyspace.REGISTRY_CLIENT_KEYS))}

    async def key_holders(self, thumbprints: Sequence[str]) -> dict[str, dict[str, bool]]:
        if not thumbprints:
            return {}
        values = await self._run(self.redis.hmget(keyspace.REGISTRY_KEY_HOLDERS, list(thumbprints)))
        return {tp: {cid: flag == "1" for cid, flag in json.loads(v).items()}
                for tp, v in zip(thumbprints, values) if v is not None}

    async def epoch(self) -> int:
        return (await self.poll()).epoch

    async def poll(self) -> RegistryPoll:
        # One MGET, one slot (both keys carry {tb:registry}): the epoch and the marker together.
        epoch, marker = await self._run(self.redis.mget([keyspace.REGISTRY_EPOCH, keyspace.REGISTRY_MARKER]))
        return RegistryPoll(int(epoch or 0), None if marker is None else _text(marker))

    async def create(self, registry_id: str) -> str:
        previous = await self._run(self.redis.set(keyspace.REGISTRY_MARKER, registry_id, nx=True, get=True))
        return registry_id if previous is None else _text(previous)

    async def persistence(self) -> bool | None:
        """Whether Redis persists its data (AOF or RDB snapshots); None when it will not say
        (``CONFIG`` disabled or renamed, as on many managed services)."""
        try:  # not through _run: a refused CONFIG is expected on managed Redis, not a Redis error
            async with asyncio.timeout(self._deadline):
                aof = await self.redis.config_get("appendonly")
                rdb = await self.redis.config_get("save")
        except _STORE_ERRORS:
            return None
        if not isinstance(aof, dict) or not isinstance(rdb, dict) or "appendonly" not in aof or "save" not in rdb:
            return None
        return _text(aof["appendonly"]) == "yes" or bool(_text(rdb["save"]).strip())

    async def ping(self) -> bool:
        return bool(await self._run(self.redis.ping()))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisJwksUriCache(RedisStore):
    async def get(self, client_id: str, jwks_uri: str) -> bytes | None:
        value = await self._run(self.redis.get(keyspace.jwks_uri_cache(client_id, jwks_uri)))
        return None if value is None else bytes(value)

    async def put(self, client_id: str, jwks_uri: str, value: bytes, ttl_s: int) -> None:
        await self._run(self.redis.set(keyspace.jwks_uri_cache(client_id, jwks_uri), value, ex=max(ttl_s, 1)))

    async def claim_refetch(self, client_id: str, jwks_uri: str, cooldown_ms: int) -> bool:
        return bool(await self._run(self.redis.set(keyspace.jwks_uri_refetch(client_id, jwks_uri), b"1", nx=True, px=max(cooldown_ms, 1))))
