"""The auto-pipeline packs a command into the same bytes as redis-py's ``pack_command``."""

from __future__ import annotations

import enum
from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from app.store.autopipeline import pack


class Level(enum.IntEnum):
    ONE = 1


SHA = "a" * 40
CASES: list[tuple[str, tuple[Any, ...]]] = [
    ("token-endpoint-evalsha", ("EVALSHA", SHA, 3, "tb:{c1}:jti:x", "tb:{c1}:entry:y", "tb:{c1}:lock:y", 1_800_000_000_000, "300000")),
    ("unicode-str", ("EVALSHA", SHA, 1, "tb:{clïent-ü}:jti", "ümlaut ✓")),
    ("bytes-with-crlf-and-nul", ("EVALSHA", SHA, 1, b"k", b"a\r\nb\x00c")),
    ("ints-zero-negative-big", ("EVALSHA", SHA, 0, 0, -1, 2**70)),
    ("empty-string-and-bytes", ("EVALSHA", SHA, 1, "", b"")),
    ("value-past-redis-py-buffer-cutoff", ("EVALSHA", SHA, 1, "k", "x" * 20_000)),
    ("float-goes-through-pack-command", ("EVALSHA", SHA, 1, "k", 1.5)),
    ("int-subclass-goes-through-pack-command", ("EVALSHA", SHA, 1, "k", Level.ONE)),
    ("memoryview-goes-through-pack-command", ("EVALSHA", SHA, 1, "k", memoryview(b"abc"))),
    ("command-name-with-space", ("CONFIG GET", "maxmemory")),
    ("command-name-bytes-with-space", (b"CONFIG GET", "maxmemory")),
]


@pytest.mark.parametrize("args", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_pack_is_pack_command(args: tuple[Any, ...]) -> None:
    conn = Connection()
    assert pack(conn, args) == b"".join(bytes(part) for part in conn.pack_command(*args))


def test_pack_uses_the_connections_encoding() -> None:
    conn = Connection(encoding="latin-1")
    args = ("EVALSHA", SHA, 1, "k", "é")
    assert pack(conn, args) == b"".join(conn.pack_command(*args))
    assert b"$1\r\n\xe9\r\n" in pack(conn, args)


@pytest.mark.parametrize("value", [True, None, 1j], ids=["bool", "none", "complex"])
def test_pack_refuses_what_pack_command_refuses(value: Any) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("EVALSHA", SHA, 1, "k", value)
    with pytest.raises(DataError):
        pack(Connection(), ("EVALSHA", SHA, 1, "k", value))
