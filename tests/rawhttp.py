"""HTTP/1.1 over a plain socket, for the requests an HTTP client library would not send: paths as
written (httpx normalises them), repeated headers, oversized or unfinished header sections, and
connections that stall on purpose. Every read is bounded by the socket timeout."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT, BrokerProcess, free_port
from tests.helpers import ISS

#: Upper bound for any single wait on the broker; far above every deadline the tests configure.
READ_TIMEOUT = 15.0


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket) -> RawResponse | None:
    """One response (Content-Length framed), or None when the server closed without answering."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            if data:
                raise AssertionError(f"connection closed inside a response head: {data[:200]!r}")
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed inside a response body")
        body += chunk
    return RawResponse(int(status_line.split(" ")[1]), headers, body[:length])


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server has closed the connection (EOF or reset) with nothing more to read."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def exchange(port: int, request: bytes) -> RawResponse:
    with connect(port) as sock:
        sock.sendall(request)
        response = read_response(sock)
    assert response is not None, "the server closed the connection without an answer"
    return response


def request_bytes(method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if body and not any(name.lower() == "content-length" for name, _ in headers or []):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def start_broker(folder: Path, env: dict[str, str] | None = None) -> BrokerProcess:
    """``python -m app serve`` on a free port (embedded store, keys in ``folder``), for a module of
    raw-socket tests that share one process; the caller stops it."""
    port, management_port = free_port(), free_port()
    log_path = folder / f"broker-{port}.log"
    environ = {**os.environ, "BROKER_KEYS_DIR": str(folder / "keys"), "BROKER_ISSUER": ISS,
               "BROKER_MANAGEMENT_PORT": str(management_port), "PYTHONUNBUFFERED": "1", **(env or {})}
    environ.pop("BROKER_REDIS_URL", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port)],
                                cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)
    bp = BrokerProcess(port, proc, log_path, management_port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("broker exited:\n" + log_path.read_text()[-3000:])
        try:
            if httpx.get(bp.management_url + "/readyz", timeout=0.5).status_code == 200:
                return bp
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    bp.stop()
    raise RuntimeError("broker did not become ready:\n" + log_path.read_text()[-3000:])
