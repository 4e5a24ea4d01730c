"""Signing keys on a read-only mount, as a Kubernetes Secret volume gives them (docs/kubernetes.md,
"Signing keys: a Secret mounted whole"), and the one-line refusals when there is no key to load.

A Secret volume is a tmpfs with mode 3777 (``drwxrwsrwt``), mounted read-only, holding a
timestamped folder, a ``..data`` link to it and one link per entry, files 0440 for the pod's
``fsGroup``. ``statvfs`` reports the mount's read-only flag and nothing else can fake it, so each
case builds that mount for real in a mount namespace of its own (``unshare -m``, which needs root or
CAP_SYS_ADMIN) and runs the broker's command inside it; the mount is gone when the command exits.
The cases of a folder this user may not use run the command as another user in a user namespace
(``unshare --user``), so they hold when the suite runs as root. Where a namespace is not permitted
these tests skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.keystore import create_signing_key, generate_private_key, public_jwk
from tests.conftest import ROOT, RedisServer, free_port, wait_until
from tests.helpers import ISS

#: Run in the new mount namespace: make the mounts described by argv[1] (JSON), then exec argv[2:].
MOUNT_THEN_EXEC = r"""
import json, os, shutil, subprocess, sys
for m in json.loads(sys.argv[1]):
    at = m["at"]
    if m["kind"] == "secret":  # as the kubelet writes a Secret volume
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=3777", "tmpfs", at], check=True)
        stamp = os.path.join(at, "..2026_12_01_07_00_00.000000001")
        os.mkdir(stamp)
        os.chmod(stamp, 0o755)
        for name, source in m["files"].items():
            shutil.copyfile(source, os.path.join(stamp, name))
            os.chmod(os.path.join(stamp, name), m["mode"])
            os.symlink(os.path.join("..data", name), os.path.join(at, name))
        os.symlink(os.path.basename(stamp), os.path.join(at, "..data"))
        remount = "remount,ro"
    else:  # the folder as it is, bind-mounted onto itself
        subprocess.run(["mount", "--bind", at, at], check=True)
        remount = "remount,bind,ro"
    if m["read_only"]:
        subprocess.run(["mount", "-o", remount, at], check=True)
os.execvp(sys.argv[2], sys.argv[2:])
"""


@functools.cache
def _refused(probe: tuple[str, ...]) -> str | None:
    """Why ``unshare`` cannot run ``probe`` here (None: it can)."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    with tempfile.TemporaryDirectory() as folder:
        proc = subprocess.run(["unshare", *probe, folder], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return f"`unshare {' '.join(probe)}` is not permitted here (needs root): {proc.stderr.strip()}"
    return None


def _require(probe: tuple[str, ...]) -> None:
    refused = _refused(probe)
    if refused is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{refused}: CI runs these tests as root")
        pytest.skip(refused)


def in_mounts(mounts: list[dict[str, Any]], argv: list[str]) -> list[str]:
    """``argv`` run in a mount namespace of its own after ``mounts`` are made."""
    _require(("-m", "--propagation", "private", "mount", "-t", "tmpfs", "-o", "ro", "tmpfs"))
    return ["unshare", "-m", "--propagation", "private", sys.executable, "-c", MOUNT_THEN_EXEC, json.dumps(mounts), *argv]


def as_nobody(argv: list[str]) -> list[str]:
    """``argv`` run as uid 65534 in a user namespace of its own: no capability over files of users
    not mapped into it, so a folder of another user is closed to it (as to a pod's uid 10001)."""
    _require(("--user", "--map-user=65534", "--map-group=65534", "test", "-d"))
    return ["unshare", "--user", "--map-user=65534", "--map-group=65534", *argv]


def secret_volume(at: Path, files: dict[str, Path], *, mode: int = 0o440, read_only: bool = True) -> dict[str, Any]:
    at.mkdir(parents=True, exist_ok=True)
    return {"kind": "secret", "at": str(at), "files": {k: str(v) for k, v in files.items()}, "mode": mode,
            "read_only": read_only}


def read_only_bind(at: Path) -> dict[str, Any]:
    at.mkdir(parents=True, exist_ok=True)
    return {"kind": "bind", "at": str(at), "read_only": True}


def admin_jwks() -> str:
    key = generate_private_key("ES256")
    return json.dumps({"keys": [public_jwk(key, alg="ES256")]})


def broker_env(keys_dir: Path, **extra: str) -> dict[str, str]:
    """As a pod has it: the admin's public keys given (no admin key written), the embedded store
    unless ``extra`` names Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    return {**env, "BROKER_KEYS_DIR": str(keys_dir), "BROKER_ADMIN_JWKS": admin_jwks(), "BROKER_ISSUER": ISS, **extra}


def private_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    path.chmod(0o700)
    return path


def key_files(source: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted((source / "signing").glob("*.json"))}


KEYS_INIT = [sys.executable, "-m", "app", "keys", "init"]
HINT = ("run `token-broker keys init` on a writable copy of the keys folder (on Kubernetes: "
        "kubectl create job keys-init --from=cronjob/token-broker-keys-init, docs/kubernetes.md)")
SECRET_MODE_REFUSED = ("private key file {path} on a read-only mount is open to others or writable by group (mode {mode}); "
                       "make it 0440 or 0400 where it comes from (a Secret volume: defaultMode 0440 with fsGroup)")

MODES = [
    pytest.param(0o440, True, None, id="secret-volume-0440-accepted"),
    pytest.param(0o400, True, None, id="owner-only-0400-accepted"),
    pytest.param(0o640, True, None, id="owner-writable-0640-accepted-nobody-writes-a-read-only-mount"),
    pytest.param(0o444, True, SECRET_MODE_REFUSED, id="others-read-0444-refused"),
    pytest.param(0o404, True, SECRET_MODE_REFUSED, id="others-read-0404-refused"),
    pytest.param(0o460, True, SECRET_MODE_REFUSED, id="group-write-0460-refused"),
    pytest.param(0o442, True, SECRET_MODE_REFUSED, id="others-write-0442-refused"),
    pytest.param(0o440, False, "keys folder {folder} is writable by group or others (mode 3777); run: chmod 700 {folder}",
                 id="same-tmpfs-read-write-strict-rule-refuses-the-folder"),
]


@pytest.mark.parametrize(("mode", "read_only", "refusal"), MODES)
def test_keys_on_a_secret_volume(tmp_path: Path, mode: int, read_only: bool, refusal: str | None) -> None:
    """``keys init`` runs the start's key checks (``ensure_signing_keys``): on the read-only Secret
    volume the folder's 3777 is fine and group read is fine; others' access and group write are not.
    The same tmpfs mounted read-write keeps the strict rule."""
    key = create_signing_key(tmp_path / "source", "ES256", state="active")
    keys_dir = private_folder(tmp_path / "keys")
    mount = secret_volume(keys_dir / "signing", key_files(tmp_path / "source"), mode=mode, read_only=read_only)
    proc = subprocess.run(in_mounts([mount], KEYS_INIT), cwd=ROOT, env=broker_env(keys_dir), capture_output=True,
                          text=True, timeout=60)
    if refusal is None:
        assert (proc.returncode, proc.stderr) == (0, "")
        (initialized,) = [e for e in map(json.loads, proc.stdout.splitlines()) if e["event"] == "keys.initialized"]
        assert initialized["signing_kid"] == key.kid
    else:
        message = refusal.format(path=keys_dir / "signing" / f"{key.kid}.json", folder=keys_dir / "signing",
                                 mode=f"{mode:04o}")
        assert (proc.returncode, proc.stdout) == (2, "")
        assert proc.stderr == f"token-broker: BROKER_KEYS_DIR: {message}\n"


EMPTY = [
    pytest.param(lambda k: [secret_volume(k / "signing", {})], "no signing key: {keys}/signing is read-only; " + HINT,
                 id="empty-secret-volume"),
    pytest.param(lambda k: [read_only_bind(k)], "no signing key: {keys}/signing is missing and {keys} is read-only; " + HINT,
                 id="read-only-keys-folder-without-signing"),
]
COMMANDS = [
    pytest.param(KEYS_INIT, id="keys-init"),
    pytest.param([sys.executable, "-m", "app", "serve", "--port", "0"], id="serve", marks=pytest.mark.live),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("mounts", "message"), EMPTY)
def test_no_key_on_a_read_only_folder_is_one_line(tmp_path: Path, command: list[str], mounts: Any, message: str) -> None:
    """Before the keys-init Job has run, a pod finds an empty Secret volume: one line and exit 1
    (the pod restarts until the kubelet has put the key there), not an OS error's traceback."""
    keys_dir = private_folder(tmp_path / "keys")
    env = broker_env(keys_dir, BROKER_MANAGEMENT_PORT=str(free_port()))
    proc = subprocess.run(in_mounts(mounts(keys_dir), command), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stdout) == (1, "")  # environment: the keys-init Job has not run yet
    assert proc.stderr == f"token-broker: BROKER_KEYS_DIR: {message.format(keys=keys_dir)}\n"


def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("not a folder\n")
    return tmp_path / "file" / "keys"


def _in_another_users_folder(mode: int) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        folder = tmp_path / "other-user"
        folder.mkdir(mode=mode)
        folder.chmod(mode)
        os.chown(folder, 12345, 12345)
        return folder / "keys"
    return make


UNUSABLE = [
    pytest.param(_under_a_file, False, "create the first signing key in {keys}/signing (Not a directory)",
                 id="missing-and-cannot-be-created-under-a-file"),
    pytest.param(_in_another_users_folder(0o755), True, "create the first signing key in {keys}/signing (Permission denied)",
                 id="missing-and-parent-not-writable"),
    pytest.param(_in_another_users_folder(0o700), True, "read the keys folder (Permission denied)",
                 id="parent-not-enterable"),
]


@pytest.mark.parametrize(("keys_dir", "nobody", "cannot"), UNUSABLE)
def test_a_keys_folder_that_cannot_be_used_is_one_line(tmp_path: Path, keys_dir: Callable[[Path], Path], nobody: bool,
                                                       cannot: str) -> None:
    """On a writable filesystem: a BROKER_KEYS_DIR this user cannot create, read or write."""
    path = keys_dir(tmp_path)
    proc = subprocess.run(as_nobody(KEYS_INIT) if nobody else KEYS_INIT, cwd=ROOT, env=broker_env(path),
                          capture_output=True, text=True, timeout=60)
    uid = 65534 if nobody else os.getuid()
    assert (proc.returncode, proc.stdout) == (1, "")  # environment: fix the folder, not the settings
    assert proc.stderr == (f"token-broker: BROKER_KEYS_DIR={path}: cannot {cannot.format(keys=path)}; "
                           f"make it a folder this user (uid {uid}) can read and write, or point BROKER_KEYS_DIR at one\n")


# -- the pods' start on Kubernetes, end to end -----------------------------------------------------


def _readyz(port: int) -> dict[str, Any] | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).json()
    except httpx.HTTPError:
        return None


def _pod(tmp_path: Path, name: str, secret: dict[str, Path], redis_url: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    """A broker as deployment.yaml starts it: keys folder in the (read-only) image, the Secret
    mounted read-only at signing/, BROKER_REGISTRY_RECORD pointing at the Secret's registry.id."""
    keys_dir = private_folder(tmp_path / name / "srv-keys")
    mounts = [read_only_bind(keys_dir), secret_volume(keys_dir / "signing", secret)]  # the image's folder first
    port = free_port()
    env = broker_env(keys_dir, BROKER_REDIS_URL=redis_url, BROKER_MANAGEMENT_PORT=str(port),
                     BROKER_REGISTRY_RECORD=str(keys_dir / "signing" / "registry.id"))
    log = tmp_path / name / "broker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(in_mounts(mounts, [sys.executable, "-m", "app", "serve", "--port", str(free_port())]),
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, port, log


def _stop(proc: subprocess.Popen[bytes], log: Path) -> list[dict[str, Any]]:
    proc.terminate()
    proc.wait(timeout=30)
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


@pytest.mark.redis
@pytest.mark.live
def test_pods_start_on_the_secret_and_read_the_registry_record_there(real_redis: RedisServer, tmp_path: Path) -> None:
    """The keys-init Job's work (``keys init`` on a writable copy, then the copy into the Secret),
    then a pod on the read-only Secret: it starts, reads the registry's id from the Secret and
    writes nothing. After Redis loses its data a new pod reports the loss, not an empty registry."""
    work = private_folder(tmp_path / "job" / "keys")
    init = subprocess.run(KEYS_INIT, cwd=ROOT, env=broker_env(work, BROKER_REDIS_URL=real_redis.url),
                          capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    secret = {**key_files(work), "registry.id": work / "registry.id"}
    registry_id = (work / "registry.id").read_text().strip()

    proc, port, log = _pod(tmp_path, "pod-1", secret, real_redis.url)
    body = wait_until(lambda: _readyz(port) or proc.poll() is not None, 30, what="pod-1 answers /readyz")
    logged = _stop(proc, log)
    assert body is not True and (body["status"], body["registry"]) == ("ready", "ok"), log.read_text()
    registry_events = [e["event"] for e in logged if e["event"].startswith("registry.")]
    assert registry_events == []  # no registry.created, .recorded or .unrecorded: it read the record

    real_redis.command("FLUSHALL")
    proc, port, log = _pod(tmp_path, "pod-2", secret, real_redis.url)
    body = wait_until(lambda: _readyz(port) or proc.poll() is not None, 30, what="pod-2 answers /readyz")
    _stop(proc, log)
    assert body == {"status": "not ready", "redis": "ok", "registry": "lost"}, log.read_text()
    assert real_redis.command("DBSIZE") == 0  # nothing created, not even the admin client
    assert (work / "registry.id").read_text().strip() == registry_id
