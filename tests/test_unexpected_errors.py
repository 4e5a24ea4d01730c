"""An unexpected exception inside the broker (attack matrix: `response-hygiene`).

A bug must never reach the caller as a traceback, a framework error page or an exception message:
the answer is 500 with the fixed RFC 6749 ``server_error`` body and ``Cache-Control: no-store``,
and the log carries the exception's type, never its message (which could hold request data).
The fault is injected by replacing one service method with a function that raises: the HTTP
stack, the error rendering and the logging around it are the real ones.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Broker
from tests.expect import assert_hygiene
from tests.helpers import TestClient, form
from tests.test_admin_api import admin_headers

SECRET = "secret-detail-7f3a"
SERVER_ERROR = {"error": "server_error", "error_description": "The server encountered an unexpected condition."}


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(SECRET)


CASES = {
    # endpoint id: (service on app.state, its method, how to call the endpoint, logged event)
    "token": ("token_service", "token", lambda b, c: b.get_token(c), "token.unexpected_error"),
    "revoke": ("revocation_service", "revoke",
               lambda b, c: b.http.post("/revoke", content=_op_body(b, c), headers=_FORM), "revocation.unexpected_error"),
    "introspect": ("introspection_service", "introspect",
                   lambda b, c: b.http.post("/introspect", content=_op_body(b, c), headers=_FORM),
                   "introspection.unexpected_error"),
}
_FORM = {"content-type": "application/x-www-form-urlencoded"}


def _op_body(broker: Broker, client: TestClient) -> str:
    import httpx

    params = form(client.assertion(broker.clock.now), token="x.y.z")
    params.pop("grant_type", None)
    return str(httpx.QueryParams(params))


@pytest.mark.parametrize("endpoint", list(CASES))
def test_unexpected_exception_is_a_bare_server_error(broker: Broker, c1: TestClient, endpoint: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    service, method, call, event = CASES[endpoint]
    monkeypatch.setattr(getattr(broker.app.state, service), method, _boom)
    resp = call(broker, c1)
    assert resp.status_code == 500
    assert resp.json() == SERVER_ERROR
    assert_hygiene(resp)
    assert SECRET not in resp.text
    errors = [e for e in broker.logs() if e["event"] == event]
    assert [e["error"] for e in errors] == ["RuntimeError"]
    assert SECRET not in broker.log_text()


def test_unexpected_exception_in_the_admin_api(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    headers = admin_headers(broker)
    monkeypatch.setattr(broker.app.state.admin_service, "list", _boom)
    resp = broker.http.get("/admin/clients", headers=headers)
    assert resp.status_code == 500
    assert resp.json() == SERVER_ERROR
    assert resp.headers["cache-control"] == "no-store"
    assert SECRET not in resp.text and SECRET not in broker.log_text()
    assert [e["error"] for e in broker.logs() if e["event"] == "request.unexpected_error"] == ["RuntimeError"]
