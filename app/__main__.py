"""Command line: ``python -m app serve`` (also installed as ``token-broker``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from app.config import ConfigError, Settings

#: Exit status of the registry commands when Redis did not answer (app.service.registry_state).
REDIS_UNAVAILABLE = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="token-broker", description="OAuth 2.0 client-credentials token broker")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the broker (settings from BROKER_* environment variables)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=_workers, default=1,
                       help="worker processes: a number, or 0 / 'auto' for one per core (default 1)")
    serve.add_argument("--graceful-timeout", type=int, default=20,
                       help="seconds in-flight requests get to finish after SIGTERM (default 20)")
    keys_cmd = sub.add_parser("keys", help="signing-key folder tasks (see scripts/rotate_signing_key.py)")
    keys_cmd.add_argument("action", choices=["init"],
                          help="init: create the first signing key (and dev admin key) if the folder is empty")
    _add_registry_command(sub)
    args = parser.parse_args(argv)
    if args.command == "serve" and not os.environ.get("BROKER_ISSUER"):
        # Development default: the issuer is where this process listens on loopback, so that
        # `serve --port 9000` works without also setting BROKER_ISSUER (workers read the env).
        os.environ["BROKER_ISSUER"] = f"http://127.0.0.1:{args.port}"

    try:
        settings = Settings.from_env()
        if args.command == "keys":
            return _keys_init(settings)
        if args.command == "registry":
            return _registry(settings, args.action)
        return _serve(args, settings)
    except ConfigError as exc:  # also a keys folder open to other users (KeyModeError), before any worker starts
        print(f"token-broker: configuration error: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from app.keystore import ensure_signing_keys
    from app.service.admin import read_clients_file
    from app.web.listeners import serve

    if args.workers > 1 and settings.embedded:
        print("token-broker: --workers > 1 needs BROKER_REDIS_URL (the embedded store is per process)", file=sys.stderr)
        return 2
    if settings.clients_file:  # the same check the start-up load makes, before any worker starts
        read_clients_file(settings, settings.clients_file, now=time.time())
    ensure_signing_keys(settings.keys_dir, settings.signing_alg)  # create once, before workers fork
    # The public listener on --host/--port, the management listener (/metrics, /healthz, /readyz)
    # on BROKER_MANAGEMENT_HOST/PORT, both in every worker.
    return serve(settings, host=args.host, port=args.port, workers=args.workers, graceful_timeout=args.graceful_timeout)


def _add_registry_command(sub: Any) -> None:
    registry_cmd = sub.add_parser("registry", help="the client registry in Redis (docs/operations.md)")
    registry_cmd.add_argument("action", choices=["status", "init", "recreate"],
                              help="status: is it there; init: create it on first use (keys init does too, with "
                                   "BROKER_REDIS_URL); recreate: serve an empty registry again after a loss")


def _workers(text: str) -> int:
    """``--workers``: a positive number, or ``0``/``auto`` for one worker per usable core."""
    if text.strip().lower() in ("0", "auto"):
        try:
            return max(len(os.sched_getaffinity(0)), 1)
        except AttributeError:  # pragma: no cover - not Linux
            return max(os.cpu_count() or 1, 1)
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'auto': {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (auto) or more")
    return value


def _keys_init(settings: Settings) -> int:
    """Create the keys folder's first signing key (and, without BROKER_ADMIN_JWKS, the dev admin
    key) once, before replicas start: a one-shot init container runs this on the shared volume."""
    from app import log as broker_log
    from app.keystore import ensure_signing_keys
    from app.service.admin import bootstrap_admin_record

    broker_log.configure(settings.log_level, None)
    log = broker_log.get_logger()
    key_set = ensure_signing_keys(settings.keys_dir, settings.signing_alg)
    bootstrap_admin_record(settings, log, int(time.time()))
    log.info("keys.initialized", keys_dir=str(settings.keys_dir), signing_kid=key_set.signer.kid)
    if settings.embedded:
        return 0
    # A lost registry is reported (here and by every replica's /readyz) but does not fail the keys
    # step; a Redis that does not answer does.
    return 1 if _registry(settings, "init") == REDIS_UNAVAILABLE else 0


def _registry(settings: Settings, action: str) -> int:
    """``registry status|init|recreate`` (app.service.registry_state.command)."""
    from app import log as broker_log
    from app.service.registry_state import command

    if settings.embedded:
        print("token-broker: the registry commands need BROKER_REDIS_URL (the embedded store lives in the broker process)",
              file=sys.stderr)
        return 2
    broker_log.configure(settings.log_level, None)
    return command(settings, action, broker_log.get_logger())


if __name__ == "__main__":
    sys.exit(main())
