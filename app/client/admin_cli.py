"""``scripts/broker_admin.py``: onboard and manage clients through the broker's admin API.

Every command authenticates with the admin private key (private_key_jwt, RFC 7523) and talks to
one broker replica; every replica sees the change within a second. Output is JSON on stdout;
errors go to stderr as one line saying what to do, with exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from app.client.admin import KEY_ALGS, AdminError, BrokerAdmin, add_generated_key, onboard, read_public_keys

_EPILOG = """\
examples:
  %(prog)s register billing-api --scope "invoices:read invoices:write" --audience https://invoices.example.com
  %(prog)s list
  %(prog)s show billing-api
  %(prog)s add-key billing-api                 # rotation step 1: new key pair, both keys valid
  %(prog)s remove-key billing-api --kid OLDKID # rotation step 3, once the service uses the new key
  %(prog)s disable billing-api                 # every replica refuses it within 1 s
  %(prog)s enable billing-api
  %(prog)s delete billing-api

The broker URL comes from --broker or BROKER_URL (default http://127.0.0.1:8000); the admin key
from --admin-key (default keys/admin.jwk, written by the broker on its first start in dev mode).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker_admin.py",
        description="Onboard and manage token-broker clients (private_key_jwt, client credentials).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The connection options are accepted before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, suppress=True)
    original = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return original(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    _register_command(sub)
    sub.add_parser("list", help="list every client", description="Print every registered client as JSON.")
    show = sub.add_parser("show", help="show one client", description="Print one client's metadata and public keys.")
    show.add_argument("client_id")

    upd = sub.add_parser("update", help="change a client's scopes, audiences, lifetime or legacy-aud window",
                         description="Change metadata; options not given stay as they are.")
    upd.add_argument("client_id")
    _metadata_options(upd, required_audience=False)

    _key_commands(sub)
    for name, text in (("disable", "refuse the client's token requests (reversible with enable)"),
                       ("enable", "accept the client's token requests again"),
                       ("delete", "delete the client and its keys (not reversible)")):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("client_id")
    return parser


def _register_command(sub: Any) -> None:
    """``register``: onboarding, with a key pair generated here or the client's own public key."""
    reg = sub.add_parser(
        "register", help="onboard a client: generate its key pair here, register the public key, print what it needs",
        description="Generate the client's key pair locally (ES256 unless --alg), write the private key to "
                    "<keys-dir>/<client_id>.jwk (0600, never overwritten), register only the public key, and print "
                    "JSON with client_id, kid, token_endpoint, issuer (the assertion aud) and private_key_path. "
                    "With --public-key or --jwks-uri no key is generated.")
    reg.add_argument("client_id", help="the client's name, e.g. billing-api (A-Z a-z 0-9 . _ : -, max 128)")
    _metadata_options(reg, required_audience=True)
    reg.add_argument("--alg", choices=KEY_ALGS, default=None,
                     help="key algorithm to generate (default ES256); with --public-key PEM or --jwks-uri: the alg to bind")
    src = reg.add_mutually_exclusive_group()
    src.add_argument("--public-key", type=Path, metavar="FILE",
                     help="bring your own key: a public JWK, JWK Set or PEM file (the private key stays with you)")
    src.add_argument("--jwks-uri", metavar="URL", help="the broker fetches the client's keys from this https URL")


def _key_commands(sub: Any) -> None:
    """``add-key`` and ``remove-key``: the two ends of a key rotation."""
    add = sub.add_parser(
        "add-key", help="add a key (rotation step 1): generated here, or --public-key FILE",
        description="Add a key to a client. Without --public-key a new pair is generated and the private key "
                    "written to <keys-dir>/<client_id>.<kid>.jwk. Both keys stay valid until you remove the old one.")
    add.add_argument("client_id")
    add.add_argument("--alg", choices=KEY_ALGS, default="ES256", help="algorithm for a generated key (default ES256)")
    add.add_argument("--public-key", type=Path, metavar="FILE", help="a public JWK, JWK Set (one key) or PEM file")
    add.add_argument("--not-before", type=int, metavar="UNIX_TIME", help="the key is not used before this time (JWK nbf)")
    add.add_argument("--expires", type=int, metavar="UNIX_TIME", help="the key is not used from this time on (JWK exp)")

    rm = sub.add_parser("remove-key", help="remove a key by kid (rotation step 3)",
                        description="Remove one key. Every replica refuses it within 1 s. A client keeps at least one key.")
    rm.add_argument("client_id")
    rm.add_argument("--kid", required=True, help="the kid to remove (see `show`)")


def _connection_options(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    p.add_argument("--broker", default=default(os.environ.get("BROKER_URL", "http://127.0.0.1:8000")),
                   help="broker base URL, any replica (env BROKER_URL; default http://127.0.0.1:8000)")
    p.add_argument("--admin-key", type=Path, default=default(Path(os.environ.get("BROKER_ADMIN_KEY", "keys/admin.jwk"))),
                   help="admin private JWK (env BROKER_ADMIN_KEY; default keys/admin.jwk)")
    p.add_argument("--admin-client-id", default=default(os.environ.get("BROKER_ADMIN_CLIENT_ID", "broker-admin")),
                   help="admin client_id (default broker-admin)")
    p.add_argument("--keys-dir", type=Path, default=default(Path("keys")),
                   help="where new private keys are written, mode 0600 (default keys)")


def _metadata_options(p: argparse.ArgumentParser, *, required_audience: bool) -> None:
    p.add_argument("--scope", action="append", metavar="SCOPES",
                   help="allowed scopes, space-separated or repeated (e.g. --scope 'read write')")
    p.add_argument("--default-scope", action="append", metavar="SCOPES",
                   help="scopes granted when the request names none (a subset of --scope)")
    p.add_argument("--audience", action="append", metavar="URI", required=required_audience,
                   help="allowed resource/audience URI, repeatable (RFC 8707); the first is the default")
    p.add_argument("--default-audience", metavar="URI", help="audience used when the request names none")
    p.add_argument("--token-lifetime", type=int, metavar="SECONDS", help="access-token lifetime, 60-86400")
    p.add_argument("--legacy-aud-until", type=int, metavar="UNIX_TIME",
                   help="migration aid: until this time also accept the token endpoint URL as aud (logged, counted)")


def _split(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [s for v in values for s in v.split() if s]


def _metadata(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in (("scopes", _split(args.scope)), ("default_scopes", _split(args.default_scope)),
                        ("audiences", args.audience), ("default_audience", args.default_audience),
                        ("token_lifetime", args.token_lifetime),
                        ("legacy_token_endpoint_aud_until", args.legacy_aud_until)):
        if value is not None:
            out[name] = value
    return out


def run(args: argparse.Namespace) -> Any:
    with BrokerAdmin(args.broker, args.admin_key, admin_client_id=args.admin_client_id) as admin:
        cmd = args.command
        if cmd == "register":
            return onboard(admin, {"client_id": args.client_id, **_metadata(args)}, keys_dir=args.keys_dir,
                           alg=args.alg,
                           public_key_file=args.public_key, jwks_uri=args.jwks_uri)
        if cmd == "list":
            return admin.list()
        if cmd == "show":
            return admin.show(args.client_id)
        if cmd == "update":
            changes = _metadata(args)
            if not changes:
                raise AdminError("nothing to change: give at least one option (see `update --help`)")
            return admin.update(args.client_id, changes)
        if cmd == "add-key":
            window = {k: v for k, v in (("nbf", args.not_before), ("exp", args.expires)) if v is not None}
            if args.public_key is None:
                return add_generated_key(admin, args.client_id, keys_dir=args.keys_dir, alg=args.alg, window=window)
            keys = read_public_keys(args.public_key, args.alg)
            if len(keys) != 1:
                raise AdminError("add-key takes one key: the file holds several (add them one at a time)")
            record = admin.add_key(args.client_id, {**keys[0], **window})
            return {"client_id": args.client_id, "kids": [k["kid"] for k in record["jwks"]["keys"]]}
        if cmd == "remove-key":
            record = admin.remove_key(args.client_id, args.kid)
            return {"client_id": args.client_id, "removed": args.kid, "kids": [k["kid"] for k in record["jwks"]["keys"]]}
        if cmd in ("disable", "enable"):
            record = admin.update(args.client_id, {"enabled": cmd == "enable"})
            return {"client_id": args.client_id, "enabled": record.get("enabled", True)}
        if cmd == "delete":
            admin.delete(args.client_id)
            return {"client_id": args.client_id, "deleted": True}
    raise AssertionError(cmd)  # pragma: no cover - argparse restricts the commands


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except AdminError as exc:
        print(f"broker_admin.py {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover
        return 130
    try:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader left; not an error
        sys.stdout = None  # type: ignore[assignment]
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
