#!/usr/bin/env python3
"""Print a fresh client assertion (RFC 7523 private_key_jwt) for a client's private key file.

    .venv/bin/python scripts/mint_assertion.py --client-id orders --key keys/orders.jwk [--issuer URL]

The assertion is single-use: its jti is recorded by the broker on first use.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from token_broker_jose.assertion import MAX_LIFETIME, make_client_assertion
from token_broker_jose.credentials import ClientKey


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--key", required=True, type=Path, help="the client's private JWK file (written by broker_admin.py register)")
    parser.add_argument("--issuer", default=os.environ.get("BROKER_ISSUER", "http://127.0.0.1:8000"),
                        help="the broker's issuer identifier, used as aud (default: $BROKER_ISSUER or http://127.0.0.1:8000)")
    parser.add_argument("--lifetime", type=int, default=MAX_LIFETIME, help=f"seconds until exp (1-{MAX_LIFETIME})")
    args = parser.parse_args()
    try:
        key = ClientKey(args.key)
    except ValueError as exc:
        print(f"mint_assertion: cannot use {args.key}: {exc}", file=sys.stderr)
        return 2
    try:
        assertion = make_client_assertion(key.key, client_id=args.client_id, issuer=args.issuer, alg=key.alg,
                                          kid=key.kid, lifetime=args.lifetime)
    except ValueError as exc:
        parser.error(str(exc))
    print(assertion)
    return 0


if __name__ == "__main__":
    sys.exit(main())
