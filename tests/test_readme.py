"""The README walk-through, run as written (bash) against a live broker process."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from scripts.processes import start_broker
from tests.conftest import ROOT

pytestmark = pytest.mark.live


def walkthrough_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Walk-through"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_readme_walkthrough_runs_as_written(tmp_path):
    # The walk-through uses the broker URL as issuer (loopback http), like ./scripts/serve.sh does.
    keys_dir = tmp_path / "keys"
    broker = start_broker(keys_dir, tmp_path / "broker.log")
    url = broker.url
    try:
        script = walkthrough_block()
        script = script.replace("BROKER=http://127.0.0.1:8000", f"BROKER={url}")
        assert "/tmp" not in script  # a live token stays in a shell variable, not in a shared file
        # The library's console script as the same code run by this interpreter (the installed console
        # script itself is run by tests/test_installed_libraries.py).
        # One pass: sys.executable may itself end in .venv/bin/python.
        script = re.sub(r"(?<![\w/])\.venv/bin/(token-broker-client|python)",
                        lambda m: sys.executable + (" -m token_broker_client" if m.group(1) != "python" else ""), script)
        work = tmp_path / "work"
        work.mkdir()
        (work / "scripts").symlink_to(ROOT / "scripts")
        (work / "keys").symlink_to(keys_dir)
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, capture_output=True, text=True,
                                timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert '"client_id": "orders-svc"' in out or '"client_id":"orders-svc"' in out
        assert '"token_type":"Bearer"' in out
        assert "\n401\n" in out
        assert '"valid": true' in out
        assert (keys_dir / "orders-svc.jwk").stat().st_mode & 0o777 == 0o600  # written by keygen, on "the service's machine"
        assert '"private_key_path": null' in out  # the operator registered the public key only
    finally:
        broker.stop()
