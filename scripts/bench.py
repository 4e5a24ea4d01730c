"""Token broker benchmark: ``.venv/bin/python scripts/bench.py [flags]`` (``--help`` lists them).

The benchmark itself is the package ``scripts/bench/`` (its docstring says what one run does;
docs/performance.md has the figures). This file only lets the command run from a checkout.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from scripts.bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
