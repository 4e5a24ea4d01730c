"""Signing-key rotation (stage → promote → retire-expired) and the live reload in each replica."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.keystore import load_signing_keys, signing_dir
from app.oauth.access_token import verification_keys_from_jwks, verify_access_token
from app.service import signing_keys
from app.service.signing_keys import RotationError
from tests.conftest import ROOT, Broker
from tests.helpers import ISS, RS1, TestClient, decode_unverified

NOW = 1_800_000_000


def _states(keys_dir: Path) -> dict[str, str]:
    return {k.kid: k.state for k in load_signing_keys(keys_dir)}


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    from app.keystore import ensure_signing_keys

    ensure_signing_keys(tmp_path / "keys", "ES256")
    return tmp_path / "keys"


def test_full_rotation_cycle(keys_dir: Path) -> None:
    (old,) = _states(keys_dir)
    staged = signing_keys.stage(keys_dir, "ES256", now=NOW)
    assert _states(keys_dir) == {old: "active", staged.kid: "next"}
    active, retired = signing_keys.promote(keys_dir, now=NOW + 302)
    assert (active.kid, retired) == (staged.kid, [old])
    assert _states(keys_dir) == {old: "retired", staged.kid: "active"}
    assert {k.kid: k.retired_at for k in load_signing_keys(keys_dir)}[old] == NOW + 302
    # Not before every token the old key signed has expired (retired_at + lifetime + skew).
    assert signing_keys.retire_expired(keys_dir, max_token_lifetime=900, skew=40, now=NOW + 302 + 940) == []
    assert signing_keys.retire_expired(keys_dir, max_token_lifetime=900, skew=40, now=NOW + 302 + 941) == [old]
    assert _states(keys_dir) == {staged.kid: "active"}


@pytest.mark.parametrize(
    ("setup", "step", "message"),
    [
        ("staged", lambda d: signing_keys.stage(d, "ES256", now=NOW + 1), "a next key is already staged"),
        ("none", lambda d: signing_keys.promote(d, now=NOW + 999), "expected exactly one next key, found 0"),
        ("staged", lambda d: signing_keys.promote(d, now=NOW + 60), "has been published for 60 s"),
    ],
    ids=["second-stage", "promote-without-stage", "promote-before-jwks-cache-lifetime"],
)
def test_refused_steps_change_nothing(keys_dir: Path, setup: str, step, message: str) -> None:
    if setup == "staged":
        signing_keys.stage(keys_dir, "ES256", now=NOW)
    before = _states(keys_dir)
    with pytest.raises(RotationError, match=message):
        step(keys_dir)
    assert _states(keys_dir) == before


def test_force_promotes_early(keys_dir: Path) -> None:
    staged = signing_keys.stage(keys_dir, "ES256", now=NOW)
    active, _ = signing_keys.promote(keys_dir, now=NOW + 1, force=True)
    assert active.kid == staged.kid


def test_replica_reloads_and_signs_with_the_promoted_key(broker: Broker, c1: TestClient) -> None:
    reloader = broker.app.state.key_reloader
    old_kid = broker.app.state.signer().kid
    staged = signing_keys.stage(broker.settings.keys_dir, "ES256")
    assert reloader.reload_if_changed() is True
    jwks = broker.http.get("/jwks.json").json()
    assert sorted(k["kid"] for k in jwks["keys"]) == sorted([old_kid, staged.kid])
    assert broker.app.state.signer().kid == old_kid  # published, not signing

    token_before = broker.get_token(c1).json()["access_token"]
    signing_keys.promote(broker.settings.keys_dir, force=True)
    assert reloader.reload_if_changed() is True
    assert reloader.reload_if_changed() is False  # nothing changed since
    token_after = broker.get_token(c1).json()["access_token"]
    assert decode_unverified(token_before)[0]["kid"] == old_kid
    assert decode_unverified(token_after)[0]["kid"] == staged.kid
    keys = verification_keys_from_jwks(broker.http.get("/jwks.json").json())
    for token in (token_before, token_after):
        assert verify_access_token(token, keys, issuer=ISS, audience=RS1, now=broker.clock.now)["sub"] == "c1"
    metrics = broker.management.get("/metrics").text
    assert 'broker_signing_keys{state="retired"} 1' in metrics
    assert f'broker_signing_key_info{{kid="{staged.kid}",state="active"}} 1' in metrics
    assert any(e["event"] == "signing_keys.reloaded" and e["signing_kid"] == staged.kid for e in broker.logs())


@pytest.mark.parametrize(
    "damage",
    ["half-written", "no-active-key"],
)
def test_a_bad_folder_keeps_the_previous_keys(broker: Broker, c1: TestClient, damage: str) -> None:
    reloader = broker.app.state.key_reloader
    kid = broker.app.state.signer().kid
    folder = signing_dir(broker.settings.keys_dir)
    if damage == "half-written":
        (folder / "partial.json").write_text('{"kid": "x", "alg"')
    else:
        data = json.loads((folder / f"{kid}.json").read_text())
        data["state"] = "retired"
        (folder / f"{kid}.json").write_text(json.dumps(data))
    assert reloader.reload_if_changed() is False
    assert reloader.reload_if_changed() is False  # retried on every poll, still refused
    assert broker.app.state.signer().kid == kid
    assert broker.get_token(c1).status_code == 200
    assert any(e["event"] == "signing_keys.reload_failed" for e in broker.logs())
    assert "broker_signing_key_reload_errors_total 2" in broker.management.get("/metrics").text
    for e in broker.logs():
        assert '"d"' not in json.dumps(e)  # never a private key component in a log line


def test_script_commands(tmp_path: Path) -> None:
    env = {**os.environ, "BROKER_KEYS_DIR": str(tmp_path / "keys")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "scripts/rotate_signing_key.py", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    assert subprocess.run([sys.executable, "-m", "app", "keys", "init"], cwd=ROOT, env=env, timeout=60).returncode == 0
    assert [k["state"] for k in json.loads(run("status").stdout)] == ["active"]
    staged = json.loads(run("stage").stdout)["staged"]
    refused = run("promote")
    assert refused.returncode == 1 and "wait" in refused.stderr and refused.stdout == ""
    assert json.loads(run("promote", "--force").stdout)["active"] == staged
    assert json.loads(run("retire-expired").stdout) == {"deleted": []}
    assert run("retire-expired", "--max-token-lifetime", "10").returncode == 2
    assert sorted(k["state"] for k in json.loads(run("status").stdout)) == ["active", "retired"]
    for path in signing_dir(tmp_path / "keys").iterdir():
        assert path.stat().st_mode & 0o077 == 0


def test_metadata_follows_a_rotation_to_another_algorithm(broker):
    """The RFC 8414 document lists the published keys' algorithms as they are after a reload."""
    from app.service import signing_keys

    before = broker.http.get("/.well-known/oauth-authorization-server").json()
    assert before["access_token_signing_alg_values_supported"] == ["ES256"]
    signing_keys.stage(broker.settings.keys_dir, "Ed25519")
    assert broker.app.state.key_reloader.reload_if_changed()
    after = broker.http.get("/.well-known/oauth-authorization-server").json()
    assert after["access_token_signing_alg_values_supported"] == ["ES256", "Ed25519"]
