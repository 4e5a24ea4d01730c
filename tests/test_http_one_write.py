"""An answer goes out in one write (``app.web.server._OneWrite``): the broker's uvicorn protocol
holds the status line and headers until the body, where uvicorn alone writes them separately.
The log lines of the answers ready in one pass of the event loop go out in one write before any of
them (``app.web.server._AnswerWriter``).

The protocol is driven directly with a transport that records what it is given (no socket), so
the test can see the writes themselves; the live tests (test_http_limits_live.py, test_live.py)
check the same protocol over real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from app import log as broker_log
from app.web.access import InFlight, request_context
from app.web.server import BoundedHttpToolsProtocol, HttpLimits, _AnswerWriter


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


# -- the log lines of one loop pass in one write, before its answers ------------------------------


class RecordingStdout:
    """The served process's stdout as ``LineBuffer`` sees it: each write recorded in ``events``
    (shared with the connections' transports, so the test sees the order across both)."""

    def __init__(self, events: list[tuple[str, bytes]], broken: bool = False) -> None:
        self.events = events
        self.broken = broken
        self.buffer = broker_log.LineBuffer(self)

    def write(self, text: str) -> None:
        if self.broken:
            raise OSError("stdout is gone")
        self.events.append(("log", text.encode()))

    def flush(self) -> None:
        pass


class SharedTransport(RecordingTransport):
    def __init__(self, name: str, events: list[tuple[str, bytes]]) -> None:
        super().__init__()
        self.name = name
        self.events = events

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.events.append((f"write {self.name}", bytes(data)))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.events.append((f"close {self.name}", b""))


def _logging_app(stdout: RecordingStdout, after_answer: Any = None) -> Any:
    """An app that logs one line with its request id, then answers with that id as the body."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        request_id = broker_log.REQUEST_ID.get()
        assert request_id is not None
        stdout.buffer.msg(f"line {request_id}")
        body = request_id.encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        if after_answer is not None:
            after_answer()

    return request_context(app, log=None, access_sample=0.0, in_flight=InFlight())


async def _answer_together(app: Any, requests: list[bytes], stdout: RecordingStdout,
                           after: Any = None) -> list[tuple[str, bytes]]:
    """Each request on a connection of its own, all read in the same pass of the loop."""
    config = Config(app=app, lifespan="off", log_level="critical")
    state = ServerState()
    protocols = []
    for n in range(len(requests)):
        protocol = BoundedHttpToolsProtocol(config=config, server_state=state, app_state={},
                                            limits=HttpLimits(16384, 10.0, 10.0))
        protocol.connection_made(SharedTransport(str(n), stdout.events))
        protocols.append(protocol)
    for protocol, request in zip(protocols, requests, strict=True):
        protocol.data_received(request)
    if after is not None:
        after(protocols)
    while any(p.tasks for p in protocols):
        await asyncio.gather(*(t for p in protocols for t in p.tasks), return_exceptions=True)
    await asyncio.sleep(0)  # the end-of-pass write
    events = list(stdout.events)
    for protocol in protocols:
        protocol.connection_lost(None)
    return events


@pytest.fixture
def stdout(monkeypatch: pytest.MonkeyPatch) -> RecordingStdout:
    recording = RecordingStdout([])
    monkeypatch.setattr(broker_log, "_stdout", recording.buffer)
    return recording


def _body_ids(events: list[tuple[str, bytes]]) -> list[str]:
    return [data.rpartition(b"\r\n\r\n")[2].decode() for kind, data in events if kind.startswith("write")]


def test_the_answers_of_one_pass_follow_one_write_of_all_their_lines(stdout: RecordingStdout) -> None:
    events = asyncio.run(_answer_together(_logging_app(stdout), [GET] * 3, stdout))
    assert [kind for kind, _ in events] == ["log", "write 0", "write 1", "write 2"]
    ids = _body_ids(events)
    assert events[0][1].decode() == "".join(f"line {request_id}\n" for request_id in ids)


def test_a_close_after_a_queued_answer_comes_after_it(stdout: RecordingStdout) -> None:
    close = b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
    events = asyncio.run(_answer_together(_logging_app(stdout), [close, GET], stdout))
    assert [kind for kind, _ in events] == ["log", "write 0", "close 0", "write 1"]


def test_pipelined_requests_are_answered_in_order_each_after_its_lines(stdout: RecordingStdout) -> None:
    """Two requests in one read of one connection: uvicorn runs the second once the first is
    answered; the first answer, queued, still leaves first, and each after its own line."""
    events = asyncio.run(_answer_together(_logging_app(stdout), [GET + GET], stdout))
    assert [kind for kind, _ in events] == ["log", "write 0", "log", "write 0"]
    first, second = _body_ids(events)
    assert first != second
    assert (events[0][1], events[2][1]) == (f"line {first}\n".encode(), f"line {second}\n".encode())


def test_no_answer_is_sent_when_its_lines_cannot_be_written(stdout: RecordingStdout) -> None:
    """No token without its audit line: stdout failing, the pass's connections close unanswered."""
    stdout.broken = True
    events = asyncio.run(_answer_together(_logging_app(stdout), [GET, GET], stdout))
    assert [kind for kind, _ in events] == ["close 0", "close 1"]


def test_a_shutdown_writes_the_pass_before_closing_the_connection(stdout: RecordingStdout) -> None:
    """uvicorn's shutdown closes a connection whose answer is complete: a queued answer goes first."""
    shut: list[Any] = []  # the connection's protocol, handed over once it exists
    app = _logging_app(stdout, after_answer=lambda: shut[0].shutdown())  # uvicorn's SIGTERM path, right after the answer
    events = asyncio.run(_answer_together(app, [GET], stdout, after=shut.extend))
    assert [kind for kind, _ in events] == ["log", "write 0", "close 0"]


def test_a_queued_answer_to_a_connection_gone_meanwhile_is_dropped(stdout: RecordingStdout) -> None:
    async def run() -> list[tuple[str, bytes]]:
        writer = _AnswerWriter(asyncio.get_running_loop())
        gone, kept = SharedTransport("gone", stdout.events), SharedTransport("kept", stdout.events)
        broker_log.REQUEST_ID.set("0" * 24)  # a request's line: buffered, not written at once
        stdout.buffer.write_line("waiting line\n")
        writer.write(gone, b"one")
        writer.write(kept, b"two")
        gone.close()
        await asyncio.sleep(0)
        return list(stdout.events)

    assert asyncio.run(run()) == [("close gone", b""), ("log", b"waiting line\n"), ("write kept", b"two")]


def test_an_answer_with_no_lines_waiting_is_written_at_once(stdout: RecordingStdout) -> None:
    async def run() -> list[tuple[str, bytes]]:
        writer = _AnswerWriter(asyncio.get_running_loop())
        writer.write(SharedTransport("0", stdout.events), b"one")
        return list(stdout.events)  # before the loop turns

    assert asyncio.run(run()) == [("write 0", b"one")]
