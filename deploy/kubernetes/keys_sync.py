"""Copy the broker's signing keys between their Kubernetes Secret and a writable keys folder.

The broker pods mount the Secret ``token-broker-signing-keys`` read-only at
``$BROKER_KEYS_DIR/signing`` (a directory mount, no subPath, so the kubelet's updates reach running
pods). The key tools (``token-broker keys init``, ``scripts/rotate_signing_key.py``) write files, so
the Jobs in this folder run them on a copy:

    python keys_sync.py pull     # Secret -> $BROKER_KEYS_DIR (signing/<kid>.json, registry.id)
    ... run the key tool on $BROKER_KEYS_DIR ...
    python keys_sync.py push     # $BROKER_KEYS_DIR -> Secret, only if it is still the one pulled

``push`` sends the ``resourceVersion`` that ``pull`` saw, so the API server refuses it (409) when
anything changed the Secret in between (another rotation Job): the Job fails and its retry starts
again from the current Secret instead of overwriting it. Nothing is sent when the folder holds what
was pulled. Standard library only (it runs in the broker image); it talks to the API server with the
pod's service account, which may only get and update this one Secret (rbac-keys.yaml). Key
material is never printed: the output names kids and counts only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: The Secret's keys: one ``<kid>.json`` per signing key (a kid is a JWK thumbprint, base64url)
#: and the client registry's id (``registry.id``, docs/operations.md "When the registry is lost").
KEY_FILE = re.compile(r"^[A-Za-z0-9_-]{1,128}\.json$")
REGISTRY_FILE = "registry.id"
#: What ``pull`` saw, for ``push`` (not a key: never sent to the Secret).
STATE_FILE = ".keys-sync.json"
FIELD_MANAGER = "token-broker-keys-sync"


class SyncError(Exception):
    """The copy cannot be made; the message says why (never key material)."""


class Api:
    """The one Secret, over the Kubernetes REST API (GET and PUT)."""

    def __init__(self, base: str, namespace: str, name: str, token: str, ca_file: str | None) -> None:
        parts = urlsplit(base)
        if parts.scheme != "https" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SyncError(f"the API server must be reached over https (http only on loopback, e.g. kubectl proxy): {base}")
        self.url = f"{base.rstrip('/')}/api/v1/namespaces/{quote(namespace, safe='')}/secrets/{quote(name, safe='')}"
        self.token = token
        self.context = ssl.create_default_context(cafile=ca_file) if parts.scheme == "https" else None

    def request(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.url + (f"?fieldManager={FIELD_MANAGER}" if method == "PUT" else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=15) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 409:
                raise SyncError("the Secret changed since it was pulled (another key Job?): nothing written; "
                                "run the Job again") from None
            raise SyncError(f"{method} {self.url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SyncError(f"{method} {self.url}: {exc}") from None


def digest(files: dict[str, bytes]) -> str:
    return hashlib.sha256(json.dumps({k: v.hex() for k, v in sorted(files.items())}).encode()).hexdigest()


def secret_files(secret: dict[str, Any]) -> dict[str, bytes]:
    files = {}
    for name, value in (secret.get("data") or {}).items():
        if name != REGISTRY_FILE and not KEY_FILE.match(name):
            raise SyncError(f"the Secret holds an entry that is neither a signing key file nor {REGISTRY_FILE}: {name!r}")
        files[name] = base64.b64decode(value, validate=True)
    return files


def folder_files(keys_dir: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted((keys_dir / "signing").glob("*.json")) if KEY_FILE.match(p.name)}
    record = keys_dir / REGISTRY_FILE
    if record.is_file():
        files[REGISTRY_FILE] = record.read_bytes()
    return files


def _private_dir(folder: Path) -> None:
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)  # whatever the umask: the broker refuses a keys folder others can write to


def _write(path: Path, content: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
    os.chmod(path, mode)


def pull(api: Api, keys_dir: Path) -> dict[str, Any]:
    """Write the Secret's files into an empty ``keys_dir`` (0700 folders, 0600 key files)."""
    if keys_dir.exists() and any(keys_dir.iterdir()):
        raise SyncError(f"{keys_dir} is not empty: pull writes into a fresh folder only")
    secret = api.request("GET")
    files = secret_files(secret)
    _private_dir(keys_dir)
    _private_dir(keys_dir / "signing")
    for name, content in files.items():
        if name == REGISTRY_FILE:
            _write(keys_dir / REGISTRY_FILE, content, 0o644)  # not secret (app/service/registry_state.py)
        else:
            _write(keys_dir / "signing" / name, content, 0o600)
    state = {"resourceVersion": secret["metadata"]["resourceVersion"], "digest": digest(files)}
    _write(keys_dir / STATE_FILE, json.dumps(state).encode(), 0o600)
    return {"pulled": sorted(n.removesuffix(".json") for n in files if n != REGISTRY_FILE),
            "registry_id": REGISTRY_FILE in files}


def push(api: Api, keys_dir: Path) -> dict[str, Any]:
    """Replace the Secret's data with the folder's files, if the Secret is still the one pulled."""
    try:
        state = json.loads((keys_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        raise SyncError(f"{keys_dir / STATE_FILE} is missing: run pull first") from None
    files = folder_files(keys_dir)
    kids = sorted(n.removesuffix(".json") for n in files if n != REGISTRY_FILE)
    if digest(files) == state["digest"]:
        return {"pushed": False, "kids": kids}
    secret = api.request("GET")
    if secret["metadata"]["resourceVersion"] != state["resourceVersion"]:
        raise SyncError("the Secret changed since it was pulled (another key Job?): nothing written; run the Job again")
    secret["data"] = {name: base64.b64encode(content).decode() for name, content in sorted(files.items())}
    secret.pop("stringData", None)
    written = api.request("PUT", secret)  # carries the pulled resourceVersion: 409 if changed meanwhile
    state = {"resourceVersion": written["metadata"]["resourceVersion"], "digest": digest(files)}
    (keys_dir / STATE_FILE).write_text(json.dumps(state))
    return {"pushed": True, "kids": kids}


def _in_cluster_api() -> str:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise SyncError("not in a pod (no KUBERNETES_SERVICE_HOST): pass --api")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        raise SyncError(f"cannot read {path}: is a service account token mounted?") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keys_sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["pull", "push"])
    parser.add_argument("--keys-dir", type=Path, default=Path(os.environ.get("BROKER_KEYS_DIR", "keys")))
    parser.add_argument("--secret", default=os.environ.get("KEYS_SECRET", "token-broker-signing-keys"))
    parser.add_argument("--namespace", help="default: the pod's namespace")
    parser.add_argument("--api", help="API server URL (default: in-cluster); http only on loopback (kubectl proxy)")
    parser.add_argument("--token-file", default=str(SA_DIR / "token"), help="bearer token file ('' for none: kubectl proxy)")
    parser.add_argument("--ca-file", default=str(SA_DIR / "ca.crt"))
    args = parser.parse_args(argv)
    try:
        namespace = args.namespace or _read(SA_DIR / "namespace")
        token = _read(Path(args.token_file)) if args.token_file else ""
        api = Api(args.api or _in_cluster_api(), namespace, args.secret, token, args.ca_file)
        out = pull(api, args.keys_dir) if args.action == "pull" else push(api, args.keys_dir)
    except SyncError as exc:
        print(f"keys_sync: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"secret": args.secret, **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
