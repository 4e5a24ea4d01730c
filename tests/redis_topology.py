"""Real multi-process Redis topologies for the tests: a 3-node Cluster and a Sentinel setup.

Every process is ``redis-server`` on loopback with no persistence, in a temp dir, stopped by the
fixture (the single server of most tests is ``scripts.processes.RedisServer``; these need several
processes with cluster or sentinel options). Cluster nodes need their bus port (port + 10000) free too, so ports are picked below
55535 with both checked.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import redis

from scripts.processes import stop_process, wait_until


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(n: int, *, bus: bool) -> list[int]:
    ports: list[int] = []
    rng = random.Random()
    while len(ports) < n:
        port = rng.randrange(20000, 30000)
        if port not in ports and _free(port) and (not bus or _free(port + 10000)):
            ports.append(port)
    return ports


def _wait(predicate: Any, what: str, timeout: float = 15.0) -> None:
    """Wait for a topology condition; a Redis that refuses or errors meanwhile counts as "not yet"."""
    try:
        wait_until(predicate, timeout, what=what, interval=0.1, ignore=(redis.RedisError, OSError))
    except TimeoutError as exc:
        raise RuntimeError(str(exc)) from None


def _command(port: int, *args: Any, **connect: Any) -> Any:
    """One command on a fresh connection to 127.0.0.1:``port`` (``connect``: more redis-py options, e.g. TLS)."""
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, **connect)
    try:
        return r.execute_command(*args)
    finally:
        r.close()


class Processes:
    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="tb-redis-topo-"))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, port: int, *args: str, config: str | None = None) -> None:
        cmd = [self.binary]
        if config is not None:  # sentinel mode needs a writable config file
            path = self.dir / f"{port}.conf"
            path.write_text(config)
            cmd += [str(path), "--sentinel"]
        cmd += ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), *args]
        self.procs[port] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: _command(port, "PING") is True, f"redis on {port}")

    def kill(self, port: int) -> None:
        stop_process(self.procs.pop(port), timeout=5)

    def stop_all(self) -> None:
        for port in list(self.procs):
            self.kill(port)
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster(Processes):
    """Three masters, 16384 slots split by ``redis-cli --cluster create``, no replicas."""

    def __init__(self, binary: str) -> None:
        super().__init__(binary)
        self.ports = pick_ports(3, bus=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def up(self) -> None:
        for port in self.ports:
            self.start(port, "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                       "--cluster-node-timeout", "2000")
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (Debian package redis-tools)")
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=30)
        _wait(lambda: all(b"cluster_state:ok" in _command(p, "CLUSTER", "INFO") for p in self.ports), "cluster_state:ok")

    def flush(self) -> None:
        for port in self.ports:
            _command(port, "FLUSHALL")


class SentinelSetup(Processes):
    """One master, one replica, one Sentinel watching them (quorum 1, fast failure detection)."""

    MASTER_NAME = "tbmaster"

    def __init__(self, binary: str) -> None:
        super().__init__(binary)
        self.master_port, self.replica_port, self.sentinel_port = pick_ports(3, bus=False)

    def up(self) -> None:
        self.start(self.master_port, "--repl-diskless-sync-delay", "0")
        self.start(self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port), "--repl-diskless-sync-delay", "0")
        _wait(lambda: _command(self.replica_port, "INFO", "replication").get("master_link_status") == "up", "replica link")
        self.start(self.sentinel_port, config=(
            f"sentinel monitor {self.MASTER_NAME} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {self.MASTER_NAME} 5000\n"
        ))
        _wait(lambda: self.sentinel_master_port() == self.master_port, "sentinel to see the master")
        _wait(lambda: len(_command(self.sentinel_port, "SENTINEL", "REPLICAS", self.MASTER_NAME)) == 1,
              "sentinel to see the replica")

    def wait_replica_caught_up(self) -> None:
        def caught_up() -> bool:
            offset = _command(self.master_port, "INFO", "replication")["master_repl_offset"]
            return _command(self.replica_port, "INFO", "replication")["slave_repl_offset"] >= offset

        _wait(caught_up, "replica to catch up")

    def sentinel_master_port(self) -> int:
        host, port = _command(self.sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.MASTER_NAME)
        return int(port)

    def failover(self) -> int:
        """SENTINEL FAILOVER, then wait until the replica is the master. Returns the new master's port."""
        old = self.sentinel_master_port()

        def requested() -> bool:
            try:
                _command(self.sentinel_port, "SENTINEL", "FAILOVER", self.MASTER_NAME)
            except redis.ResponseError as exc:  # NOGOODSLAVE until Sentinel has fresh INFO from the replica
                if "NOGOODSLAVE" in str(exc):
                    return False
                raise
            return True

        _wait(requested, "sentinel to accept FAILOVER", timeout=20)
        _wait(lambda: self.sentinel_master_port() != old, "sentinel failover", timeout=20)
        new = self.sentinel_master_port()
        _wait(lambda: _command(new, "INFO", "replication").get("role") == "master", "new master role")
        return new


# -- fixtures (import them into a test module to use them) ----------------------------------------

import pytest  # noqa: E402


@contextlib.contextmanager
def running(topology: Any) -> Any:
    """Start a Cluster or SentinelSetup, and stop every process it started, whatever happens."""
    try:
        topology.up()
        yield topology
    finally:
        topology.stop_all()


@pytest.fixture(scope="module")
def redis_cluster() -> Any:
    from tests.conftest import _redis_binary

    with running(Cluster(_redis_binary())) as cluster:
        yield cluster


@pytest.fixture(params=[pytest.param("single", marks=pytest.mark.redis), pytest.param("cluster", marks=pytest.mark.redis)])
def shared_redis(request: Any) -> tuple[str, dict[str, str]]:
    """(redis_url, extra broker env) for one real Redis, then for the 3-node cluster."""
    if request.param == "single":
        server = request.getfixturevalue("real_redis")
        return server.url, {}
    cluster = request.getfixturevalue("redis_cluster")
    cluster.flush()
    return cluster.url, {"BROKER_REDIS_CLUSTER": "true"}
