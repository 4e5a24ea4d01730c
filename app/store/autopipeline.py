"""Lua script calls auto-pipelined: one connection per Redis server shared by every caller.

redis-py takes a pooled connection per call and pays one write and one read syscall, a command
pack and two timeouts for each; on a small machine that is more CPU than the assertion verify.
Here the script calls issued in one event-loop turn are written in one ``writelines``, and one
reader task per connection hands the replies to the callers in order (Redis answers the commands
of one connection in the order it received them). Only ``EVALSHA`` goes this way (the token
endpoint's calls, the registry writes, the failure counter): every other command stays on
redis-py's pool.

Connections are made by the client's own pool (or, on a Cluster, the node's connection class)
with the same settings as redis-py's: TLS, ACL user and password, database, connect timeout; a
Sentinel pool's connection asks the Sentinels for the master on every connect. Commands are
packed as the connection's ``pack_command`` packs them (``pack``: the same bytes, without its
per-argument encoder calls, for the str, bytes and int arguments of the broker's scripts),
written to its stream writer (``_writer``: redis-py has no public write without a drain; redis-py
is pinned exactly in pyproject.toml) and read by its parser (``read_response``). Failures behave as
with redis-py's pool (``Retry(NoBackoff(), retries)``):

- a lost connection (reset, EOF, a failed connect, a master demoted under a Sentinel pool) fails
  every call waiting on it with ``ConnectionError``;
- a connection on which no reply arrived within the socket timeout while calls wait on it is
  closed, failing those calls with ``TimeoutError`` (a watchdog checks every quarter timeout);
- each failed call is sent again on a new connection, ``retries`` times at most, then the error
  goes to the caller (``RedisStore._run`` turns it into ``StoreUnavailable``, and its deadline
  bounds the whole call);
- an error reply fails that call only; ``NOSCRIPT`` loads the script with ``EVAL``; on a Cluster a
  redirection (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) or a lost node connection sends the call through
  redis-py's cluster client, which follows it and refreshes its slot table.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import math
from typing import Any

from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.aio import running_loop

_RETRYABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_REDIRECTED = (MovedError, AskError, TryAgainError, ClusterDownError)


def pack(conn: Any, args: tuple[Any, ...]) -> bytes:
    """One command in RESP, as ``conn.pack_command(*args)`` joined: str encoded with the
    connection's encoder settings, bytes as they are, int in decimal. Any other argument (a float,
    a bool, a memoryview...) and a command name with a space go through ``pack_command`` itself,
    which encodes or refuses them."""
    encoder = conn.encoder
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)
        if kind is str:
            arg = arg.encode(encoder.encoding, encoder.encoding_errors)
        elif kind is int:
            arg = b"%d" % arg
        elif kind is not bytes:
            return b"".join(conn.pack_command(*args))
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    if len(parts) > 2 and b" " in parts[2]:  # a command name with a space ("CONFIG GET") is split by pack_command
        return b"".join(conn.pack_command(*args))
    return b"".join(parts)


class _Link:
    """One connection, the callers waiting for its replies (in the order their commands were
    written) and its reader task."""

    def __init__(self, conn: Any, timeout: float | None) -> None:
        self.conn = conn
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.out: list[bytes] = []
        self.closed = False
        self.disconnecting: asyncio.Task[None] | None = None  # referenced until done
        self.loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._progress = 0.0  # loop time of the last reply, or of the first wait after a quiet spell
        self._watchdog: asyncio.TimerHandle | None = None
        self._reader = self.loop.create_task(self._read())

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        fut = self.loop.create_future()
        if not self.out:
            self.loop.call_soon(self._write)
        self.out.append(pack(self.conn, args))
        if not self.waiting:
            self._progress = self.loop.time()
            if self._watchdog is None and self._timeout:
                self._watchdog = self.loop.call_later(self._timeout / 4, self._check)
        self.waiting.append(fut)
        return fut

    def _write(self) -> None:
        out, self.out = self.out, []
        if not self.closed:
            self.conn._writer.writelines(out)  # the transport buffers; no drain per call

    def _check(self) -> None:
        self._watchdog = None
        if self.closed or not self.waiting:
            return
        if self.loop.time() - self._progress > self._timeout:  # type: ignore[operator]
            self.close(RedisTimeoutError("no reply from Redis within the socket timeout"))
        else:
            self._watchdog = self.loop.call_later(self._timeout / 4, self._check)  # type: ignore[operator]

    async def _read(self) -> None:
        waiting = self.waiting
        try:
            while True:
                try:
                    reply: Any = await self.conn.read_response(timeout=math.inf, disconnect_on_error=False)
                except ResponseError as exc:
                    reply = exc
                self._progress = self.loop.time()
                fut = waiting.popleft()
                if fut.done():  # its caller gave up (deadline): the reply is dropped
                    continue
                if isinstance(reply, ResponseError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        except asyncio.CancelledError:
            self.close(RedisConnectionError("connection closed"))
            raise
        except Exception as exc:
            error = exc if isinstance(exc, _RETRYABLE) else RedisConnectionError(type(exc).__name__)
            self.close(error)

    def close(self, error: Exception) -> None:
        """Fail every waiting call with ``error`` and drop the connection."""
        if self.closed:
            return
        self.closed = True
        self.out.clear()
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(error)
        if self._watchdog is not None:
            self._watchdog.cancel()
        if asyncio.current_task() is not self._reader:
            self._reader.cancel()
        self.disconnecting = self.loop.create_task(self.conn.disconnect(nowait=True))


class AutoPipeline:
    """The script calls of one redis-py client (``Redis``, a Sentinel master or ``RedisCluster``)."""

    def __init__(self, client: Any, *, timeout: float | None, retries: int, cluster: bool = False) -> None:
        self.client = client
        self._timeout = timeout
        self._retries = retries
        self._cluster = cluster
        self._links: dict[str, _Link] = {}
        self._connecting: dict[str, asyncio.Future[_Link]] = {}

    def script(self, source: str) -> _Script:
        return _Script(self, source)

    async def evalsha(self, sha: str, source: str, keys: list[Any], args: list[Any]) -> Any:
        if self._cluster:
            node = self._node(keys)
            if node is None:  # slot table not loaded yet: redis-py loads it
                return await self._redis_py(sha, source, keys, args)
            try:
                return await self._call(node.name, lambda: node.connection_class(**node.connection_kwargs),
                                        sha, source, keys, args)
            except (*_REDIRECTED, *_RETRYABLE):
                return await self._redis_py(sha, source, keys, args)
        return await self._call("", self.client.connection_pool.make_connection, sha, source, keys, args)

    async def _redis_py(self, sha: str, source: str, keys: list[Any], args: list[Any]) -> Any:
        """The call through the cluster client itself (redirections, slot table refresh)."""
        try:
            return await self.client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.client.eval(source, len(keys), *keys, *args)

    def _node(self, keys: list[Any]) -> Any:
        manager = self.client.nodes_manager
        if not manager.slots_cache:
            return None
        return manager.get_node_from_slot(self.client.keyslot(keys[0]) if keys else 0)

    async def _call(self, where: str, make: Any, sha: str, source: str, keys: list[Any], args: list[Any]) -> Any:
        command: tuple[Any, ...] = ("EVALSHA", sha, len(keys), *keys, *args)
        for attempt in range(self._retries + 1):
            try:
                link = await self._link(where, make)
                try:
                    return await link.send(command)
                except NoScriptError:
                    return await link.send(("EVAL", source, *command[2:]))
            except _RETRYABLE:
                if attempt == self._retries:
                    raise
        raise AssertionError("unreachable")

    async def _link(self, where: str, make: Any) -> _Link:
        link = self._links.get(where)
        if link is not None and not link.closed:
            if link.loop is running_loop():
                return link
            link.closed = True  # made in an event loop that has ended (a CLI's earlier asyncio.run)
        pending = self._connecting.get(where)
        if pending is None:  # the first caller connects; the others wait for the same link
            pending = self._connecting[where] = asyncio.get_running_loop().create_future()
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if nobody waits
            try:
                conn = make()
                await conn.connect()
                link = self._links[where] = _Link(conn, self._timeout)
                pending.set_result(link)
            except BaseException as exc:
                pending.set_exception(exc if isinstance(exc, Exception) else RedisConnectionError("connect cancelled"))
                raise
            finally:
                del self._connecting[where]
            return link
        return await asyncio.shield(pending)

    async def aclose(self) -> None:
        links, self._links = list(self._links.values()), {}
        for link in links:
            link.close(RedisConnectionError("client closed"))
            if link.disconnecting is not None:
                await link.disconnecting


class _Script:
    """What ``register_script`` returns: called as redis-py's ``Script`` (``keys=``, ``args=``)."""

    def __init__(self, pipe: AutoPipeline, source: str) -> None:
        self._pipe = pipe
        self.script = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        return self._pipe.evalsha(self.sha, self.script, list(keys or ()), list(args or ()))
