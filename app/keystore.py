"""Key files on disk: the broker's signing keys and locally generated private keys.

Private keys are written with mode 0600 (created with O_EXCL, never overwritten) in folders
created with mode 0700, and never logged; a start refuses a keys folder other users can write to
(a read-only mount, such as a Kubernetes Secret volume, is judged by ``check_key_modes``'s own
rule) and reports a keys folder it cannot read, or create its first key in, as one line. A signing key file is
``<keys_dir>/signing/<kid>.json``::

    {"kid": ..., "alg": "ES256", "state": "active", "created_at": 1790000000, "jwk": {private JWK}}

``state`` is ``active`` (signs and is published), ``next`` (published, not yet signing) or
``retired`` (published until its last token expires, then removed by the rotation script).
Every replica must see the same folder.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import msgspec
from joserfc.errors import JoseError

from app.config import ConfigError
from app.oauth.access_token import TokenSigner
from app.oauth.jose import VerificationKey, generate_private_key, import_jwk, public_jwk, verification_key

STATES = ("next", "active", "retired")


class KeyFileError(Exception):
    """A key file is unreadable or malformed; the message names the file, never its content."""


class SigningKey(msgspec.Struct, frozen=True):
    kid: str
    alg: str
    state: str
    created_at: int
    jwk: dict[str, Any]
    # Set by ``promote`` when an active key is retired; ``retire-expired`` deletes the key only
    # after retired_at + the longest token lifetime + clock skew (scripts/rotate_signing_key.py).
    retired_at: int | None = None


def import_private_jwk(jwk: dict[str, Any]) -> Any:
    key = import_jwk(jwk)
    if not key.is_private:
        raise KeyFileError("the JWK holds no private key")
    return key


def write_private(path: Path, data: dict[str, Any]) -> None:
    """Create ``path`` with mode 0600; refuse to overwrite an existing file."""
    make_private_dirs(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")


def make_private_dirs(folder: Path) -> None:
    """Create ``folder`` and its missing parents with mode 0700, whatever the umask.

    ``mkdir(mode=...)`` is filtered by the umask, and ``parents=True`` creates the parents with
    the default mode: under umask 000 the keys folder became 0777. Each folder created here is
    chmod-ed explicitly; folders that already existed are left as they are (``check_key_modes``
    refuses a keys folder others can write to).
    """
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        try:
            created.mkdir(mode=0o700)
        except FileExistsError:  # another process made it in between: it chmods its own
            continue
        os.chmod(created, 0o700)


class KeyModeError(KeyFileError, ConfigError):
    """The keys folder or a private key file is open to other users; the message says what to run."""


class KeysFolderUnusable(ConfigError):
    """The keys folder cannot be created, read or written, or is read-only without a key: the
    settings may be right and what they point at not (yet) ready, so a start exits 1
    (``app.start_failures``); the message names BROKER_KEYS_DIR and the fix."""


def read_only(path: Path) -> bool:
    """Whether ``path`` is on a mount that is read-only (``statvfs`` ``ST_RDONLY``): the flag of
    the mount this process sees, so a read-only bind mount counts as read-only too."""
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def check_key_modes(keys_dir: Path) -> None:
    """Refuse keys that a local user other than the broker's could read or replace.

    On a writable filesystem: a keys folder (or ``signing/``) that group or others can write to,
    and a private key file that group or others can read or write.

    On a read-only mount (``read_only``), as a Kubernetes Secret volume is (folder mode 3777 on a
    tmpfs, files 0440 for the pod's ``fsGroup``): the folder's mode is not checked, since no one,
    root included, can create, replace or rename a file through a read-only mount. The files are
    then the ones whoever provides the mount wrote: for a Secret volume the kubelet, from a Secret
    that only the key Jobs' account (and cluster admins) may update. Group read is allowed there
    (that is how ``fsGroup`` lets the broker in); access by others and write by group are still
    refused. A read-only bind mount of a folder that others can write to by its own path is as open
    as that folder: this check cannot see it (docs/security.md, keys on a read-only mount).
    """
    folders = [f for f in (keys_dir, signing_dir(keys_dir)) if f.is_dir()]
    for folder in folders:
        mode = stat.S_IMODE(folder.stat().st_mode)
        if mode & 0o022 and not read_only(folder):
            raise KeyModeError(f"keys folder {folder} is writable by group or others (mode {mode:04o}); "
                               f"run: chmod 700 {folder}")
    files = [f for f in (keys_dir / "admin.jwk",) if f.is_file()] + sorted(signing_dir(keys_dir).glob("*.json"))
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        if not read_only(path):
            if mode & 0o077:
                raise KeyModeError(f"private key file {path} is readable or writable by group or others "
                                   f"(mode {mode:04o}); run: chmod 600 {path}")
        elif mode & 0o027:
            raise KeyModeError(f"private key file {path} on a read-only mount is open to others or writable by "
                               f"group (mode {mode:04o}); make it 0440 or 0400 where it comes from (a Secret volume: "
                               f"defaultMode 0440 with fsGroup)")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {type(exc).__name__}") from None


def signing_dir(keys_dir: Path) -> Path:
    return keys_dir / "signing"


def load_signing_keys(keys_dir: Path) -> list[SigningKey]:
    out = []
    folder = signing_dir(keys_dir)
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            key = msgspec.convert(read_json(path), SigningKey)
        except msgspec.ValidationError:
            raise KeyFileError(f"malformed signing key file {path}") from None
        if key.state not in STATES:
            raise KeyFileError(f"{path}: state must be one of {', '.join(STATES)}")
        out.append(key)
    return out


def create_signing_key(keys_dir: Path, alg: str, *, state: str, now: int | None = None) -> SigningKey:
    key = generate_private_key(alg)
    kid = key.thumbprint()
    record = SigningKey(kid, alg, state, int(now or time.time()), key.as_dict(private=True))
    write_private(signing_dir(keys_dir) / f"{kid}.json", msgspec.to_builtins(record))
    return record


def set_signing_key_state(keys_dir: Path, kid: str, state: str, **fields: Any) -> None:
    """Rewrite one key file's state (and ``fields``) atomically (temp file with 0600, then rename)."""
    path = signing_dir(keys_dir) / f"{kid}.json"
    data = read_json(path)
    data["state"] = state
    data.update(fields)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


class SigningKeySet(msgspec.Struct, frozen=True):
    """What the broker signs with and publishes, loaded once at start (and on reload)."""

    signer: TokenSigner
    verification_keys: dict[str, VerificationKey]
    jwks: dict[str, Any]

    @classmethod
    def from_keys(cls, keys: list[SigningKey]) -> SigningKeySet:
        active = [k for k in keys if k.state == "active"]
        if not active:
            raise KeyFileError("no active signing key in the keys folder")
        current = max(active, key=lambda k: (k.created_at, k.kid))
        signer = TokenSigner(import_private_jwk(current.jwk), current.kid, current.alg)
        published, verification = [], {}
        for k in keys:
            priv = import_private_jwk(k.jwk)
            published.append(public_jwk(priv, alg=k.alg, kid=k.kid))
            try:
                verification[k.kid] = verification_key(priv.as_dict(private=False), kid=k.kid, alg=k.alg)
            except JoseError:
                raise KeyFileError(f"signing key {k.kid}: the key does not fit its alg {k.alg}") from None
        return cls(signer, verification, {"keys": published})


def ensure_signing_keys(keys_dir: Path, alg: str) -> SigningKeySet:
    """Load the signing keys; on a first start with an empty folder, create one active key."""
    try:
        check_key_modes(keys_dir)
        keys = load_signing_keys(keys_dir)
    except OSError as exc:  # e.g. a folder on the way this user may not enter
        raise _keys_dir_error(keys_dir, "read the keys folder", exc) from None
    if not keys:
        _create_first_key(keys_dir, alg)
        keys = load_signing_keys(keys_dir)
    return SigningKeySet.from_keys(keys)


#: The one-line fix for a read-only keys folder without a key (docs/kubernetes.md names the Job).
KEYS_INIT_HINT = ("run `token-broker keys init` on a writable copy of the keys folder (on Kubernetes: "
                  "kubectl create job keys-init --from=cronjob/token-broker-keys-init, docs/kubernetes.md)")


def _create_first_key(keys_dir: Path, alg: str) -> None:
    """Create the first active key, or raise ``ConfigError`` (one line, what to do) when the
    folder is read-only, cannot be created or cannot be written: never an OS error's traceback."""
    folder = signing_dir(keys_dir)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if read_only(existing):
        where = f"{folder} is read-only" if existing == folder else f"{folder} is missing and {existing} is read-only"
        raise KeysFolderUnusable(f"BROKER_KEYS_DIR: no signing key: {where}; {KEYS_INIT_HINT}")
    try:
        create_signing_key(keys_dir, alg, state="active")
    except FileExistsError:  # another process created the same kid: impossible, but harmless
        pass
    except OSError as exc:
        raise _keys_dir_error(keys_dir, f"create the first signing key in {folder}", exc) from None


def _keys_dir_error(keys_dir: Path, doing: str, exc: OSError) -> KeysFolderUnusable:
    return KeysFolderUnusable(f"BROKER_KEYS_DIR={keys_dir}: cannot {doing} ({exc.strerror or type(exc).__name__}); make it "
                       f"a folder this user (uid {os.getuid()}) can read and write, or point BROKER_KEYS_DIR at one")
