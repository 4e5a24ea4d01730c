"""The keys folder is private whatever the umask, and a start refuses keys other users can reach.

Each case runs the CLI in a subprocess with the umask set, as a deployment would start it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port

UMASKS = [pytest.param(0o000, id="umask 000"), pytest.param(0o002, id="umask 002"),
          pytest.param(0o022, id="umask 022"), pytest.param(0o077, id="umask 077")]


def _env(keys_dir: Path) -> dict[str, str]:
    env = {**os.environ, "BROKER_KEYS_DIR": str(keys_dir)}
    env.pop("BROKER_REDIS_URL", None)
    env.pop("BROKER_ADMIN_JWKS", None)
    return env


def _keys_init(keys_dir: Path, umask: int) -> None:
    proc = subprocess.run([sys.executable, "-m", "app", "keys", "init"], cwd=ROOT, env=_env(keys_dir),
                          capture_output=True, text=True, timeout=60, preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stderr


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _modes(root: Path, keys_dir: Path) -> dict[str, object]:
    folders_and_admin_key = [keys_dir.parent.parent, keys_dir.parent, keys_dir, keys_dir / "signing", keys_dir / "admin.jwk"]
    modes: dict[str, object] = {str(p.relative_to(root)): _mode(p) for p in folders_and_admin_key}
    modes["signing/<kid>.json"] = {_mode(p) for p in (keys_dir / "signing").glob("*.json")}
    return modes


PRIVATE = {"state": 0o700, "state/broker": 0o700, "state/broker/keys": 0o700, "state/broker/keys/signing": 0o700,
           "state/broker/keys/admin.jwk": 0o600, "signing/<kid>.json": {0o600}}


@pytest.mark.parametrize("umask", UMASKS)
def test_keys_init_creates_private_folders_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    keys_dir = tmp_path / "state" / "broker" / "keys"  # two missing parents: created private too
    _keys_init(keys_dir, umask)
    assert _modes(tmp_path, keys_dir) == PRIVATE


@pytest.mark.live
@pytest.mark.parametrize("umask", UMASKS[:2])
def test_serve_creates_private_folders_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    keys_dir = tmp_path / "state" / "broker" / "keys"
    proc, port = _serve(keys_dir, umask)
    started = _ready(proc, port)
    modes = _modes(tmp_path, keys_dir) if started else None
    proc.terminate()
    _, stderr = proc.communicate(timeout=30)
    assert started, stderr
    assert modes == PRIVATE


def _serve(keys_dir: Path, umask: int = 0o022) -> tuple[subprocess.Popen[str], int]:
    """The broker started; returns it with its management port (where /readyz is)."""
    management_port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(free_port())], cwd=ROOT,
                            env={**_env(keys_dir), "BROKER_MANAGEMENT_PORT": str(management_port)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.umask(umask))
    return proc, management_port


def _ready(proc: subprocess.Popen[str], port: int) -> bool:
    """True once the broker answers /readyz on its management ``port``, False if it exits first."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200:
                return True
        except httpx.HTTPError:
            time.sleep(0.1)
    return False


def _signing_key(keys_dir: Path) -> Path:
    return next((keys_dir / "signing").glob("*.json"))


DAMAGE = [
    pytest.param(lambda k: k, 0o770, "keys folder {path} is writable by group or others (mode 0770); run: chmod 700 {path}",
                 id="keys folder group-writable"),
    pytest.param(lambda k: k, 0o777, "keys folder {path} is writable by group or others (mode 0777); run: chmod 700 {path}",
                 id="keys folder world-writable"),
    pytest.param(lambda k: k / "signing", 0o703,
                 "keys folder {path} is writable by group or others (mode 0703); run: chmod 700 {path}",
                 id="signing folder world-writable"),
    pytest.param(_signing_key, 0o644, "private key file {path} is readable or writable by group or others "
                 "(mode 0644); run: chmod 600 {path}", id="signing key world-readable"),
    pytest.param(_signing_key, 0o620, "private key file {path} is readable or writable by group or others "
                 "(mode 0620); run: chmod 600 {path}", id="signing key group-writable"),
    pytest.param(lambda k: k / "admin.jwk", 0o640, "private key file {path} is readable or writable by group or "
                 "others (mode 0640); run: chmod 600 {path}", id="admin key group-readable"),
]


@pytest.mark.live
@pytest.mark.parametrize(("target", "mode", "message"), DAMAGE)
def test_serve_refuses_keys_open_to_others_in_one_line(tmp_path: Path, target: object, mode: int, message: str) -> None:
    keys_dir = tmp_path / "keys"
    _keys_init(keys_dir, 0o022)
    path = target(keys_dir)  # type: ignore[operator]
    os.chmod(path, mode)
    proc, port = _serve(keys_dir)
    started = _ready(proc, port)
    if started:
        proc.terminate()
    stdout, stderr = proc.communicate(timeout=30)
    assert not started, "the broker started with keys open to other users"
    assert (proc.returncode, stdout) == (2, "")
    assert stderr == f"token-broker: BROKER_KEYS_DIR: {message.format(path=path)}\n"


def test_keys_init_refuses_a_world_writable_folder_in_one_line(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    os.chmod(keys_dir, 0o777)
    proc = subprocess.run([sys.executable, "-m", "app", "keys", "init"], cwd=ROOT, env=_env(keys_dir),
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (f"token-broker: BROKER_KEYS_DIR: keys folder {keys_dir} is writable by group or others "
                           f"(mode 0777); run: chmod 700 {keys_dir}\n")
    assert list(keys_dir.iterdir()) == []  # nothing written into it
