"""docs/workload-identity.md and its example manifest say what the code does: the manifest is valid
for the pinned Kubernetes version (kubernetes-validate, strict) and mounts a projected token whose
audience is the broker's issuer, where the doc's client code reads it, within the lifetimes a
trusted issuer accepts; the doc's clients file validates; every ``--map`` it shows parses into a
rule ``trusted_issuer`` accepts; the answer table of the admin API names the routes that exist."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from joserfc.jwk import ECKey

from app.client.admin_cli import build_parser
from app.client.admin_trust import build_record
from app.config import Settings
from app.oauth.trust import DEFAULT_MAX_LIFETIME, trusted_issuer
from app.service.client_metadata import read_clients_document
from tests.conftest import ROOT
from tests.test_kubernetes_manifests import KUBERNETES_VERSION, _config_env

DOC = (ROOT / "docs" / "workload-identity.md").read_text()
MANIFEST = ROOT / "deploy" / "examples" / "workload-identity-pod.yaml"
RESOURCES = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
DEPLOYMENT = next(doc for doc in RESOURCES if doc["kind"] == "Deployment")
POD = DEPLOYMENT["spec"]["template"]["spec"]


@pytest.mark.parametrize("doc", RESOURCES, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_the_example_manifest_is_valid_kubernetes(doc: dict[str, Any]) -> None:
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_the_projected_token_is_for_the_broker_where_the_client_reads_it() -> None:
    [volume] = POD["volumes"]
    [source] = volume["projected"]["sources"]
    token = source["serviceAccountToken"]
    issuer = _config_env()["BROKER_ISSUER"]
    assert token["audience"] == issuer  # the audience a trusted issuer requires by default
    assert 600 <= token["expirationSeconds"] <= DEFAULT_MAX_LIFETIME
    [container] = POD["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    path = f"{mount['mountPath']}/{token['path']}"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (env["BROKER_TOKEN_FILE"], env["BROKER_ISSUER"]) == (path, issuer)
    assert f'projected_token("{path}")' in DOC and f'projected_token("{path}")' in MANIFEST.read_text()
    assert POD["serviceAccountName"] == "api" and POD["automountServiceAccountToken"] is False
    assert "payments-api:sub=system:serviceaccount:payments:api" in MANIFEST.read_text()
    assert "deploy/examples/workload-identity-pod.yaml" in DOC


def test_the_clients_file_example_validates(tmp_path: Path) -> None:
    block = re.search(r"```json\n(.*?)```", DOC, re.S)
    assert block is not None
    path = tmp_path / "clients.json"
    path.write_text(block.group(1))
    document = read_clients_document(Settings(issuer="https://auth.example.com"), str(path), now=0)
    assert [c.client_id for c in document.clients] == ["payments-api"]
    assert document.clients[0].jwks == {"keys": []}
    assert [r.issuer for r in document.trusted_issuers] == ["https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE"]
    json.loads(block.group(1))


def _trust_adds() -> list[list[str]]:
    lines = re.findall(r"^\.venv/bin/python scripts/broker_admin\.py (trust add .*)$", DOC, re.M)
    return [shlex.split(line) for line in lines if "--file" not in line]


@pytest.mark.parametrize("argv", _trust_adds(), ids=lambda a: a[2])
def test_every_trust_add_in_the_doc_builds_a_valid_record(argv: list[str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # --jwks-file names the file the reader makes with kubectl: one like it
    key = ECKey.generate_key("P-256").as_dict(private=False)
    Path("cluster-jwks.json").write_text(json.dumps({"keys": [{**key, "kid": "k1", "alg": "ES256", "use": "sig"}]}))
    trusted_issuer(build_record(build_parser().parse_args(argv)))


def test_the_doc_examples_cover_each_platform() -> None:
    issuers = {argv[2] for argv in _trust_adds()}
    assert {"https://token.actions.githubusercontent.com", "spiffe://prod.example"} <= issuers
    assert any(i.startswith("https://kubernetes.default.svc") or "eks" in i for i in issuers)


def test_the_admin_api_table_names_served_routes() -> None:
    from app.web.routes import ROUTES

    paths = {path for handler in ROUTES for path in handler.paths}
    named = set(re.findall(r"`(?:GET|PUT|DELETE) (/admin/[\w-]+)", DOC))
    assert named == {"/admin/trusted-issuers"} and named <= paths
