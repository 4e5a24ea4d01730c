"""``broker_admin.py trust add|list|show|remove`` (``app.client.admin_trust``): the ``--map`` syntax
for the shapes of Kubernetes, SPIFFE and GitHub Actions tokens, the record ``add`` builds from its
options, and each action against the in-process broker (its answers and errors as the CLI prints
them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.client.admin import AdminError, BrokerAdmin, UsageError
from app.client.admin_cli import build_parser, main
from app.client.admin_trust import build_record, parse_map, trust
from app.oauth.trust import trusted_issuer
from tests.conftest import Broker
from tests.helpers import ISS, TestClient
from tests.test_admin_api import admin_headers
from tests.test_trust_admin import K8S, jwks

GITHUB = "https://token.actions.githubusercontent.com"


@pytest.mark.parametrize("value, rule", [
    ("payments-api:sub=system:serviceaccount:payments:api",
     {"client_id": "payments-api", "sub": "system:serviceaccount:payments:api"}),
    ("payments-api:kubernetes.io.namespace=payments,kubernetes.io.serviceaccount.name=api",
     {"client_id": "payments-api", "claims": {"kubernetes.io.namespace": "payments",
                                              "kubernetes.io.serviceaccount.name": "api"}}),
    ("payments-api:sub_pattern=spiffe://prod.example/ns/payments/sa/*",
     {"client_id": "payments-api", "sub_pattern": "spiffe://prod.example/ns/payments/sa/*"}),
    ("deployer:repository=octo/app,ref=refs/heads/main",
     {"client_id": "deployer", "claims": {"repository": "octo/app", "ref": "refs/heads/main"}}),
    ("deployer:sub_pattern=repo:octo/app:ref:refs/tags/*,environment=prod",
     {"client_id": "deployer", "sub_pattern": "repo:octo/app:ref:refs/tags/*", "claims": {"environment": "prod"}}),
    ("svc:sub=a,b=c,d", {"client_id": "svc", "sub": "a", "claims": {"b": "c,d"}}),
    ("svc:sub=x=y", {"client_id": "svc", "sub": "x=y"}),
], ids=["k8s-sub", "k8s-namespace-and-account", "spiffe-pattern", "github-repository-and-ref",
        "github-pattern-and-environment", "comma-inside-a-value", "equals-inside-a-value"])
def test_map_syntax(value: str, rule: dict[str, Any]) -> None:
    assert parse_map(value) == rule
    trusted_issuer({"issuer": K8S, "rules": [rule]})  # what the broker accepts


@pytest.mark.parametrize("value, message", [
    ("payments-api", "--map 'payments-api': expected CLIENT_ID:sub=EXACT, CLIENT_ID:sub_pattern=PATTERN or "
                     "CLIENT_ID:CLAIM.PATH=VALUE[,CLAIM.PATH=VALUE...]"),
    (":sub=x", "--map ':sub=x': expected CLIENT_ID:sub=EXACT, CLIENT_ID:sub_pattern=PATTERN or "
               "CLIENT_ID:CLAIM.PATH=VALUE[,CLAIM.PATH=VALUE...]"),
    ("svc:sub", "--map 'svc:sub': condition 'sub' is not NAME=VALUE"),
    ("svc:sub=", "--map 'svc:sub=': condition 'sub=' is not NAME=VALUE"),
    ("svc:na me=x", "--map 'svc:na me=x': condition 'na me=x' is not NAME=VALUE"),
    ("svc:sub=a,sub=b", "--map 'svc:sub=a,sub=b': sub appears twice"),
], ids=["no-condition", "no-client-id", "no-value", "empty-value", "bad-claim-name", "sub-twice"])
def test_map_syntax_errors(value: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_map(value)
    assert str(info.value) == message


def _args(*argv: str) -> Any:
    return build_parser().parse_args(["trust", *argv])


def test_add_builds_the_record_from_its_options(tmp_path: Path) -> None:
    keys = tmp_path / "cluster-jwks.json"
    keys.write_text(json.dumps(jwks()))
    args = _args("add", K8S, "--jwks-file", str(keys), "--audience", "https://broker.example", "--alg", "RS256",
                 "--alg", "ES256", "--alg", "RS256", "--max-token-age", "7200", "--max-lifetime", "86400",
                 "--single-use", "--allow-other-audiences", "--map", "payments-api:sub=system:serviceaccount:p:api",
                 "--map", "batch:kubernetes.io.namespace=batch", "--broker", "http://127.0.0.1:9")
    assert build_record(args) == {
        "issuer": K8S, "jwks": json.loads(keys.read_text()), "audience": "https://broker.example",
        "algs": ["RS256", "ES256"], "max_token_age": 7200, "max_lifetime": 86400, "single_use": True,
        "allow_other_audiences": True, "rules": [{"client_id": "payments-api", "sub": "system:serviceaccount:p:api"},
                                                 {"client_id": "batch", "claims": {"kubernetes.io.namespace": "batch"}}]}
    assert args.broker == "http://127.0.0.1:9"  # connection options after the action too


@pytest.mark.parametrize("argv, message", [
    (["add", K8S], "trust add needs ISSUER and at least one --map CLIENT_ID:COND (or --file RECORD.json)"),
    (["add", "--map", "svc:sub=x"], "trust add needs ISSUER and at least one --map CLIENT_ID:COND (or --file "
                                    "RECORD.json)"),
    (["add", K8S, "--file", "record.json"], "--file holds the whole record: give neither ISSUER nor options"),
    (["add", "--file", "record.json", "--single-use"], "--file holds the whole record: give neither ISSUER nor "
                                                       "--single-use"),
], ids=["no-map", "no-issuer", "file-and-issuer", "file-and-option"])
def test_add_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        build_record(_args(*argv))
    assert str(info.value) == message


def test_key_sources_exclude_each_other(capsys: Any) -> None:
    with pytest.raises(SystemExit) as info:
        _args("add", K8S, "--jwks-file", "a.json", "--jwks-uri", "https://x.example/keys", "--map", "s:sub=x")
    assert info.value.code == 2
    assert "--jwks-uri: not allowed with argument --jwks-file" in capsys.readouterr().err


def test_usage_error_exits_2_before_any_broker_is_asked(capsys: Any) -> None:
    assert main(["trust", "add", K8S, "--map", "oops", "--broker", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err == ("broker_admin.py trust: error: --map 'oops': expected CLIENT_ID:sub=EXACT, "
                                       "CLIENT_ID:sub_pattern=PATTERN or CLIENT_ID:CLAIM.PATH=VALUE[,CLAIM.PATH="
                                       "VALUE...]\n")


class _InProcess(httpx.BaseTransport):
    """The in-process broker's transport, left open for the test client that owns it."""

    def __init__(self, broker: Broker) -> None:
        self._inner = broker.http._transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._inner.handle_request(request)


@pytest.fixture
def admin(broker: Broker) -> Any:
    broker.register(TestClient("payments-api"))
    with BrokerAdmin(ISS, broker.settings.keys_dir / "admin.jwk", transport=_InProcess(broker)) as client:
        client._token = admin_headers(broker)["authorization"].split()[1]  # signed at the broker's frozen clock
        yield client


def test_add_list_show_remove(admin: BrokerAdmin, tmp_path: Path) -> None:
    record = {"issuer": GITHUB, "rules": [{"client_id": "payments-api",
                                           "claims": {"repository": "octo/app", "ref": "refs/heads/main"}}]}
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    args = _args("add", "--file", str(path))
    assert trust(admin, args, build_record(args)) == {"result": "created", "trusted_issuer": record}
    args = _args("add", K8S, "--jwks-uri", "https://oidc.k8s.example/openid/v1/jwks", "--map",
                 "payments-api:sub=system:serviceaccount:payments:api")
    assert trust(admin, args, build_record(args))["result"] == "created"
    table = trust(admin, _args("list"), None)
    assert table.splitlines() == [
        "issuer                                       keys       audience      rules  clients",
        "https://oidc.k8s.example                     jwks_uri   (the broker)  1      payments-api",
        "https://token.actions.githubusercontent.com  discovery  (the broker)  1      payments-api",
    ]
    assert [r["issuer"] for r in trust(admin, _args("list", "--json"), None)] == [K8S, GITHUB]
    assert trust(admin, _args("show", GITHUB), None) == record
    assert trust(admin, _args("remove", GITHUB), None) == {"issuer": GITHUB, "removed": True}
    with pytest.raises(AdminError) as info:
        trust(admin, _args("show", GITHUB), None)
    assert str(info.value) == ("not_found: No such trusted issuer. (HTTP 404): `broker_admin.py trust list` shows "
                               "the trusted issuers: give the identifier exactly")


def test_a_refused_record_says_why(admin: BrokerAdmin) -> None:
    args = _args("add", K8S, "--map", "payment-api:sub=system:serviceaccount:payments:api")
    with pytest.raises(AdminError) as info:
        trust(admin, args, build_record(args))
    assert str(info.value) == ("invalid_client_metadata: mapping rule client_id 'payment-api' is not registered: "
                               "register the client first (`broker_admin.py register`), then map tokens to it "
                               "(HTTP 400): fix the input named above and retry")


def test_export_and_import_carry_the_trusted_issuers(admin: BrokerAdmin, tmp_path: Path) -> None:
    from app.client.admin_backup import export_document, import_file, write_export

    assert "trusted_issuers" not in export_document(admin, "broker-admin")  # none: the document as before
    record = {"issuer": GITHUB, "single_use": True,
              "rules": [{"client_id": "payments-api", "claims": {"repository": "octo/app"}}]}
    admin.call("PUT", "/admin/trusted-issuers", record)
    document = export_document(admin, "broker-admin")
    assert document["trusted_issuers"] == [record]
    path = tmp_path / "export.json"
    write_export(path, document)
    admin.call("DELETE", "/admin/trusted-issuers?issuer=" + GITHUB)
    lines: list[str] = []
    assert import_file(admin, path, admin_client_id="broker-admin", force=False, emit=lines.append) == 0
    assert lines == ["skipped payments-api: unchanged (version 1)", f"created trusted issuer {GITHUB}",
                     "import: 1 created, 0 updated, 1 skipped"]
    lines.clear()
    assert import_file(admin, path, admin_client_id="broker-admin", force=False, emit=lines.append) == 0
    assert lines[1:] == [f"skipped trusted issuer {GITHUB}: unchanged", "import: 0 created, 0 updated, 2 skipped"]
    document["trusted_issuers"][0]["rules"][0]["client_id"] = "nobody"
    write_export(path, document)
    lines.clear()
    assert import_file(admin, path, admin_client_id="broker-admin", force=False, emit=lines.append) == 1
    assert lines[1] == (f"skipped trusted issuer {GITHUB}: mapping rule client_id 'nobody' is not registered: "
                        "register the client first (`broker_admin.py register`), then map tokens to it")
