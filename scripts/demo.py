#!/usr/bin/env python
"""The original sequence, end to end, with real processes on loopback: ``.venv/bin/python scripts/demo.py``.

Starts three processes:

* the broker (``python -m app serve``, embedded store, fresh keys in a temporary folder, access
  tokens that live 5 seconds so that step 3 does not take long);
* a demo resource server: a Litestar app whose one route is protected by
  ``token_broker_resource.require_bearer`` (scope ``read``);
* a demo client service that uses ``token_broker_client.BrokerClient`` and its ``httpx.Auth``.

It registers the demo client through the admin API (``app.client.admin``, with the admin key the
broker generated on first start) and walks through:

1. the client gets a token (200) and calls the resource server (200 with data);
2. a client with a wrong key is refused (401 ``invalid_client``);
3. the token expires, the resource server answers 401, the client re-authenticates once,
   retries once and gets 200.

Exit code 0 when every step behaved as expected; all processes are stopped either way. Starting
and stopping processes uses ``scripts/processes.py``, shared with the tests and the benchmark.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from app.client.admin import AdminError  # noqa: E402
from scripts.processes import free_port, register_clients, start_broker, stop_process, wait_until  # noqa: E402

TOKEN_LIFETIME = 5  # seconds; BROKER_TOKEN_LIFETIME for the demo broker
RS_LEEWAY = 1  # the demo resource server's clock leeway, seconds
CLIENT_ID = "demo-client"


def say(who: str, text: str) -> None:
    print(f"[{who}] {text}", flush=True)


def short(token: str) -> str:
    return "…" + token[-8:]


# -- demo resource server (its own process) ---------------------------------------------------


def resource_server(issuer: str, port: int, host: str = "127.0.0.1", audience: str | None = None) -> int:
    import uvicorn
    from litestar import Litestar, Request, get

    from token_broker_resource import ResourceVerifier, require_bearer

    audience = audience or f"http://127.0.0.1:{port}"
    verifier = ResourceVerifier(issuer, audience, leeway=RS_LEEWAY)

    @get("/data", middleware=[require_bearer(verifier, scopes=["read"], realm="demo-api")])
    async def data(request: Request[Any, Any, Any]) -> dict[str, Any]:
        return {"orders": [{"id": 1, "item": "tea"}, {"id": 2, "item": "cake"}], "caller": request.auth.client_id}

    @get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        """Print one line per protected request, so the reader sees what the server answered."""
        async def watch(message: Any) -> None:
            if message["type"] == "http.response.start" and scope["path"] != "/healthz":
                challenge = dict(message.get("headers", [])).get(b"www-authenticate", b"").decode()
                detail = f"  WWW-Authenticate: {challenge}" if challenge else ""
                say("resource-server", f"{scope['method']} {scope['path']} → {message['status']}{detail}")
            await send(message)

        await inner(scope, receive, watch)

    inner = Litestar([data, healthz], logging_config=None)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    return 0


# -- demo client service (its own process) -----------------------------------------------------


class DemoClock:
    """Wall-clock time that step 3 can pause: the client then keeps a token past its expiry, as a
    frozen VM or a process stopped in a debugger would, and meets the resource server's 401."""

    def __init__(self) -> None:
        self.paused_at: float | None = None

    def __call__(self) -> float:
        return self.paused_at if self.paused_at is not None else time.time()


def client_service(issuer: str, api: str, key_file: str) -> int:
    from app.keystore import generate_private_key
    from token_broker_client import BrokerClient, HttpSettings, InvalidClientError

    def on_token_response(response: httpx.Response) -> None:
        if response.request.url.path != "/token":
            return  # the metadata lookup (RFC 8414), once
        response.read()
        body = response.json()
        if response.status_code == 200:
            say("client", f"POST /token → 200  token {short(body['access_token'])}, expires_in {body['expires_in']} s, "
                          f"scope \"{body['scope']}\"")
        else:
            say("client", f"POST /token → {response.status_code}  {body.get('error')}")

    def on_api_response(response: httpx.Response) -> None:
        sent = response.request.headers.get("authorization", "")
        say("client", f"GET {response.request.url.path} with token {short(sent)} → {response.status_code}")

    clock = DemoClock()
    broker = BrokerClient(issuer, CLIENT_ID, key_file, resource=api, clock=clock,
                          http=HttpSettings(client=httpx.Client(timeout=5, event_hooks={"response": [on_token_response]})))
    api_http = httpx.Client(auth=broker.auth(), timeout=5, event_hooks={"response": [on_api_response]})
    ok = True

    print("\nStep 1: the client gets a token and calls the resource server", flush=True)
    response = api_http.get(api + "/data")
    say("client", f"data: {response.text}")
    ok &= response.status_code == 200

    print("\nStep 2: a client with the wrong key is refused", flush=True)
    impostor = BrokerClient(issuer, CLIENT_ID, generate_private_key("ES256"), alg="ES256", kid=f"{CLIENT_ID}-1",
                            resource=api, http=HttpSettings(client=httpx.Client(timeout=5, event_hooks={"response": [on_token_response]})))
    try:
        impostor.get_token()
        ok = False
        say("client", "unexpected: the broker issued a token for a wrong key")
    except InvalidClientError as exc:
        say("client", f"InvalidClientError: error={exc.error!r}, HTTP {exc.status_code}; the client does not retry")

    print("\nStep 3: the token expires, the resource server answers 401, the client re-authenticates and retries",
          flush=True)
    clock.paused_at = time.time()
    wait = TOKEN_LIFETIME + RS_LEEWAY + 1
    say("client", f"(the demo pauses the client library's clock, as a frozen VM would, so the client still "
                  f"believes its token is fresh; waiting {wait} s of real time for the token to expire)")
    time.sleep(wait)  # the subject of this step: real time passing until the token has expired
    response = api_http.get(api + "/data")
    clock.paused_at = None
    say("client", f"data: {response.text}")
    ok &= response.status_code == 200
    return 0 if ok else 1


# -- orchestration -----------------------------------------------------------------------------


def register_demo_client(issuer: str, keys_dir: Path, api: str, key_file: Path) -> None:
    from app.keystore import generate_private_key, public_jwk, write_private

    key = generate_private_key("ES256")
    kid = f"{CLIENT_ID}-1"
    write_private(key_file, {**key.as_dict(private=True), "kid": kid, "alg": "ES256"})  # stays on this machine
    metadata = {
        "client_id": CLIENT_ID,
        "jwks": {"keys": [public_jwk(key, alg="ES256", kid=kid)]},  # the public half only
        "scopes": ["read"],
        "default_scopes": ["read"],
        "audiences": [api],
        "default_audience": api,
    }
    # app.client.admin with the admin key the broker wrote on first start; it raises on any answer but 201.
    register_clients(issuer, keys_dir / "admin.jwk", [metadata])
    say("demo", f"registered client \"{CLIENT_ID}\" through the admin API → 201 "
                f"(scopes {metadata['scopes']}, audience {api}, public key kid {kid})")


def start_resource_server(issuer: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, __file__, "resource-server", "--issuer", issuer, "--port", str(port)],
                            cwd=ROOT, env=env)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the resource server exited with code {proc.returncode}")
        try:
            return httpx.get(api + "/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 30, what=f"the resource server at {api}")
    except TimeoutError as exc:
        stop_process(proc)
        raise RuntimeError(str(exc)) from None
    return proc, api


def orchestrate() -> int:
    procs: list[subprocess.Popen[bytes]] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="token-broker-demo-") as tmp:
        try:
            keys_dir = Path(tmp) / "keys"
            print("Token broker demo: client → broker → resource server, with real processes on loopback\n", flush=True)
            broker = start_broker(keys_dir, Path(tmp) / "broker.log",
                                  env={"BROKER_TOKEN_LIFETIME": str(TOKEN_LIFETIME), "BROKER_LOG_LEVEL": "warning"})
            procs.append(broker.proc)
            issuer = broker.url
            say("demo", f"broker          {issuer}  (embedded store, keys in {keys_dir}, tokens live {TOKEN_LIFETIME} s)")

            rs_proc, api = start_resource_server(issuer, env)
            procs.append(rs_proc)
            say("demo", f"resource server {api}  (GET /data needs a broker token for this audience with scope \"read\")")

            key_file = Path(tmp) / "demo-client.jwk"
            register_demo_client(issuer, keys_dir, api, key_file)

            client = subprocess.Popen([sys.executable, __file__, "client-service", "--issuer", issuer, "--api", api,
                                       "--key", str(key_file)], cwd=ROOT, env=env)
            procs.append(client)
            code = client.wait(120)
        except (RuntimeError, subprocess.TimeoutExpired, httpx.HTTPError, AdminError) as exc:
            print(f"\ndemo failed: {exc}", file=sys.stderr, flush=True)
            broker_log = Path(tmp) / "broker.log"
            if broker_log.exists() and not isinstance(exc, RuntimeError):  # start_broker's error has the tail
                print(broker_log.read_text()[-2000:], file=sys.stderr)
            code = 1
        finally:
            for proc in reversed(procs):
                stop_process(proc)
    print("\n" + ("Demo finished: every step behaved as expected." if code == 0 else "Demo FAILED (see above)."), flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="role")
    rs = sub.add_parser("resource-server", help="(internal) the demo resource server")
    rs.add_argument("--issuer", required=True)
    rs.add_argument("--port", type=int, required=True)
    rs.add_argument("--host", default="127.0.0.1", help="listen address (compose: 0.0.0.0)")
    rs.add_argument("--audience", help="this API's identifier, the tokens' aud (default http://127.0.0.1:PORT)")
    cs = sub.add_parser("client-service", help="(internal) the demo client service")
    cs.add_argument("--issuer", required=True)
    cs.add_argument("--api", required=True)
    cs.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    if args.role == "resource-server":
        return resource_server(args.issuer, args.port, args.host, args.audience)
    if args.role == "client-service":
        return client_service(args.issuer, args.api, args.key)
    return orchestrate()


if __name__ == "__main__":
    sys.exit(main())
