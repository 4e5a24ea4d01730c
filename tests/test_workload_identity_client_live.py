"""The client library's projected-token source against a live broker (docs/workload-identity.md):
a broker process with no key for the workload, an issuer on loopback that serves OIDC discovery and
a JWKS and signs Kubernetes-shaped projected service-account tokens (``tests.federation_issuer``),
the trust set up with ``broker_admin.py trust add`` as an operator would, and a ``BrokerClient``
reading the token file as the kubelet keeps it: it gets tokens for the mapped client, carrying the
federated subject, and picks up a rotated file; the workload token never reaches the broker's log."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.federation_issuer import FederationIssuer
from tests.helpers import ISS, RS1
from token_broker_client import BrokerClient, HttpSettings, InvalidClientError, projected_token

pytestmark = pytest.mark.live
SUB = "system:serviceaccount:payments:api"


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def broker_admin(broker_url: str, admin_key: Path, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "broker_admin.py"), "--broker", broker_url,
                             "--admin-key", str(admin_key), *args],
                            capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_projected_token_source_against_a_live_broker(spawn_broker: Any, tmp_path: Path) -> None:
    bp = spawn_broker(env={"BROKER_JWKS_URI_ALLOW_HTTP_LOOPBACK": "true"})
    admin_key = spawn_broker.keys_dir / "admin.jwk"
    # The workload's client, with no key at all.
    registered = broker_admin(bp.url, admin_key, "register", "payments-api", "--no-key", "--scope", "read write",
                              "--audience", RS1)
    assert (registered["client_id"], registered["private_key_path"]) == ("payments-api", None)
    sent: list[str] = []

    def record(request: httpx.Request) -> None:
        if request.url.path == "/token":
            sent.append(dict(httpx.QueryParams(request.read().decode()))["client_assertion"])

    with FederationIssuer("RS256") as issuer, httpx.Client(event_hooks={"request": [record]}) as http:
        out = broker_admin(bp.url, admin_key, "trust", "add", issuer.url,
                        "--map", "payments-api:kubernetes.io.namespace=payments,kubernetes.io.serviceaccount.name=api")
        assert out["result"] == "created"
        path = tmp_path / "token"
        first = issuer.kubernetes_token(time.time(), audience=ISS)
        write(path, first)
        client = BrokerClient(ISS, "payments-api", projected_token(path), token_endpoint=bp.url + "/token",
                              http=HttpSettings(client=http))
        access = claims(client.get_token("read"))
        assert (access["sub"], access["client_id"], access["scope"], access["aud"]) == (
            "payments-api", "payments-api", "read", RS1)
        assert access["federation"] == {"iss": issuer.url, "sub": SUB}
        rotated = issuer.kubernetes_token(time.time(), audience=ISS)  # the kubelet's next token
        write(path, rotated)
        assert claims(client.get_token("write"))["scope"] == "write"
        assert sent == [first, rotated]
        # Another namespace's service account maps to no client.
        write(path, issuer.kubernetes_token(time.time(), audience=ISS, namespace="batch"))
        with pytest.raises(InvalidClientError):
            client.get_token("read write")
    log = bp.log_path.read_text()
    for token in (first, rotated):
        assert token.split(".")[1] not in log and token.split(".")[2] not in log
