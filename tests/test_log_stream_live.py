"""Every line a served broker writes (stdout and stderr) is one JSON object, uvicorn's own warnings
included, and no line carries the query string of a URL the broker fetched (a client's jwks_uri)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.log import stdlib_formatter
from tests.helpers import TestClient, form
from tests.keyserver import KeyServer
from tests.rawhttp import exchange

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
