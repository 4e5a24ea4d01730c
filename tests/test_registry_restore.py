"""Restoring the client registry (docs/operations.md, "Backing up and restoring the registry";
attack matrix: `registry-restore`).

- ``PUT /admin/clients/{id}/record``: a whole record back as it was, one compare-and-set write;
  a newer record or another registration is refused unless ``force=true``; admin clients never.
- ``broker_admin.py export`` / ``import``: exact lines and exit statuses.
- The round trip export → FLUSHALL + ``registry recreate`` → import on a real redis-server and a
  real broker gives back byte-identical records and clients that get tokens with their own keys.
- The documented backup and restore procedure, command by command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.client.admin import BrokerAdmin
from app.store import keyspace
from tests.conftest import ROOT, Broker, free_port, wait_until
from tests.helpers import RS1, TestClient
from tests.test_admin_api import admin_headers
from tests.test_registry_replicas import key_file_token

SCRIPT = str(ROOT / "scripts" / "broker_admin.py")
FORCE_NOTE = "; force=true replaces it"


def put(broker: Broker, client_id: str, body: Any, force: str | None = None) -> Any:
    query = "" if force is None else f"?force={force}"
    return broker.http.put(f"/admin/clients/{client_id}/record{query}", json=body, headers=admin_headers(broker))


def stored(broker: Broker, client_id: str) -> bytes | None:
    """The record's JSON as the registry holds it."""
    return broker.call(broker.app.state.registry.redis.get, keyspace.client(client_id))


def exported(broker: Broker, client_id: str) -> dict[str, Any]:
    """The client as ``export`` writes it (the defaults the API leaves out, spelled out)."""
    record = broker.http.get(f"/admin/clients/{client_id}", headers=admin_headers(broker)).json()
    return {"enabled": True, "registration_id": "", "version": 0, **record}


def bad(description: str, error: str = "invalid_client_metadata") -> dict[str, str]:
    return {"error": error, "error_description": description}


# -- the import endpoint ------------------------------------------------------------------------------
# Each row: what happens to the registry after "svc" (version 1) was exported, the body sent (made
# from the export), force, and the exact answer (the body may depend on the export).

def _deleted(b: Broker) -> None:
    assert b.http.delete("/admin/clients/svc", headers=admin_headers(b)).status_code == 204


def _registered_again(b: Broker) -> None:
    _deleted(b)
    b.register(TestClient("svc"))


def _updated(b: Broker) -> None:
    assert b.http.patch("/admin/clients/svc", json={"token_lifetime": 600}, headers=admin_headers(b)).status_code == 200


def _nothing(b: Broker) -> None:
    pass


NEWER = ("the registry holds a newer version of this registration (version 2; the record is version 1)" + FORCE_NOTE)
OTHER = ("the registry holds another registration of this client_id (deleted and registered again since the export)"
         + FORCE_NOTE)
ADMIN = ("admin clients are not imported through the admin API: they come from the operator's configuration "
         "(BROKER_ADMIN_JWKS, or \"admin\": true in the clients file)")

IMPORT_ROWS = [
    pytest.param(_deleted, lambda e: e, None, 201, "created", id="absent-is-created"),
    pytest.param(_nothing, lambda e: e, None, 200, "unchanged", id="same-record-is-unchanged"),
    pytest.param(_nothing, lambda e: {**e, "version": 2, "scopes": ["read"]}, None, 200, "updated",
                 id="higher-version-is-updated"),
    pytest.param(_updated, lambda e: e, None, 409, bad(NEWER), id="newer-in-registry-is-refused"),
    pytest.param(_updated, lambda e: e, "true", 200, "updated", id="newer-in-registry-forced"),
    pytest.param(_nothing, lambda e: {**e, "scopes": ["read"]}, None, 409,
                 bad("the registry holds version 1 of this registration with other content" + FORCE_NOTE),
                 id="same-version-other-content-is-refused"),
    pytest.param(_registered_again, lambda e: e, None, 409, bad(OTHER), id="other-registration-is-refused"),
    pytest.param(_registered_again, lambda e: e, "true", 200, "updated", id="other-registration-forced"),
    pytest.param(_deleted, lambda e: {**e, "admin": True}, None, 400, bad(ADMIN), id="admin-record"),
    pytest.param(_deleted, lambda e: {k: v for k, v in e.items() if k != "registration_id"}, None, 400,
                 bad("registration_id is missing: send a whole record, as `broker_admin.py export` writes it"),
                 id="no-registration-id"),
    pytest.param(_deleted, lambda e: {k: v for k, v in e.items() if k != "version"}, None, 400,
                 bad("version is missing: send a whole record, as `broker_admin.py export` writes it"),
                 id="no-version"),
    pytest.param(_deleted, lambda e: {**e, "registration_id": "abc.def"}, None, 400,
                 bad("registration_id must be up to 64 characters of A-Z a-z 0-9 _ -"), id="dot-in-registration-id"),
    pytest.param(_deleted, lambda e: {**e, "version": "2"}, None, 400,
                 bad("version must be a whole number from 0 to 2^53 - 1"), id="version-not-a-number"),
    pytest.param(_deleted, lambda e: {**e, "created_at": -1}, None, 400,
                 bad("created_at must be a whole number from 0 to 2^53 - 1"), id="negative-time"),
    pytest.param(_deleted, lambda e: {**e, "client_id": "other"}, None, 400,
                 bad("send a JSON object (a whole record) whose client_id is the one in the path"), id="other-client-id"),
    pytest.param(_deleted, lambda e: [e], None, 400,
                 bad("send a JSON object (a whole record) whose client_id is the one in the path"), id="not-an-object"),
    pytest.param(_deleted, lambda e: {**e, "scopes": ["broker:admin"], "default_scopes": []}, None, 400,
                 bad("scope 'broker:admin' is reserved for admin clients the operator configures (BROKER_ADMIN_JWKS, "
                     "or \"admin\": true in the clients file)"), id="reserved-scope"),
    pytest.param(_deleted, lambda e: e, "yes", 400, bad("force must be true or false"), id="force-not-a-boolean"),
]


@pytest.mark.parametrize(("change", "body", "force", "status", "answer"), IMPORT_ROWS)
def test_import_endpoint(broker: Broker, change: Callable[[Broker], None], body: Callable[[dict[str, Any]], Any],
                         force: str | None, status: int, answer: Any) -> None:
    broker.register(TestClient("svc"))
    export = exported(broker, "svc")
    change(broker)
    before = stored(broker, "svc")
    r = put(broker, "svc", body(export), force)
    if isinstance(answer, dict):  # refused: exactly this answer, and nothing written
        assert (r.status_code, r.json()) == (status, answer)
        assert stored(broker, "svc") == before
        return
    assert (r.status_code, r.json()["result"]) == (status, answer), r.text
    assert r.json()["client"] == broker.http.get("/admin/clients/svc", headers=admin_headers(broker)).json()


def test_an_imported_record_is_byte_identical_and_forced_versions_move_on(broker: Broker) -> None:
    c = TestClient("svc")
    broker.register(c)
    broker.update("svc", token_lifetime=900)  # version 2
    export, before = exported(broker, "svc"), stored(broker, "svc")
    assert broker.http.delete("/admin/clients/svc", headers=admin_headers(broker)).status_code == 204
    assert put(broker, "svc", export).status_code == 201
    assert stored(broker, "svc") == before
    broker.app.state.directory.invalidate()
    assert broker.get_token(c).status_code == 200
    # A forced older record of the same registration goes in above the version it replaces, so
    # nothing the token cache holds for that version is served for it.
    broker.update("svc", token_lifetime=1200)  # version 3
    r = put(broker, "svc", export, "true")
    assert (r.status_code, r.json()["result"], r.json()["client"]["version"]) == (200, "updated", 4)
    assert r.json()["client"]["token_lifetime"] == 900


def test_import_refuses_to_touch_admin_clients(broker: Broker) -> None:
    export = exported(broker, "broker-admin")
    r = put(broker, "broker-admin", {**export, "admin": False})
    assert (r.status_code, r.json()) == (400, bad(ADMIN))


def test_import_needs_an_admin_token(broker: Broker) -> None:
    r = broker.http.put("/admin/clients/svc/record", json={})
    assert (r.status_code, r.json()) == (401, {})


# -- broker_admin.py export / import ----------------------------------------------------------------


def admin_cli(url: str, admin_key: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    return subprocess.run([sys.executable, SCRIPT, "--broker", url, "--admin-key", str(admin_key), *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def register_with_key(url: str, admin_key: Path, keys_dir: Path, client_id: str, *extra: str) -> None:
    done = admin_cli(url, admin_key, "register", client_id, "--scope", "read write", "--default-scope", "read",
                     "--audience", RS1, "--keys-dir", str(keys_dir), *extra)
    assert done.returncode == 0, done.stderr


@pytest.mark.live
def test_export_and_import_print_one_line_per_client_and_exit_statuses(spawn_broker, tmp_path: Path) -> None:
    bp = spawn_broker()
    key = spawn_broker.keys_dir / "admin.jwk"
    for cid in ("alpha", "beta", "gamma"):
        register_with_key(bp.url, key, tmp_path / "ck", cid)
    out = tmp_path / "clients.json"
    done = admin_cli(bp.url, key, "export", "--out", str(out))
    assert (done.returncode, done.stdout, done.stderr) == (0, f"exported 3 clients to {out}\n", "")
    document = json.loads(out.read_text())
    assert [c["client_id"] for c in document["clients"]] == ["alpha", "beta", "gamma"]
    assert {(c["enabled"], c["version"], len(c["registration_id"])) for c in document["clients"]} == {(True, 1, 16)}
    # To stdout without --out: the same document.
    assert json.loads(admin_cli(bp.url, key, "export").stdout) == document

    admin = BrokerAdmin(bp.url, key)
    admin.delete("alpha")
    admin.update("beta", {"token_lifetime": 600})  # newer than the export
    document["clients"].append({**document["clients"][0], "client_id": "ops-admin", "admin": True})
    out.write_text(json.dumps(document))
    done = admin_cli(bp.url, key, "import", str(out))
    assert (done.returncode, done.stderr) == (1, "")
    assert done.stdout.splitlines() == [
        "created alpha (version 1)",
        "skipped beta: the registry holds a newer version of this registration (version 2; the record is version 1); "
        "--force replaces it",
        "skipped gamma: unchanged (version 1)",
        "skipped ops-admin: an admin client: admin clients come from the broker's configuration (BROKER_ADMIN_JWKS, "
        "or \"admin\": true in the clients file), never from an import",
        "import: 1 created, 0 updated, 3 skipped",
    ]
    done = admin_cli(bp.url, key, "import", str(out), "--force")
    assert (done.returncode, done.stdout.splitlines()[:2], done.stdout.splitlines()[-1]) == (
        0, ["skipped alpha: unchanged (version 1)", "updated beta (version 3)"], "import: 0 created, 1 updated, 3 skipped")
    admin.close()


@pytest.mark.live
@pytest.mark.parametrize(("content", "line"), [
    (None, "{path} not found: give the file `export --out` wrote"),
    ("{not json", "cannot read {path} (JSONDecodeError): it must be the JSON file `export` writes"),
    ('{"client": []}', "{path} holds no list of clients: expected {{\"clients\": [...]}} as `export` writes it"),
], ids=["missing", "not-json", "wrong-shape"])
def test_import_of_an_unreadable_file_says_so_in_one_line(spawn_broker, tmp_path: Path, content: str | None,
                                                          line: str) -> None:
    bp = spawn_broker()
    path = tmp_path / "clients.json"
    if content is not None:
        path.write_text(content)
    done = admin_cli(bp.url, spawn_broker.keys_dir / "admin.jwk", "import", str(path))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"broker_admin.py import: error: {line.format(path=path)}\n"


# -- the round trip on a real Redis ------------------------------------------------------------------


def registry_records(redis_command: Callable[..., Any], client_ids: list[str]) -> dict[str, bytes]:
    return {cid: redis_command("GET", keyspace.client(cid)) for cid in client_ids}


def recreate(url: str, keys_dir: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BROKER_")},
           "BROKER_REDIS_URL": url, "BROKER_KEYS_DIR": str(keys_dir)}
    done = subprocess.run([sys.executable, "-m", "app", "registry", "recreate"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.redis
@pytest.mark.live
def test_export_wipe_recreate_import_gives_back_identical_records_and_working_clients(real_redis, spawn_broker,
                                                                                      tmp_path: Path) -> None:
    bp = spawn_broker(redis_url=real_redis.url)
    key, keys = spawn_broker.keys_dir / "admin.jwk", tmp_path / "ck"
    for cid in ("orders", "billing", "reports"):
        register_with_key(bp.url, key, keys, cid)
    with BrokerAdmin(bp.url, key) as admin:
        admin.update("billing", {"token_lifetime": 900})  # version 2
        admin.update("reports", {"enabled": False})
    ids = ["orders", "billing", "reports"]
    before = registry_records(real_redis.command, ids)
    out = tmp_path / "backup.json"
    assert admin_cli(bp.url, key, "export", "--out", str(out)).returncode == 0

    real_redis.command("FLUSHALL")
    wait_until(lambda: not bp.ready(), 10, what="the broker to notice the loss")
    recreate(real_redis.url, spawn_broker.keys_dir)
    wait_until(bp.ready, 10, what="the broker to serve the recreated registry")
    done = admin_cli(bp.url, key, "import", str(out))
    assert (done.returncode, done.stdout.splitlines()) == (0, [
        "created billing (version 2)", "created orders (version 1)", "created reports (version 2)",
        "import: 3 created, 0 updated, 0 skipped"])
    assert registry_records(real_redis.command, ids) == before
    for cid in ("orders", "billing"):
        r = key_file_token(bp.url, str(keys / f"{cid}.jwk"), cid)
        assert r.status_code == 200, r.text
    assert key_file_token(bp.url, str(keys / "reports.jwk"), "reports").status_code == 401  # still disabled
    again = admin_cli(bp.url, key, "import", str(out))
    assert (again.returncode, again.stdout.splitlines()[-1]) == (0, "import: 0 created, 0 updated, 3 skipped")


# -- the documented backup and restore procedure -------------------------------------------------------

PROCEDURE = re.compile(r"<!-- procedure: (\S+) -->\s*```sh\n(.*?)```", re.S)


def documented(name: str) -> list[str]:
    """The commands of one procedure block of docs/operations.md, as written there."""
    blocks = {m.group(1): m.group(2) for m in PROCEDURE.finditer((ROOT / "docs" / "operations.md").read_text())}
    return [line.strip() for line in blocks[name].splitlines() if line.strip()]


class PersistentRedis:
    """A redis-server run as the docs ask (AOF, fsync every second) in its own data folder."""

    def __init__(self, data: Path) -> None:
        self.dir, self.port = data, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        data.mkdir()

    def start(self, *extra: str) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                                      str(self.dir), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                                      *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.command("PING"), 10, what="redis-server", ignore=(OSError, subprocess.SubprocessError))

    def command(self, *args: str) -> Any:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        try:
            return client.execute_command(*args)
        except redis.RedisError as exc:
            raise OSError(str(exc)) from None
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def follow(name: str, env: dict[str, str], redis_server: PersistentRedis) -> list[str]:
    """Run a documented procedure line by line; starting Redis is the one step the deployment
    decides (the docs start it from its config file): here the same server, with the flags the
    docs add. Returns: the last command's output lines."""
    output: list[str] = []
    for line in documented(name):
        if line.startswith("redis-server "):
            assert redis_server.proc is not None
            redis_server.proc.wait(10)  # the documented shutdown stopped it
            redis_server.start(*shlex.split(line)[2:])
            continue
        venv_python = ".venv/bin/python "  # the docs' interpreter; this test's is the same environment
        command = sys.executable + " " + line[len(venv_python):] if line.startswith(venv_python) else line
        done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        output = done.stdout.splitlines()
    return output


@pytest.mark.redis
@pytest.mark.live
def test_the_documented_backup_and_restore_procedure(spawn_broker, tmp_path: Path) -> None:
    server = PersistentRedis(tmp_path / "redis-data")
    server.start()
    try:
        _backup_and_restore(spawn_broker, tmp_path, server)
    finally:
        server.stop()


def _backup_and_restore(spawn_broker: Any, tmp_path: Path, server: PersistentRedis) -> None:
    bp = spawn_broker(redis_url=server.url)
    key, keys, ids = spawn_broker.keys_dir / "admin.jwk", tmp_path / "ck", ["orders", "billing"]
    for cid in ids:
        register_with_key(bp.url, key, keys, cid)
    before = registry_records(server.command, ids)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}, "BROKER_URL": bp.url,
           "BROKER_ADMIN_KEY": str(key), "BROKER_REDIS_URL": server.url, "BROKER_KEYS_DIR": str(spawn_broker.keys_dir),
           "BACKUP": str(tmp_path / "backup"), "REDIS_DIR": str(server.dir)}
    follow("backup", env, server)

    for restore, printed in (("restore-snapshot", ["skipped billing: unchanged (version 1)",
                                                   "skipped orders: unchanged (version 1)"]),
                             ("restore-export", ["created billing (version 1)", "created orders (version 1)"])):
        server.command("FLUSHALL")
        wait_until(lambda: not bp.ready(), 10, what="the broker to notice the loss")
        assert follow(restore, env, server) == [*printed, _summary(printed)]
        wait_until(bp.ready, 15, what=f"the broker to serve again after {restore}")
        assert registry_records(server.command, ids) == before
        for cid in ids:
            assert key_file_token(bp.url, str(keys / f"{cid}.jwk"), cid).status_code == 200
    assert (server.dir / "appendonlydir").is_dir()  # AOF back on after the snapshot was loaded


def _summary(lines: list[str]) -> str:
    created = sum(line.startswith("created ") for line in lines)
    return f"import: {created} created, 0 updated, {len(lines) - created} skipped"


def test_import_refuses_to_overwrite_an_admin_client_of_the_clients_file(tmp_path: Path, clock: Any) -> None:
    from app.config import Settings
    from tests.helpers import ISS

    ops = TestClient("ops", scopes=("broker:admin",), default_scopes=("broker:admin",), audiences=(ISS + "/admin",),
                     default_audience=ISS + "/admin")
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"clients": [{**ops.metadata(), "admin": True}]}))
    with Broker(Settings(issuer=ISS, keys_dir=tmp_path / "keys", clients_file=str(path)), clock) as b:
        plain = TestClient("ops")
        body = {**plain.metadata(), "registration_id": "abcdefghijklmnop", "version": 9}
        before = stored(b, "ops")
        r = put(b, "ops", body, "true")
        assert (r.status_code, r.json()) == (400, bad(
            "this admin client is configured by the operator in the clients file; change it there"))
        assert stored(b, "ops") == before
