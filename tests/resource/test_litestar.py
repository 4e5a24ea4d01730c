"""The verifier as Litestar route middleware: ``request.auth`` is the verified AccessToken."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, get, post
from litestar.testing import TestClient

from tests.resource.conftest import Authority
from token_broker_resource import ResourceVerifier, require_bearer


def make_app(verifier: ResourceVerifier) -> Litestar:
    @get("/data", middleware=[require_bearer(verifier, scopes=["read"])])
    async def data(request: Request[Any, Any, Any]) -> dict[str, Any]:
        return {"client_id": request.auth.client_id, "scopes": sorted(request.auth.scopes)}

    @post("/write", middleware=[require_bearer(verifier, scopes=["write"])], status_code=200)
    async def write(request: Request[Any, Any, Any]) -> dict[str, Any]:
        return {"body": (await request.body()).decode()}

    @get("/public")
    async def public() -> dict[str, str]:
        return {"ok": "yes"}

    return Litestar([data, write, public])


def test_litestar_route_middleware(authority: Authority, verifier: ResourceVerifier) -> None:
    with TestClient(make_app(verifier)) as client:
        ok = client.get("/data", headers={"Authorization": "Bearer " + authority.token(scope="read")})
        assert (ok.status_code, ok.json()) == (200, {"client_id": "c1", "scopes": ["read"]})

        no_token = client.get("/data")
        assert (no_token.status_code, no_token.headers["www-authenticate"]) == (401, 'Bearer realm="api"')

        expired = client.get("/data", headers={"Authorization": "Bearer " + authority.token(exp=int(authority.clock.now) - 60)})
        assert expired.status_code == 401
        assert expired.json() == {"error": "invalid_token", "error_description": "The access token is invalid or expired."}

        forbidden = client.post("/write", content=b"x=1", headers={"Authorization": "Bearer " + authority.token(scope="read")})
        assert forbidden.status_code == 403
        assert forbidden.headers["www-authenticate"].endswith('scope="write"')

        written = client.post("/write", content=b"x=1", headers={
            "Authorization": "Bearer " + authority.token(scope="write"), "content-type": "application/x-www-form-urlencoded"})
        assert (written.status_code, written.json()) == (200, {"body": "x=1"})

        assert client.get("/public").json() == {"ok": "yes"}
