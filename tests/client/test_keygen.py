"""Keys made where they are used: ``token-broker-client keygen`` on the service's machine, and the
client library signing with a PEM private key the operator registered from its public PEM."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.client.conftest import LiveBroker
from tests.conftest import ROOT
from tests.helpers import RS1
from token_broker_client import BrokerClient, ClientKey
from token_broker_client.keygen import main as keygen

ADMIN = str(ROOT / "scripts" / "broker_admin.py")

KEYGEN_ALGS = {
    "es256": ("ES256", {"kty", "crv", "x", "y", "kid", "alg", "use"}),
    "ed25519": ("Ed25519", {"kty", "crv", "x", "kid", "alg", "use"}),
    "rs256": ("RS256", {"kty", "n", "e", "kid", "alg", "use"}),
}


@pytest.mark.parametrize("name", list(KEYGEN_ALGS))
def test_keygen_writes_the_private_key_0600_and_prints_the_public_key_and_the_register_command(tmp_path, capsys, name):
    alg, members = KEYGEN_ALGS[name]
    out, public_out = tmp_path / "svc.jwk", tmp_path / "svc.pub.jwk"
    assert keygen(["keygen", "--client-id", "svc", "--alg", alg, "--out", str(out), "--public-out", str(public_out),
                   "--scope", "orders:read", "--audience", RS1]) == 0
    printed = capsys.readouterr()
    public = json.loads(printed.out)
    assert set(public) == members and public["alg"] == alg
    assert json.loads(public_out.read_text()) == public
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = ClientKey(out)
    assert (key.alg, key.kid) == (alg, public["kid"]) and key.key.thumbprint() == public["kid"]
    command = (f".venv/bin/python scripts/broker_admin.py register svc --public-key {public_out} "
               f"--scope orders:read --audience {RS1}")
    assert f"\n  {command}\n" in printed.err


def test_keygen_defaults_to_files_named_after_the_client_in_the_current_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert keygen(["keygen", "--client-id", "billing-api"]) == 0
    public = json.loads(capsys.readouterr().out)
    assert public["alg"] == "ES256"
    assert stat.S_IMODE((tmp_path / "billing-api.jwk").stat().st_mode) == 0o600
    assert json.loads((tmp_path / "billing-api.pub.jwk").read_text()) == public


KEYGEN_REFUSALS = {
    "existing private key": (["--client-id", "svc", "--out", "{existing}"], 1,
                             "token-broker-client keygen: {existing} already exists: refusing to overwrite a private key "
                             "(give another --out)\n"),
    "bad client_id": (["--client-id", "../svc"], 2, "token-broker-client keygen: --client-id must be 1-128 characters of "
                      "A-Z a-z 0-9 . _ : - starting with a letter or digit\n"),
}


@pytest.mark.parametrize("name", list(KEYGEN_REFUSALS))
def test_keygen_refuses_with_one_line(tmp_path, capsys, monkeypatch, name):
    args, code, message = KEYGEN_REFUSALS[name]
    monkeypatch.chdir(tmp_path)
    existing = tmp_path / "svc.jwk"
    existing.write_text("keep me")
    assert keygen(["keygen", *[a.format(existing=existing) for a in args]]) == code
    printed = capsys.readouterr()
    assert (printed.out, printed.err) == ("", message.format(existing=existing))
    assert existing.read_text() == "keep me"


# -- PEM private keys: the kid and alg the broker computes for the registered public PEM ------------


def _pem(private: Any, fmt: serialization.PrivateFormat) -> bytes:
    return private.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


PKCS8, SEC1_OR_PKCS1 = serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL
#: (a new cryptography key, its PEM format, the alg the broker binds its public PEM to without --alg)
PEM_KEYS = {
    "ec-p256-pkcs8": (lambda: ec.generate_private_key(ec.SECP256R1()), PKCS8, "ES256"),
    "ec-p384-sec1": (lambda: ec.generate_private_key(ec.SECP384R1()), SEC1_OR_PKCS1, "ES384"),
    "ed25519-pkcs8": (ed25519.Ed25519PrivateKey.generate, PKCS8, "Ed25519"),
    "rsa-pkcs1": (lambda: rsa.generate_private_key(65537, 2048), SEC1_OR_PKCS1, "RS256"),
    "rsa-pkcs8": (lambda: rsa.generate_private_key(65537, 2048), PKCS8, "RS256"),
}


@pytest.mark.parametrize("kind", list(PEM_KEYS))
def test_a_pem_private_key_gets_the_kid_and_alg_the_broker_gives_its_public_pem(tmp_path, kind):
    make, fmt, alg = PEM_KEYS[kind]
    private = make()
    path = tmp_path / "svc.pem"
    path.write_bytes(_pem(private, fmt))
    from_file, from_object = ClientKey(path), ClientKey(private)
    assert (from_file.alg, from_object.alg) == (alg, alg)
    assert from_file.kid == from_object.kid == from_file.key.thumbprint()


PEM_REFUSALS = {
    "public key": (lambda p: p.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo),
                   "client key file {path} holds no PEM private key (a public key or certificate?): the client needs "
                   "the private key; the broker holds the public half"),
    "encrypted": (lambda p: p.private_bytes(serialization.Encoding.PEM, PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")),
                  "client key file {path} holds an encrypted PEM private key: give it unencrypted (mode 0600), or "
                  "decrypt it and pass the key object"),
    # PEM armour around "not a key" (no key material; the armour is assembled so no tracked file
    # looks like it holds a PEM private key).
    "garbage": (lambda p: b"-----BEGIN " + b"PRIVATE KEY-----\nbm90IGEga2V5\n-----END " + b"PRIVATE KEY-----\n",
                "client key file {path}: not a PEM private key this library can read (PKCS#8, SEC1 or PKCS#1)"),
}


@pytest.mark.parametrize("name", list(PEM_REFUSALS))
def test_an_unusable_pem_file_is_refused_with_what_to_do(tmp_path, name):
    content, message = PEM_REFUSALS[name]
    path = tmp_path / "svc.pem"
    path.write_bytes(content(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(ValueError) as refused:
        ClientKey(path)
    assert str(refused.value) == message.format(path=path)


# -- live: the operator registers with broker_admin.py, the service signs with its own key ----------


def _admin(live: LiveBroker, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(BROKER_URL=live.issuer, BROKER_ADMIN_KEY=str(live.keys_dir / "admin.jwk"))
    return subprocess.run([sys.executable, ADMIN, *args], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def _listed_kids(live: LiveBroker, client_id: str) -> list[str]:
    shown = _admin(live, "show", client_id)
    assert shown.returncode == 0, shown.stderr
    return [jwk["kid"] for jwk in json.loads(shown.stdout)["jwks"]["keys"]]


@pytest.mark.live
def test_keygen_then_the_printed_register_command_then_a_token(live_broker, tmp_path, capsys):
    out, public_out = tmp_path / "svc-machine" / "kg-svc.jwk", tmp_path / "kg-svc.pub.jwk"
    out.parent.mkdir()
    assert keygen(["keygen", "--client-id", "kg-svc", "--out", str(out), "--public-out", str(public_out),
                   "--scope", "read", "--audience", RS1]) == 0
    printed = capsys.readouterr()
    command = next(line.strip() for line in printed.err.splitlines() if "broker_admin.py register" in line)
    argv = shlex.split(command)
    assert argv[:2] == [".venv/bin/python", "scripts/broker_admin.py"]
    registered = _admin(live_broker, *argv[2:])  # the operator runs exactly what was printed
    assert registered.returncode == 0, registered.stderr
    assert _listed_kids(live_broker, "kg-svc") == [json.loads(printed.out)["kid"]]
    assert BrokerClient(live_broker.issuer, "kg-svc", out, scope="read", resource=RS1).get_token()


@pytest.mark.live
@pytest.mark.parametrize("kind", ["ec-p256-pkcs8", "rsa-pkcs1"])
def test_register_a_pem_public_key_sign_with_the_pem_private_key_get_a_token(live_broker, tmp_path, kind):
    make, fmt, alg = PEM_KEYS[kind]
    private = make()
    private_file, public_file = tmp_path / "svc.pem", tmp_path / "svc.pub.pem"
    private_file.write_bytes(_pem(private, fmt))
    public_file.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    client_id = f"pem-{kind}"
    registered = _admin(live_broker, "register", client_id, "--public-key", str(public_file), "--scope", "read",
                        "--audience", RS1)
    assert registered.returncode == 0, registered.stderr
    assert json.loads(registered.stdout)["alg"] == alg
    client = BrokerClient(live_broker.issuer, client_id, private_file, scope="read", resource=RS1)
    assert client.get_token()
    assert _listed_kids(live_broker, client_id) == [ClientKey(private_file).kid]
