"""Real processes on loopback, shared by the tests, the demo and the benchmark.

One copy of: a free port, a ``redis-server`` started and stopped, a broker process
(``python -m app serve``) started and waited for, registering clients through the project's own
admin client (``app.client.admin.BrokerAdmin``), and ``wait_until`` (wait for a condition, never
for a fixed time).

Why here, under ``scripts/`` (a package: ``scripts/__init__.py``):

* not in ``tests/``: ``scripts/demo.py`` and ``scripts/bench.py`` are commands users run from a
  checkout; they must not depend on the test suite (which imports pytest);
* not in ``app/``: that is the installed broker, and spawning redis-server and broker processes is
  tooling around it, not part of it;
* both sides reach it without path tricks of their own: the scripts already put the checkout root
  on ``sys.path`` (that is how they import ``app``), and pytest puts it there for ``tests``, so
  both say ``from scripts.processes import ...``.

Only loopback addresses are used; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port(other_than: int | None = None) -> int:
    """A TCP port nothing listens on right now (the kernel's pick for port 0), never ``other_than``
    (the kernel may hand out a port again as soon as it is closed: a broker's public and management
    ports picked one after the other were once the same)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != other_than:
            return port


def wait_until(predicate: Callable[[], T], timeout: float, *, what: str = "the condition", interval: float = 0.05,
               ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Call ``predicate`` until it returns something truthy, and return that; ``TimeoutError``
    after ``timeout`` seconds. Exceptions listed in ``ignore`` count as "not yet" (the last one is
    named in the timeout message)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except ignore as exc:
            last = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last!r})" if last is not None else ""
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM (after SIGCONT, in case a test stopped it), then SIGKILL if it does not exit."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
    except ProcessLookupError:  # exited in between
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (uvicorn's supervisor and its workers), from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo.extend(int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split())
        except OSError:
            pass
    return out


def worker_pids(supervisor: int) -> set[int]:
    """The live worker processes of ``serve --workers N`` (multiprocessing's ``spawn_main``, not
    its resource tracker). A process listed by ``process_tree`` can exit before its ``cmdline`` is
    read (a killed worker, just reaped): it is no longer a worker."""
    workers = set()
    for pid in process_tree(supervisor)[1:]:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            workers.add(pid)
    return workers


# -- redis-server ----------------------------------------------------------------------------------


class RedisServer:
    """One ``redis-server`` on loopback: no persistence, its own temp dir, a free port.

    ``prefix`` goes before the command (the benchmark pins it with ``taskset``).
    """

    def __init__(self, binary: str = "redis-server", *, workdir: Path | None = None, logfile: Path | None = None,
                 prefix: Sequence[str] = ()) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = str(workdir) if workdir is not None else tempfile.mkdtemp(prefix="tb-redis-")
        self.logfile = logfile
        self.prefix = list(prefix)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> RedisServer:
        cmd = [*self.prefix, self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", self.dir, "--protected-mode", "yes"]
        if self.logfile is not None:
            cmd += ["--logfile", str(self.logfile)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = self.proc

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {proc.returncode} (port {self.port})")
            return self.command("PING") is True

        wait_until(answers, timeout, what=f"redis-server on port {self.port}", ignore=(redis.RedisError, OSError))
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=5)
            self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pause(self) -> None:
        """SIGSTOP: the server accepts nothing and answers nothing (a hung Redis)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def command(self, *args: Any) -> Any:
        """One command on a fresh connection, with redis-py's reply parsing (INFO gives a dict)."""
        r = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)
        try:
            return r.execute_command(*args)
        finally:
            r.close()


# -- broker processes --------------------------------------------------------------------------------


class BrokerProcess:
    """A running ``python -m app serve``; its stdout and stderr go to ``log_path``.

    ``url`` is the public listener (``--port``), ``management_url`` the management listener
    (``BROKER_MANAGEMENT_PORT``: ``/healthz``, ``/readyz``, ``/metrics``)."""

    def __init__(self, port: int, proc: subprocess.Popen[bytes], log_path: Path, management_port: int) -> None:
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self.management_port = management_port
        self.management_url = f"http://127.0.0.1:{management_port}"

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (uvicorn's own plain-text lines are skipped)."""
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text()[-chars:]

    def ready(self) -> bool:
        """The management listener's ``/readyz`` answers 200; raises if the process has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"broker exited with code {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return httpx.get(self.management_url + "/readyz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        stop_process(self.proc)


def _own_code(root: Path) -> list[str]:
    packages = root / "packages"
    return [str(root), *(str(p) for p in sorted(packages.glob("*")) if p.is_dir())]


def broker_env(issuer: str, keys_dir: Path, redis_url: str | None = None,
               env: dict[str, str] | None = None, root: Path = ROOT) -> dict[str, str]:
    """The environment of a broker process: this one's, minus any ``BROKER_*`` setting of the
    caller's shell (a broker under test gets only what the caller asks for), plus ``env``.
    ``root``: the checkout whose ``app`` runs (another revision's, or a snapshot's, for the
    benchmark): its ``app`` and its ``packages/*`` come first on ``PYTHONPATH``, ahead of the
    virtualenv's editable installs (which point at the checkout that made the virtualenv)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    out["PYTHONUNBUFFERED"] = "1"
    out["PYTHONPATH"] = os.pathsep.join(p for p in (*_own_code(root), os.environ.get("PYTHONPATH")) if p)
    out["BROKER_ISSUER"] = issuer
    out["BROKER_KEYS_DIR"] = str(keys_dir)
    if redis_url:
        out["BROKER_REDIS_URL"] = redis_url
    out.update(env or {})
    return out


def start_broker(keys_dir: Path, log_path: Path, *, port: int | None = None, issuer: str | None = None,
                 redis_url: str | None = None, env: dict[str, str] | None = None, workers: int = 1,
                 prefix: Sequence[str] = (), timeout: float = 30, root: Path = ROOT) -> BrokerProcess:
    """Start ``python -m app serve`` (of the checkout ``root``) and return once it is ready.

    Ready means the management listener's ``/readyz`` answered 200 and, with several workers, that
    every worker has connected to Redis (its lifespan ran: the shared socket lets the first ready
    worker answer ``/readyz`` for all of them). ``issuer`` defaults to the broker's own loopback
    URL; the management port is a free one unless ``env`` sets ``BROKER_MANAGEMENT_PORT``.
    """
    port = port or free_port()
    issuer = issuer or f"http://127.0.0.1:{port}"
    environ = broker_env(issuer, keys_dir, redis_url, {"BROKER_MANAGEMENT_PORT": str(free_port(other_than=port)),
                                                       **(env or {})}, root=root)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", str(workers)],
            cwd=root, env=environ, stdout=log, stderr=subprocess.STDOUT,
        )
    broker = BrokerProcess(port, proc, log_path, int(environ["BROKER_MANAGEMENT_PORT"]))
    try:
        wait_until(broker.ready, timeout, what=f"the broker on port {port} to be ready")
        if workers > 1 and redis_url:
            redis_port = int(redis_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            wait_until(lambda: _workers_connected(proc.pid, redis_port) >= workers, timeout,
                       what=f"{workers} broker workers to connect to Redis")
    except (TimeoutError, RuntimeError) as exc:
        broker.stop()
        raise RuntimeError(f"{exc}\n{broker.log_tail()}") from None
    return broker


def _workers_connected(supervisor: int, port: int) -> int:
    """How many child processes of ``supervisor`` hold an established TCP connection to ``port``."""
    remote: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:  # 01 = ESTABLISHED
                remote.add(fields[9])  # socket inode
    return sum(1 for pid in process_tree(supervisor)[1:] if _socket_inodes(pid) & remote)


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                out.add(target[8:-1])
    except OSError:
        pass
    return out


def register_clients(broker_url: str, admin_key: Path, clients: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Register clients (RFC 7591 metadata) through the admin API with ``app.client.admin``;
    ``admin_key`` is the admin private JWK (a dev broker writes ``<keys_dir>/admin.jwk``)."""
    from app.client.admin import BrokerAdmin

    with BrokerAdmin(broker_url, admin_key) as admin:
        return [admin.register(metadata) for metadata in clients]
