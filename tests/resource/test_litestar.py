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


def test_litestar_route_middleware_with_dpop(authority: Authority, clock: Any) -> None:
    """The same ``require_bearer`` on a verifier with a ``DPoPPolicy``: DPoP-bound tokens with their proofs."""
    import httpx

    from tests.helpers import ISS, RS1, new_key
    from token_broker_jose.dpop import create_proof, jwk_thumbprint
    from token_broker_resource import DPoPPolicy

    verifier = ResourceVerifier(ISS, RS1, clock=clock, dpop=DPoPPolicy(external_url=RS1),
                                http=httpx.AsyncClient(transport=httpx.MockTransport(authority.handler)))
    key = new_key("ES256")
    token = authority.token(cnf={"jkt": jwk_thumbprint(key.as_dict(private=False))}, scope="read")

    def proof(htu: str = RS1 + "/data") -> str:
        return create_proof(key, alg="ES256", htm="GET", htu=htu, access_token=token, now=clock.now)

    with TestClient(make_app(verifier)) as client:
        ok = client.get("/data", headers={"Authorization": "DPoP " + token, "DPoP": proof()})
        assert (ok.status_code, ok.json()) == (200, {"client_id": "c1", "scopes": ["read"]})

        as_bearer = client.get("/data", headers={"Authorization": "Bearer " + token})
        assert (as_bearer.status_code, as_bearer.json()["error"]) == (401, "invalid_token")

        wrong_htu = client.get("/data", headers={"Authorization": "DPoP " + token, "DPoP": proof(RS1 + "/write")})
        assert (wrong_htu.status_code, wrong_htu.headers.get_list("www-authenticate")[1]) == (401, (
            'DPoP realm="api", error="invalid_dpop_proof", error_description="the DPoP proof\'s htu does not match '
            'the URL of this request", algs="ES256 ES384 PS256 RS256 Ed25519"'))
