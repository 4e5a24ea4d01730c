"""Settings in one place: app/config.py documents every field (``SETTING_DOCS``), docs/settings.md is
generated from it, ``token-broker settings`` prints the effective values with secrets redacted, and
a ``BROKER_*`` variable nothing reads stops the start."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from app.__main__ import main
from app.config import OTHER_VARIABLES, SETTING_DOCS, ConfigError, Settings, redact_url, unknown_settings, variable
from scripts.gen_settings_doc import COMMAND, DOC, render
from tests.conftest import ROOT


def test_docs_settings_md_is_generated_from_config() -> None:
    assert DOC.read_text() == render(), f"docs/settings.md is out of date: run {COMMAND}"


def test_every_setting_is_documented_in_field_order() -> None:
    fields = [f.name for f in msgspec.structs.fields(Settings)]
    assert list(SETTING_DOCS) == fields, "app/config.py SETTING_DOCS must have one entry per Settings field, in order"
    assert all(doc.meaning for doc in SETTING_DOCS.values())


def test_every_broker_variable_read_anywhere_is_known() -> None:
    """A variable some command reads (``os.environ.get("BROKER_...")``) is never called unknown."""
    reads = set()
    for path in [*ROOT.joinpath("app").rglob("*.py"), *ROOT.joinpath("scripts").rglob("*.py")]:
        reads |= set(re.findall(r"""environ(?:\.get\(|\[)\s*["'](BROKER_[A-Z0-9_]+)["']""", path.read_text()))
    assert reads, "no os.environ reads found: did the pattern break?"
    assert unknown_settings(dict.fromkeys(reads, "x")) == []
    assert {"BROKER_URL", "BROKER_ADMIN_KEY"} <= set(OTHER_VARIABLES)


@pytest.mark.parametrize(("env", "message"), [
    pytest.param({"BROKER_TOKN_LIFETIME": "600"}, "unknown setting BROKER_TOKN_LIFETIME; did you mean BROKER_TOKEN_LIFETIME?",
                 id="misspelt"),
    pytest.param({"BROKER_MANAGMENT_PORT": "9"}, "unknown setting BROKER_MANAGMENT_PORT; did you mean BROKER_MANAGEMENT_PORT?",
                 id="misspelt-2"),
    pytest.param({"BROKER_COLOUR": "blue"}, "unknown setting BROKER_COLOUR; remove it, or set BROKER_ALLOW_UNKNOWN_SETTINGS=true "
                 "(the settings: token-broker settings, docs/settings.md)", id="nothing-close"),
    pytest.param({"BROKER_TOKN_LIFETIME": "1", "BROKER_COLOUR": "blue"}, "unknown setting BROKER_COLOUR; remove it, or set "
                 "BROKER_ALLOW_UNKNOWN_SETTINGS=true (the settings: token-broker settings, docs/settings.md) (and 1 more: "
                 "BROKER_TOKN_LIFETIME)", id="two"),
])
def test_an_unknown_variable_stops_the_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    assert str(raised.value) == message
    assert Settings.from_env({**env, "BROKER_ALLOW_UNKNOWN_SETTINGS": "true"}).allow_unknown_settings is True


def test_known_variables_are_not_unknown() -> None:
    env = {variable(f.name): "" for f in msgspec.structs.fields(Settings)} | {"BROKER_URL": "x", "BROKER_ADMIN_KEY": "y"}
    assert unknown_settings({**env, "OTHER": "1", "broker_lowercase": "1"}) == []


@pytest.mark.parametrize(("url", "shown"), [
    pytest.param("redis://:s3cret@redis.internal:6379/0", "redis://:***@redis.internal:6379/0", id="password"),
    pytest.param("rediss://broker:s3cret@redis.internal:6380/2", "rediss://broker:***@redis.internal:6380/2", id="user-password"),
    pytest.param("redis://redis.internal:6379/0?password=s3cret&db=1", "redis://redis.internal:6379/0?password=***&db=1",
                 id="password-in-query"),
    pytest.param("redis://redis.internal:6379/0", "redis://redis.internal:6379/0", id="no-password"),
])
def test_redis_url_passwords_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def _settings_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    for name in [n for n in os.environ if n.startswith("BROKER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BROKER_REDIS_URL", "redis://broker:s3cret@redis.internal:6379/0")
    monkeypatch.setenv("BROKER_ADMIN_JWKS", json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "pub", "d": "PRIVATE",
                                                                  "alg": "Ed25519"}]}))
    monkeypatch.setenv("BROKER_TOKEN_LIFETIME", "600")
    assert main(["settings", *args]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "s3cret" not in out and "PRIVATE" not in out
    return out


def test_settings_command_prints_the_effective_settings_redacted(capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _settings_command(capsys, monkeypatch).splitlines()
    assert len(lines) == len(SETTING_DOCS)
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines}
    assert rows["BROKER_REDIS_URL"] == ["env", "redis://broker:***@redis.internal:6379/0"]
    assert rows["BROKER_TOKEN_LIFETIME"] == ["env", "600"]
    assert rows["BROKER_LEEWAY"] == ["default", "10"]
    assert rows["BROKER_CLIENTS_FILE"] == ["default", "(unset)"]
    assert rows["BROKER_ADMIN_JWKS"] == ["env", '{"keys":[{"kty":"OKP","crv":"Ed25519","x":"pub","d":"***","alg":"Ed25519"}]}']


def test_settings_command_json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    data = json.loads(_settings_command(capsys, monkeypatch, "--json"))
    assert list(data) == [variable(name) for name in SETTING_DOCS]
    assert data["BROKER_REDIS_URL"] == {"value": "redis://broker:***@redis.internal:6379/0", "source": "env"}
    assert data["BROKER_ASSERTION_ALGS"] == {"value": ["ES256", "ES384", "PS256", "RS256", "Ed25519"], "source": "default"}
    assert data["BROKER_KEYS_DIR"] == {"value": "keys", "source": "default"}
    assert data["BROKER_TRACING"] == {"value": "off", "source": "default"}


def test_serve_help_points_at_the_settings_and_lists_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "`token-broker settings` prints the effective ones" in out and "docs/settings.md" in out
    assert re.search(r"^  2  configuration: ", out, re.M) and re.search(r"^  1  environment: ", out, re.M)


def test_gen_settings_doc_check_mode(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "scripts/gen_settings_doc.py", "--check"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert (out.returncode, out.stderr) == (0, "")


def test_settings_into_a_closed_pipe_is_quiet() -> None:
    """`token-broker settings | head -1`: the reader went away; no traceback, exit 0."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, deterministically
    try:
        done = subprocess.run([sys.executable, "-m", "app", "settings"], cwd=ROOT, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60,
                              env={k: v for k, v in os.environ.items() if not k.startswith("BROKER_")})
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize("jwks", [
    pytest.param([{"kty": "OKP", "crv": "Ed25519", "x": "pub", "d": "PRIVATE"}], id="bare-array"),
    pytest.param({"keys": [[{"kty": "OKP", "crv": "Ed25519", "x": "pub", "d": "PRIVATE"}]]}, id="nested-array"),
    pytest.param({"keys": {"a": {"kty": "RSA", "n": "pub", "e": "AQAB", "p": "PRIVATE", "qi": "PRIVATE"}}}, id="object-of-keys"),
    pytest.param({"kty": "oct", "k": "PRIVATE"}, id="symmetric"),
])
def test_private_jwk_members_are_redacted_whatever_the_shape(capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch, jwks: Any) -> None:
    """The shapes the start refuses are the ones an operator pastes `settings` output about."""
    for name in [n for n in os.environ if n.startswith("BROKER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BROKER_ADMIN_JWKS", json.dumps(jwks))
    monkeypatch.setenv("BROKER_REDIS_SENTINELS", "sentinel-a:26379,user:s3cretpw@sentinel-b:26379")
    monkeypatch.setenv("BROKER_REDIS_SENTINEL_MASTER", "mymaster")
    assert main(["settings", "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "PRIVATE" not in out and "s3cretpw" not in out
    data = json.loads(out)
    assert data["BROKER_REDIS_SENTINELS"]["value"] == ["sentinel-a:26379", "***@sentinel-b:26379"]
