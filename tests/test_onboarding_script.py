"""``scripts/broker_admin.py`` run as a new user would: a real subprocess against real broker
processes (one embedded, or two on one real Redis)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.client.admin import load_private_jwk
from app.client.admin_cli import build_parser
from tests.conftest import ROOT
from tests.helpers import ISS, RS1
from tests.test_registry_replicas import key_file_token

pytestmark = pytest.mark.live
SCRIPT = str(ROOT / "scripts" / "broker_admin.py")
COMMANDS = ["register", "list", "show", "update", "add-key", "remove-key", "disable", "enable", "delete"]


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
    fails(run(bp.url, admin_key, keys_dir, "register", "svc", *base), "already exists: refusing to overwrite a private key")
    assert [c["client_id"] for c in ok(run(bp.url, admin_key, keys_dir, "list"))] == ["broker-admin", "svc"]

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
    out = ok(run(bp.url, admin_key, keys_dir, "register", "byo", "--public-key", str(pem), "--audience", RS1))
    assert out["private_key_path"] is None and out["alg"] == "ES256"
    assert not keys_dir.exists() or not list(keys_dir.iterdir())  # nothing generated

    secret = tmp_path / "mine.pem"
    secret.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    fails(run(bp.url, admin_key, keys_dir, "register", "byo2", "--public-key", str(secret), "--audience", RS1),
          "holds a PRIVATE key: give the public key only")

    out = ok(run(bp.url, admin_key, keys_dir, "register", "remote", "--jwks-uri", "https://keys.example.com/jwks.json",
                 "--audience", RS1))
    assert out["jwks_uri"] == "https://keys.example.com/jwks.json" and out["private_key_path"] is None


def test_errors_say_what_to_do(embedded, tmp_path):
    bp, admin_key, keys_dir = embedded
    fails(run("http://127.0.0.1:9", admin_key, keys_dir, "list"), "cannot reach the broker at http://127.0.0.1:9")
    fails(run(bp.url, tmp_path / "missing.jwk", keys_dir, "list"), "admin key")
    wrong = tmp_path / "wrong.jwk"
    from joserfc.jwk import ECKey

    wrong.write_text(json.dumps({**ECKey.generate_key("P-256").as_dict(private=True), "alg": "ES256"}))
    fails(run(bp.url, wrong, keys_dir, "list"), "the broker refused the admin key")
    fails(run(bp.url, admin_key, keys_dir, "register", "user:alice", "--audience", RS1),
          "client_id starts with a prefix reserved for user subjects")
    assert not (keys_dir / "user:alice.jwk").exists()  # a refused registration leaves no key behind
    fails(run(bp.url, admin_key, keys_dir, "register", "svc", "--audience", "not a uri"), "audience")
    result = run(bp.url, admin_key, keys_dir, "register", "svc")
    assert result.returncode == 2 and "--audience" in result.stderr
