"""``scripts/_setup.sh`` installs only when it has to, and says so before anything slow.

Run in a temporary copy of the project with a fake interpreter (``PYTHON``: ``-m venv`` makes a
``.venv/bin/python`` that is the real one) and a fake install command
(``TOKEN_BROKER_INSTALL_CMD``: records its argument), so the decisions are checked without pip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

FIRST = "setting up .venv (first run, about a minute)...\n"
AGAIN = "setting up .venv again (.venv/bin/python does not run; about a minute)...\n"
CHANGED = "pyproject.toml (or the Python of .venv) changed: updating .venv...\n"
TEST_EXTRA = "installing the test dependencies into .venv...\n"
UNRECORDED = "no finished install recorded in .venv: installing (about a minute)...\n"


LIBRARIES = ("packages/jose", "packages/client", "packages/resource")


class Project:
    """A copy of the project's set-up files with fake ``python3 -m venv`` and pip."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "scripts").mkdir()
        shutil.copy(ROOT / "scripts" / "_setup.sh", root / "scripts" / "_setup.sh")
        shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
        for library in LIBRARIES:  # the distributions the server depends on, installed in the same pip command
            (root / library).mkdir(parents=True)
            shutil.copy(ROOT / library / "pyproject.toml", root / library / "pyproject.toml")
        self.log = root / "calls.log"
        self.python = self._script("fake-python", f"""
            if [ "$1 $2" = "-m venv" ]; then
              for last in "$@"; do :; done
              rm -rf "$last"; mkdir -p "$last/bin"; ln -s {sys.executable} "$last/bin/python"
              echo "venv $last" >> {self.log}; exit 0
            fi
            exec {sys.executable} "$@"
        """)
        self.old_python = self._script("old-python", """
            [ "$1" = "--version" ] && { echo "Python 3.9.2"; exit 0; }
            exit 1
        """)
        self.pip = self._script("fake-pip", f'echo "install $1" >> {self.log}; exit "${{FAKE_PIP_RC:-0}}"')

    def _script(self, name: str, body: str) -> Path:
        path = self.root / name
        path.write_text("#!/bin/bash\n" + "\n".join(line.strip() for line in body.strip().splitlines()) + "\n")
        path.chmod(0o755)
        return path

    def setup(self, extra: str = "", *, pip_rc: int = 0, python: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``source scripts/_setup.sh [extra]`` as serve.sh/test.sh do; the calls log starts empty."""
        self.log.write_text("")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
        env.update(PYTHON=str(python or self.python), TOKEN_BROKER_INSTALL_CMD=str(self.pip), FAKE_PIP_RC=str(pip_rc))
        script = 'set -euo pipefail; source scripts/_setup.sh "$@"'
        return subprocess.run(["bash", "-c", script, "setup", *([extra] if extra else [])], cwd=self.root,
                              capture_output=True, text=True, timeout=60, env=env)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    @property
    def stamp(self) -> Path:
        return self.root / ".venv" / ".token-broker-installed"


@pytest.fixture
def project(tmp_path):
    return Project(tmp_path)


def edit_pyproject(p: Project) -> None:
    path = p.root / "pyproject.toml"
    path.write_text(path.read_text() + "\n# a new pin\n")


def edit_library_pyproject(p: Project) -> None:
    path = p.root / "packages" / "client" / "pyproject.toml"
    path.write_text(path.read_text() + "\n# a new pin\n")


def break_venv_python(p: Project) -> None:
    python = p.root / ".venv" / "bin" / "python"
    python.unlink()
    python.symlink_to(p.root / "gone")


def venv_without_record(p: Project) -> None:
    (p.root / ".venv" / "bin").mkdir(parents=True)
    (p.root / ".venv" / "bin" / "python").symlink_to(sys.executable)


def ok(p: Project, extra: str = "") -> None:
    result = p.setup(extra)
    assert result.returncode == 0, result.stderr


def failed_install(p: Project) -> None:
    result = p.setup("", pip_rc=1)
    assert result.returncode == 1 and not p.stamp.exists(), result.stderr


# (what happened before, the extra of the run checked, the calls it makes, what it prints)
CASES = {
    "first run": ([], "", ["venv .venv", "install ."], FIRST),
    "first run, test extra": ([], "test", ["venv .venv", "install .[test]"], FIRST),
    "second run": ([ok], "", [], ""),
    "second run, test extra": ([lambda p: ok(p, "test")], "test", [], ""),
    "plain after test extra": ([lambda p: ok(p, "test")], "", [], ""),
    "test extra after plain": ([ok], "test", ["install .[test]"], TEST_EXTRA),
    "pyproject changed": ([ok, edit_pyproject], "", ["install ."], CHANGED),
    "pyproject changed, test extra": ([lambda p: ok(p, "test"), edit_pyproject], "test", ["install .[test]"], CHANGED),
    "pyproject changed after test extra, plain": ([lambda p: ok(p, "test"), edit_pyproject], "", ["install ."], CHANGED),
    "a library's pyproject changed": ([ok, edit_library_pyproject], "", ["install ."], CHANGED),
    "plain after pyproject change keeps the test record": (
        [ok, lambda p: ok(p, "test"), edit_pyproject, ok], "test", ["install .[test]"], TEST_EXTRA),
    "failed install is retried": ([ok, edit_pyproject, failed_install], "", ["install ."], UNRECORDED),
    "failed first install is retried": ([failed_install], "", ["install ."], UNRECORDED),
    "venv python broken": ([ok, break_venv_python], "", ["venv .venv", "install ."], AGAIN),
    "venv made before install records": ([venv_without_record], "", ["install ."], UNRECORDED),
}


@pytest.mark.parametrize("before,extra,calls,stderr", list(CASES.values()), ids=list(CASES))
def test_installs_only_when_needed(project, before, extra, calls, stderr):
    for step in before:
        step(project)
    result = project.setup(extra)
    assert (result.returncode, project.calls(), result.stderr) == (0, calls, stderr)
    assert project.stamp.exists()


def test_record_is_written_only_after_pip_succeeds(project):
    ok(project)
    edit_pyproject(project)
    result = project.setup("", pip_rc=3)
    assert (result.returncode, project.calls(), result.stderr) == (3, ["install ."], CHANGED)
    assert not project.stamp.exists()


def test_record_holds_one_hash_per_installed_extra(project):
    ok(project)
    assert len(project.stamp.read_text().split()) == 1
    ok(project, "test")
    first = project.stamp.read_text().split()
    assert len(first) == 2 and all(len(token) == 64 for token in first)
    edit_pyproject(project)
    ok(project, "test")
    assert len(set(project.stamp.read_text().split()) | set(first)) == 4


def test_old_python_is_refused_before_anything_is_made(project):
    result = project.setup("", python=project.old_python)
    assert (result.returncode, project.calls(), result.stderr) == (
        1, [], "Python 3.11 or newer is required (found: Python 3.9.2)\n")
    assert not (project.root / ".venv").exists()


def test_the_libraries_are_installed_in_the_same_pip_command_as_the_project():
    """pip must never look for token-broker-client==<version> on an index: the local packages come first."""
    setup = (ROOT / "scripts" / "_setup.sh").read_text()
    assert "-e packages/jose -e packages/client -e packages/resource -e \"$_tb_spec\"" in setup


@pytest.mark.parametrize("script,line", [
    ("scripts/serve.sh", "source scripts/_setup.sh\n"),
    ("scripts/test.sh", "source scripts/_setup.sh test\n"),
    (".ci/run", "./scripts/test.sh -q -p no:cacheprovider\n"),
], ids=["serve", "test", "ci"])
def test_entry_points_use_the_setup(script, line):
    assert line in (ROOT / script).read_text()
