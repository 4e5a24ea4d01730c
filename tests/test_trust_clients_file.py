"""Trusted issuers in the clients file (``"trusted_issuers": [...]``, ``app.service.clients_file``;
docs/workload-identity.md): applied at start after the clients (a rule may name a client the same
file lists), a new version applied without a restart, an issuer changed or removed through the
admin API put back (drift), an invalid entry refused in one line, and the issuers re-asserted when a
lost registry is re-created from the file (attack matrix: `clients-file-edits`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.config import ConfigError, Settings
from app.metrics import CLIENTS_FILE_DRIFT, CLIENTS_FILE_ERRORS
from app.service.client_metadata import read_clients_document
from tests.conftest import Broker, FrozenClock
from tests.helpers import ISS, TestClient
from tests.test_admin_api import admin_headers
from tests.test_clients_file import check, events, write
from tests.test_trust_admin import K8S, PATH, k8s_issuer

WORKLOAD = TestClient("payments-api")
SPIRE = "spiffe://prod.example"


def doc(*issuers: dict[str, Any], restore: bool | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"clients": [WORKLOAD.metadata()], "trusted_issuers": list(issuers)}
    if restore is not None:
        out["restore_lost_registry"] = restore
    return out


def stored(b: Broker) -> list[dict[str, Any]]:
    return b.http.get(PATH, headers=admin_headers(b)).json()["trusted_issuers"]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "clients.json"


@pytest.fixture
def settings_for(tmp_path: Path, path: Path) -> Settings:
    return Settings(issuer=ISS, keys_dir=tmp_path / "keys", clients_file=str(path))


def test_applied_at_start_and_each_new_version(path: Path, settings_for: Settings, clock: FrozenClock) -> None:
    first = k8s_issuer()
    write(path, doc(first))
    with Broker(settings_for, clock) as b:
        assert stored(b) == [first]
        [added] = events(b, "trust.added")
        assert (added["source"], added["issuer"], added["client_ids"]) == ("clients_file", K8S, ["payments-api"])
        [loaded] = events(b, "admin.clients_file_loaded")
        assert (loaded["clients"], loaded["trusted_issuers"]) == (1, 1)
        spire = k8s_issuer(SPIRE)
        second = {**first, "max_token_age": 600}
        write(path, doc(second, spire))
        check(b)
        assert stored(b) == [second, spire]
        assert [e["issuer"] for e in events(b, "trust.replaced")] == [K8S]
        assert events(b, "clients_file.drift") == []


def test_the_file_wins_for_the_issuers_it_lists(path: Path, settings_for: Settings, clock: FrozenClock) -> None:
    listed = k8s_issuer()
    write(path, doc(listed))
    with Broker(settings_for, clock) as b:
        h = admin_headers(b)
        other = k8s_issuer("https://token.actions.githubusercontent.com")
        assert b.http.put(PATH, json=other, headers=h).status_code == 201
        assert b.http.put(PATH, json={**listed, "single_use": True}, headers=h).status_code == 200
        check(b)
        [drift] = events(b, "clients_file.drift")
        assert (drift["client_ids"], drift["trusted_issuers"]) == ([], [K8S])
        assert b.app.state.metrics.value(CLIENTS_FILE_DRIFT) == 1
        assert stored(b) == [listed, other]  # put back; the API-only issuer is left alone
        assert b.http.delete(PATH, params={"issuer": K8S}, headers=h).status_code == 204
        check(b)
        assert events(b, "clients_file.drift")[-1]["trusted_issuers"] == [K8S]
        write(path, doc())  # dropped from the file: stays stored
        check(b)
        assert [r["issuer"] for r in stored(b)] == [K8S, "https://token.actions.githubusercontent.com"]


@pytest.mark.parametrize("entries, message", [
    ("not a list", "trusted_issuers must be a list of trusted issuers"),
    ([{"issuer": "http://oidc.k8s.example"}], "trusted issuer #0 ('http://oidc.k8s.example'): issuer must be an "
                                              "https URL without credentials or fragment"),
    ([k8s_issuer(), k8s_issuer()], f"trusted issuer #1 ('{K8S}') appears twice in the file"),
    ([k8s_issuer(ISS)], f"trusted issuer #0 ('{ISS}'): the broker's own issuer cannot be a trusted issuer: its "
                        "access tokens are not client assertions"),
], ids=["not-a-list", "http-issuer", "twice", "the-broker-itself"])
def test_an_invalid_entry_is_one_line(path: Path, settings_for: Settings, entries: Any, message: str) -> None:
    write(path, {"clients": [], "trusted_issuers": entries})
    with pytest.raises(ConfigError) as info:
        read_clients_document(settings_for, str(path), now=0)
    assert str(info.value) == f"BROKER_CLIENTS_FILE={path}: {message}"


def test_a_rule_naming_an_unregistered_client_stops_the_start(path: Path, settings_for: Settings,
                                                              clock: FrozenClock) -> None:
    write(path, {"clients": [], "trusted_issuers": [k8s_issuer()]})
    with pytest.raises(Exception) as info, Broker(settings_for, clock):
        pass
    pattern = (f"trusted issuer '{K8S}': mapping rule client_id 'payments-api' is not registered: register the "
               "client first")
    assert info.group_contains(ConfigError, match=pattern) if isinstance(info.value, BaseExceptionGroup) else info.match(pattern)


def test_a_new_version_naming_an_unregistered_client_is_refused_once(path: Path, settings_for: Settings,
                                                                    clock: FrozenClock) -> None:
    write(path, doc(k8s_issuer()))
    with Broker(settings_for, clock) as b:
        write(path, doc(k8s_issuer(), k8s_issuer(SPIRE, client_id="ghost")))
        check(b)
        b.app.state.clients_file._epoch = None  # a later registry change: applied again, refused again, logged once
        check(b)
        [refused] = events(b, "clients_file.issuer_refused")
        assert (refused["issuer"], refused["error"]) == (SPIRE, "mapping rule client_id 'ghost' is not registered: "
                                                         "register the client first (`broker_admin.py register`), "
                                                         "then map tokens to it")
        assert b.app.state.metrics.value(CLIENTS_FILE_ERRORS) == 1
        assert [r["issuer"] for r in stored(b)] == [K8S]


def test_reasserted_when_a_lost_registry_is_recreated(path: Path, settings_for: Settings, clock: FrozenClock) -> None:
    write(path, doc(k8s_issuer(), restore=True))
    with Broker(settings_for, clock) as b:
        b.call(b.app.state.registry.redis.flushall)
        b.call(b.app.state.directory.refresh)
        assert b.app.state.registry_watch.lost
        check(b)
        b.call(b.app.state.directory.refresh)
        assert not b.app.state.registry_watch.lost
        assert [r["issuer"] for r in stored(b)] == [K8S]
