"""``POST /token`` answered by the HTTP protocol itself (``app.web.direct``, ``app.web.server``).

The broker's uvicorn protocol is driven directly, on the in-process broker's event loop, with a
transport that records what it is given: once with the direct endpoint (as ``serve`` runs it) and
once without (the ASGI app, Litestar's route), and the two answers compared byte for byte apart
from the request id. The live tests (test_live.py, test_strict_requests_live.py, ...) send their
token requests through the same path over real sockets."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from app.config import Settings
from app.web.direct import DirectToken, direct_token
from app.web.server import BoundedHttpToolsProtocol, HttpLimits, _DirectCycle
from tests.conftest import Broker
from tests.expect import error_body
from tests.helpers import ISS, TestClient, form
from tests.test_http_one_write import RecordingTransport
from tests.test_unexpected_errors import SECRET, SERVER_ERROR, _boom

FORM = "application/x-www-form-urlencoded"
LIMITS = HttpLimits(16384, 10.0, 10.0)


class _Config(Config):
    """uvicorn's config as ``app.web.listeners.BrokerConfig`` gives it to the protocol
    (``proxies``: BROKER_TRUSTED_PROXIES, as ``forwarded_allow_ips``)."""

    def __init__(self, app: Any, direct: DirectToken | None, proxies: list[str] | None = None) -> None:
        super().__init__(app=app, lifespan="off", log_level="critical", proxy_headers=proxies is not None,
                         forwarded_allow_ips=proxies)
        self.direct_token = direct


class Connection:
    """One connection to the protocol: ``send`` feeds bytes, ``answers`` waits for its tasks."""

    def __init__(self, broker: Broker, direct: bool, proxies: list[str] | None = None) -> None:
        config = _Config(broker.app, broker.app.state.direct_token if direct else None, proxies)
        self.protocol = BoundedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={}, limits=LIMITS)
        self.transport = RecordingTransport()
        self.protocol.connection_made(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)

    @property
    def direct(self) -> bool:
        """The request being read or answered is the direct endpoint's."""
        return type(self.protocol.cycle) is _DirectCycle

    async def answers(self) -> list[tuple[str, bytes]]:
        while self.protocol.tasks:
            await asyncio.gather(*self.protocol.tasks, return_exceptions=True)
        await asyncio.sleep(0)  # the answer writer's pass, when log lines were waiting
        return list(self.transport.events)


def _request(body: str | bytes, *, headers: list[tuple[str, str]] | None = None, target: str = "/token",
             version: str = "1.1", method: str = "POST") -> bytes:
    data = body.encode() if isinstance(body, str) else body
    lines = [f"{method} {target} HTTP/{version}", "Host: broker.example"]
    lines += [f"{name}: {value}" for name, value in (headers if headers is not None else [("Content-Type", FORM)])]
    if not any(name.lower() in ("content-length", "transfer-encoding") for name, _ in headers or []):
        lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


def _form(params: dict[str, str]) -> str:
    return str(httpx.QueryParams(params))


_ID = re.compile(rb"x-request-id: ([0-9a-f]{24})\r\n")


def _without_id(answer: bytes) -> bytes:
    """The answer with its request id replaced (checked to be 24 hex digits first)."""
    assert len(_ID.findall(answer)) == 1, answer
    return _ID.sub(b"x-request-id: <id>\r\n", answer)


def _one(broker: Broker, direct: bool, request: bytes,
         proxies: list[str] | None = None) -> tuple[bool, list[tuple[str, bytes]]]:
    async def run() -> tuple[bool, list[tuple[str, bytes]]]:
        conn = Connection(broker, direct, proxies)
        conn.send(request)
        took_direct = conn.direct
        return took_direct, await conn.answers()

    return broker.call(run)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _body(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


# -- the same answer both ways ---------------------------------------------------------------------


def _cases(c1: TestClient, now: float) -> dict[str, tuple[bytes, int, dict[str, str] | None]]:
    """id → (request, status, error body or None for a token). Each request is built twice (two
    assertions) by calling this once per path."""
    other = TestClient("c1", kid="c1-1")  # same client id and kid, another key: a bad signature
    return {
        "issued": (_request(_form(form(c1.assertion(now)))), 200, None),
        "issued with scope": (_request(_form(form(c1.assertion(now), scope="write"))), 200, None),
        "no client authentication": (_request("grant_type=client_credentials"), 401,
                                     error_body("invalid_client", reason="client_auth_missing")),
        "bad signature": (_request(_form(form(other.assertion(now)))), 401, error_body("invalid_client")),
        "scope not allowed": (_request(_form(form(c1.assertion(now), scope="admin"))), 400, error_body("invalid_scope")),
        "wrong content type": (_request("grant_type=client_credentials", headers=[("Content-Type", "text/plain")]), 400,
                               error_body("invalid_request", reason="content_type_invalid")),
        "empty body": (_request(b""), 400, error_body("invalid_request", reason="grant_type_missing")),
        "query string on the target": (_request(_form(form(c1.assertion(now))), target="/token?x=1"), 200, None),
    }


CASE_IDS = ["issued", "issued with scope", "no client authentication", "bad signature", "scope not allowed",
            "wrong content type", "empty body", "query string on the target"]


@pytest.mark.parametrize("case", CASE_IDS)
def test_the_direct_answer_is_the_asgi_answer(broker: Broker, c1: TestClient, case: str) -> None:
    request, status, body = _cases(c1, broker.clock.now)[case]
    took_direct, direct = _one(broker, True, request)
    request_asgi = _cases(c1, broker.clock.now)[case][0]
    took_asgi, asgi = _one(broker, False, request_asgi)
    assert took_direct is (case != "query string on the target")  # a query: the ASGI route, as before
    assert took_asgi is False
    assert [kind for kind, _ in direct] == [kind for kind, _ in asgi] == ["write"]
    answer, expected = direct[0][1], asgi[0][1]
    assert _status(answer) == status
    if body is None:  # a token; the second request is the cache's hit on the first one's token
        assert json.loads(_body(answer))["token_type"] == "Bearer"
    else:
        assert json.loads(_body(answer)) == body
    assert _without_id(answer) == _without_id(expected)


def test_a_replayed_assertion_is_refused_on_the_direct_path(broker: Broker, c1: TestClient) -> None:
    request = _request(_form(form(c1.assertion(broker.clock.now))))
    first = _one(broker, True, request)[1][0][1]
    second = _one(broker, True, request)[1][0][1]
    assert _status(first) == 200
    assert (_status(second), _body(second)) == (401, b'{"error":"invalid_client","error_description":"'
                                                + error_body("invalid_client")["error_description"].encode() + b'"}')


def test_the_request_id_is_the_log_lines_and_the_answers(broker: Broker, c1: TestClient) -> None:
    answer = _one(broker, True, _request(_form(form(c1.assertion(broker.clock.now)))))[1][0][1]
    request_id = _ID.search(answer).group(1).decode()  # type: ignore[union-attr]
    issued = [line for line in broker.logs() if line["event"] == "token.issued"]
    assert [line["request_id"] for line in issued] == [request_id]


def test_the_direct_path_counts_the_request_in_the_metrics(broker: Broker, c1: TestClient) -> None:
    for _ in range(2):
        _one(broker, True, _request(_form(form(c1.assertion(broker.clock.now)))))
    _one(broker, True, _request("grant_type=client_credentials"))
    page = broker.metrics()
    lines = page.splitlines()
    assert 'broker_http_requests_total{endpoint="/token",status="200"} 2' in lines
    assert 'broker_http_requests_total{endpoint="/token",status="401"} 1' in lines
    assert "broker_tokens_issued_total 2" in lines
    assert 'broker_http_request_duration_seconds_count{endpoint="/token",outcome="ok"} 2' in lines
    assert 'broker_http_request_duration_seconds_count{endpoint="/token",outcome="rejected"} 1' in lines


# -- which requests take it ------------------------------------------------------------------------

_GRANT = "grant_type=client_credentials"
ASGI_ONLY = [
    pytest.param(_request(_GRANT, method="GET"), 405, id="GET"),
    pytest.param(_request(_GRANT, target="/token/"), 404, id="trailing slash"),
    pytest.param(_request(_GRANT, target="/%74oken"), 404, id="percent-encoded letter"),
    pytest.param(_request(_GRANT, target="http://broker.example/token"), 401, id="absolute form"),
    pytest.param(_request(_GRANT, version="1.0"), 401, id="HTTP/1.0"),
    pytest.param(_request(_GRANT, headers=[("Content-Type", FORM), ("Expect", "100-continue")]), 401,
                 id="expect 100-continue"),
    pytest.param(_request(_GRANT, headers=[("Content-Type", FORM), ("Content-Type", FORM)]), 400,
                 id="two content types"),
    pytest.param(_request(f"{len(_GRANT):x}\r\n{_GRANT}\r\n0\r\n\r\n",
                          headers=[("Content-Type", FORM), ("Transfer-Encoding", "chunked")]), 401, id="chunked"),
    pytest.param(_request("x" * 70_000), 413, id="content length over the body cap"),
]


@pytest.mark.parametrize(("request_bytes", "status"), ASGI_ONLY)
def test_other_requests_go_through_asgi(broker: Broker, request_bytes: bytes, status: int) -> None:
    took_direct, events = _one(broker, True, request_bytes)
    assert took_direct is False
    answers = [data for kind, data in events if kind == "write" and not data.startswith(b"HTTP/1.1 100 ")]
    assert [_status(data) for data in answers] == [status]


def test_a_request_behind_an_unanswered_one_waits_for_it(broker: Broker, c1: TestClient) -> None:
    """Pipelined: the second request is queued behind the first (uvicorn's pipeline) and both are
    answered in order on the connection."""
    first = _request(_form(form(c1.assertion(broker.clock.now))))
    second = _request("grant_type=client_credentials")

    async def run() -> list[tuple[str, bytes]]:
        conn = Connection(broker, True)
        conn.send(first + second)
        return await conn.answers()

    events = broker.call(run)
    assert [kind for kind, _ in events] == ["write", "write"]
    assert [_status(data) for _, data in events] == [200, 401]


def test_keep_alive_then_connection_close(broker: Broker, c1: TestClient) -> None:
    async def run() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        conn = Connection(broker, True)
        conn.send(_request(_form(form(c1.assertion(broker.clock.now)))))
        kept = await conn.answers()
        conn.send(_request(_form(form(c1.assertion(broker.clock.now))),
                           headers=[("Content-Type", FORM), ("Connection", "close")]))
        return kept, await conn.answers()

    kept, closed = broker.call(run)
    assert [kind for kind, _ in kept] == ["write"] and b"connection: close" not in kept[0][1]
    assert [kind for kind, _ in closed] == ["write", "write", "close"]
    assert _status(closed[1][1]) == 200 and b"\r\nconnection: close\r\n\r\n" in closed[1][1]


def test_a_body_in_two_reads(broker: Broker, c1: TestClient) -> None:
    request = _request(_form(form(c1.assertion(broker.clock.now))))
    head, _, body = request.partition(b"\r\n\r\n")

    async def run() -> tuple[bool, list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        conn = Connection(broker, True)
        conn.send(head + b"\r\n\r\n" + body[:10])
        before = await conn.answers()
        took_direct = conn.direct
        conn.send(body[10:])
        return took_direct, before, await conn.answers()

    took_direct, before, after = broker.call(run)
    assert took_direct is True and before == []
    assert [_status(data) for _, data in after] == [200]


def test_a_connection_lost_before_the_body_ends_runs_nothing(broker: Broker, c1: TestClient) -> None:
    request = _request(_form(form(c1.assertion(broker.clock.now))))

    async def run() -> tuple[list[tuple[str, bytes]], int]:
        conn = Connection(broker, True)
        conn.send(request[:-5])
        conn.protocol.connection_lost(None)
        return await conn.answers(), len(conn.protocol.tasks)

    events, tasks = broker.call(run)
    assert (events, tasks) == ([("close", b"")], 0)
    assert [line for line in broker.logs() if line["event"].startswith("token.")] == []


def test_a_connection_lost_while_answering_gets_no_write(broker: Broker, c1: TestClient) -> None:
    """The token is still issued (the assertion was spent); nothing is written to the closed
    connection, and the in-flight count is back to zero."""
    request = _request(_form(form(c1.assertion(broker.clock.now))))

    async def run() -> list[tuple[str, bytes]]:
        conn = Connection(broker, True)
        conn.send(request)
        conn.transport.close()
        conn.protocol.connection_lost(None)
        return await conn.answers()

    events = broker.call(run)
    assert events == [("close", b"")]
    assert [line["event"] for line in broker.logs() if line["event"].startswith("token.")] == ["token.issued"]
    assert broker.app.state.direct_token._in_flight.count == 0


def test_a_shutdown_during_the_request_closes_after_its_answer(broker: Broker, c1: TestClient) -> None:
    request = _request(_form(form(c1.assertion(broker.clock.now))))

    async def run() -> list[tuple[str, bytes]]:
        conn = Connection(broker, True)
        conn.send(request)
        conn.protocol.shutdown()  # uvicorn's graceful stop: the answer, then the close
        return await conn.answers()

    events = broker.call(run)
    assert [kind for kind, _ in events] == ["write", "close"]
    assert _status(events[0][1]) == 200 and b"\r\nconnection: close\r\n\r\n" in events[0][1]


def test_over_the_connection_cap_the_request_goes_to_uvicorn(broker: Broker, c1: TestClient) -> None:
    """uvicorn's own 503 for a request over ``limit_concurrency`` (the direct path steps aside)."""
    request = _request(_form(form(c1.assertion(broker.clock.now))))

    async def run() -> tuple[bool, list[tuple[str, bytes]]]:
        conn = Connection(broker, True)
        conn.protocol.limit_concurrency = 1  # this connection is the one allowed
        conn.send(request)
        return conn.direct, await conn.answers()

    took_direct, events = broker.call(run)
    assert took_direct is False and _status(events[0][1]) == 503


# -- when the direct path is off -------------------------------------------------------------------

SETTINGS_OFF = [
    pytest.param({}, True, id="defaults: on"),
    pytest.param({"access_log": "on"}, False, id="access log"),
    pytest.param({"access_log": "0.1"}, False, id="sampled access log"),
    pytest.param({"trusted_proxies": ("10.0.0.1",)}, True, id="trusted proxies: on (the source is uvicorn's)"),
    pytest.param({"tracing": "console"}, False, id="tracing"),
]


@pytest.mark.parametrize(("changes", "on"), SETTINGS_OFF)
def test_direct_token_is_off_where_a_layer_it_lacks_is_on(broker: Broker, changes: dict[str, Any], on: bool) -> None:
    settings = Settings(issuer=ISS, **changes)
    state = broker.app.state
    result = direct_token(settings, service=state.token_service, metrics=state.direct_token._metrics,
                          log=state.log, in_flight=state.direct_token._in_flight)
    assert (result is not None) is on


def test_an_unexpected_exception_is_the_same_bare_500(broker: Broker, c1: TestClient,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack matrix: `response-hygiene`, on the direct path: the fixed ``server_error`` body, the
    exception's type logged, never its message."""
    monkeypatch.setattr(broker.app.state.token_service, "token", _boom)
    took_direct, direct = _one(broker, True, _request(_form(form(c1.assertion(broker.clock.now)))))
    asgi = _one(broker, False, _request(_form(form(c1.assertion(broker.clock.now)))))[1]
    assert took_direct is True
    answer = direct[0][1]
    assert (_status(answer), json.loads(_body(answer))) == (500, SERVER_ERROR)
    assert _without_id(answer) == _without_id(asgi[0][1])
    assert [e["error"] for e in broker.logs() if e["event"] == "token.unexpected_error"] == ["RuntimeError"] * 2
    assert SECRET not in broker.log_text()


# -- behind trusted proxies: the source address uvicorn's proxy-headers layer gives ----------------

# The recording transport's peer is 127.0.0.1. (trusted proxies, X-Forwarded-For headers, the
# source the refusal's log line and the rate limiter get).
FORWARDED = [
    pytest.param(["127.0.0.1"], ["203.0.113.7"], "203.0.113.7", id="trusted peer: the address it names"),
    pytest.param(["127.0.0.1"], ["198.51.100.9, 203.0.113.7"], "203.0.113.7",
                 id="a chain: the last address not trusted"),
    pytest.param(["127.0.0.1", "203.0.113.0/24"], ["198.51.100.9, 203.0.113.7"], "198.51.100.9",
                 id="a chain through a trusted network"),
    pytest.param(["127.0.0.1"], ["198.51.100.9", "203.0.113.7"], "203.0.113.7",
                 id="two headers: read as one list"),
    pytest.param(["127.0.0.1"], [], "127.0.0.1", id="trusted peer, no header: the peer"),
    pytest.param(["127.0.0.1"], [""], "127.0.0.1", id="trusted peer, empty header: the peer"),
    pytest.param(["10.0.0.1"], ["203.0.113.7"], "127.0.0.1", id="untrusted peer: the header is ignored"),
    pytest.param(None, ["203.0.113.7"], "127.0.0.1", id="no trusted proxies: the header is ignored"),
]


@pytest.mark.parametrize(("proxies", "forwarded", "source"), FORWARDED)
def test_the_source_behind_trusted_proxies_is_uvicorns(broker: Broker, proxies: list[str] | None,
                                                       forwarded: list[str], source: str) -> None:
    """Attack matrix: `token-direct-path` (a forged X-Forwarded-For); the per-address rate limit
    and the logs get the same source on both paths."""
    other = TestClient("c1", kid="c1-1")  # a bad signature: refused, logged with its source
    headers = [("Content-Type", FORM)] + [("X-Forwarded-For", value) for value in forwarded]
    sources = []
    for direct in (True, False):
        body = _form(form(other.assertion(broker.clock.now)))
        took_direct, answers = _one(broker, direct, _request(body, headers=headers), proxies)
        assert took_direct is direct and _status(answers[0][1]) == 401
        refusals = [e for e in broker.logs() if e["event"] == "token.rejected"]
        sources.append(refusals[-1]["source"])
    assert sources == [source, source]


def test_trusted_proxies_without_uvicorns_layer_turn_the_direct_path_off(broker: Broker) -> None:
    """Where uvicorn's proxy-headers layer is not the app the protocol holds, the direct path could
    not give the forwarded source: every request goes through ASGI instead."""
    async def directs() -> tuple[Any, Any]:  # protocols are made on the broker's loop, as uvicorn makes them
        config = _Config(broker.app, broker.app.state.direct_token, ["127.0.0.1"])
        config.load()
        config.loaded_app = broker.app  # the layer somewhere else (not where uvicorn puts it)
        protocol = BoundedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={}, limits=LIMITS)
        return protocol._direct, Connection(broker, True, ["127.0.0.1"]).protocol._direct

    without_layer, with_layer = broker.call(directs)
    assert without_layer is None
    assert with_layer is broker.app.state.direct_token
