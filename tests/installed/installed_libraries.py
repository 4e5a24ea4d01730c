"""Run INSIDE a fresh virtualenv that holds only the client and resource wheels and their
requirements (tests/test_installed_libraries.py builds it, copies this file next to a minimal
pytest.ini and runs it there): the libraries as a service installs them, against a live broker.

Only the standard library, pytest, httpx and the installed libraries are imported here; the
broker (a process run by the project's virtualenv) is reached over HTTP. Environment:
TB_ISSUER (the broker's URL and issuer), TB_ADMIN_KEY (its admin private JWK), TB_REDIS_URL
(a real Redis for the shared cache), TB_AUDIENCE.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import httpx
import pytest

import token_broker_client
import token_broker_jose
import token_broker_resource
from token_broker_client import BrokerClient, ClientKey, SharedTokenCache
from token_broker_resource import BearerMiddleware, ResourceVerifier

ISSUER = os.environ["TB_ISSUER"]
AUDIENCE = os.environ["TB_AUDIENCE"]
SITE = Path(sysconfig.get_paths()["purelib"]).resolve()


@pytest.mark.parametrize("module", [token_broker_client, token_broker_resource, token_broker_jose],
                         ids=lambda m: m.__name__)
def test_the_libraries_come_from_this_venvs_site_packages(module):
    assert Path(module.__file__).resolve().is_relative_to(SITE), module.__file__
    assert Path(sys.prefix).resolve() != Path(sys.base_prefix).resolve()  # a virtualenv


@pytest.mark.parametrize("name", ["app", "litestar", "uvicorn", "fakeredis", "lupa", "msgspec"])
def test_no_server_package_is_installed(name):
    assert importlib.util.find_spec(name) is None


def _requirements(distribution: str) -> tuple[set[str], set[str]]:
    """(unconditional requirement names, requirement names that only an extra brings)."""
    plain, extra = set(), set()
    for line in metadata.requires(distribution) or ():
        name = line.split(";")[0].split("==")[0].split("[")[0].strip().lower()
        (extra if "extra ==" in line else plain).add(name)
    return plain, extra


REQUIREMENTS = {
    "token-broker-jose": ({"joserfc", "cryptography"}, set()),
    "token-broker-client": ({"token-broker-jose", "httpx", "joserfc"}, {"redis", "spiffe"}),
    "token-broker-resource": ({"token-broker-jose", "httpx", "joserfc"}, {"litestar"}),
}


@pytest.mark.parametrize("distribution", list(REQUIREMENTS))
def test_installed_requirements(distribution):
    assert _requirements(distribution) == REQUIREMENTS[distribution]
    assert metadata.version(distribution) == token_broker_client.__version__


def _register(client_id: str, public_jwk: dict) -> None:
    """Through the broker's admin API, authenticated with the installed client itself."""
    admin = BrokerClient(ISSUER, "broker-admin", os.environ["TB_ADMIN_KEY"], scope="broker:admin",
                         resource=ISSUER + "/admin")
    body = {"client_id": client_id, "jwks": {"keys": [public_jwk]}, "scopes": ["read", "write"],
            "default_scopes": ["read"], "audiences": [AUDIENCE], "default_audience": AUDIENCE}
    with httpx.Client(auth=admin.auth()) as http:
        response = http.post(ISSUER + "/admin/clients", json=body)
    assert response.status_code == 201, response.text


@pytest.fixture(scope="module")
def keygen_client(tmp_path_factory) -> tuple[str, Path]:
    """``token-broker-client keygen`` (the console script of this venv), the public key registered."""
    folder = tmp_path_factory.mktemp("service-machine")
    script = Path(sys.prefix) / "bin" / "token-broker-client"
    done = subprocess.run([str(script), "keygen", "--client-id", "installed-svc", "--scope", "read", "--audience",
                           AUDIENCE], cwd=folder, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (folder / "installed-svc.jwk").stat().st_mode & 0o777 == 0o600
    assert "scripts/broker_admin.py register installed-svc --public-key installed-svc.pub.jwk" in done.stderr
    _register("installed-svc", json.loads(done.stdout))
    return "installed-svc", folder / "installed-svc.jwk"


async def _protected(scope, receive, send):
    body = json.dumps({"client_id": scope["auth"].client_id}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def test_a_token_from_the_live_broker_opens_a_protected_asgi_app(keygen_client):
    client_id, key_file = keygen_client
    client = BrokerClient(ISSUER, client_id, key_file, scope="read", resource=AUDIENCE)
    token = client.get_token()
    assert client.get_token() == token  # cached

    async def calls() -> list[tuple[int, str]]:
        app = BearerMiddleware(_protected, ResourceVerifier(ISSUER, audience=AUDIENCE), scopes=["read"])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=AUDIENCE) as http:
            answers = [await http.get("/x", headers={"Authorization": f"Bearer {token}"}), await http.get("/x")]
        return [(r.status_code, r.headers.get("www-authenticate", r.text)) for r in answers]

    assert asyncio.run(calls()) == [(200, json.dumps({"client_id": client_id})), (401, 'Bearer realm="api"')]


def test_asyncio_token_and_a_pem_key(keygen_client, tmp_path):
    client_id, key_file = keygen_client
    async_token = asyncio.run(BrokerClient(ISSUER, client_id, key_file, scope="read", resource=AUDIENCE).aget_token())
    assert async_token.count(".") == 2
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "pem-svc.pem"
    pem.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    key = ClientKey(pem)
    public = {**key.key.as_dict(private=False), "kid": key.kid, "alg": key.alg, "use": "sig"}
    _register("pem-svc", public)
    assert BrokerClient(ISSUER, "pem-svc", pem, scope="read", resource=AUDIENCE).get_token().count(".") == 2


def test_the_redis_extra_shares_one_token_between_two_clients(keygen_client):
    import redis

    client_id, key_file = keygen_client
    shared = redis.Redis.from_url(os.environ["TB_REDIS_URL"])
    try:
        first, second = (BrokerClient(ISSUER, client_id, key_file, scope="read write", resource=AUDIENCE,
                                      shared_cache=SharedTokenCache(shared)) for _ in range(2))
        assert first.get_token() == second.get_token()
    finally:
        shared.close()
