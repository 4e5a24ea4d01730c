"""``token_first``: ``/token`` is routed before Litestar's router, every other request goes to it."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest

from app import log as broker_log
from app.web.app import token_first
from tests.test_unexpected_errors import SERVER_ERROR


def _run(route: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(route(scope, receive, send))
    return sent


def _answer(status: int) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


def _scope(path: str, **extra: Any) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "headers": [], **extra}


ROUTING = [
    pytest.param(_scope("/token"), 201, id="token"),
    pytest.param(_scope("/token", raw_path=b"/%74oken"), 201, id="token-percent-encoded: the strict middleware's to refuse"),
    pytest.param(_scope("/token/"), 299, id="trailing-slash"),
    pytest.param(_scope("//token"), 299, id="double-slash"),
    pytest.param(_scope("/TOKEN"), 299, id="upper-case"),
    pytest.param(_scope("/revoke"), 299, id="revoke"),
    pytest.param(_scope("/token", root_path="/broker"), 299, id="behind-a-root-path"),
    pytest.param({"type": "websocket", "path": "/token", "headers": []}, 299, id="websocket"),
]


@pytest.mark.parametrize(("scope", "status"), ROUTING)
def test_token_first_routes(scope: dict[str, Any], status: int) -> None:
    """201: the token chain (its outermost middleware answered); 299: Litestar's handler."""
    route = token_first(_answer(299), [lambda inner: _answer(201)], log=broker_log.get_logger())
    sent = _run(route, scope)
    assert sent[0]["status"] == status
    if status == 201:
        assert (scope["path_template"], scope["path_params"]) == ("/token", {})


def test_an_exception_escaping_the_token_chain_is_a_json_500() -> None:
    stream = io.StringIO()
    broker_log.configure("info", stream)

    def failing(inner: Any) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            raise RuntimeError("s3cret detail")

        return app

    route = token_first(_answer(299), [failing], log=broker_log.get_logger())
    sent = _run(route, _scope("/token"))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"]) == SERVER_ERROR
    broker_log.flush_or_raise()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e["path"], e["error"]) for e in lines] == [("request.unexpected_error", "/token", "RuntimeError")]
    assert "s3cret" not in stream.getvalue()
