#!/usr/bin/env python3
"""Verify an access token as a resource server would: against the broker's published JWKS.

    .venv/bin/python scripts/verify_token.py --audience https://orders.example [--scope orders:read] TOKEN

Fetches the RFC 8414 metadata from the issuer, then its JWKS, then checks the token
(RFC 9068 §4: typ, signature, iss, aud, exp, scope). Prints the claims, or the RFC 6750 error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from token_broker_resource import BearerError, ResourceVerifier, VerifierUnavailable


async def run(args: argparse.Namespace) -> int:
    verifier = ResourceVerifier(args.issuer, args.audience)
    try:
        token = await verifier.verify(args.token, args.scope)
    except BearerError as exc:
        print(f"rejected: HTTP {exc.status} {exc.error or ''} ({exc.reason})".strip(), file=sys.stderr)
        return 1
    except VerifierUnavailable as exc:
        print(f"cannot reach the broker's metadata or JWKS: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"valid": True, "client_id": token.client_id, "scopes": sorted(token.scopes), "claims": token.claims}, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("token")
    parser.add_argument("--issuer", default=os.environ.get("BROKER_ISSUER", "http://127.0.0.1:8000"))
    parser.add_argument("--audience", required=True, help="this resource server's identifier (the token's aud)")
    parser.add_argument("--scope", action="append", default=[], help="a scope the call needs (repeatable)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
