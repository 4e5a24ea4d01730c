"""Rotate the broker's access-token signing key (RFC 9068 tokens, RFC 7517 JWKS) with no failed
verification anywhere. Thin over ``app.service.signing_keys``; see docs/operations.md.

    .venv/bin/python scripts/rotate_signing_key.py status
    .venv/bin/python scripts/rotate_signing_key.py stage              # new key: published, not signing
    # ... wait at least the JWKS cache lifetime (300 s) so every resource server has seen it
    .venv/bin/python scripts/rotate_signing_key.py promote            # next -> active, active -> retired
    # ... later (e.g. from cron): delete retired keys once every token they signed has expired
    .venv/bin/python scripts/rotate_signing_key.py retire-expired

Run it where the shared keys folder is mounted (BROKER_KEYS_DIR, default ./keys). With compose:
``docker compose run --rm keys-init python scripts/rotate_signing_key.py status``. Replicas pick
changes up within about a second, with no restart.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import ConfigError, Settings
from app.keystore import KeyFileError
from app.service import signing_keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rotate_signing_key", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys-dir", type=Path, help="keys folder (default: BROKER_KEYS_DIR or ./keys)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="list keys with state and age (JSON)")
    st = sub.add_parser("stage", help="create a next key: published in the JWKS, not signing")
    st.add_argument("--alg", help="signing algorithm (default: BROKER_SIGNING_ALG)")
    pr = sub.add_parser("promote", help="next -> active, old active -> retired")
    pr.add_argument("--force", action="store_true",
                    help="promote even if the next key was published for less than the JWKS cache lifetime")
    re = sub.add_parser("retire-expired", help="delete retired keys whose tokens have all expired")
    re.add_argument("--max-token-lifetime", type=int, default=signing_keys.MAX_TOKEN_LIFETIME,
                    help=f"longest token lifetime in seconds (default {signing_keys.MAX_TOKEN_LIFETIME}, "
                         "the cap on BROKER_TOKEN_LIFETIME and on client token_lifetime)")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"rotate_signing_key: configuration error: {exc}", file=sys.stderr)
        return 2
    keys_dir = args.keys_dir or settings.keys_dir
    try:
        if args.command == "status":
            out: object = signing_keys.status(keys_dir)
        elif args.command == "stage":
            alg = args.alg or settings.signing_alg
            key = signing_keys.stage(keys_dir, alg)
            out = {"staged": key.kid, "alg": key.alg}
        elif args.command == "promote":
            key, retired = signing_keys.promote(keys_dir, force=args.force)
            out = {"active": key.kid, "retired": retired}
        else:
            if args.max_token_lifetime < settings.token_lifetime:
                print("rotate_signing_key: --max-token-lifetime is below BROKER_TOKEN_LIFETIME", file=sys.stderr)
                return 2
            # The skew term covers clocks that disagree and a replica that signed with the old key
            # up to one reload interval after the promote.
            skew = settings.clock_skew + settings.leeway + int(signing_keys.RELOAD_INTERVAL) + 1
            out = {"deleted": signing_keys.retire_expired(keys_dir, max_token_lifetime=args.max_token_lifetime, skew=skew)}
    except (signing_keys.RotationError, KeyFileError) as exc:
        print(f"rotate_signing_key: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
