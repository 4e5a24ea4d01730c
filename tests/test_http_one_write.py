"""An answer goes out in one write (``app.web.server._OneWrite``): the broker's uvicorn protocol
holds the status line and headers until the body, where uvicorn alone writes them separately.

The protocol is driven directly with a transport that records what it is given (no socket), so
the test can see the writes themselves; the live tests (test_http_limits_live.py, test_live.py)
check the same protocol over real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from app.web.server import BoundedHttpToolsProtocol, HttpLimits


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.events.append(("write", bytes(data)))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.events.append(("close", b""))

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _json(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def _streamed(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"one", "more_body": True})
    await send({"type": "http.response.body", "body": b"two"})


async def _fails_after_start(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    raise RuntimeError("the app failed after starting its answer")


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = (await receive())["body"]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _answer(app: Any, request: bytes) -> list[tuple[str, bytes]]:
    config = Config(app=app, lifespan="off", log_level="critical")
    protocol = BoundedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={},
                                        limits=HttpLimits(16384, 10.0, 10.0))
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    while protocol.tasks:  # the app runs in a task of its own
        await asyncio.gather(*protocol.tasks, return_exceptions=True)
    events = list(transport.events)  # what the answer wrote, before the test ends the connection
    protocol.connection_lost(None)
    return events


GET = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"


def _kinds(events: list[tuple[str, bytes]]) -> list[str]:
    return [kind for kind, _ in events]


def test_head_and_body_are_one_write() -> None:
    events = asyncio.run(_answer(_json, GET))
    assert _kinds(events) == ["write"]
    head, _, body = events[0][1].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 2" in head
    assert body == b"{}"


def test_close_after_the_answer_comes_after_its_one_write() -> None:
    events = asyncio.run(_answer(_json, b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"))
    assert _kinds(events) == ["write", "close"]
    assert events[0][1].endswith(b"\r\n\r\n{}")


def test_head_request_writes_the_head_alone() -> None:
    events = asyncio.run(_answer(_json, b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n"))
    assert _kinds(events) == ["write"]
    assert events[0][1].startswith(b"HTTP/1.1 200 OK\r\n") and events[0][1].endswith(b"\r\n\r\n")


def test_a_streamed_answer_sends_head_with_its_first_chunk_then_the_rest() -> None:
    events = asyncio.run(_answer(_streamed, GET))
    assert _kinds(events) == ["write", "write"]
    assert events[0][1].startswith(b"HTTP/1.1 200 OK\r\n") and events[0][1].endswith(b"\r\n\r\n3\r\none\r\n")
    assert events[1][1] == b"3\r\ntwo\r\n0\r\n\r\n"


def test_interim_100_continue_is_written_at_once() -> None:
    """A client waiting for ``100 Continue`` before its body must get it before the answer exists."""
    events = asyncio.run(_answer(_echo, b"POST / HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\nhi"))
    assert _kinds(events) == ["write", "write"]
    assert events[0][1] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert events[1][1].startswith(b"HTTP/1.1 200 OK\r\n") and events[1][1].endswith(b"\r\n\r\nhi")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_app_failing_after_start_gets_its_head_written_then_closed() -> None:
    events = asyncio.run(_answer(_fails_after_start, GET))
    assert _kinds(events) == ["write", "close"]
    assert events[0][1].startswith(b"HTTP/1.1 200 OK\r\n") and events[0][1].endswith(b"\r\n\r\n")
