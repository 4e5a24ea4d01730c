"""Command line: ``python -m app serve`` (also installed as ``token-broker``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from app.config import Settings, effective, unknown_settings
from app.start_failures import CONFIGURATION, describe

#: Exit status of the registry commands when Redis did not answer (app.service.registry_state).
REDIS_UNAVAILABLE = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="token-broker", description="OAuth 2.0 client-credentials token broker")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the broker (settings from BROKER_* environment variables)",
                           epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    settings_cmd = sub.add_parser("settings", help="print the effective settings, secrets redacted (docs/settings.md)")
    settings_cmd.add_argument("--json", action="store_true", help="one JSON object: variable -> {value, source}")
    args = parser.parse_args(argv)
    if args.command == "serve" and not os.environ.get("BROKER_ISSUER"):
        # Development default: the issuer is where this process listens on loopback, so that
        # `serve --port 9000` works without also setting BROKER_ISSUER (workers read the env).
        os.environ["BROKER_ISSUER"] = f"http://127.0.0.1:{args.port}"

    settings = None
    try:
        settings = Settings.from_env()
        _warn_unknown()
        if args.command == "settings":
            return _print_settings(settings, as_json=args.json)
        if args.command == "keys":
            return _keys_init(settings)
        if args.command == "registry":
            return _registry(settings, args.action)
        return _serve(args, settings)
    except Exception as exc:  # a start-up failure a user can cause: one line, no traceback
        failure = describe(exc, settings)
        if failure is None:
            raise
        print(f"token-broker: {failure.line}", file=sys.stderr)
        return failure.status


SERVE_EPILOG = """\
settings: BROKER_* environment variables; `token-broker settings` prints the effective ones
(secrets redacted) and docs/settings.md describes each.

A start that fails prints one line on stderr, "token-broker: <setting>: <problem>; <fix>", and exits:
  2  configuration: a value is malformed or out of range, an unknown BROKER_* variable
     (BROKER_ALLOW_UNKNOWN_SETTINGS=true only warns), BROKER_ADMIN_JWKS or the clients file is
     invalid, Redis refuses the URL's password, the keys folder is open to other users or holds
     a broken key file, the management port is the public port, the host is not this machine's.
     Change the settings: the same ones fail again.
  1  environment: Redis does not answer, a port is in use, the keys folder is missing or not
     writable. The settings may be right: fix what they point at, or start again.
  3  a worker failed to start for a reason not listed above (the JSON log has the traceback).
"""


def _warn_unknown() -> None:
    """With BROKER_ALLOW_UNKNOWN_SETTINGS=true an unknown variable is only warned about (once, here)."""
    for unknown in unknown_settings(os.environ):
        print(f"token-broker: warning: {unknown.message()} (ignored: BROKER_ALLOW_UNKNOWN_SETTINGS=true)", file=sys.stderr)


def _print_settings(settings: Settings, *, as_json: bool) -> int:
    rows = effective(settings, os.environ)
    if as_json:
        text = json.dumps({name: {"value": value, "source": source} for name, value, source in rows}, indent=2)
    else:
        shown = [(name, _plain(value), source) for name, value, source in rows]
        width = max(len(name) for name, _, _ in shown)
        text = "\n".join(f"{name:<{width}}  {source:<7}  {value}" for name, value, source in shown)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `token-broker settings | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _plain(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value) or "(empty)"
    return str(value)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from app import preflight
    from app.web.listeners import serve

    if args.workers > 1 and settings.embedded:
        print("token-broker: --workers > 1 needs BROKER_REDIS_URL (the embedded store is per process)", file=sys.stderr)
        return CONFIGURATION
    # Everything that can be checked once is checked here, before any worker starts: the admin
    # JWKS, the keys folder (its first signing key is created now), the clients file, Redis.
    preflight.check(settings)
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
    import time

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
