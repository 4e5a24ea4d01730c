"""Every start-up failure a user can cause is one line on stderr and an exit status, no traceback
(``app/start_failures.py``; the statuses are listed in ``serve --help`` and docs/settings.md):
2 for configuration, 1 for the environment. Each case runs ``python -m app serve`` for real."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.processes import RedisServer
from tests.conftest import ROOT, free_port, require_binary

PASSWORD = "right-password"


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[RedisServer]:
    """A Redis that wants a password, with a user that may connect but run none of the broker's commands."""
    server = RedisServer(require_binary("redis-server", "the real-Redis tests", "apt-get install redis-server")).start()
    server.command("ACL", "SETUSER", "pinger", "on", ">pinger-pw", "~*", "+ping", "+hello", "+auth", "+client", "+info",
                   "+config")
    server.command("CONFIG", "SET", "requirepass", PASSWORD)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def _world_writable(keys: Path) -> None:
    keys.mkdir(mode=0o700)
    os.chmod(keys, 0o777)


def _file_in_the_way(keys: Path) -> None:
    keys.parent.joinpath("a-file").write_text("")


def _bad_clients_file(keys: Path) -> None:
    keys.parent.joinpath("clients.json").write_text("{not json")


def _otlp_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ModuleNotFoundError:
        return False


#: (env, serve arguments, setup of the folder around keys/, the expected stderr line (``re:`` = a
#: regex of it), exit status). Placeholders: {keys} the keys folder, {tmp} its parent, {port} the
#: public port, {mport} the management port, {busy} a port something listens on, {down} a port
#: nothing listens on, {redis} the locked Redis's port.
CASES = [
    pytest.param({"BROKER_REDIS_URL": "redis://127.0.0.1:{down}/0"}, [], None,
                 "BROKER_REDIS_URL: cannot reach redis://127.0.0.1:{down}/0 (connection refused); start Redis or fix the URL",
                 1, id="redis-unreachable"),
    pytest.param({"BROKER_REDIS_URL": "redis://no-such-host.invalid:6379/0"}, [], None,
                 "BROKER_REDIS_URL: cannot reach redis://no-such-host.invalid:6379/0 (host not found); start Redis or fix "
                 "the URL", 1, id="redis-host-not-found"),
    pytest.param({"BROKER_REDIS_URL": "redis://:wrong@127.0.0.1:{redis}/0"}, [], None,
                 "BROKER_REDIS_URL: redis://:***@127.0.0.1:{redis}/0 refused the user name or password (WRONGPASS); "
                 "fix them in the URL: redis://[user]:PASSWORD@host:port/db", 2,
                 id="redis-wrong-password", marks=pytest.mark.redis),
    pytest.param({"BROKER_REDIS_URL": "redis://127.0.0.1:{redis}/0"}, [], None,
                 "BROKER_REDIS_URL: redis://127.0.0.1:{redis}/0 requires a password (NOAUTH); put it in the URL: "
                 "redis://[user]:PASSWORD@host:port/db", 2, id="redis-noauth", marks=pytest.mark.redis),
    pytest.param({"BROKER_REDIS_URL": "redis://pinger:pinger-pw@127.0.0.1:{redis}/0"}, [], None,
                 r"re:BROKER_REDIS_URL: the Redis user may not run a command the broker needs \(this user has no "
                 r"permissions to run the '\w+' command\); grant it in the Redis ACL \(the broker runs scripts and key "
                 r"commands on its keys\)", 2, id="redis-noperm-in-the-worker", marks=pytest.mark.redis),
    pytest.param({"BROKER_REDIS_URL": "redis://pinger:pinger-pw@127.0.0.1:{redis}/0"}, ["--workers", "2"], None,
                 r"re:BROKER_REDIS_URL: the Redis user may not run a command the broker needs \(this user has no "
                 r"permissions to run the '\w+' command\); grant it in the Redis ACL \(the broker runs scripts and key "
                 r"commands on its keys\)", 2, id="redis-noperm-in-two-workers", marks=pytest.mark.redis),
    pytest.param({"BROKER_ADMIN_JWKS": "not json"}, [], None,
                 'BROKER_ADMIN_JWKS: is not valid JSON; set it to the admin client\'s public key(s) as JSON, {"keys": '
                 '[{"kty": ..., "alg": ..., ...}]} (or unset it to use keys/admin.jwk)', 2, id="admin-jwks-not-json"),
    pytest.param({"BROKER_ADMIN_JWKS": '{"keys": []}'}, [], None,
                 'BROKER_ADMIN_JWKS: holds no key; set it to the admin client\'s public key(s) as JSON, {"keys": '
                 '[{"kty": ..., "alg": ..., ...}]} (or unset it to use keys/admin.jwk)', 2, id="admin-jwks-empty"),
    # urlsplit's own ValueError (an unclosed IPv6 bracket) once escaped as a traceback; the password stays out.
    pytest.param({"BROKER_REDIS_URL": "redis://:secret-pw@[::1"}, [], None,
                 "BROKER_REDIS_URL: not a valid URL (Invalid IPv6 URL); write it as redis://[user]:PASSWORD@host:port/db "
                 "(an IPv6 host in brackets)", 2, id="redis-url-malformed"),
    pytest.param({"BROKER_ADMIN_JWKS": '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'}, [], None,
                 "BROKER_ADMIN_JWKS: unsupported key type 'oct': use EC, RSA or OKP (no symmetric keys); set it to the "
                 'admin client\'s public key(s) as JSON, {"keys": [{"kty": ..., "alg": ..., ...}]} (or unset it to use '
                 "keys/admin.jwk)", 2, id="admin-jwks-symmetric-key"),
    pytest.param({"BROKER_KEYS_DIR": "{tmp}/a-file/keys"}, [], _file_in_the_way,
                 "BROKER_KEYS_DIR={tmp}/a-file/keys: cannot create the first signing key in {tmp}/a-file/keys/signing "
                 "(Not a directory); make it a folder this user (uid {uid}) can read and write, or point BROKER_KEYS_DIR "
                 "at one", 1, id="keys-folder-not-a-folder"),
    pytest.param({"BROKER_KEYS_DIR": "/proc/no-such-dir/keys"}, [], None,
                 "BROKER_KEYS_DIR=/proc/no-such-dir/keys: cannot create the first signing key in "
                 "/proc/no-such-dir/keys/signing (No such file or directory); make it a folder this user (uid {uid}) "
                 "can read and write, or point BROKER_KEYS_DIR at one", 1,
                 id="keys-folder-cannot-be-created"),
    pytest.param({}, [], _world_writable,
                 "BROKER_KEYS_DIR: keys folder {keys} is writable by group or others (mode 0777); run: chmod 700 {keys}",
                 2, id="keys-folder-too-open"),
    pytest.param({}, ["--port", "{busy}"], None,
                 "--port: 127.0.0.1:{busy} is already in use; stop the process listening there or choose another --port",
                 1, id="public-port-in-use"),
    pytest.param({"BROKER_MANAGEMENT_PORT": "{busy}"}, [], None,
                 "BROKER_MANAGEMENT_PORT: 127.0.0.1:{busy} is already in use; stop the process listening there or set "
                 "BROKER_MANAGEMENT_PORT to a free port", 1, id="management-port-in-use"),
    pytest.param({"BROKER_MANAGEMENT_PORT": "{port}"}, [], None,
                 "BROKER_MANAGEMENT_PORT={port} is also the public --port: give them different ports", 2,
                 id="management-port-is-the-public-port"),
    pytest.param({"BROKER_MANAGEMENT_HOST": "192.0.2.1"}, [], None,
                 "BROKER_MANAGEMENT_HOST: cannot listen on 192.0.2.1:{mport} (Cannot assign requested address); use an "
                 "address of this machine (127.0.0.1, or 0.0.0.0 for every interface)", 2, id="management-host-not-here"),
    pytest.param({"BROKER_CLIENTS_FILE": "{tmp}/clients.json"}, [], _bad_clients_file,
                 "BROKER_CLIENTS_FILE={tmp}/clients.json: cannot read JSON (DecodeError)", 2, id="clients-file-not-json"),
    pytest.param({"BROKER_CLIENTS_FILE": "{tmp}/missing.json"}, [], None,
                 "BROKER_CLIENTS_FILE={tmp}/missing.json: cannot read JSON (FileNotFoundError)", 2, id="clients-file-missing"),
    pytest.param({"BROKER_LEEWAY": "100"}, [], None,
                 "BROKER_LEEWAY must be at most 60 seconds (FAPI 2.0 §5.3.2.1 future iat/nbf ceiling)", 2, id="value-out-of-range"),
    pytest.param({"BROKER_REDIS_TIMEOUT": "soon"}, [], None, "BROKER_REDIS_TIMEOUT='soon' is not a valid float", 2,
                 id="value-malformed"),
    pytest.param({}, ["--workers", "2"], None,
                 "--workers > 1 needs BROKER_REDIS_URL (the embedded store is per process)", 2, id="workers-without-redis"),
    pytest.param({"BROKER_TRACING": "otlp"}, [], None,
                 "BROKER_TRACING=otlp needs the OpenTelemetry packages: pip install 'token-broker[otel]' (or set "
                 "BROKER_TRACING=off)", 2, id="tracing-packages-missing",
                 marks=pytest.mark.skipif(_otlp_installed(), reason="the OTLP exporter is installed here")),
    pytest.param({"BROKER_TOKN_LIFETIME": "600"}, [], None,
                 "unknown setting BROKER_TOKN_LIFETIME; did you mean BROKER_TOKEN_LIFETIME?", 2, id="unknown-setting"),
]


def _fill(text: str, values: dict[str, Any]) -> str:
    for name, value in values.items():
        text = text.replace("{" + name + "}", str(value))
    return text


def _serve(env: dict[str, str], args: list[str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    return subprocess.run([sys.executable, "-m", "app", "serve", *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.live
@pytest.mark.parametrize(("env", "args", "setup", "line", "status"), CASES)
def test_a_failed_start_is_one_line(tmp_path: Path, request: pytest.FixtureRequest, busy_port: int, env: dict[str, str],
                                    args: list[str], setup: Any, line: str, status: int) -> None:
    keys = tmp_path / "keys"
    port, mport = free_port(), free_port()
    redis = request.getfixturevalue("locked_redis").port if "{redis}" in str(env) else None
    values = {"keys": keys, "tmp": tmp_path, "port": port, "mport": mport, "busy": busy_port, "down": free_port(), "uid": os.getuid(),
              "redis": redis}
    if setup is not None:
        setup(keys)
    full_env = {"BROKER_KEYS_DIR": str(keys), "BROKER_MANAGEMENT_PORT": str(mport),
                **{k: _fill(v, values) for k, v in env.items()}}
    args = [_fill(a, values) for a in args]
    proc = _serve(full_env, args if "--port" in args else ["--port", str(port), *args])
    expected = _fill(line, values)
    if expected.startswith("re:"):
        assert re.fullmatch(f"token-broker: {expected[3:]}\n", proc.stderr), proc.stderr
    else:
        assert proc.stderr == f"token-broker: {expected}\n"
    assert proc.returncode == status
    # Found before any worker started: nothing else was written. Found in a worker: its JSON log
    # lines on stdout, still no traceback.
    assert "Traceback" not in proc.stdout
    if request.node.callspec.id not in ("redis-noperm-in-the-worker", "redis-noperm-in-two-workers"):
        assert proc.stdout == ""


@pytest.mark.live
def test_an_unknown_setting_is_only_a_warning_when_allowed(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "app", "settings", "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**{k: v for k, v in os.environ.items() if not k.startswith("BROKER_")},
                                           "BROKER_TOKN_LIFETIME": "600", "BROKER_ALLOW_UNKNOWN_SETTINGS": "true"})
    assert (proc.returncode, proc.stderr) == (0, "token-broker: warning: unknown setting BROKER_TOKN_LIFETIME; did you mean "
                                                 "BROKER_TOKEN_LIFETIME? (ignored: BROKER_ALLOW_UNKNOWN_SETTINGS=true)\n")
