"""The clients file kept applied while the broker runs (``app.service.clients_file``; docs/onboarding.md,
"Declarative clients file"; attack matrix: `clients-file-edits`): a new version is applied without a
restart, an invalid version is logged and ignored, a client changed through the API is put back
(drift), API-only clients are left alone, replicas write each change once, and a lost registry is
re-created from a file that allows it. In process (fakeredis), then on a real broker and redis-server.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis

from app.client.admin import BrokerAdmin
from app.config import Settings
from app.metrics import CLIENTS_FILE_DRIFT, CLIENTS_FILE_ERRORS
from tests.conftest import Broker, FrozenClock, wait_until
from tests.expect import assert_invalid_client, assert_token
from tests.helpers import ISS, TestClient, form
from tests.test_admin_api import admin_headers

F1, F2, API = TestClient("f1"), TestClient("f2"), TestClient("api-only")


def write(path: Path, content: Any) -> None:
    """Replace the file as config tools do: write a new file beside it, rename it over."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(content if isinstance(content, str) else json.dumps(content))
    os.replace(temporary, path)


def document(*entries: dict[str, Any], restore: bool | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"clients": list(entries)}
    if restore is not None:
        out["restore_lost_registry"] = restore
    return out


def check(b: Broker) -> None:
    b.call(b.app.state.clients_file.check)
    b.app.state.directory.invalidate()


def record(b: Broker, client_id: str) -> dict[str, Any]:
    r = b.http.get(f"/admin/clients/{client_id}", headers=admin_headers(b))
    return r.json() if r.status_code == 200 else {"status": r.status_code}


def events(b: Broker, name: str) -> list[dict[str, Any]]:
    return [e for e in b.logs() if e["event"] == name]


@pytest.fixture
def clients_path(tmp_path: Path) -> Path:
    path = tmp_path / "clients.json"
    write(path, document(F1.metadata()))
    return path


@pytest.fixture
def filed(tmp_path: Path, clients_path: Path, clock: FrozenClock) -> Any:
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", clients_file=str(clients_path))
    with Broker(settings, clock) as b:
        yield b


def test_a_new_version_is_applied_without_a_restart(filed: Broker, clients_path: Path) -> None:
    assert_invalid_client(filed.get_token(F2))
    before = record(filed, "f1")
    write(clients_path, document({**F1.metadata(), "token_lifetime": 600}, F2.metadata()))
    check(filed)
    assert_token(filed.get_token(F2))
    after = record(filed, "f1")
    assert (after["token_lifetime"], after["version"], after["registration_id"]) == (600, 2, before["registration_id"])
    (changed,) = events(filed, "clients_file.changed")
    assert (changed["clients"], changed["changed"]) == (2, ["f1", "f2"])
    assert events(filed, "clients_file.drift") == []


INVALID_VERSIONS = [
    pytest.param("{\"clients\": [{\"client_id\": \"f1\", \"jw", "cannot read JSON (DecodeError)", id="half-written"),
    pytest.param("not json", "cannot read JSON (DecodeError)", id="not-json"),
    pytest.param(None, "cannot read JSON (FileNotFoundError)", id="deleted"),
    pytest.param(document({**F2.metadata(), "jwks": {"keys": [{"kty": "oct", "k": "AAAA"}]}}),
                 "client #0 ('f2'): unsupported key type 'oct': use EC, RSA or OKP (no symmetric keys)", id="invalid-entry"),
    pytest.param(document(F2.metadata(), F2.metadata()), "client #1 ('f2'): client_id appears twice in the file",
                 id="duplicate-id"),
    pytest.param(document(F2.metadata(), restore="yes"), "restore_lost_registry must be true or false",  # type: ignore[arg-type]
                 id="flag-not-a-boolean"),
]


@pytest.mark.parametrize(("content", "message"), INVALID_VERSIONS)
def test_an_invalid_version_is_logged_once_and_the_previous_one_stays(filed: Broker, clients_path: Path,
                                                                      content: Any, message: str) -> None:
    before = record(filed, "f1")
    if content is None:
        clients_path.unlink()
    else:
        write(clients_path, content)
    check(filed)
    check(filed)
    (invalid,) = events(filed, "clients_file.invalid")
    assert (invalid["level"], invalid["error"]) == ("error", f"BROKER_CLIENTS_FILE={clients_path}: {message}")
    assert filed.app.state.metrics.value(CLIENTS_FILE_ERRORS) == 1
    assert record(filed, "f1") == before
    assert_token(filed.get_token(F1))
    assert_invalid_client(filed.get_token(F2))
    write(clients_path, document(F1.metadata(), F2.metadata()))  # the next good version is applied
    check(filed)
    assert_token(filed.get_token(F2))


def test_the_file_wins_for_the_clients_it_lists_and_leaves_the_others_alone(filed: Broker, clients_path: Path) -> None:
    h = admin_headers(filed)
    filed.register(API)
    write(clients_path, document(F1.metadata(), F2.metadata()))
    check(filed)
    assert filed.http.patch("/admin/clients/f1", json={"enabled": False}, headers=h).status_code == 200
    assert filed.http.patch("/admin/clients/api-only", json={"token_lifetime": 900}, headers=h).status_code == 200
    check(filed)
    (drift,) = events(filed, "clients_file.drift")
    assert (drift["level"], drift["client_ids"]) == ("warning", ["f1"])
    assert filed.app.state.metrics.value(CLIENTS_FILE_DRIFT) == 1
    assert "broker_clients_file_drift_total 1" in filed.app.state.metrics.render().decode()
    assert record(filed, "f1").get("enabled", True) is True
    assert_token(filed.get_token(F1))
    assert record(filed, "api-only")["token_lifetime"] == 900  # not listed: the API's change stands
    # A client deleted through the API comes back; one dropped from the file stays registered.
    assert filed.http.delete("/admin/clients/f2", headers=h).status_code == 204
    check(filed)
    assert events(filed, "clients_file.drift")[-1]["client_ids"] == ["f2"]
    write(clients_path, document(F1.metadata()))
    check(filed)
    assert_token(filed.get_token(F2))


def test_replicas_applying_the_same_file_write_each_change_once(tmp_path: Path, clients_path: Path,
                                                                 clock: FrozenClock) -> None:
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", clients_file=str(clients_path))
    server = FakeServer()
    with Broker(settings, clock, FakeRedis(server=server)) as a, Broker(settings, clock, FakeRedis(server=server)) as b:
        write(clients_path, document({**F1.metadata(), "token_lifetime": 600}, F2.metadata()))
        check(a)
        check(b)
        check(a)
        assert (record(a, "f1")["version"], record(b, "f2")["version"]) == (2, 1)
        loaded = [e["client_id"] for x in (a, b) for e in events(x, "admin.client_loaded")]
        assert sorted(loaded) == ["f1", "f1", "f2"]  # f1 at the first start, then each change once
        assert events(a, "clients_file.drift") + events(b, "clients_file.drift") == []
        assert_token(b.get_token(F2))


@pytest.mark.parametrize(("restore", "reseeded"), [(True, True), (False, False), (None, False)],
                         ids=["file-allows-it", "file-says-no", "file-says-nothing"])
def test_a_lost_registry_is_recreated_from_a_file_that_allows_it(tmp_path: Path, clients_path: Path,
                                                                 clock: FrozenClock, restore: bool | None,
                                                                 reseeded: bool) -> None:
    write(clients_path, document(F1.metadata(), restore=restore))
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", clients_file=str(clients_path))
    with Broker(settings, clock) as b:
        b.register(API)
        b.call(b.app.state.registry.redis.flushall)
        b.call(b.app.state.directory.refresh)
        assert b.app.state.registry_watch.lost
        check(b)
        b.call(b.app.state.directory.refresh)
        assert b.app.state.registry_watch.lost is not reseeded
        assert [e["clients"] for e in events(b, "clients_file.reseeded")] == ([1] if reseeded else [])
        if reseeded:
            assert_token(b.get_token(F1))
            assert_invalid_client(b.get_token(API))  # registered through the API only: not in the file
        else:
            assert b.get_token(F1).status_code == 503


# -- a real broker process on a real redis-server ------------------------------------------------------


def token(url: str, client: TestClient) -> int:
    return httpx.post(url + "/token", data=form(client.assertion()), timeout=5).status_code


def logged(bp: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in bp.logs() if e.get("event") == name]


@pytest.mark.redis
@pytest.mark.live
def test_a_living_clients_file_on_a_real_broker(real_redis, spawn_broker, tmp_path: Path) -> None:
    path = tmp_path / "clients.json"
    write(path, document(F1.metadata(), restore=True))
    # Waiting by asking for tokens counts failures: no per-address limit in the way.
    bp = spawn_broker(redis_url=real_redis.url, env={"BROKER_CLIENTS_FILE": str(path), "BROKER_RATELIMIT_FAILURES": "10000"})
    admin = BrokerAdmin(bp.url, spawn_broker.keys_dir / "admin.jwk")
    assert (token(bp.url, F1), token(bp.url, F2)) == (200, 401)

    write(path, document(F1.metadata(), F2.metadata(), restore=True))
    wait_until(lambda: token(bp.url, F2) == 200, 15, what="the new version applied without a restart")

    write(path, "{\"clients\": [")  # a broken edit
    wait_until(lambda: logged(bp, "clients_file.invalid"), 15, what="the broken version logged")
    assert (token(bp.url, F1), token(bp.url, F2)) == (200, 200)

    write(path, document(F1.metadata(), F2.metadata(), restore=True))
    admin.register(API.metadata())
    admin.update("f1", {"enabled": False})
    drift = wait_until(lambda: logged(bp, "clients_file.drift"), 15, what="the drift put back")
    assert [e["client_ids"] for e in drift] == [["f1"]]
    wait_until(lambda: token(bp.url, F1) == 200, 5, what="f1 enabled again")
    assert token(bp.url, API) == 200

    real_redis.command("FLUSHALL")
    wait_until(lambda: logged(bp, "clients_file.reseeded"), 15, what="the lost registry re-created")
    wait_until(bp.ready, 10, what="ready again")
    assert (token(bp.url, F1), token(bp.url, F2), token(bp.url, API)) == (200, 200, 401)
    assert [e["event"] for e in bp.logs() if e.get("event", "").startswith("registry.")][-2:] == [
        "registry.lost", "registry.restored"]
    admin.close()
