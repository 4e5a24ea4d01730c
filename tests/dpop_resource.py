"""A resource server protected by the project's verifier with DPoP on, served over real HTTP (uvicorn
on loopback, in a thread of the test process): what tests/test_dpop_e2e_live.py and the DPoP interop
tests call. ``GET /data`` answers the caller's client_id and ``cnf.jkt``; ``POST /data`` echoes the body."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import uvicorn
from litestar import Litestar, Request, get, post

from scripts.processes import free_port, wait_until
from tests.helpers import RS1
from token_broker_resource import DPoPPolicy, ResourceVerifier, require_bearer


class DPoPResourceServer:
    def __init__(self, issuer: str, audience: str = RS1, policy: DPoPPolicy | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        verifier = ResourceVerifier(issuer, audience, dpop=policy or DPoPPolicy())

        @get("/data", middleware=[require_bearer(verifier, scopes=["read"])])
        async def data(request: Request[Any, Any, Any]) -> dict[str, Any]:
            return {"client_id": request.auth.client_id, "jkt": request.auth.claims.get("cnf", {}).get("jkt")}

        @post("/data", middleware=[require_bearer(verifier, scopes=["read"])], status_code=200)
        async def write(request: Request[Any, Any, Any]) -> dict[str, Any]:
            return {"body": (await request.body()).decode()}

        self.server = uvicorn.Server(uvicorn.Config(Litestar([data, write]), host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def start(self) -> DPoPResourceServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 20, what="the DPoP resource server to listen")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
