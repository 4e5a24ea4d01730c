"""The client and resource libraries checked the way a service installs them.

Here, in the project's virtualenv: build the four wheels (``pip wheel --no-deps``, from copies of
the sources so the checkout gets no build/ or egg-info), check what each ships, start a live broker
(``python -m app serve``, this virtualenv) and a real Redis. There, in a fresh virtualenv made
once per test session in a tmp dir: only the jose, client (with its ``[redis]`` extra) and resource
wheels, their requirements from the package index, and pytest; no server dependency. The tests
that run there are ``tests/installed/installed_libraries.py`` (they import nothing from the
project's source tree, so ``tests/client`` and ``tests/resource``, which start brokers in-process
and use the server's helpers, keep running here against the source tree).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.processes import start_broker
from tests.conftest import ROOT
from tests.helpers import RS1

# The first test builds the wheels and the venv (pip steps bounded by PIP_TIMEOUT each).
pytestmark = [pytest.mark.live, pytest.mark.redis, pytest.mark.timeout(900)]

LIBRARIES = ("jose", "client", "resource")
#: Bounds every pip step: the index is local or near; a hung download fails the test, not CI's clock.
PIP_TIMEOUT = 600
_SKIP_COPY = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")


def _pip(python: Path | str, *args: str) -> None:
    done = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, timeout=PIP_TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"jose"|"client"|"resource"|"server": wheel file}, built from copies of the sources."""
    src, out = tmp_path_factory.mktemp("wheel-src"), tmp_path_factory.mktemp("wheels")
    for name in LIBRARIES:
        shutil.copytree(ROOT / "packages" / name, src / name, ignore=_SKIP_COPY)
    server = src / "server"
    server.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, server / name)
    shutil.copytree(ROOT / "app", server / "app", ignore=_SKIP_COPY)
    _pip(sys.executable, "wheel", "--no-deps", "-q", "-w", str(out), *(str(src / n) for n in (*LIBRARIES, "server")))
    built = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
    return {"jose": built["token_broker_jose"], "client": built["token_broker_client"],
            "resource": built["token_broker_resource"], "server": built["token_broker"]}


@pytest.fixture(scope="session")
def fresh_venv(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the three library wheels (client with [redis]) and pytest, nothing else."""
    venv = tmp_path_factory.mktemp("fresh-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    _pip(python, "install", "-q", str(wheels["jose"]), f"{wheels['client']}[redis]", str(wheels["resource"]),
         "pytest==9.0.3")  # pinned as the server's [test] extra pins it
    return python


def _top_level(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return {name.split("/")[0] for name in zf.namelist() if ".dist-info/" not in name}


def test_only_the_server_wheel_ships_a_top_level_app(wheels):
    assert {name: _top_level(path) for name, path in wheels.items()} == {
        "jose": {"token_broker_jose"}, "client": {"token_broker_client"},
        "resource": {"token_broker_resource"}, "server": {"app"},
    }


@pytest.fixture
def live(tmp_path: Path) -> Iterator[str]:
    broker = start_broker(tmp_path / "keys", tmp_path / "broker.log")
    try:
        yield broker.url
    finally:
        broker.stop()


def test_the_installed_libraries_against_a_live_broker(fresh_venv, live, real_redis, tmp_path):
    work = tmp_path / "service"
    work.mkdir()
    shutil.copy(ROOT / "tests" / "installed" / "installed_libraries.py", work / "test_installed_libraries.py")
    (work / "pytest.ini").write_text("[pytest]\naddopts = -ra --strict-markers\nfilterwarnings = error\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("BROKER_", "TB_"))}
    env.update(TB_ISSUER=live, TB_AUDIENCE=RS1, TB_REDIS_URL=real_redis.url,
               TB_ADMIN_KEY=str(tmp_path / "keys" / "admin.jwk"))
    done = subprocess.run([str(fresh_venv), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(work)], cwd=work,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]
