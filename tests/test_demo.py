"""The demo from the README runs to the end as a new user would run it: one command, exit 0."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.live


def test_demo_runs_all_three_steps_and_cleans_up(tmp_path: object) -> None:
    # From another working directory, as a reader who copies the README command would.
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=100)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr
    lines = [
        'registered client "demo-client" through the admin API → 201',
        # step 1
        "Step 1:", "[client] POST /token → 200", "[resource-server] GET /data → 200",
        # step 2
        "Step 2:", "[client] POST /token → 401  invalid_client", "InvalidClientError: error='invalid_client', HTTP 401",
        # step 3: 401 from the RS, one re-authentication, one retry, 200
        "Step 3:", '[resource-server] GET /data → 401  WWW-Authenticate: Bearer realm="demo-api", error="invalid_token"',
        "[client] POST /token → 200", "[resource-server] GET /data → 200",
        "Demo finished: every step behaved as expected.",
    ]
    position = 0
    for line in lines:
        found = out.find(line, position)
        assert found >= 0, f"missing, or out of order: {line!r}\n{out}"
        position = found
    step3 = out[out.index("Step 3:"):]
    assert step3.count("POST /token") == 1 and step3.count("[resource-server] GET /data") == 2
    # Private keys never reach the output.
    assert '"d"' not in out
    # Every process the demo started is gone: nothing listens on its ports any more.
    for port in re.findall(r"http://127\.0\.0\.1:(\d+)", out):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(port))) != 0, f"port {port} still open"
