"""Key files for onboarding (``scripts/broker_admin.py``): private JWK files and public keys to register.

Private keys are written with mode 0600 and never overwritten; only public keys are read for
registration (a file holding private material is refused). A public key that names no ``alg`` gets
the one its type implies (``token_broker_jose.credentials.default_alg``: EC P-256 → ES256, P-384 →
ES384, Ed25519 → Ed25519, RSA → PS256), except an RSA key given as PEM, which gets RS256
(``PEM_RSA_ALG``, the client library's default for an RSA PEM private key too): a PEM
key comes from outside the broker's tooling (a certificate, a cloud console), and the library
that signs with it almost always means RS256. Either way the broker binds it to exactly one
algorithm. A PEM file of certificates (``-----BEGIN CERTIFICATE-----``, the key's own first) registers
the first one's public key with the chain as the JWK's ``x5c``, so assertions may name the key by
the certificate's thumbprint (``x5t``, as MSAL does). joserfc warns (``SecurityWarning``) when it imports an RSA key under 2048
bits; the broker refuses such a key with a one-line reason, so the warning is silenced here
rather than printed as a Python traceback line before that reason.
"""

from __future__ import annotations

import base64
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from joserfc.errors import SecurityWarning

from app.keystore import public_jwk, write_private
from app.oauth.clients import CLIENT_ID_RE
from app.oauth.constants import ALG_KEY_TYPES
from app.oauth.jose import KEY_TYPES, import_jwk
from token_broker_jose.credentials import PEM_RSA_ALG, ClientKey, default_alg, generate_key_pair

#: The algorithms a generated or registered key may be for: the broker's list, in its one order.
KEY_ALGS = tuple(ALG_KEY_TYPES)
T = TypeVar("T")


class AdminError(Exception):
    """A failure the operator can act on; ``str()`` says what happened and what to do."""


class UsageError(AdminError):
    """The command line itself is wrong (the CLI exits 2, like argparse)."""


def quietly(load: Callable[[], T]) -> T:
    """Run a key import without joserfc's ``SecurityWarning`` (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        return load()


def load_private_jwk(path: Path) -> tuple[Any, str, str]:
    """(key, alg, kid) from a private JWK file such as ``keys/admin.jwk``."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AdminError(
            f"admin key {path} not found: give --admin-key (the broker writes keys/admin.jwk on its first "
            "start when BROKER_ADMIN_JWKS is unset; in production use the admin key whose public half is in BROKER_ADMIN_JWKS)"
        ) from None
    except (OSError, ValueError) as exc:
        raise AdminError(f"cannot read key file {path} ({type(exc).__name__}): it must be a private JWK (JSON)") from None
    if isinstance(data, dict) and isinstance(data.get("jwk"), dict):  # a broker signing-key file layout
        data = data["jwk"]
    if not isinstance(data, dict):
        raise AdminError(f"{path} is not a valid JWK")
    try:
        client_key = quietly(lambda: ClientKey(data))
    except (ValueError, KeyError) as exc:
        raise AdminError(f"{path}: {exc}; the admin key file must hold a private JWK") from None
    return client_key.key, client_key.alg, client_key.kid


def generate_client_key(alg: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new key pair: (private JWK, public JWK), both with ``kid`` = RFC 7638 thumbprint and ``alg``."""
    if alg not in KEY_ALGS:
        raise UsageError(f"--alg must be one of {', '.join(KEY_ALGS)}")
    return generate_key_pair(alg)


def public_key_of(path: Path, alg: str | None) -> dict[str, Any]:
    """The public JWK of an existing private key file (``register --reuse-key``), with its kid and alg."""
    if not path.exists():
        raise AdminError(f"--reuse-key: {path} does not exist (drop --reuse-key to generate a new key pair)")
    try:
        client_key = quietly(lambda: ClientKey(path))
    except (ValueError, KeyError) as exc:
        raise AdminError(f"--reuse-key: {path}: {exc}") from None
    if alg and alg != client_key.alg:
        raise UsageError(f"--reuse-key: {path} is a {client_key.alg} key: drop --alg {alg} or give --alg {client_key.alg}")
    return public_jwk(client_key.key, alg=client_key.alg, kid=client_key.kid)


def read_public_keys(path: Path, alg: str | None = None) -> list[dict[str, Any]]:
    """Public JWKs from a JWK, a JWK Set or a PEM file (bring your own key). Refuses private keys."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise AdminError(f"cannot read {path} ({type(exc).__name__})") from None
    if b"PRIVATE KEY" in raw:
        raise AdminError(f"{path} holds a PRIVATE key: give the public key only (it never leaves your machine)")
    if raw.lstrip().startswith(b"-----BEGIN"):
        return [_pem_public_jwk(path, raw, alg)]
    try:
        data = json.loads(raw)
    except ValueError:
        raise AdminError(f"{path} is neither JSON (JWK / JWK Set) nor PEM") from None
    keys = data.get("keys") if isinstance(data, dict) and "keys" in data else [data]
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys) or not keys:
        raise AdminError(f"{path}: expected a JWK or a JWK Set with at least one key")
    out = []
    for jwk in keys:
        if "d" in jwk or "p" in jwk:
            raise AdminError(f"{path} holds private key material: give the public key only")
        if "alg" not in jwk and jwk.get("kty") in KEY_TYPES:  # another kty: the broker's refusal names it
            jwk = {**jwk, "alg": alg or _inferred_alg(path, jwk)}
        out.append(jwk)  # the broker validates and stamps kid/use
    return out


def _pem_public_jwk(path: Path, raw: bytes, alg: str | None) -> dict[str, Any]:
    key = None
    for cls in KEY_TYPES.values():
        try:
            key = quietly(lambda: cls.import_key(raw))  # noqa: B023 - called at once, inside the loop
            break
        except Exception:
            continue
    if key is None:
        raise AdminError(f"{path}: not a PEM public key this broker supports (EC, Ed25519, RSA)")
    try:
        jwk = public_jwk(key, alg=alg or (PEM_RSA_ALG if key.key_type == "RSA" else default_alg(key)))
    except ValueError as exc:
        raise AdminError(f"{path}: {exc}") from None
    if b"-----BEGIN CERTIFICATE-----" in raw:
        certs = x509.load_pem_x509_certificates(raw)  # joserfc read the first one's key from it
        jwk["x5c"] = [base64.b64encode(cert.public_bytes(Encoding.DER)).decode() for cert in certs]
    return jwk


def _inferred_alg(path: Path, jwk: dict[str, Any]) -> str:
    """The alg a JWK without ``alg`` implies, as for a PEM key; else the operator must say (--alg)."""
    kty = jwk["kty"]
    try:
        key = quietly(lambda: import_jwk(jwk))
    except Exception:  # whatever joserfc raises for members it cannot import
        raise AdminError(f"{path}: the key could not be parsed as a {kty} public key") from None
    try:
        return default_alg(key)
    except ValueError:
        crv = str(jwk.get("crv", ""))[:20]
        raise UsageError(f"{path}: the key names no alg and its type ({kty} {crv}) implies none: add --alg "
                         f"({', '.join(KEY_ALGS)}), or use an EC P-256/P-384, Ed25519 or RSA key") from None


def private_key_path(keys_dir: Path, client_id: str, kid: str | None = None) -> Path:
    # Checked here too: the file is written before the broker sees the client_id.
    if not CLIENT_ID_RE.fullmatch(client_id):
        raise AdminError("client_id must be 1-128 characters of A-Z a-z 0-9 . _ : - starting with a letter or digit")
    name = client_id if kid is None else f"{client_id}.{kid[:16]}"
    return Path(keys_dir) / f"{name}.jwk"


def write_private_key(path: Path, private: dict[str, Any]) -> None:
    """Create ``path`` (mode 0600) with a private JWK; never over an existing file."""
    try:
        write_private(path, private)
    except FileExistsError:
        raise AdminError(f"{path} already exists: refusing to overwrite a private key") from None
    except OSError as exc:
        raise AdminError(f"cannot write {path} ({type(exc).__name__}): check the folder exists and is writable") from None
    os.chmod(path, 0o600)
