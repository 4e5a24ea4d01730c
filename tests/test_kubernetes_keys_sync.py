"""deploy/kubernetes/keys_sync.py: the key Jobs' copy between the signing-key Secret and a folder.

A small in-process stand-in for the Kubernetes API (one Secret, GET and PUT, resourceVersion
checked as the API server does) on loopback; the key tools themselves (``token-broker keys init``,
``scripts/rotate_signing_key.py``) run unchanged on the pulled folder, as the CronJobs run them.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from app.keystore import check_key_modes, create_signing_key, ensure_signing_keys, load_signing_keys
from app.metrics import DECLARED, Metrics
from app.oauth.jose import KEY_TYPES
from app.service.registry_state import RECORD_FILE
from app.service.signing_keys import SigningKeyReloader, SigningKeys
from scripts import rotate_signing_key

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "token-broker"
SECRET = "token-broker-signing-keys"
SECRET_PATH = f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}"

_spec = importlib.util.spec_from_file_location("keys_sync", ROOT / "deploy" / "kubernetes" / "keys_sync.py")
assert _spec is not None and _spec.loader is not None
keys_sync = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(keys_sync)


class FakeApi:
    """One Secret; PUT must carry the current resourceVersion (else 409), as the API server wants."""

    def __init__(self) -> None:
        self.secret: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": SECRET, "namespace": NAMESPACE, "resourceVersion": "1",
                         "labels": {"app.kubernetes.io/name": "token-broker"}},
        }
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def bump(self, data: dict[str, bytes]) -> None:
        """Someone else (another Job) changes the Secret."""
        with self.lock:
            self.secret["data"] = {k: base64.b64encode(v).decode() for k, v in data.items()}
            self.secret["metadata"]["resourceVersion"] = str(int(self.secret["metadata"]["resourceVersion"]) + 1)

    def files(self) -> dict[str, bytes]:
        return {k: base64.b64decode(v) for k, v in (self.secret.get("data") or {}).items()}

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        self.requests.append((method, path))
        if path.split("?")[0] != SECRET_PATH:
            return 404, {"kind": "Status", "code": 404}
        with self.lock:
            if method == "GET":
                return 200, copy.deepcopy(self.secret)
            sent = json.loads(body)
            if sent["metadata"].get("resourceVersion") != self.secret["metadata"]["resourceVersion"]:
                return 409, {"kind": "Status", "code": 409, "reason": "Conflict"}
            sent["metadata"]["resourceVersion"] = str(int(self.secret["metadata"]["resourceVersion"]) + 1)
            self.secret = sent
            return 200, copy.deepcopy(sent)


@pytest.fixture
def api() -> Iterator[tuple[FakeApi, str]]:
    fake = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, payload = fake.handle(self.command, self.path, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _sync(url: str, action: str, keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = keys_sync.main([action, "--api", url, "--namespace", NAMESPACE, "--token-file", "", "--keys-dir", str(keys_dir)])
    out, err = capsys.readouterr()
    return status, out, err


def _public_admin_jwks() -> str:
    key = KEY_TYPES["EC"].generate_key("P-256")
    return json.dumps({"keys": [{**key.as_dict(private=False), "kid": "admin", "alg": "ES256", "use": "sig"}]})


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CronJobs' environment without Redis (the embedded store: keys init then makes keys only)."""
    for name in ("BROKER_REDIS_URL", "BROKER_REDIS_SENTINELS", "BROKER_KEYS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BROKER_ISSUER", "https://auth.example.com")
    monkeypatch.setenv("BROKER_ADMIN_JWKS", _public_admin_jwks())


def test_pull_writes_a_private_folder_the_broker_accepts(api: tuple[FakeApi, str], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    source = tmp_path / "source"
    key = create_signing_key(source, "ES256", state="active")
    fake.bump({f"{key.kid}.json": (source / "signing" / f"{key.kid}.json").read_bytes(), "registry.id": b"reg-1\n"})
    work = tmp_path / "work" / "keys"
    (tmp_path / "work").mkdir(mode=0o777)

    status, out, err = _sync(url, "pull", work, capsys)

    assert (status, err) == (0, "")
    assert json.loads(out) == {"secret": SECRET, "pulled": [key.kid], "registry_id": True}
    assert stat.S_IMODE(work.stat().st_mode) == 0o700
    assert stat.S_IMODE((work / "signing").stat().st_mode) == 0o700
    assert stat.S_IMODE((work / "signing" / f"{key.kid}.json").stat().st_mode) == 0o600
    assert (work / "registry.id").read_text() == "reg-1\n"
    assert keys_sync.REGISTRY_FILE == RECORD_FILE  # the Jobs' record: BROKER_REGISTRY_RECORD unset
    check_key_modes(work)
    assert [k.kid for k in load_signing_keys(work)] == [key.kid]
    assert key.jwk["d"] not in out + err  # no key material printed


def test_keys_init_then_rotation_reach_the_secret(api: tuple[FakeApi, str], tmp_path: Path, job_env: None,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The CronJobs' steps, each on a fresh pull: keys-init on the empty Secret, keys-init again, then
    stage and promote (forced here: the CronJob waits instead)."""
    fake, url = api

    def job(name: str, tool: Any) -> dict[str, Any]:
        work = tmp_path / name / "keys"
        (tmp_path / name).mkdir(mode=0o777)  # the emptyDir
        assert _sync(url, "pull", work, capsys)[0] == 0
        monkeypatch.setenv("BROKER_KEYS_DIR", str(work))
        assert tool() == 0
        capsys.readouterr()
        status, out, err = _sync(url, "push", work, capsys)
        assert (status, err) == (0, "")
        assert not (work / "admin.jwk").exists()  # BROKER_ADMIN_JWKS is set: no admin key generated
        return json.loads(out)

    def states() -> dict[str, str]:
        return {name.removesuffix(".json"): json.loads(content)["state"] for name, content in fake.files().items()}

    def keys_init() -> int:  # a process of its own, as in the Job (it configures the process's logging)
        return subprocess.run([sys.executable, "-m", "app", "keys", "init"], cwd=ROOT, capture_output=True,
                              timeout=60).returncode

    init = job("init", keys_init)
    [first] = init["kids"]
    assert init["pushed"] is True and states() == {first: "active"}
    assert job("init-again", keys_init) == {"secret": SECRET, "pushed": False, "kids": [first]}

    staged = job("stage", lambda: rotate_signing_key.main(["stage"]))
    [second] = [kid for kid in staged["kids"] if kid != first]
    assert states() == {first: "active", second: "next"}
    job("promote", lambda: rotate_signing_key.main(["promote", "--force"]))
    assert states() == {first: "retired", second: "active"}
    assert fake.secret["metadata"]["labels"] == {"app.kubernetes.io/name": "token-broker"}  # metadata kept
    assert [m for m, _ in fake.requests].count("PUT") == 3


@pytest.mark.parametrize("entry", ["admin.jwk", "notes.txt", "a.b.json", "x" * 129 + ".json"])
def test_pull_refuses_an_entry_that_is_not_a_key_file(api: tuple[FakeApi, str], tmp_path: Path, entry: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    fake.bump({entry: b"{}"})
    status, out, err = _sync(url, "pull", tmp_path / "keys", capsys)
    assert (status, out) == (1, "")
    assert err == f"keys_sync: the Secret holds an entry that is neither a signing key file nor registry.id: {entry!r}\n"
    assert not (tmp_path / "keys").exists()


def test_push_refuses_a_secret_changed_since_the_pull(api: tuple[FakeApi, str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    work = tmp_path / "keys"
    assert _sync(url, "pull", work, capsys)[0] == 0
    create_signing_key(work, "ES256", state="active")
    fake.bump({"registry.id": b"other\n"})  # another Job wrote meanwhile

    status, out, err = _sync(url, "push", work, capsys)

    assert (status, out) == (1, "")
    assert err == ("keys_sync: the Secret changed since it was pulled (another key Job?): nothing written; "
                   "run the Job again\n")
    assert fake.files() == {"registry.id": b"other\n"}
    assert [m for m, _ in fake.requests].count("PUT") == 0


def test_push_of_an_unchanged_folder_sends_nothing(api: tuple[FakeApi, str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    fake.bump({"registry.id": b"reg-1\n"})
    work = tmp_path / "keys"
    assert _sync(url, "pull", work, capsys)[0] == 0
    status, out, _ = _sync(url, "push", work, capsys)
    assert status == 0 and json.loads(out) == {"secret": SECRET, "pushed": False, "kids": []}
    assert fake.requests == [("GET", SECRET_PATH)]


@pytest.mark.parametrize("argv, message", [
    pytest.param(["pull", "--api", "http://10.0.0.1:8001"], "the API server must be reached over https "
                 "(http only on loopback, e.g. kubectl proxy): http://10.0.0.1:8001", id="http-off-loopback"),
    pytest.param(["push", "--api", "http://127.0.0.1:9"], "{keys}/.keys-sync.json is missing: run pull first",
                 id="push-without-pull"),
])
def test_refusals(tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    status = keys_sync.main([*argv, "--namespace", NAMESPACE, "--token-file", "", "--keys-dir", str(keys)])
    out, err = capsys.readouterr()
    assert (status, out, err) == (1, "", f"keys_sync: {message.format(keys=keys)}\n")


def test_pull_refuses_a_folder_that_is_not_empty(api: tuple[FakeApi, str], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _, url = api
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "stale").write_text("x")
    status, out, err = _sync(url, "pull", tmp_path / "keys", capsys)
    assert (status, out) == (1, "")
    assert err == f"keys_sync: {tmp_path / 'keys'} is not empty: pull writes into a fresh folder only\n"


def test_broker_follows_a_kubelet_style_secret_update(tmp_path: Path) -> None:
    """The kubelet writes a Secret volume as timestamped folders, ``..data`` pointing at the current
    one and one symlink per entry, and swaps ``..data`` with a rename. The replica's reloader
    (stat through the symlinks) sees the swap and serves the new set. (A writable folder, with the
    modes the broker wants there; tests/test_keys_read_only.py starts it on a read-only tmpfs with
    the Secret volume's own modes.)"""
    source = tmp_path / "source"
    first = create_signing_key(source, "ES256", state="active")
    second = create_signing_key(source, "ES256", state="next")
    keys_dir = tmp_path / "keys"
    mount = keys_dir / "signing"
    mount.mkdir(parents=True, mode=0o700)
    keys_dir.chmod(0o700)
    mount.chmod(0o700)

    def kubelet_writes(stamp: str, kids: list[str]) -> None:
        folder = mount / stamp
        folder.mkdir(mode=0o700)
        for kid in kids:
            (folder / f"{kid}.json").write_bytes((source / "signing" / f"{kid}.json").read_bytes())
            (folder / f"{kid}.json").chmod(0o600)
        (mount / "..data_tmp").symlink_to(stamp)
        (mount / "..data_tmp").replace(mount / "..data")
        for kid in kids:
            if not (mount / f"{kid}.json").is_symlink():
                (mount / f"{kid}.json").symlink_to(f"..data/{kid}.json")

    kubelet_writes("..2026_12_01_00_00_00.1", [first.kid])

    class Log:
        def __init__(self) -> None:
            self.events: list[str] = []

        def info(self, event: str, **fields: Any) -> None:
            self.events.append(event)

        error = info

    log = Log()
    keys = SigningKeys(ensure_signing_keys(keys_dir, "ES256"))
    reloader = SigningKeyReloader(keys_dir, keys, log=log, metrics=Metrics(DECLARED))
    assert sorted(keys.verification_keys()) == [first.kid]

    kubelet_writes("..2026_12_01_00_05_00.2", [first.kid, second.kid])

    assert reloader.reload_if_changed() is True
    assert sorted(keys.verification_keys()) == sorted([first.kid, second.kid])
    assert keys.signer().kid == first.kid
    assert log.events == ["signing_keys.reloaded"]
    assert reloader.reload_if_changed() is False
