"""The distributions of this repository: one version, the server pinning each library, and the old
``app.client`` / ``app.resource`` names forwarding to the libraries with a DeprecationWarning."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib

import pytest

import token_broker_client
import token_broker_resource
from tests.conftest import ROOT

LIBRARIES = {"jose": "token-broker-jose", "client": "token-broker-client", "resource": "token-broker-resource"}


def _project(path) -> dict:
    return tomllib.loads(path.read_text())["project"]


def test_every_distribution_is_released_with_the_server_and_the_server_pins_each():
    server = _project(ROOT / "pyproject.toml")
    versions = {name: _project(ROOT / "packages" / folder / "pyproject.toml") for folder, name in LIBRARIES.items()}
    assert {name: p["name"] for name, p in versions.items()} == {name: name for name in versions}
    assert {p["version"] for p in versions.values()} == {server["version"]}
    for name in LIBRARIES.values():
        assert f"{name}=={server['version']}" in server["dependencies"]
    assert token_broker_client.__version__ == token_broker_resource.__version__ == server["version"]


OLD_NAMES = {
    "app.client": ("BrokerClient", token_broker_client.BrokerClient),
    "app.resource": ("ResourceVerifier", token_broker_resource.ResourceVerifier),
}


@pytest.mark.parametrize("old", list(OLD_NAMES))
def test_the_old_import_works_for_one_release_with_a_deprecation_warning(old):
    name, new = OLD_NAMES[old]
    module = importlib.import_module(old)  # importing the package warns about nothing: using a moved name does
    with pytest.warns(DeprecationWarning, match=rf"^{old}\.{name} moved to token_broker_\w+\.{name} \(distribution "):
        assert getattr(module, name) is new
    with pytest.raises(AttributeError):
        module.NotAName  # noqa: B018 - the lookup is the test


def test_the_libraries_import_nothing_of_the_server_and_the_tooling_warns_about_nothing():
    code = ("import sys, token_broker_client, token_broker_resource; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'app', 'litestar', 'uvicorn', 'fakeredis', "
            "'lupa', 'msgspec', 'structlog'}))")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=ROOT / "packages")
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")
    tooling = subprocess.run([sys.executable, "-W", "error", "-c", "import app.client.admin_cli, app.client.why"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (tooling.returncode, tooling.stderr) == (0, "")
