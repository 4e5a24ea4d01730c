"""The per-process client cache under a flood of unknown client_ids.

Anyone can send assertions naming random client_ids (``iss``). The directory remembers the unknown
ones so that a repeat costs no Redis read, but that memory is bounded and kept apart from the
prepared clients: the flood evicts only other unknown ids (oldest first) and never pushes a real
client out of the cache (which would cost it a registry read again, and let the flood decide how
often every client is re-read). The caps are lowered here so the flood stays small.
"""

from __future__ import annotations

import re

import pytest

from app.service import directory as directory_module
from tests.conftest import Broker
from tests.helpers import TestClient

CAP = 50


def registry_reads(broker: Broker) -> int:
    text = broker.app.state.metrics.render().decode()
    match = re.search(r'^broker_redis_duration_seconds_count\{op="registry"\} (\d+)', text, re.M)
    return int(match.group(1)) if match else 0


@pytest.fixture
def small_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(directory_module, "MAX_CACHED", CAP, raising=False)
    monkeypatch.setattr(directory_module, "MAX_UNKNOWN", CAP, raising=False)


def test_a_flood_of_unknown_ids_never_evicts_a_known_client(small_caps: None, broker: Broker, c1: TestClient) -> None:
    directory = broker.app.state.directory
    assert broker.call(directory.get, "c1") is not None  # c1 is now prepared and cached
    for i in range(4 * CAP):
        assert broker.call(directory.get, f"nobody-{i}") is None

    before = registry_reads(broker)
    assert broker.call(directory.get, "c1") is not None
    assert broker.call(directory.get, f"nobody-{4 * CAP - 1}") is None  # the newest unknown id: remembered
    assert registry_reads(broker) == before, "a known client or a recent unknown id was read again"

    assert broker.call(directory.get, "nobody-0") is None  # the oldest unknown id was evicted: read again
    assert registry_reads(broker) == before + 1


def test_a_client_registered_after_being_unknown_is_found(broker: Broker) -> None:
    directory = broker.app.state.directory
    assert broker.call(directory.get, "late") is None
    broker.register(TestClient("late"))  # the admin path invalidates this replica's cache
    assert broker.call(directory.get, "late") is not None
