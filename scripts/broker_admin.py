#!/usr/bin/env python3
"""Onboard and manage broker clients: ``scripts/broker_admin.py --help`` (logic: app.client.admin)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from app.client.admin_cli import main

if __name__ == "__main__":
    sys.exit(main())
