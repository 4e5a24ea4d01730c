"""What one connection can hold, against a live broker over raw sockets: the request line + header
section is capped (431 before more is buffered), an unfinished header section or declared body
has a deadline (408, then close), and connections beyond the cap get 503."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import BrokerProcess
from tests.rawhttp import READ_TIMEOUT, closed_by_server, connect, exchange, read_response, request_bytes, start_broker

pytestmark = pytest.mark.live

HEADER_MAX = 16384
TOO_LARGE = {"error": "invalid_request", "error_description": "The request headers are too large."}
TIMED_OUT = {"error": "invalid_request", "error_description": "The request was not received in time."}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    bp = start_broker(tmp_path_factory.mktemp("limits"), {
        "BROKER_HTTP_HEADER_TIMEOUT": "1", "BROKER_HTTP_BODY_TIMEOUT": "1"})
    yield bp
    bp.stop()


def _pad_headers(total: int) -> list[tuple[str, str]]:
    """``X-Pad-N`` headers of 100 bytes per line, about ``total`` bytes in all."""
    return [(f"X-Pad-{i:04d}", "p" * 86) for i in range(total // 100)]


@pytest.mark.parametrize(("request_", "status"), [
    pytest.param(request_bytes("GET", "/jwks.json?" + "q" * 12000), 200, id="long request line within the cap"),
    pytest.param(request_bytes("GET", "/jwks.json", _pad_headers(12000)), 200, id="headers within the cap"),
    pytest.param(request_bytes("GET", "/jwks.json?" + "q" * 20000), 431, id="request line over the cap"),
    pytest.param(request_bytes("GET", "/jwks.json", [("X-Big", "b" * 20000)]), 431, id="one header over the cap"),
    pytest.param(request_bytes("GET", "/jwks.json", _pad_headers(24000)), 431, id="many headers over the cap"),
    pytest.param(request_bytes("POST", "/token", [("X-Big", "b" * 20000)], b"grant_type=client_credentials"), 431,
                 id="token request with headers over the cap"),
])
def test_header_section_cap(broker: BrokerProcess, request_: bytes, status: int) -> None:
    response = exchange(broker.port, request_)
    assert response.status == status
    if status == 431:
        assert response.json() == TOO_LARGE and response.headers["connection"] == "close"
    assert httpx.get(broker.url + "/jwks.json").status_code == 200  # the worker is still serving


def test_unfinished_oversized_header_is_refused_before_more_is_buffered(broker: BrokerProcess) -> None:
    """No end of headers ever comes: the answer arrives once the cap is passed, and the server closes."""
    with connect(broker.port) as sock:
        sock.sendall(b"GET /jwks.json HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * (HEADER_MAX + 4096))
        response = read_response(sock)
        assert response is not None and (response.status, response.json()) == (431, TOO_LARGE)
        assert closed_by_server(sock)


FIRST = request_bytes("GET", "/jwks.json")


@pytest.mark.parametrize(("sent", "answered_first"), [
    pytest.param(b"GET /heal", False, id="request line never finished"),
    pytest.param(b"GET /jwks.json HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: 1\r\n", False, id="headers never finished"),
    pytest.param(b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: 100\r\n\r\ngrant_type=", False, id="declared token body never finished"),
    pytest.param(b"POST /revoke HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: 50\r\n\r\ntoken=", False, id="declared revocation body never finished"),
    pytest.param(FIRST + b"GET /heal", True, id="second request on a kept-alive connection never finished"),
])
def test_unfinished_request_gets_408_and_close(broker: BrokerProcess, sent: bytes, answered_first: bool) -> None:
    with connect(broker.port) as sock:
        sock.sendall(sent)
        if answered_first:
            first = read_response(sock)
            assert first is not None and first.status == 200
        response = read_response(sock)
        assert response is not None and (response.status, response.json()) == (408, TIMED_OUT)
        assert response.headers["connection"] == "close"
        assert closed_by_server(sock)


def test_answered_before_the_body_came_is_closed_at_the_body_deadline(broker: BrokerProcess) -> None:
    """The admin API refuses a missing bearer token without reading the body; the declared body
    never comes, so the connection is closed (no second answer)."""
    with connect(broker.port) as sock:
        sock.sendall(b"POST /admin/clients HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 50\r\n\r\n{")
        response = read_response(sock)
        assert response is not None and response.status == 401
        assert read_response(sock) is None


def test_connection_that_sends_nothing_is_closed(broker: BrokerProcess) -> None:
    with connect(broker.port) as sock:
        assert read_response(sock) is None


def test_trickled_headers_do_not_extend_the_deadline(broker: BrokerProcess) -> None:
    """One byte whenever the server has stayed silent for a while: activity is not progress."""
    trickle = b"GET /jwks.json HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 10_000
    with connect(broker.port) as sock:
        give_up = time.monotonic() + READ_TIMEOUT
        for byte in trickle:
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable or time.monotonic() > give_up:
                break
            sock.sendall(bytes([byte]))
        response = read_response(sock)
        assert response is not None and (response.status, response.json()) == (408, TIMED_OUT)


def test_connections_beyond_the_cap_get_503(tmp_path: Path) -> None:
    bp = start_broker(tmp_path, {"BROKER_HTTP_MAX_CONNECTIONS": "2", "BROKER_HTTP_HEADER_TIMEOUT": "30"})
    try:
        held = [connect(bp.port) for _ in range(2)]
        for sock in held:  # answered, then kept alive: two open connections
            sock.sendall(FIRST)
            response = read_response(sock)
            assert response is not None and response.status == 200
        extra = exchange(bp.port, FIRST)
        assert (extra.status, extra.body) == (503, b"Service Unavailable")
        held.pop().close()
        deadline = time.monotonic() + READ_TIMEOUT
        while exchange(bp.port, FIRST).status != 200:  # served again once a connection is gone
            assert time.monotonic() < deadline
        for sock in held:
            sock.close()
    finally:
        bp.stop()
