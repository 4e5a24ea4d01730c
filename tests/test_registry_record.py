"""``BROKER_REGISTRY_RECORD``: where the deployment records its client registry's id
(docs/operations.md, "When the registry is lost"; attack matrix: `registry-loss`). By default
``<keys_dir>/registry.id``; on Kubernetes the pods read the Secret's ``registry.id`` from its
read-only mount (docs/kubernetes.md). A replica reads and writes the record where the setting says,
never writes where it cannot (it logs why, naming the setting), and the operator's commands, which
exist to record it, stop with one line naming the setting before anything is created in Redis.
In process on fakeredis, then the commands against a real redis-server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis

from app.config import Settings
from app.service.registry_state import RegistryRecord
from app.store import keyspace
from tests.conftest import ROOT, Broker, FrozenClock, RedisServer
from tests.helpers import ISS
from tests.test_keys_read_only import in_mounts, read_only_bind, secret_volume

#: Not contacted: the tests hand the app a fakeredis client; set so the store is not the embedded one.
FAKE_URL = "redis://fakeredis.invalid:6379/0"
LOST = {"status": "not ready", "redis": "ok", "registry": "lost"}
UNINITIALIZED = {"status": "not ready", "redis": "ok", "registry": "uninitialized"}


def _settings(tmp_path: Path, record: Path | None) -> Settings:
    return Settings(issuer=ISS, keys_dir=tmp_path / "keys", redis_url=FAKE_URL,
                    registry_record=None if record is None else str(record))


def _readyz(broker: Broker) -> dict[str, Any]:
    body = broker.management.get("/readyz").json()
    body.pop("signing_kid", None)
    return body


def _events(broker: Broker, name: str) -> list[dict[str, Any]]:
    return [e for e in broker.logs() if e["event"] == name]


PATHS = [
    pytest.param({}, "/srv/keys/registry.id", id="unset-keys-folder"),
    pytest.param({"BROKER_REGISTRY_RECORD": ""}, "/srv/keys/registry.id", id="empty-keys-folder"),
    pytest.param({"BROKER_REGISTRY_RECORD": "/srv/keys/signing/registry.id"}, "/srv/keys/signing/registry.id",
                 id="kubernetes-pod-secret-entry"),
    pytest.param({"BROKER_REGISTRY_RECORD": "state/registry-id.txt"}, "state/registry-id.txt", id="relative-path"),
]


@pytest.mark.parametrize(("env", "path"), PATHS)
def test_record_path_from_the_setting(env: dict[str, str], path: str) -> None:
    settings = Settings.from_env({"BROKER_KEYS_DIR": "/srv/keys", **env})
    assert RegistryRecord.for_settings(settings).path == Path(path)


def test_a_replica_records_and_reads_the_id_where_the_setting_says(tmp_path: Path, clock: FrozenClock) -> None:
    """First start: creates the registry and writes the record at the setting's path (its folder
    created), nothing in the keys folder. Redis emptied, a later start reads that record: lost."""
    record = tmp_path / "state" / "registry.id"
    server = FakeServer()
    with Broker(_settings(tmp_path, record), clock, FakeRedis(server=server)) as first:
        assert _readyz(first) == {"status": "ready", "redis": "ok", "registry": "ok"}
        (recorded,) = _events(first, "registry.recorded")
        marker = first.call(first.app.state.registry.redis.get, keyspace.REGISTRY_MARKER).decode()
    assert recorded["path"] == str(record)
    assert record.read_text() == marker + "\n"
    assert not (tmp_path / "keys" / "registry.id").exists()

    fakeredis.FakeRedis(server=server).flushall()
    with Broker(_settings(tmp_path, record), clock, FakeRedis(server=server)) as later:
        assert _readyz(later) == LOST
        assert [e["registry_id"] for e in _events(later, "registry.lost")] == [marker]
        assert later.call(later.app.state.registry.redis.dbsize) == 0  # nothing created over the loss
    assert record.read_text() == marker + "\n"


def _unwritable_record(tmp_path: Path) -> Path:
    """A record location this process cannot write, whoever it runs as: under a regular file."""
    (tmp_path / "file").write_text("not a folder\n")
    return tmp_path / "file" / "registry.id"


REPLICA = [
    pytest.param(False, UNINITIALIZED, "registry.uninitialized", "error",
                 "no registry yet and BROKER_REGISTRY_RECORD cannot be written here: run `python -m app keys init` "
                 "where it is writable", id="no-registry-in-redis-creates-nothing"),
    pytest.param(True, {"status": "ready", "redis": "ok", "registry": "ok"}, "registry.unrecorded", "warning",
                 "BROKER_REGISTRY_RECORD cannot be written here: run `python -m app keys init` where it is writable "
                 "to record the registry", id="registry-in-redis-adopted-unrecorded"),
]


@pytest.mark.parametrize(("existing", "readyz", "event", "level", "note"), REPLICA)
def test_a_replica_never_writes_a_record_it_cannot(tmp_path: Path, clock: FrozenClock, existing: bool,
                                                   readyz: dict[str, Any], event: str, level: str, note: str) -> None:
    server = FakeServer()
    if existing:  # made elsewhere (keys init, another replica with a writable record)
        with Broker(_settings(tmp_path, tmp_path / "elsewhere" / "registry.id"), clock, FakeRedis(server=server)):
            pass
    record = _unwritable_record(tmp_path)
    with Broker(_settings(tmp_path, record), clock, FakeRedis(server=server)) as b:
        assert _readyz(b) == readyz
        (logged,) = _events(b, event)
        assert (logged["level"], logged["path"], logged["note"]) == (level, str(record), note)
        assert _events(b, "registry.recorded") == []
        marker = b.call(b.app.state.registry.redis.get, keyspace.REGISTRY_MARKER)
        assert (marker is not None) is existing
    assert (tmp_path / "file").read_text() == "not a folder\n"


# -- the operator's commands, against a real redis-server -------------------------------------------


def _cli(args: list[str], *, record: Path, keys_dir: Path, url: str, mounts: list[dict[str, Any]] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(BROKER_KEYS_DIR=str(keys_dir), BROKER_REDIS_URL=url, BROKER_ISSUER=ISS,
               BROKER_REGISTRY_RECORD=str(record))
    argv = [sys.executable, "-m", "app", *args]
    return subprocess.run(in_mounts(mounts, argv) if mounts is not None else argv, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def _read_only_folder(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    return tmp_path / "ro" / "registry.id", [read_only_bind(tmp_path / "ro")]


def _under_a_file(tmp_path: Path) -> tuple[Path, list[dict[str, Any]] | None]:
    return _unwritable_record(tmp_path), None


COMMANDS = [
    pytest.param(["registry", "init"], _read_only_folder, "{folder} is read-only", id="registry-init-read-only-mount"),
    pytest.param(["keys", "init"], _read_only_folder, "{folder} is read-only", id="keys-init-read-only-mount"),
    pytest.param(["registry", "recreate"], _read_only_folder, "{folder} is read-only",
                 id="registry-recreate-read-only-mount"),
    pytest.param(["registry", "init"], _under_a_file, "{folder} is not a folder this user can write",
                 id="registry-init-under-a-file"),
]


@pytest.mark.redis
@pytest.mark.parametrize(("args", "where", "reason"), COMMANDS)
def test_commands_that_must_record_stop_in_one_line(real_redis: RedisServer, tmp_path: Path, args: list[str],
                                                    where: Callable[[Path], tuple[Path, Any]], reason: str) -> None:
    record, mounts = where(tmp_path)
    done = _cli(args, record=record, keys_dir=tmp_path / "keys", url=real_redis.url, mounts=mounts)
    assert (done.returncode, done.stderr) == (2, (
        f"token-broker: BROKER_REGISTRY_RECORD={record}: the registry's id must be recorded there "
        f"and {reason.format(folder=record.parent)}; run this where it can be written (on Kubernetes: the keys-init "
        f"Job, docs/kubernetes.md), or point BROKER_REGISTRY_RECORD elsewhere\n"))
    assert real_redis.command("DBSIZE") == 0  # refused before anything was created


@pytest.mark.redis
def test_status_reads_the_record_from_a_read_only_secret_mount(real_redis: RedisServer, tmp_path: Path) -> None:
    """As a pod sees it: the record is the Secret's registry.id entry, on a read-only tmpfs."""
    work = tmp_path / "job"
    done = _cli(["keys", "init"], record=work / "registry.id", keys_dir=work, url=real_redis.url)
    assert done.returncode == 0, done.stderr
    marker = real_redis.command("GET", keyspace.REGISTRY_MARKER).decode()
    mount = tmp_path / "pod" / "signing"
    mounts = [secret_volume(mount, {"registry.id": work / "registry.id"})]

    def status() -> subprocess.CompletedProcess[str]:
        return _cli(["registry", "status"], record=mount / "registry.id", keys_dir=tmp_path / "pod", url=real_redis.url,
                    mounts=mounts)

    ok = status()
    assert (ok.returncode, ok.stdout.splitlines()[-1]) == (
        0, f'{{"registry":"ok","registry_id":"{marker}","marker":"{marker}","reason":null}}')
    real_redis.command("FLUSHALL")
    lost = status()
    assert (lost.returncode, lost.stdout.splitlines()[-1]) == (
        1, f'{{"registry":"lost","registry_id":"{marker}","marker":null,"reason":"missing"}}')
