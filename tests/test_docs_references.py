"""The docs name tests by pytest node id; a renamed or deleted test must not leave a dead reference.

docs/attack-matrix.md says which test checks each hostile input. If a test is renamed, the entry
would silently point at nothing, and the matrix would claim coverage that no longer exists. Node
ids are collected by pytest itself (a subprocess, collection only: nothing runs).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "docs" / "attack-matrix.md", ROOT / "docs" / "security.md"]
NODE_ID = re.compile(r"`(tests/[\w/]+\.py)(::[^`\s]+)?`")


def _referenced() -> dict[str, set[str]]:
    refs: dict[str, set[str]] = {}
    for doc in DOCS:
        for path, node in NODE_ID.findall(doc.read_text()):
            refs.setdefault(path, set())
            if node:
                refs[path].add(path + node)
    return refs


def _collected(paths: list[str]) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *paths],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return {line.strip() for line in out.stdout.splitlines() if "::" in line}


def test_every_test_the_docs_name_exists() -> None:
    refs = _referenced()
    assert refs, "no test references found: did the docs move?"
    missing_files = sorted(p for p in refs if not (ROOT / p).is_file())
    assert not missing_files, f"docs name test files that do not exist: {missing_files}"
    collected = _collected(sorted(p for p in refs if p.split("/")[-1].startswith("test_")))
    missing = sorted(
        ref for nodes in refs.values() for ref in nodes
        # A node id without [...] names every parametrized case of that test.
        if ref not in collected and not any(c.startswith(ref + "[") for c in collected)
    )
    assert not missing, "docs name tests that do not exist:\n" + "\n".join(missing)
