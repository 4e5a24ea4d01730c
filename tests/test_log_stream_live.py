"""Every line a served broker writes (stdout and stderr) is one JSON object, uvicorn's own warnings
included (in every worker, each line with its process's pid), and no line carries the query string
of a URL the broker fetched (a client's jwks_uri). The start and stop lines: ``broker.started``
once the public port listens, ``broker.stopping`` at SIGTERM with the requests in flight, then
``broker.stopped``."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.log import stdlib_formatter
from scripts.processes import broker_env
from tests.conftest import ROOT, RedisServer, free_port, wait_until
from tests.helpers import ISS, TestClient, form
from tests.keyserver import KeyServer
from tests.rawhttp import connect, exchange, read_response

SECRET = "tenant-secret-0d5f"


@pytest.mark.live
def test_every_line_is_json_and_no_fetched_query_is_logged(spawn_broker: Any, tmp_path: Path) -> None:
    client = TestClient("uri-svc")
    metadata = client.metadata()
    metadata.pop("jwks")
    with KeyServer() as server:
        server.keys = [client.public_jwk()]
        clients_file = tmp_path / "clients.json"  # loaded at start: the admin audit event is not involved
        clients_file.write_text(json.dumps({"clients": [{**metadata, "jwks_uri": f"{server.url}?tenant={SECRET}"}]}))
        bp = spawn_broker(env={"BROKER_CLIENTS_FILE": str(clients_file), "BROKER_JWKS_URI_ALLOW_HTTP_LOOPBACK": "true"})
        issued = httpx.post(bp.url + "/token", data=form(client.assertion()))
        assert issued.status_code == 200, issued.text
        assert any(SECRET in hit for hit in server.hits)  # the broker fetched the URL with its query
        assert exchange(bp.port, b"GARBAGE\r\n\r\n").status == 400  # uvicorn logs a warning for this
        bp.stop()
    lines = bp.log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # raises on the first line that is not JSON
    assert all(isinstance(record, dict) for record in records)
    assert [line for line in lines if SECRET in line] == []
    warnings = [r for r in records if r.get("logger") == "uvicorn.error"]
    assert [(r["event"], r["level"]) for r in warnings] == [("Invalid HTTP request received.", "warning")]
    assert any(r.get("event") == "jwks_uri.fetched" for r in records)


@pytest.mark.parametrize(("message", "logged"), [
    pytest.param("GET https://keys.example/jwks.json?tenant=s3cret&x=1 failed", "GET https://keys.example/jwks.json?"
                 "[query removed] failed", id="query removed"),
    pytest.param('HTTP Request: GET http://127.0.0.1:9/j?t=s3cret "HTTP/1.1 200 OK"',
                 'HTTP Request: GET http://127.0.0.1:9/j?[query removed] "HTTP/1.1 200 OK"', id="httpx request line"),
    pytest.param("no URL here?a=b", "no URL here?a=b", id="not a URL"),
    pytest.param("https://keys.example/jwks.json#frag", "https://keys.example/jwks.json#frag", id="no query"),
])
def test_third_party_record_is_one_json_line_without_url_queries(message: str, logged: str) -> None:
    record = logging.LogRecord("httpx", logging.WARNING, __file__, 1, message, None, None)
    line = stdlib_formatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert (parsed["event"], parsed["level"], parsed["logger"]) == (logged, "warning", "httpx")


@pytest.mark.redis
@pytest.mark.live
def test_every_worker_line_is_json_with_its_pid(real_redis: RedisServer, spawn_broker: Any) -> None:
    """Two workers: uvicorn's own line from a worker, the workers' start and stop lines, all JSON,
    each with the pid of the process that wrote it."""
    bp = spawn_broker(redis_url=real_redis.url, workers=2)
    wait_until(lambda: len({r["pid"] for r in bp.logs() if r["event"] == "broker.started"}) == 2, 20,
               what="both workers listening")
    assert exchange(bp.port, b"GARBAGE\r\n\r\n").status == 400  # a worker's uvicorn logs a warning
    bp.stop()
    records = [json.loads(line) for line in bp.log_path.read_text().splitlines()]  # raises on a non-JSON line
    assert all(isinstance(r.get("pid"), int) for r in records)
    workers = {r["pid"] for r in records if r["event"] == "broker.started"}
    assert len(workers) == 2 and bp.proc.pid not in workers
    [warning] = [r for r in records if r.get("logger") == "uvicorn.error"]
    assert (warning["event"], warning["level"]) == ("Invalid HTTP request received.", "warning")
    assert warning["pid"] in workers
    for pid in workers:
        own = [r["event"] for r in records if r["pid"] == pid]
        assert own.index("broker.started") < own.index("broker.stopping") < own.index("broker.stopped") == len(own) - 1


@pytest.mark.live
def test_sigterm_lines_count_the_requests_in_flight(spawn_broker: Any) -> None:
    bp = spawn_broker(env={"BROKER_ACCESS_LOG": "on"})
    body = b"grant_type=client_credentials"
    with connect(bp.port) as sock:
        sock.sendall(b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:5]))
        # Answered after the first connection's headers were read: its request is in the app.
        assert httpx.get(bp.url + "/jwks.json").status_code == 200
        os.kill(bp.proc.pid, signal.SIGTERM)
        wait_until(lambda: any(r["event"] == "broker.stopping" for r in bp.logs()), 10, what="broker.stopping")
        sock.sendall(body[5:])
        response = read_response(sock)
    assert response is not None and response.status == 401
    bp.proc.wait(20)
    records = bp.logs()
    [stopping] = [r for r in records if r["event"] == "broker.stopping"]
    assert (stopping["in_flight"], stopping["drain_seconds"]) == (1, 0.0)
    after = [(r["event"], r.get("request_id")) for r in records[records.index(stopping) + 1:]]
    request_id = response.headers["x-request-id"]
    assert after == [("token.rejected", request_id), ("http.access", request_id), ("broker.stopped", None)]


@pytest.mark.live
def test_every_answer_finds_its_lines_already_written(spawn_broker: Any) -> None:
    """Concurrent token requests (misses, hits, replays): when an answer arrives, the lines its
    request logged are already in the broker's stdout, read at once with no waiting. Under load
    the server writes the lines of several answers in one write (``app.web.server._AnswerWriter``);
    this is the promise that batching must keep."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.test_replay import _admin_register

    bp = spawn_broker()
    clients = [TestClient(f"lines-{n}") for n in range(4)]
    for client in clients:
        _admin_register(bp.url, spawn_broker.keys_dir, client)

    def run(client: TestClient) -> list[tuple[int, str, set[str]]]:
        seen = []
        with httpx.Client(base_url=bp.url) as http:
            for n in range(15):
                assertion = client.assertion()
                for _ in range(2 if n % 5 == 0 else 1):  # every fifth assertion sent twice: a replay
                    answer = http.post("/token", data=form(assertion))
                    request_id = answer.headers["x-request-id"]
                    logged = bp.log_path.read_text()  # at once: no wait_until
                    events = {json.loads(line)["event"] for line in logged.splitlines() if request_id in line}
                    seen.append((answer.status_code, request_id, events))
        return seen

    with ThreadPoolExecutor(len(clients)) as pool:
        seen = [row for rows in pool.map(run, clients) for row in rows]
    assert len(seen) == 4 * 18
    statuses = sorted(status for status, _, _ in seen)
    assert statuses == [200] * 60 + [401] * 12
    for status, request_id, events in seen:
        expected = {"token.issued"} if status == 200 else {"replay.rejected", "token.rejected"}
        assert events == expected, (status, request_id, events)


@pytest.mark.live
def test_no_started_line_when_the_public_port_is_taken(tmp_path: Path) -> None:
    """``broker.started`` is written once the public port listens, not when the app is ready."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = broker_env(ISS, tmp_path / "keys", env={"BROKER_MANAGEMENT_PORT": str(free_port())})
        log_path = tmp_path / "broker.log"
        with open(log_path, "wb") as out:
            proc = subprocess.run([sys.executable, "-m", "app", "serve", "--port", str(port)], env=env, cwd=ROOT,
                                  stdout=out, stderr=subprocess.STDOUT, timeout=60)
    text = log_path.read_text()
    assert proc.returncode != 0, text
    assert "broker.started" not in text
