"""Admin API client and the onboarding steps behind ``scripts/broker_admin.py``.

The admin authenticates like any client: a private_key_jwt assertion (RFC 7523 §2.2, ``aud`` =
issuer) for a token with scope ``broker:admin`` and resource ``<issuer>/admin`` (RFC 8707), then
calls the admin API (shaped after RFC 7591 / RFC 7592) with that Bearer token (RFC 6750).

Onboarding either registers a public key the service generated on its own machine (``keygen``
there, ``--public-key`` here: the private key never leaves that machine), or generates the pair
here and writes the private key with mode 0600 (never overwriting a file); only the public key is
sent. Errors are ``AdminError``: what went wrong and what to do, never key material. Export and
import of the whole registry are in ``app.client.admin_backup``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from app.client.admin_keys import (
    KEY_ALGS,
    AdminError,
    UsageError,
    generate_client_key,
    load_private_jwk,
    private_key_path,
    public_key_of,
    read_public_keys,
    write_private_key,
)
from app.oauth.constants import ADMIN_SCOPE, GRANT_CLIENT_CREDENTIALS, METADATA_PATH
from token_broker_jose.assertion import ASSERTION_TYPE, make_client_assertion

__all__ = ["ADMIN_SCOPE", "KEY_ALGS", "AdminError", "BrokerAdmin", "UsageError", "add_generated_key", "keygen",
           "load_private_jwk", "onboard", "read_public_keys"]



def check_broker_url(url: str) -> str:
    """The broker base URL without a trailing slash; ``UsageError`` unless it is an http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        example = "http://" + url.split("://", 1)[-1]
        raise UsageError(f"--broker {url!r} is not an http:// or https:// URL: give the scheme too, e.g. {example}")
    return url.rstrip("/")


# -- the admin API client ----------------------------------------------------------------------


class BrokerAdmin:
    """Talks to one broker replica (any replica: the registry is shared)."""

    def __init__(self, broker_url: str, admin_key: Path, *, admin_client_id: str = "broker-admin",
                 timeout: float = 10.0, transport: httpx.BaseTransport | None = None) -> None:
        self.broker_url = check_broker_url(broker_url)
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
            response = self._send("GET", METADATA_PATH)
            if response.status_code != 200:
                raise AdminError(f"{self.broker_url} did not serve broker metadata (HTTP {response.status_code}): is --broker the broker's URL?")
            metadata = _json_object(response)
            if not isinstance(metadata.get("issuer"), str):
                raise AdminError(f"{self.broker_url}{METADATA_PATH} answered HTTP 200 without an issuer: expected the "
                                 "broker's metadata (a JSON object with issuer); is --broker the broker's URL?")
            self._metadata = metadata
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
                "grant_type": GRANT_CLIENT_CREDENTIALS, "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion,
                "scope": ADMIN_SCOPE, "resource": self.issuer + "/admin",
            })
            if response.status_code == 401:
                raise AdminError(
                    f"the broker refused the admin key ({_error_text(response)}): check that --admin-key is the admin "
                    "private key whose public half the broker has (BROKER_ADMIN_JWKS, or keys/admin.jwk when "
                    "that is unset) and that --admin-client-id names the broker's admin client (BROKER_ADMIN_CLIENT_ID)"
                    + _why_hint(response)
                )
            if response.status_code != 200:
                raise self._refusal(response, f"could not get an admin token (HTTP {response.status_code}: "
                                              f"{_error_text(response)})")
            token = _json_object(response).get("access_token")
            if not isinstance(token, str) or not token:
                raise AdminError(f"{self.token_endpoint} answered HTTP 200 without an access_token: expected a token "
                                 "response; is --broker the broker's URL?")
            self._token = token
        return self._token

    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """One admin API call with the admin token; the response as it came."""
        headers = {"Authorization": "Bearer " + self.token()}
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["content"] = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return self._send(method, path, **kwargs)

    def call(self, method: str, path: str, body: Any = None, *, hints: dict[int, str] | None = None) -> Any:
        """The answer's JSON; ``AdminError`` saying what to do otherwise (``hints``: per status, for
        calls that are not about clients)."""
        response = self.request(method, path, body)
        if response.status_code in (200, 201):
            return response.json()
        if response.status_code == 204:
            return None
        error = _error_text(response)
        known = {
            401: "the broker refused the admin token it issued: check that the admin client is still registered "
                 "with this admin key (BROKER_ADMIN_JWKS, or keys/admin.jwk when that is unset) and retry",
            403: "the admin client lacks the broker:admin scope",
            404: "no such client or key: run `list` or `show <client_id>`",
            409: "that client_id is already registered: pick another name or inspect it with `show`",
        } | (hints or {})
        hint = known.get(response.status_code, "fix the input named above and retry")
        raise self._refusal(response, f"{error} (HTTP {response.status_code}): {hint}")

    def _refusal(self, response: httpx.Response, message: str) -> AdminError:
        """``message``, unless the broker said it is up but cannot reach its store (503): say that instead."""
        if response.status_code != 503:
            return AdminError(message)
        body = _json_object(response)
        if body.get("error") != "temporarily_unavailable":  # e.g. a proxy with no replica behind it
            return AdminError(f"{self.broker_url} answered HTTP 503 ({_error_text(response)}): no broker replica "
                              "is serving there; check the replicas and retry")
        return AdminError(
            f"the broker cannot reach its store or client registry: {body.get('error_description', '')} "
            f"(HTTP 503 temporarily_unavailable): check its Redis (the broker's /readyz says what it misses) and retry"
        )

    def exists(self, client_id: str) -> bool:
        """Whether the broker has a client ``client_id`` (asked before any local key file is touched)."""
        response = self.request("GET", "/admin/clients/" + _path(client_id))
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise self._refusal(response, f"{_error_text(response)} (HTTP {response.status_code}): "
                                          f"could not look up {client_id!r}")
        return True

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

    def put_record(self, record: dict[str, Any], *, force: bool = False) -> tuple[int, dict[str, Any]]:
        """Restore one whole record (``PUT /admin/clients/{id}/record``).

        Returns: (status, body) for an answer about the record: 201 / 200 (``result`` created,
        updated or unchanged, and the stored ``client``), 400 / 409 (refused: ``error_description``
        says why). Raises: ``AdminError`` for anything that stops the whole import (no broker, a
        refused admin token, no store)."""
        path = f"/admin/clients/{_path(record['client_id'])}/record" + ("?force=true" if force else "")
        response = self.request("PUT", path, record)
        if response.status_code in (200, 201, 400, 409):
            return response.status_code, _json_object(response)
        raise self._refusal(response, f"{_error_text(response)} (HTTP {response.status_code}): the import stopped at "
                                      f"{record['client_id']!r}; fix that and run it again (it skips what is there)")


def _path(value: str) -> str:
    return quote(value, safe="")


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _why_hint(response: httpx.Response) -> str:
    """Where the broker's log says why it refused: its reason, found by the answer's request id."""
    request_id = response.headers.get("x-request-id")
    return f"; the broker's log has the reason: `broker_admin.py why {request_id}`" if request_id else ""


def _error_text(response: httpx.Response) -> str:
    body = _json_object(response)
    if "error" not in body:
        return f"HTTP {response.status_code}"
    return f"{body['error']}: {body.get('error_description', '')}".rstrip(": ")


# -- onboarding --------------------------------------------------------------------------------


def onboard(admin: BrokerAdmin, metadata: dict[str, Any], *, keys_dir: Path, alg: str | None = None,
            public_key_file: Path | None = None, jwks_uri: str | None = None, reuse_key: bool = False,
            no_key: bool = False) -> dict[str, Any]:
    """Register a client with its own public key (``public_key_file``), its ``jwks_uri``, or a key
    pair kept in ``<keys_dir>/<client_id>.jwk``: generated here, or (``reuse_key``) the one already there;
    or (``no_key``) with none: it authenticates with its platform's token (``trust add``).

    For a key pair kept here the broker is asked first whether the client_id is taken, so the local
    key file is looked at only for a free name. A generated private key file is created (0600, never
    overwritten) before the registration and removed again if the broker refuses it, so a failed
    run leaves nothing behind; a reused file is never removed.
    """
    client_id = metadata["client_id"]
    written: Path | None = None
    key_path: Path | None = None
    kid = None
    if jwks_uri is not None:
        metadata = {**metadata, "jwks_uri": jwks_uri}
        if alg and "token_endpoint_auth_signing_alg" not in metadata:
            metadata["token_endpoint_auth_signing_alg"] = alg
    elif public_key_file is not None:
        metadata = {**metadata, "jwks": {"keys": read_public_keys(public_key_file, alg)}}
    elif no_key:
        metadata = {**metadata, "jwks": {"keys": []}}
    else:
        key_path = private_key_path(keys_dir, client_id)
        public = _local_public_key(admin, client_id, key_path, alg, reuse_key)
        written = None if reuse_key else key_path
        kid = public["kid"]
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
        "private_key_path": str(key_path) if key_path else None,
        "scopes": record.get("scopes", []),
        "audiences": record.get("audiences", []),
    }
    if jwks_uri is not None:
        out["jwks_uri"] = jwks_uri
        out["kid"] = None
    return out


def _local_public_key(admin: BrokerAdmin, client_id: str, path: Path, alg: str | None, reuse_key: bool) -> dict[str, Any]:
    """The public half of the key pair in ``path``: new (written there), or the one there (``reuse_key``)."""
    if admin.exists(client_id):
        raise AdminError(f"client_id {client_id!r} is already registered: pick another name, or inspect it with "
                         f"`show {client_id}`")
    if reuse_key:
        return public_key_of(path, alg)
    if path.exists():
        raise AdminError(f"{path} exists but the broker has no client {client_id!r} (left by a deleted client?): "
                         "add --reuse-key to register that key again, or remove the file and run again")
    private, public = generate_client_key(alg or "ES256")
    write_private_key(path, private)
    return public


def add_generated_key(admin: BrokerAdmin, client_id: str, *, keys_dir: Path, alg: str = "ES256",
                      window: dict[str, int] | None = None) -> dict[str, Any]:
    private, public = generate_client_key(alg)
    path = private_key_path(keys_dir, client_id, public["kid"])
    write_private_key(path, private)
    try:
        admin.add_key(client_id, {**public, **(window or {})})
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return {"client_id": client_id, "kid": public["kid"], "alg": alg, "private_key_path": str(path), **(window or {})}


def keygen(out: Path, alg: str = "ES256") -> dict[str, Any]:
    """A new key pair for a service, made on the service's own machine: the private JWK is written to
    ``out`` (0600, never overwritten) and the public JWK returned, for the operator's ``register --public-key``."""
    private, public = generate_client_key(alg)
    write_private_key(Path(out), private)
    return public
