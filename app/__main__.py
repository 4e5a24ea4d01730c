"""Command line: ``python -m app serve`` (also installed as ``token-broker``)."""

from __future__ import annotations

import argparse
import sys

from app.config import ConfigError, Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="token-broker", description="OAuth 2.0 client-credentials token broker")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the broker (settings from BROKER_* environment variables)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"token-broker: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        import uvicorn

        if args.workers > 1 and settings.embedded:
            print("token-broker: --workers > 1 needs BROKER_REDIS_URL (the embedded store is per process)", file=sys.stderr)
            return 2
        from app.keystore import ensure_signing_keys

        ensure_signing_keys(settings.keys_dir, settings.signing_alg)  # create once, before workers fork
        uvicorn.run(
            "app.web.asgi:app",
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level="warning",
            access_log=False,
            server_header=False,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
