"""Admin API client and the onboarding steps behind ``scripts/broker_admin.py``.

The admin authenticates like any client: a private_key_jwt assertion (RFC 7523 §2.2, ``aud`` =
issuer) for a token with scope ``broker:admin`` and resource ``<issuer>/admin`` (RFC 8707), then
calls the admin API (shaped after RFC 7591 / RFC 7592) with that Bearer token (RFC 6750).

Onboarding generates the client's key pair here, writes the private key with mode 0600 (never
overwriting a file), and sends only the public key. Errors are ``AdminError``: what went wrong
and what to do, never key material.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from app.client.assertion import ASSERTION_TYPE, make_client_assertion
from app.client.credentials import ClientKey, default_alg
from app.keystore import generate_private_key, public_jwk, write_private
from app.oauth.clients import CLIENT_ID_RE
from app.oauth.jose import KEY_TYPES

ADMIN_SCOPE = "broker:admin"
KEY_ALGS = ("ES256", "Ed25519", "PS256", "RS256", "ES384")


class AdminError(Exception):
    """A failure the operator can act on; ``str()`` says what happened and what to do."""


# -- keys --------------------------------------------------------------------------------------


def load_private_jwk(path: Path) -> tuple[Any, str, str]:
    """(key, alg, kid) from a private JWK file such as ``keys/admin.jwk``."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AdminError(
            f"admin key {path} not found: give --admin-key (the broker writes keys/admin.jwk on its first "
            "start in dev mode; in production use the admin key whose public half is in BROKER_ADMIN_JWKS)"
        ) from None
    except (OSError, ValueError) as exc:
        raise AdminError(f"cannot read key file {path} ({type(exc).__name__}): it must be a private JWK (JSON)") from None
    if isinstance(data, dict) and isinstance(data.get("jwk"), dict):  # a broker signing-key file layout
        data = data["jwk"]
    if not isinstance(data, dict):
        raise AdminError(f"{path} is not a valid JWK")
    try:
        client_key = ClientKey(data)
    except (ValueError, KeyError) as exc:
        raise AdminError(f"{path}: {exc}; the admin key file must hold a private JWK") from None
    return client_key.key, client_key.alg, client_key.kid


def generate_client_key(alg: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new key pair: (private JWK, public JWK), both with ``kid`` = RFC 7638 thumbprint and ``alg``."""
    if alg not in KEY_ALGS:
        raise AdminError(f"--alg must be one of {', '.join(KEY_ALGS)}")
    key = generate_private_key(alg)
    kid = key.thumbprint()
    private = {**key.as_dict(private=True), "kid": kid, "alg": alg, "use": "sig"}
    return private, public_jwk(key, alg=alg, kid=kid)


def read_public_keys(path: Path, alg: str | None = None) -> list[dict[str, Any]]:
    """Public JWKs from a JWK, a JWK Set or a PEM file (bring your own key). Refuses private keys."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise AdminError(f"cannot read {path} ({type(exc).__name__})") from None
    if b"PRIVATE KEY" in raw:
        raise AdminError(f"{path} holds a PRIVATE key: give the public key only (it never leaves your machine)")
    if raw.lstrip().startswith(b"-----BEGIN"):
        key = None
        for cls in KEY_TYPES.values():
            try:
                key = cls.import_key(raw)
                break
            except Exception:
                continue
        if key is None:
            raise AdminError(f"{path}: not a PEM public key this broker supports (EC, Ed25519, RSA)")
        try:
            return [public_jwk(key, alg=alg or default_alg(key))]
        except ValueError as exc:
            raise AdminError(f"{path}: {exc}") from None
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
        if alg and "alg" not in jwk:
            jwk = {**jwk, "alg": alg}
        out.append(jwk)  # the broker validates and stamps kid/alg/use
    return out


# -- the admin API client ----------------------------------------------------------------------


class BrokerAdmin:
    """Talks to one broker replica (any replica: the registry is shared)."""

    def __init__(self, broker_url: str, admin_key: Path, *, admin_client_id: str = "broker-admin",
                 timeout: float = 10.0, transport: httpx.BaseTransport | None = None) -> None:
        self.broker_url = broker_url.rstrip("/")
        self._key, self._alg, self._kid = load_private_jwk(admin_key)
        self._admin_client_id = admin_client_id
        self._http = httpx.Client(base_url=self.broker_url, timeout=timeout, trust_env=False, transport=transport)
        self._metadata: dict[str, Any] | None = None
        self._token: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BrokerAdmin:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            response = self._send("GET", "/.well-known/oauth-authorization-server")
            if response.status_code != 200:
                raise AdminError(f"{self.broker_url} did not serve broker metadata (HTTP {response.status_code}): is --broker the broker's URL?")
            self._metadata = response.json()
        return self._metadata

    @property
    def issuer(self) -> str:
        return str(self.metadata["issuer"])

    @property
    def token_endpoint(self) -> str:
        return str(self.metadata.get("token_endpoint") or self.issuer + "/token")

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise AdminError(
                f"cannot reach the broker at {self.broker_url} ({type(exc).__name__}): is it running? "
                "Set --broker or BROKER_URL to its base URL"
            ) from None

    def token(self) -> str:
        if self._token is None:
            assertion = make_client_assertion(self._key, client_id=self._admin_client_id, issuer=self.issuer,
                                              alg=self._alg, kid=self._kid)
            response = self._send("POST", "/token", data={
                "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion,
                "scope": ADMIN_SCOPE, "resource": self.issuer + "/admin",
            })
            if response.status_code != 200:
                error = _error_text(response)
                if response.status_code == 401:
                    raise AdminError(
                        f"the broker refused the admin key ({error}): --admin-key must be the admin private key this "
                        "broker knows (its keys/admin.jwk, or the key whose public half is in BROKER_ADMIN_JWKS)"
                    )
                raise AdminError(f"could not get an admin token (HTTP {response.status_code}: {error})")
            self._token = str(response.json()["access_token"])
        return self._token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": "Bearer " + self.token()}
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["content"] = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        response = self._send(method, path, **kwargs)
        if response.status_code in (200, 201):
            return response.json()
        if response.status_code == 204:
            return None
        error = _error_text(response)
        hint = {
            401: "the admin token was refused: retry; if it persists check the broker's admin key configuration",
            403: "the admin client lacks the broker:admin scope",
            404: "no such client or key: run `list` or `show <client_id>`",
            409: "that client_id is already registered: pick another name or inspect it with `show`",
            503: "the broker's store is unavailable: retry in a few seconds",
        }.get(response.status_code, "fix the input named above and retry")
        raise AdminError(f"{error} (HTTP {response.status_code}): {hint}")

    # -- operations ----------------------------------------------------------------------------

    def register(self, metadata: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", "/admin/clients", metadata)

    def list(self) -> list[dict[str, Any]]:
        return self.call("GET", "/admin/clients")["clients"]

    def show(self, client_id: str) -> dict[str, Any]:
        return self.call("GET", "/admin/clients/" + _path(client_id))

    def update(self, client_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        return self.call("PATCH", "/admin/clients/" + _path(client_id), changes)

    def add_key(self, client_id: str, jwk: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", f"/admin/clients/{_path(client_id)}/keys", jwk)

    def remove_key(self, client_id: str, kid: str) -> dict[str, Any]:
        return self.call("DELETE", f"/admin/clients/{_path(client_id)}/keys/{_path(kid)}")

    def delete(self, client_id: str) -> None:
        self.call("DELETE", "/admin/clients/" + _path(client_id))


def _path(value: str) -> str:
    return quote(value, safe="")


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"{body.get('error', 'error')}: {body.get('error_description', '')}".rstrip(": ")
    except ValueError:
        return f"HTTP {response.status_code}"


# -- onboarding --------------------------------------------------------------------------------


def private_key_path(keys_dir: Path, client_id: str, kid: str | None = None) -> Path:
    # Checked here too: the file is written before the broker sees the client_id.
    if not CLIENT_ID_RE.fullmatch(client_id):
        raise AdminError("client_id must be 1-128 characters of A-Z a-z 0-9 . _ : - starting with a letter or digit")
    name = client_id if kid is None else f"{client_id}.{kid[:16]}"
    return Path(keys_dir) / f"{name}.jwk"


def onboard(admin: BrokerAdmin, metadata: dict[str, Any], *, keys_dir: Path, alg: str | None = None,
            public_key_file: Path | None = None, jwks_uri: str | None = None) -> dict[str, Any]:
    """Register a client; unless a public key or jwks_uri is given, generate its key pair here.

    The private key file is created (0600, never overwritten) before the registration and removed
    again if the broker refuses it, so a failed run leaves nothing behind.
    """
    client_id = metadata["client_id"]
    written: Path | None = None
    kid = None
    if jwks_uri is not None:
        metadata = {**metadata, "jwks_uri": jwks_uri}
        if alg and "token_endpoint_auth_signing_alg" not in metadata:
            metadata["token_endpoint_auth_signing_alg"] = alg
    elif public_key_file is not None:
        metadata = {**metadata, "jwks": {"keys": read_public_keys(public_key_file, alg)}}
    else:
        path = private_key_path(keys_dir, client_id)
        if path.exists():
            raise AdminError(f"{path} already exists: refusing to overwrite a private key (move it away or pick another client_id)")
        private, public = generate_client_key(alg or "ES256")
        _write_private(path, private)
        written, kid = path, public["kid"]
        metadata = {**metadata, "jwks": {"keys": [public]}}
    try:
        record = admin.register(metadata)
    except BaseException:
        if written is not None:
            written.unlink(missing_ok=True)
        raise
    keys = record.get("jwks", {}).get("keys", [])
    out: dict[str, Any] = {
        "client_id": record["client_id"],
        "kid": kid or (keys[0]["kid"] if len(keys) == 1 else [k["kid"] for k in keys]),
        "alg": (keys[0]["alg"] if keys else record.get("token_endpoint_auth_signing_alg")),
        "token_endpoint": admin.token_endpoint,
        "issuer": admin.issuer,
        "aud": admin.issuer,
        "private_key_path": str(written) if written else None,
        "scopes": record.get("scopes", []),
        "audiences": record.get("audiences", []),
    }
    if jwks_uri is not None:
        out["jwks_uri"] = jwks_uri
        out["kid"] = None
    return out


def add_generated_key(admin: BrokerAdmin, client_id: str, *, keys_dir: Path, alg: str = "ES256",
                      window: dict[str, int] | None = None) -> dict[str, Any]:
    private, public = generate_client_key(alg)
    path = private_key_path(keys_dir, client_id, public["kid"])
    if path.exists():
        raise AdminError(f"{path} already exists: refusing to overwrite a private key")
    _write_private(path, private)
    try:
        admin.add_key(client_id, {**public, **(window or {})})
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return {"client_id": client_id, "kid": public["kid"], "alg": alg, "private_key_path": str(path), **(window or {})}


def _write_private(path: Path, private: dict[str, Any]) -> None:
    try:
        write_private(path, private)
    except FileExistsError:
        raise AdminError(f"{path} already exists: refusing to overwrite a private key") from None
    except OSError as exc:
        raise AdminError(f"cannot write {path} ({type(exc).__name__}): check the folder exists and is writable") from None
    os.chmod(path, 0o600)
