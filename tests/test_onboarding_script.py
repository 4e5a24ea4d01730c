"""``scripts/broker_admin.py`` run as a new user would: a real subprocess against real broker
processes (one embedded, or two on one real Redis)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from app.client.admin import load_private_jwk
from app.client.admin_cli import build_parser
from tests.conftest import ROOT
from tests.helpers import ISS, RS1
from tests.test_registry_replicas import key_file_token

pytestmark = pytest.mark.live
SCRIPT = str(ROOT / "scripts" / "broker_admin.py")
COMMANDS = ["keygen", "register", "list", "show", "update", "add-key", "remove-key", "disable", "enable", "delete"]


def run(broker_url: str, admin_key: Path, keys_dir: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    return subprocess.run(
        [sys.executable, SCRIPT, "--broker", broker_url, "--admin-key", str(admin_key), "--keys-dir", str(keys_dir), *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=cwd or ROOT,
    )


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def fails(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, result.stdout
    assert result.stdout == ""
    assert message in result.stderr, result.stderr


@pytest.fixture
def embedded(spawn_broker, tmp_path):
    bp = spawn_broker()
    return bp, spawn_broker.keys_dir / "admin.jwk", tmp_path / "client-keys"


def test_help_explains_every_command():
    parser = build_parser()
    text = parser.format_help()
    for cmd in COMMANDS:
        assert cmd in text
    result = subprocess.run([sys.executable, SCRIPT, "register", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for option in ("--scope", "--default-scope", "--audience", "--default-audience", "--token-lifetime",
                   "--public-key", "--jwks-uri", "--alg", "--broker", "--admin-key"):
        assert option in result.stdout


@pytest.mark.redis
def test_onboard_with_the_script_through_one_replica_token_from_the_other(real_redis, spawn_broker, tmp_path):
    a = spawn_broker(redis_url=real_redis.url)
    b = spawn_broker(redis_url=real_redis.url)
    keys_dir = tmp_path / "client-keys"
    out = ok(run(a.url, spawn_broker.keys_dir / "admin.jwk", keys_dir, "register", "billing-api",
                 "--scope", "invoices:read invoices:write", "--default-scope", "invoices:read", "--audience", RS1))
    path = Path(out["private_key_path"])
    assert path == keys_dir / "billing-api.jwk"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key, alg, kid = load_private_jwk(path)
    assert (out["client_id"], out["kid"], out["alg"]) == ("billing-api", key.thumbprint(), "ES256") and kid == out["kid"]
    assert (out["issuer"], out["aud"], out["token_endpoint"]) == (ISS, ISS, ISS + "/token")
    assert '"d"' not in json.dumps(out)
    r = key_file_token(b.url, str(path), "billing-api")
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "invoices:read"
    # Only the public key reached the broker.
    shown = ok(run(b.url, spawn_broker.keys_dir / "admin.jwk", keys_dir, "show", "billing-api"))
    assert [set(k) & {"d", "p", "q"} for k in shown["jwks"]["keys"]] == [set()]


@pytest.mark.parametrize("alg", ["Ed25519", "PS256", "RS256"])
def test_other_algorithms_on_request(embedded, alg):
    bp, admin_key, keys_dir = embedded
    out = ok(run(bp.url, admin_key, keys_dir, "register", "svc-" + alg.lower(), "--alg", alg,
                 "--scope", "read", "--default-scope", "read", "--audience", RS1))
    assert out["alg"] == alg
    assert key_file_token(bp.url, out["private_key_path"], out["client_id"]).status_code == 200


def test_lifecycle_list_show_rotate_disable_enable_delete(embedded):
    bp, admin_key, keys_dir = embedded
    base = ("--scope", "read", "--default-scope", "read", "--audience", RS1)
    first = ok(run(bp.url, admin_key, keys_dir, "register", "svc", *base))
    # Refuses to overwrite the private key, and registers nothing.
    fails(run(bp.url, admin_key, keys_dir, "register", "svc", *base), "client_id 'svc' is already registered")
    assert [c["client_id"] for c in ok(run(bp.url, admin_key, keys_dir, "list", "--json"))] == ["broker-admin", "svc"]

    second = ok(run(bp.url, admin_key, keys_dir, "add-key", "svc"))
    assert stat.S_IMODE(Path(second["private_key_path"]).stat().st_mode) == 0o600
    assert key_file_token(bp.url, second["private_key_path"], "svc").status_code == 200
    removed = ok(run(bp.url, admin_key, keys_dir, "remove-key", "svc", "--kid", first["kid"]))
    assert removed == {"client_id": "svc", "removed": first["kid"], "kids": [second["kid"]]}
    assert key_file_token(bp.url, first["private_key_path"], "svc").status_code == 401

    updated = ok(run(bp.url, admin_key, keys_dir, "update", "svc", "--scope", "read write", "--token-lifetime", "120"))
    assert (updated["scopes"], updated["token_lifetime"]) == (["read", "write"], 120)
    assert ok(run(bp.url, admin_key, keys_dir, "disable", "svc")) == {"client_id": "svc", "enabled": False}
    assert key_file_token(bp.url, second["private_key_path"], "svc").status_code == 401
    assert ok(run(bp.url, admin_key, keys_dir, "enable", "svc")) == {"client_id": "svc", "enabled": True}
    assert key_file_token(bp.url, second["private_key_path"], "svc").status_code == 200

    assert ok(run(bp.url, admin_key, keys_dir, "delete", "svc")) == {"client_id": "svc", "deleted": True}
    fails(run(bp.url, admin_key, keys_dir, "show", "svc"), "no such client or key: run `list`")


def test_bring_your_own_pem_and_jwks_uri(embedded, tmp_path):
    bp, admin_key, keys_dir = embedded
    private = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "mine.pub.pem"
    pem.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    out = ok(run(bp.url, admin_key, keys_dir, "register", "byo", "--public-key", str(pem), "--scope", "read",
                 "--audience", RS1))
    assert out["private_key_path"] is None and out["alg"] == "ES256"
    assert not keys_dir.exists() or not list(keys_dir.iterdir())  # nothing generated

    secret = tmp_path / "mine.pem"
    secret.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    fails(run(bp.url, admin_key, keys_dir, "register", "byo2", "--public-key", str(secret), "--scope", "read",
              "--audience", RS1),
          "holds a PRIVATE key: give the public key only")

    out = ok(run(bp.url, admin_key, keys_dir, "register", "remote", "--jwks-uri", "https://keys.example.com/jwks.json",
                 "--scope", "read", "--audience", RS1))
    assert out["jwks_uri"] == "https://keys.example.com/jwks.json" and out["private_key_path"] is None


def test_errors_say_what_to_do(embedded, tmp_path):
    bp, admin_key, keys_dir = embedded
    fails(run("http://127.0.0.1:9", admin_key, keys_dir, "list"), "cannot reach the broker at http://127.0.0.1:9")
    fails(run(bp.url, tmp_path / "missing.jwk", keys_dir, "list"), "admin key")
    wrong = tmp_path / "wrong.jwk"
    from joserfc.jwk import ECKey

    wrong.write_text(json.dumps({**ECKey.generate_key("P-256").as_dict(private=True), "alg": "ES256"}))
    fails(run(bp.url, wrong, keys_dir, "list"), "the broker refused the admin key")
    fails(run(bp.url, admin_key, keys_dir, "register", "user:alice", "--scope", "read", "--audience", RS1),
          "client_id starts with a prefix reserved for user subjects")
    assert not (keys_dir / "user:alice.jwk").exists()  # a refused registration leaves no key behind
    fails(run(bp.url, admin_key, keys_dir, "register", "svc", "--scope", "read", "--audience", "not a uri"),
          "audience")
    result = run(bp.url, admin_key, keys_dir, "register", "svc")
    assert result.returncode == 2 and "--audience" in result.stderr


# -- a new operator's first runs: each row was met by a new user ------------------------------------


def refused(result: subprocess.CompletedProcess[str], status: int, line: str) -> None:
    """The script printed exactly one line on stderr, nothing on stdout, and exited with ``status``."""
    assert (result.returncode, result.stdout, result.stderr) == (status, "", line + "\n")


def public_pem(private: Any) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_jwk_without_alg(private: Any) -> dict[str, Any]:
    """The public JWK of a ``cryptography`` key as a tool other than ours would write it: no alg, no kid."""
    from joserfc.jwk import JWKRegistry

    kty = "EC" if isinstance(private, ec.EllipticCurvePrivateKey) else "RSA" if isinstance(private, rsa.RSAPrivateKey) else "OKP"
    with warnings.catch_warnings():  # joserfc warns about the 1024-bit key a row hands to the script
        warnings.simplefilter("ignore")
        jwk = JWKRegistry.import_key(public_pem(private), kty).as_dict(private=False)
    jwk.pop("alg", None)
    jwk.pop("kid", None)
    return jwk


KEY_KINDS = {
    "ec-p256": (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
    "ec-p384": (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
    "ed25519": (lambda: ed25519.Ed25519PrivateKey.generate(), "Ed25519"),
    "rsa-2048": (lambda: rsa.generate_private_key(65537, 2048), "PS256"),
}
#: An RSA key given as PEM binds RS256, the alg most libraries sign with (``app.client.admin_keys``).
PEM_ALG = {"rsa-2048": "RS256"}


@pytest.mark.parametrize("kind", list(KEY_KINDS))
def test_a_public_key_without_alg_gets_the_alg_of_its_type_as_jwk_and_as_pem(embedded, tmp_path, kind):
    bp, admin_key, keys_dir = embedded
    make, expected = KEY_KINDS[kind]
    private = make()
    jwk_file, pem_file = tmp_path / "pub.jwk", tmp_path / "pub.pem"
    jwk_file.write_text(json.dumps(public_jwk_without_alg(private)))
    pem_file.write_bytes(public_pem(private))
    from_jwk = ok(run(bp.url, admin_key, keys_dir, "register", "svc-jwk", "--public-key", str(jwk_file),
                      "--scope", "read", "--audience", RS1))
    # One public key belongs to one client: free it before registering it again from the PEM.
    assert run(bp.url, admin_key, keys_dir, "delete", "svc-jwk").returncode == 0
    from_pem = ok(run(bp.url, admin_key, keys_dir, "register", "svc-pem", "--public-key", str(pem_file),
                      "--scope", "read", "--audience", RS1))
    assert (from_jwk["alg"], from_pem["alg"]) == (expected, PEM_ALG.get(kind, expected))
    assert from_jwk["kid"] == from_pem["kid"]  # the same key, the same RFC 7638 thumbprint


def _x25519_jwk(tmp_path: Path) -> str:
    from joserfc.jwk import OKPKey

    path = tmp_path / "x25519.jwk"
    path.write_text(json.dumps(OKPKey.generate_key("X25519").as_dict(private=False)))
    return str(path)


def _rsa_1024(tmp_path: Path, as_jwk: bool) -> str:
    private = rsa.generate_private_key(65537, 1024)
    path = tmp_path / ("rsa1024.jwk" if as_jwk else "rsa1024.pem")
    if as_jwk:
        path.write_text(json.dumps(public_jwk_without_alg(private)))
    else:
        path.write_bytes(public_pem(private))
    return str(path)


REGISTER = ("register", "svc", "--audience", RS1)
RSA_1024 = ("broker_admin.py register: error: invalid_client_metadata: RSA keys must be 2048-4096 bits (got 1024) "
            "(HTTP 400): fix the input named above and retry")
FIRST_RUN_MISTAKES = [
    pytest.param(lambda d: ("register", "svc", "--scope", "orders:read,orders:write", "--audience", RS1), 2,
                 "broker_admin.py register: error: --scope 'orders:read,orders:write': scopes are separated by spaces, "
                 "not commas: --scope 'orders:read orders:write'", id="scope-with-commas"),
    pytest.param(lambda d: (*REGISTER, "--scope", "read write", "--default-scope", "read,write"), 2,
                 "broker_admin.py register: error: --default-scope 'read,write': scopes are separated by spaces, "
                 "not commas: --default-scope 'read write'", id="default-scope-with-commas"),
    pytest.param(lambda d: ("update", "broker-admin", "--scope", "a, b"), 2,
                 "broker_admin.py update: error: --scope 'a, b': scopes are separated by spaces, not commas: "
                 "--scope 'a b'", id="update-scope-with-commas"),
    pytest.param(lambda d: REGISTER, 2,
                 "broker_admin.py register: error: register needs --scope: a client with no allowed scopes can never "
                 "get a token (e.g. --scope 'orders:read orders:write')", id="register-without-scope"),
    pytest.param(lambda d: ("register", "svc", "--scope", "read"), 2,
                 "broker_admin.py register: error: the following arguments are required: --audience "
                 "(see broker_admin.py register --help)", id="argparse-error-one-line"),
    pytest.param(lambda d: ("--broker", "127.0.0.1:8000", "list"), 2,
                 "broker_admin.py list: error: --broker '127.0.0.1:8000' is not an http:// or https:// URL: "
                 "give the scheme too, e.g. http://127.0.0.1:8000", id="broker-url-without-scheme"),
    pytest.param(lambda d: (*REGISTER, "--scope", "read", "--public-key", _x25519_jwk(d)), 2,
                 "broker_admin.py register: error: {x25519}: the key names no alg and its type (OKP X25519) implies "
                 "none: add --alg (ES256, ES384, PS256, RS256, Ed25519), or use an EC P-256/P-384, Ed25519 or RSA key",
                 id="jwk-without-alg-of-no-known-type"),
    pytest.param(lambda d: (*REGISTER, "--scope", "read", "--public-key", _rsa_1024(d, as_jwk=False)), 1, RSA_1024,
                 id="rsa-1024-pem-no-python-warning"),
    pytest.param(lambda d: (*REGISTER, "--scope", "read", "--public-key", _rsa_1024(d, as_jwk=True)), 1, RSA_1024,
                 id="rsa-1024-jwk-no-python-warning"),
]


@pytest.mark.parametrize(("args", "status", "line"), FIRST_RUN_MISTAKES)
def test_first_run_mistakes_get_one_line_saying_what_to_do(embedded, tmp_path, args, status, line):
    bp, admin_key, keys_dir = embedded
    argv = args(tmp_path)
    # The broker URL given last wins: the row's own --broker, if any, is the one used.
    refused(run(bp.url, admin_key, keys_dir, *argv), status, line.format(x25519=tmp_path / "x25519.jwk"))
    assert [c["client_id"] for c in ok(run(bp.url, admin_key, keys_dir, "list", "--json"))] == ["broker-admin"]
    assert not keys_dir.exists() or not list(keys_dir.iterdir())  # and no key file left behind


def test_register_asks_the_broker_first_and_says_what_to_do_with_a_leftover_key_file(embedded):
    bp, admin_key, keys_dir = embedded
    base = ("--scope", "read", "--default-scope", "read", "--audience", RS1)
    first = ok(run(bp.url, admin_key, keys_dir, "register", "svc", *base))
    path = keys_dir / "svc.jwk"
    kept = path.read_bytes()
    # Taken: the broker says so, whatever the local folder holds.
    refused(run(bp.url, admin_key, keys_dir, "register", "svc", *base), 1,
            "broker_admin.py register: error: client_id 'svc' is already registered: pick another name, or inspect "
            "it with `show svc`")
    assert path.read_bytes() == kept
    # Deleted at the broker, key file left here: one line on what to do with it.
    ok(run(bp.url, admin_key, keys_dir, "delete", "svc"))
    refused(run(bp.url, admin_key, keys_dir, "register", "svc", *base), 1,
            f"broker_admin.py register: error: {path} exists but the broker has no client 'svc' (left by a deleted "
            "client?): add --reuse-key to register that key again, or remove the file and run again")
    again = ok(run(bp.url, admin_key, keys_dir, "register", "svc", "--reuse-key", *base))
    assert (again["kid"], again["alg"], again["private_key_path"]) == (first["kid"], "ES256", str(path))
    assert path.read_bytes() == kept
    assert key_file_token(bp.url, str(path), "svc").status_code == 200
    refused(run(bp.url, admin_key, keys_dir, "register", "other", "--reuse-key", *base), 1,
            f"broker_admin.py register: error: --reuse-key: {keys_dir / 'other.jwk'} does not exist (drop --reuse-key "
            "to generate a new key pair)")
    # A refused registration keeps the reused file: it was not this run's to remove.
    ok(run(bp.url, admin_key, keys_dir, "delete", "svc"))
    fails(run(bp.url, admin_key, keys_dir, "register", "svc", "--reuse-key", "--scope", "read", "--audience", "x"),
          "broker_admin.py register: error: invalid_client_metadata: audience 'x' must be an absolute URI")
    assert path.read_bytes() == kept


def test_list_is_a_table_by_default_and_json_with_every_record_on_request(embedded):
    bp, admin_key, keys_dir = embedded
    svc = ok(run(bp.url, admin_key, keys_dir, "register", "svc", "--scope", "read write", "--audience", RS1))
    ok(run(bp.url, admin_key, keys_dir, "disable", "svc"))
    records = ok(run(bp.url, admin_key, keys_dir, "list", "--json"))
    assert [(r["client_id"], r["enabled"]) for r in records] == [("broker-admin", True), ("svc", False)]
    admin, _ = records
    result = run(bp.url, admin_key, keys_dir, "list")
    assert (result.returncode, result.stderr) == (0, "")

    def iso(t: int) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    assert [line.split() for line in result.stdout.splitlines()] == [
        ["client_id", "enabled", "scopes", "kids", "created"],
        ["broker-admin", "true", "broker:admin", admin["jwks"]["keys"][0]["kid"], iso(admin["created_at"])],
        ["svc", "false", "read", "write", svc["kid"], iso(records[1]["created_at"])],
    ]
    # Columns line up: every row starts its columns where the header does.
    header, *rows = result.stdout.splitlines()
    assert all(row.index(" true " if "true" in row else " false") + 1 == header.index("enabled") for row in rows)


def test_keygen_on_the_service_machine_then_register_only_the_public_key(embedded, tmp_path):
    bp, admin_key, keys_dir = embedded
    service = tmp_path / "service-machine"
    # keygen needs neither a broker nor the admin key: the service team runs it where the service runs.
    gen = run("http://127.0.0.1:9", tmp_path / "no-admin-key.jwk", keys_dir, "keygen", "--out", str(service / "svc.jwk"))
    public = ok(gen)
    private_file = service / "svc.jwk"
    assert stat.S_IMODE(private_file.stat().st_mode) == 0o600
    assert set(public) == {"kty", "crv", "x", "y", "kid", "alg", "use"} and public["alg"] == "ES256"
    key, alg, kid = load_private_jwk(private_file)
    assert (kid, alg) == (public["kid"], "ES256") and key.thumbprint() == kid
    refused(run(bp.url, admin_key, keys_dir, "keygen", "--out", str(private_file)), 1,
            f"broker_admin.py keygen: error: {private_file} already exists: refusing to overwrite a private key")

    # The operator gets the printed public JWK only.
    handed_over = tmp_path / "operator" / "svc.pub.jwk"
    handed_over.parent.mkdir()
    handed_over.write_text(gen.stdout)
    out = ok(run(bp.url, admin_key, keys_dir, "register", "svc", "--public-key", str(handed_over),
                 "--scope", "read", "--default-scope", "read", "--audience", RS1))
    assert (out["kid"], out["alg"], out["private_key_path"]) == (public["kid"], "ES256", None)
    assert not keys_dir.exists() or not list(keys_dir.iterdir())  # no private key on the operator's side
    assert key_file_token(bp.url, str(private_file), "svc").status_code == 200


def test_a_refused_admin_key_says_where_the_admin_key_comes_from(embedded, tmp_path):
    bp, _, keys_dir = embedded
    from joserfc.jwk import ECKey

    wrong = tmp_path / "wrong.jwk"
    wrong.write_text(json.dumps({**ECKey.generate_key("P-256").as_dict(private=True), "alg": "ES256"}))
    result = run(bp.url, wrong, keys_dir, "list")
    request_id = result.stderr.rsplit("`broker_admin.py why ", 1)[-1].rstrip("`\n")
    assert re.fullmatch(r"[0-9a-f]{24}", request_id), result.stderr
    refused(result, 1,
            "broker_admin.py list: error: the broker refused the admin key (invalid_client: Client authentication "
            "failed.): check that --admin-key is the admin private key whose public half the broker has "
            "(BROKER_ADMIN_JWKS, or keys/admin.jwk when that is unset) and that --admin-client-id names the "
            f"broker's admin client (BROKER_ADMIN_CLIENT_ID); the broker's log has the reason: `broker_admin.py why {request_id}`")


@pytest.mark.redis
def test_a_broker_that_cannot_reach_its_store_is_not_blamed_on_the_admin_key(real_redis, spawn_broker, tmp_path):
    bp = spawn_broker(redis_url=real_redis.url)
    admin_key, keys_dir = spawn_broker.keys_dir / "admin.jwk", tmp_path / "client-keys"
    assert ok(run(bp.url, admin_key, keys_dir, "show", "broker-admin"))["client_id"] == "broker-admin"
    real_redis.stop()  # the next test's real_redis starts it again
    refused(run(bp.url, admin_key, keys_dir, "list"), 1,
            "broker_admin.py list: error: the broker cannot reach its store or client registry: The service is "
            "temporarily unavailable; retry later. (HTTP 503 temporarily_unavailable): check its Redis (the "
            "broker's /readyz says what it misses) and retry")


@pytest.mark.parametrize("kid", ["-Ab3_x", "--dash-dash", "plain_Kid-9"], ids=["leading-dash", "two-dashes", "plain"])
def test_remove_key_takes_a_kid_that_begins_with_a_dash(kid: str) -> None:
    """A kid is a base64url thumbprint: one in 64 begins with ``-``, and ``--kid VALUE`` must take it
    (argparse alone refuses ``--kid -Ab3_x`` as a missing value)."""
    from app.client.admin_cli import kid_values_joined

    argv = ["remove-key", "svc", "--kid", kid]
    args = build_parser().parse_args(kid_values_joined(argv))
    assert (args.command, args.kid) == ("remove-key", kid)
    assert build_parser().parse_args(kid_values_joined(["remove-key", "svc", f"--kid={kid}"])).kid == kid
