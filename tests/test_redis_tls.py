"""Redis over TLS (``rediss://``): a real ``redis-server`` that listens on a TLS port only.

The certificates come from a CA made for the test (``trustme``); the broker is given it with the
URL's ``ssl_ca_certs`` option (docs/operations.md). Checked: the token endpoint's auto-pipelined
script calls and the registry's pooled commands both work over TLS (in process and in a
``python -m app serve`` process); a server certificate the broker does not trust fails closed (the
process refuses to start; a running broker answers 503, never a token); a client certificate; a
3-node Cluster; and behind Sentinel a ``rediss://`` URL gives TLS connections to the master (it
used to give plain ones).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis

from app.config import Settings, redact_url
from app.store.redis import connect
from scripts.processes import free_port, start_broker, stop_process, wait_until
from tests.conftest import Broker, FrozenClock, _redis_binary, require_binary
from tests.expect import assert_invalid_client, assert_token
from tests.helpers import ISS, TestClient, form
from tests.redis_topology import _command, pick_ports
from tests.test_redis_faults import assert_unavailable

MASTER = "tlsmaster"


class TlsFiles:
    """A CA and a server certificate for 127.0.0.1 and localhost signed by it; another pair the
    server can be switched to (``TlsRedis.present``)."""

    def __init__(self, folder: Path) -> None:
        import trustme

        ca = trustme.CA()
        self.ca, self.cert, self.key = self._issue(ca, folder, "")
        self.other_ca, self.other_cert, self.other_key = self._issue(trustme.CA(), folder, "other-")
        client = ca.issue_cert("token-broker")  # a client certificate, for tls-auth-clients yes
        self.client_cert, self.client_key = folder / "client.pem", folder / "client.key"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))

    @staticmethod
    def _issue(ca: Any, folder: Path, prefix: str) -> tuple[Path, Path, Path]:
        server = ca.issue_cert("127.0.0.1", "localhost")
        files = folder / f"{prefix}ca.pem", folder / f"{prefix}server.pem", folder / f"{prefix}server.key"
        ca.cert_pem.write_to_path(str(files[0]))
        server.cert_chain_pems[0].write_to_path(str(files[1]))
        server.private_key_pem.write_to_path(str(files[2]))
        return files

    def server_args(self, *, auth_clients: bool = False) -> list[str]:
        return ["--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
                "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "yes" if auth_clients else "no"]


class TlsRedis:
    """``redis-server`` with ``--port 0``: TLS on ``port`` and no plain-text listener at all.

    With ``sentinel``, a Sentinel (plain port) watches it as ``MASTER`` over TLS."""

    def __init__(self, files: TlsFiles, *, sentinel: bool = False, auth_clients: bool = False) -> None:
        self.files = files
        self.auth_clients = auth_clients
        self.port = free_port()
        self.sentinel_port = free_port() if sentinel else None
        self.dir = Path(tempfile.mkdtemp(prefix="tb-redis-tls-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    def url(self, ca: Path | None, host: str = "127.0.0.1", *, client_cert: bool = False) -> str:
        options = [f"ssl_ca_certs={quote(str(ca))}"] if ca is not None else []
        if client_cert:
            options += [f"ssl_certfile={quote(str(self.files.client_cert))}",
                        f"ssl_keyfile={quote(str(self.files.client_key))}"]
        return f"rediss://{host}:{self.port}/0" + ("?" + "&".join(options) if options else "")

    def start(self) -> TlsRedis:
        self._spawn(["--port", "0", "--tls-port", str(self.port), *self.files.server_args(auth_clients=self.auth_clients)])
        wait_until(self._master_answers, 10, what=f"redis-server on TLS port {self.port}",
                   ignore=(redis.RedisError, OSError))
        if self.sentinel_port is not None:
            config = self.dir / "sentinel.conf"
            config.write_text(f"sentinel monitor {MASTER} 127.0.0.1 {self.port} 1\n")
            self._spawn([str(config), "--sentinel", "--port", str(self.sentinel_port), "--tls-replication", "yes",
                         *self.files.server_args()])
            wait_until(self._sentinel_answers, 15, what="the Sentinel", ignore=(redis.RedisError, OSError))
        return self

    def _spawn(self, args: list[str]) -> None:
        cmd = [_redis_binary(), *args, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def _sentinel_answers(self) -> bool:
        if any(proc.poll() is not None for proc in self.procs):
            raise RuntimeError("a redis-server of the TLS set-up exited")
        return _command(self.sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER) is not None

    def _master_answers(self) -> bool:
        if self.procs[0].poll() is not None:
            raise RuntimeError(f"redis-server exited with code {self.procs[0].returncode}")
        return self.command("PING") is True

    def command(self, *args: Any) -> Any:
        return _tls_command(self.files, self.port, *args)

    def present(self, cert: Path, key: Path, *, trusted_by: Path) -> None:
        """Switch the server's certificate and cut every client connection (the next ones meet the
        new certificate); ``trusted_by``: the CA that signed the one presented now."""
        # One connection for both commands: a new one would meet the new certificate.
        r = redis.Redis(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(trusted_by),
                        socket_timeout=2, socket_connect_timeout=2)
        try:
            r.execute_command("CONFIG", "SET", "tls-cert-file", str(cert), "tls-key-file", str(key))  # both at once
            r.execute_command("CLIENT", "KILL", "TYPE", "normal")  # not this connection (SKIPME yes)
        finally:
            r.close()

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc, timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


def _tls_command(files: TlsFiles, port: int, *args: Any) -> Any:
    """One command on a fresh TLS connection (with the client certificate, for servers that ask)."""
    return _command(port, *args, ssl=True, ssl_ca_certs=str(files.ca), ssl_certfile=str(files.client_cert),
                    ssl_keyfile=str(files.client_key), socket_connect_timeout=2)


class TlsCluster:
    """Three masters on TLS ports only, their cluster bus on TLS too (``tls-cluster yes``)."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.ports = pick_ports(3, bus=True)
        self.dir = Path(tempfile.mkdtemp(prefix="tb-redis-tls-cluster-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.ports[0]}/0?ssl_ca_certs={quote(str(self.files.ca))}"

    def start(self) -> TlsCluster:
        for port in self.ports:
            self.procs.append(subprocess.Popen(
                [_redis_binary(), "--port", "0", "--tls-port", str(port), "--tls-cluster", "yes", *self.files.server_args(),
                 "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "2000",
                 "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            wait_until(lambda port=port: _tls_command(self.files, port, "PING") is True, 10,
                       what=f"cluster node on TLS port {port}", ignore=(redis.RedisError, OSError))
        cli = require_binary("redis-cli", "the Redis Cluster tests", "apt-get install redis-tools")
        subprocess.run([cli, "--tls", "--cacert", str(self.files.ca), "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=30)
        wait_until(lambda: all(b"cluster_state:ok" in _tls_command(self.files, p, "CLUSTER", "INFO") for p in self.ports),
                   20, what="cluster_state:ok on every node", ignore=(redis.RedisError, OSError))
        return self

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc, timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles(tmp_path_factory.mktemp("redis-tls"))


@pytest.fixture(scope="module")
def tls_redis(tls_files: TlsFiles) -> Iterator[TlsRedis]:
    server = TlsRedis(tls_files).start()
    yield server
    server.stop()


@pytest.fixture
def flushed(tls_redis: TlsRedis) -> TlsRedis:
    tls_redis.command("FLUSHALL")
    return tls_redis


def _settings(tmp_path: Path, url: str, **kw: Any) -> Settings:
    return Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, redis_url=url, **kw)


def _issue_refuse_reuse(b: Broker, client_id: str = "c1") -> None:
    """Register a client; its assertion gets a token and is refused the second time; its next
    assertion gets the same token back (the token cache): every store path of /token, once."""
    client = TestClient(client_id)
    b.register(client)
    spent = client.assertion(b.clock.now)
    first = assert_token(b.token(form(spent)))
    assert_invalid_client(b.token(form(spent)))
    assert assert_token(b.token(form(client.assertion(b.clock.now))))["access_token"] == first["access_token"]


@pytest.mark.redis
def test_the_server_has_no_plain_listener(flushed: TlsRedis) -> None:
    """What the other tests rely on: every connection that works here is a TLS one."""
    assert flushed.command("CONFIG", "GET", "port") == {b"port": b"0"}
    assert flushed.command("CONFIG", "GET", "tls-port") == {b"tls-port": str(flushed.port).encode()}


@pytest.mark.redis
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"], ids=["ip-address", "host-name"])
def test_tokens_over_tls(flushed: TlsRedis, tmp_path: Path, host: str) -> None:
    """Registration (pooled commands), the jti record and the token cache (the auto-pipelined
    script call) all over TLS, with the server's name checked against its certificate."""
    clock = FrozenClock(time.time())
    with Broker(_settings(tmp_path, flushed.url(flushed.files.ca, host)), clock) as b:
        _issue_refuse_reuse(b)
    events = [e["event"] for e in b.logs()]
    assert "token.store_unavailable" not in events and "token.unexpected_error" not in events


@pytest.mark.redis
def test_a_certificate_the_broker_does_not_trust_fails_closed(flushed: TlsRedis, tmp_path: Path) -> None:
    """The server switches to a certificate from another CA while the broker runs (its open
    connections cut): no token while the broker cannot trust it, 503 ``temporarily_unavailable``,
    never a 500; tokens again once the server presents the trusted one, without a restart."""
    clock = FrozenClock(time.time())
    files = flushed.files
    with Broker(_settings(tmp_path, flushed.url(files.ca)), clock) as b:
        c1 = TestClient("c1")
        b.register(c1)
        assert_token(b.token(form(c1.assertion(clock.now))))
        flushed.present(files.other_cert, files.other_key, trusted_by=files.ca)
        try:
            for _ in range(3):
                assert_unavailable(b.token(form(c1.assertion(clock.now))))
        finally:
            flushed.present(files.cert, files.key, trusted_by=files.other_ca)
        wait_until(lambda: b.token(form(c1.assertion(clock.now))).status_code == 200, 10,
                   what="a token once the trusted certificate is back")
    events = [e.get("event") for e in b.logs()]
    assert "token.store_unavailable" in events
    assert "token.unexpected_error" not in events and "request.unexpected_error" not in events


@pytest.mark.redis
@pytest.mark.live
def test_serve_over_tls(flushed: TlsRedis, tmp_path: Path) -> None:
    """``python -m app serve`` on ``rediss://``: the start-up check passes, tokens are issued and
    a replay is refused, across processes (registration from an in-process broker)."""
    url = flushed.url(flushed.files.ca)
    live = start_broker(tmp_path / "keys", tmp_path / "broker.log", port=free_port(), issuer=ISS, redis_url=url,
                        timeout=30)
    try:
        with Broker(_settings(tmp_path, url), FrozenClock(time.time())) as admin:
            c1 = TestClient("c1")
            admin.register(c1)
        spent = c1.assertion(time.time())
        assert_token(httpx.post(live.url + "/token", data=form(spent), timeout=5))
        assert_invalid_client(httpx.post(live.url + "/token", data=form(spent), timeout=5))
    finally:
        live.stop()


@pytest.mark.redis
@pytest.mark.live
@pytest.mark.parametrize("trust", ["system-store", "other-ca"])
def test_serve_refuses_to_start_without_trust(flushed: TlsRedis, tmp_path: Path, trust: str) -> None:
    """A CA that did not sign the server's certificate (or none: the system's store): the
    start-up check fails and the process exits before it listens, saying why."""
    ca = None if trust == "system-store" else flushed.files.other_ca
    with pytest.raises(RuntimeError) as refused:
        start_broker(tmp_path / "keys", tmp_path / "refused.log", port=free_port(), issuer=ISS,
                     redis_url=flushed.url(ca), timeout=30)
    assert (f"token-broker: BROKER_REDIS_URL: {redact_url(flushed.url(ca))} presented a TLS certificate the broker "
            "does not trust") in str(refused.value), str(refused.value)


#: (case, the start-up line, exit status): what ``token-broker serve`` says for each TLS mistake.
TLS_START_FAILURES = [
    ("system-store", "BROKER_REDIS_URL: {url} presented a TLS certificate the broker does not trust (self-signed "
     "certificate in certificate chain); give the CA that signed it in the URL "
     "(rediss://host:port/db?ssl_ca_certs=/path/ca.pem), and connect by a name or address the certificate holds", 2),
    ("other-ca", "BROKER_REDIS_URL: {url} presented a TLS certificate the broker does not trust (self-signed "
     "certificate in certificate chain); give the CA that signed it in the URL "
     "(rediss://host:port/db?ssl_ca_certs=/path/ca.pem), and connect by a name or address the certificate holds", 2),
    ("no-client-certificate", "BROKER_REDIS_URL: {url} asks for a client certificate (tls-auth-clients); give it in "
     "the URL: rediss://host:port/db?ssl_certfile=/path/cert.pem&ssl_keyfile=/path/key.pem", 2),
    ("no-client-certificate", "BROKER_REDIS_URL: cannot reach {url} (connection reset by the server); start Redis "
     "or fix the URL (a server that asks for a client certificate resets a client that sends none: ssl_certfile "
     "and ssl_keyfile in the URL)", 1),
    ("redis-to-a-tls-port", "BROKER_REDIS_URL: cannot reach {url} (connection reset by the server); start Redis or "
     "fix the URL (a port that speaks only TLS resets plain-text connections: use rediss://)", 1),
    ("rediss-to-a-plain-port", "BROKER_REDIS_URL: cannot reach {url} (no answer in time); start Redis or fix the URL "
     "(a plain-text port does not answer a TLS handshake: use redis://, or the server's tls-port)", 1),
]


@pytest.mark.redis
@pytest.mark.parametrize("case", sorted({c[0] for c in TLS_START_FAILURES}))
def test_start_up_says_what_is_wrong_with_tls(flushed: TlsRedis, real_redis: Any, tls_files: TlsFiles, tmp_path: Path,
                                             case: str) -> None:
    """The start-up check's one line for each TLS mistake (``token-broker serve`` prints it and
    exits with ``status``: 2 for settings to change, 1 for something to start or reach)."""
    from app.preflight import redis as check_redis
    from app.start_failures import StartupFailure

    if case == "no-client-certificate":
        server = TlsRedis(tls_files, auth_clients=True).start()
    try:
        url = {
            "system-store": lambda: flushed.url(None),
            "other-ca": lambda: flushed.url(tls_files.other_ca),
            "no-client-certificate": lambda: server.url(tls_files.ca),
            "redis-to-a-tls-port": lambda: f"redis://127.0.0.1:{flushed.port}/0",
            "rediss-to-a-plain-port": lambda: f"rediss://127.0.0.1:{real_redis.port}/0",
        }[case]()
        with pytest.raises(StartupFailure) as failed:
            check_redis(_settings(tmp_path, url))
    finally:
        if case == "no-client-certificate":
            server.stop()
    answer = (failed.value.line, failed.value.status)
    expected = [(text.format(url=redact_url(url)), code) for name, text, code in TLS_START_FAILURES if name == case]
    # Without a client certificate, TLS 1.3 ends the handshake before the server checks: the client
    # reads either the server's alert or the reset of the closed connection, whichever comes first.
    assert answer in expected, answer


@pytest.mark.redis
def test_a_client_certificate_when_the_server_asks_for_one(tls_files: TlsFiles, tmp_path: Path) -> None:
    """``tls-auth-clients yes``: with ``ssl_certfile``/``ssl_keyfile`` in the URL tokens are issued;
    without them the server accepts no connection, so the broker does not start (its lifespan
    cannot read the registry)."""
    server = TlsRedis(tls_files, auth_clients=True).start()
    try:
        clock = FrozenClock(time.time())
        with Broker(_settings(tmp_path, server.url(tls_files.ca, client_cert=True)), clock) as b:
            _issue_refuse_reuse(b)
        with pytest.raises(ExceptionGroup) as refused, Broker(_settings(tmp_path / "no-cert", server.url(tls_files.ca)), clock):
            pass
        assert [repr(e) for e in refused.value.exceptions] == ["StoreUnavailable('ConnectionError')"]
    finally:
        server.stop()


@pytest.mark.redis
def test_sentinel_with_a_rediss_url_connects_to_the_master_over_tls(tls_files: TlsFiles, tmp_path: Path) -> None:
    """The master listens on TLS only and the Sentinel names it: tokens are issued and a replay
    refused, so every connection to the master was a TLS one."""
    server = TlsRedis(tls_files, sentinel=True).start()
    try:
        settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300,
                            redis_url=f"rediss:///0?ssl_ca_certs={quote(str(tls_files.ca))}",
                            redis_sentinels=(f"127.0.0.1:{server.sentinel_port}",), redis_sentinel_master=MASTER)
        clock = FrozenClock(time.time())
        with Broker(settings, clock) as b:
            _issue_refuse_reuse(b)
    finally:
        server.stop()


@pytest.mark.redis
def test_cluster_over_tls(tls_files: TlsFiles, tmp_path: Path) -> None:
    """``BROKER_REDIS_CLUSTER`` with a ``rediss://`` URL: the client finds the other nodes and
    reaches each over TLS (no node has a plain port). Eight clients' records land on more than
    one node; each gets a token, its replay is refused and its second token comes from the cache."""
    cluster = TlsCluster(tls_files).start()
    try:
        settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, redis_url=cluster.url(),
                            redis_cluster=True)
        clock = FrozenClock(time.time())
        with Broker(settings, clock) as b:
            for n in range(8):
                _issue_refuse_reuse(b, f"c{n}")
        holding = [p for p in cluster.ports if _tls_command(tls_files, p, "DBSIZE") > 0]
        assert len(holding) >= 2, holding
        events = [e.get("event") for e in b.logs()]
        assert "token.store_unavailable" not in events and "token.unexpected_error" not in events
    finally:
        cluster.stop()


@pytest.mark.parametrize(
    ("url", "connection", "tls_options"),
    [
        ("rediss://u:pw@h:1/3?ssl_ca_certs=/etc/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
         "SentinelManagedSSLConnection", {"ssl_ca_certs": "/etc/ca.pem", "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem"}),
        ("rediss://u:pw@h:1/3", "SentinelManagedSSLConnection", {}),
        ("redis://u:pw@h:1/3", "SentinelManagedConnection", {}),
    ],
    ids=["rediss-with-options", "rediss", "redis"],
)
def test_sentinel_master_connections_follow_the_url_scheme(url: str, connection: str, tls_options: dict[str, str]) -> None:
    """No network: the connection class and options the Sentinel pool will use for the master."""
    import asyncio

    async def build() -> tuple[str, dict[str, Any]]:
        client = connect(url, timeout=0.2, retries=0, sentinels=("127.0.0.1:1",), sentinel_master="m")
        try:
            pool = client.connection_pool
            return pool.connection_class.__name__, dict(pool.connection_kwargs)
        finally:
            await client.aclose()

    name, kwargs = asyncio.run(build())
    assert name == connection
    assert {k: kwargs[k] for k in ("username", "password", "db")} == {"username": "u", "password": "pw", "db": 3}
    assert {k: v for k, v in kwargs.items() if k.startswith("ssl_")} == tls_options
