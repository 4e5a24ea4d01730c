"""``scripts/broker_admin.py``: onboard and manage clients through the broker's admin API.

Every command authenticates with the admin private key (private_key_jwt, RFC 7523) and talks to
one broker replica; every replica sees the change within a second (``keygen`` alone works
offline: the service team runs it on its own machine). Output is JSON on stdout (``list``: a table
unless ``--json``; ``import``: one line per client and a summary, ``app.client.admin_backup``);
errors go to stderr as one line saying what to do, with exit status 2 for a wrong command line and
1 for everything else (a broker refusal, a key file in the way, a client an import could not restore).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from app.client.admin import (
    KEY_ALGS,
    AdminError,
    BrokerAdmin,
    UsageError,
    add_generated_key,
    keygen,
    onboard,
    read_public_keys,
)
from app.client.admin_backup import export_document, import_file, write_export
from app.client.admin_trust import add_trust_command, build_record, trust
from app.client.why import add_why_command, why

_EPILOG = """\
examples:
  %(prog)s keygen --out billing-api.jwk > billing-api.pub.jwk   # on the service's machine
  %(prog)s register billing-api --public-key billing-api.pub.jwk --scope invoices:read --audience https://invoices.example.com
  %(prog)s register billing-api --scope "invoices:read invoices:write" --audience https://invoices.example.com
  %(prog)s list                                # a table; --json for every field
  %(prog)s show billing-api
  %(prog)s update msal-app --compat token_endpoint_aud --compat assertion_max_lifetime=600 --compat assertion_reuse
  %(prog)s add-key billing-api                 # rotation step 1: new key pair, both keys valid
  %(prog)s remove-key billing-api --kid OLDKID # rotation step 3, once the service uses the new key
  %(prog)s disable billing-api                 # every replica refuses it within 1 s
  %(prog)s enable billing-api
  %(prog)s delete billing-api
  %(prog)s export --out clients.json           # every client, whole (a backup; a clients file)
  %(prog)s import clients.json                 # put them back: skips what is there or newer
  %(prog)s trust list                          # workload identity federation: `trust --help`

The broker URL comes from --broker or BROKER_URL (default http://127.0.0.1:8000); the admin key
from --admin-key (default keys/admin.jwk, written by the broker on its first start when
BROKER_ADMIN_JWKS is unset).
"""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block), like every other error of the script."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="broker_admin.py",
        description="Onboard and manage token-broker clients (private_key_jwt, client credentials).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The connection options are accepted before or after the command.
    common = _Parser(add_help=False)
    _connection_options(common, suppress=True)
    original = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return original(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    _keygen_command(original)
    add_why_command(original)  # offline, like keygen: reads a log, no broker
    _register_command(sub)
    listing = sub.add_parser("list", help="list every client (a table; --json for every field)",
                             description="Print every registered client: one row each with client_id, enabled, "
                                         "scopes, kids and the creation time (UTC); --json prints the full records.")
    listing.add_argument("--json", action="store_true", help="print the full records as JSON")
    show = sub.add_parser("show", help="show one client", description="Print one client's metadata and public keys.")
    show.add_argument("client_id")

    upd = sub.add_parser("update", help="change a client's scopes, audiences, lifetime, legacy-aud window or compat profile",
                         description="Change metadata; options not given stay as they are (--compat replaces the "
                                     "whole compat profile).")
    upd.add_argument("client_id")
    _metadata_options(upd, required_audience=False)

    _key_commands(sub)
    for name, text in (("disable", "refuse the client's token requests (reversible with enable)"),
                       ("enable", "accept the client's token requests again"),
                       ("delete", "delete the client and its keys (not reversible)")):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("client_id")
    _backup_commands(sub)
    add_trust_command(sub, common)
    return parser


def _backup_commands(sub: Any) -> None:
    """``export`` and ``import``: the registry as a file, and back (docs/operations.md, backups)."""
    exp = sub.add_parser(
        "export", help="write every client, whole, as a clients file (a backup)",
        description="Write every client (metadata, public keys or jwks_uri, enabled, registration_id, version, "
                    "times) in the BROKER_CLIENTS_FILE format, to stdout or --out. The bootstrap admin client is "
                    "left out: the broker writes it from its own configuration.")
    exp.add_argument("--out", type=Path, metavar="FILE", help="write to FILE (replaced whole) instead of stdout")
    imp = sub.add_parser(
        "import", help="restore the clients of an export (created / updated / skipped, one line each)",
        description="Put back every client of an export, each in one atomic write; unchanged clients are "
                    "skipped, and so is a client the registry holds in a newer version or as another "
                    "registration (unless --force). Admin clients are never imported. Exit status 1 when "
                    "a client was refused.")
    imp.add_argument("file", type=Path, metavar="FILE", help="the file `export` wrote")
    imp.add_argument("--force", action="store_true",
                     help="replace newer records and other registrations of the same client_id too")


def _keygen_command(add_parser: Any) -> None:
    """``keygen``: the service's own key pair, made where the service runs (no broker, no admin key)."""
    gen = add_parser(
        "keygen", help="make a key pair on the service's machine: private JWK to --out, public JWK printed",
        description="Generate a key pair (ES256 unless --alg) without talking to any broker: write the private JWK "
                    "to --out (mode 0600, never overwritten) and print the public JWK. Run it on the machine the "
                    "service runs on and hand the operator only the printed public key, for "
                    "`register ID --public-key FILE`: the private key never leaves that machine.")
    gen.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write the private JWK")
    gen.add_argument("--alg", choices=KEY_ALGS, default="ES256", help="key algorithm (default ES256)")


def _register_command(sub: Any) -> None:
    """``register``: onboarding, with the client's own public key or a key pair generated here."""
    reg = sub.add_parser(
        "register", help="onboard a client: register its public key (or a key pair made here), print what it needs",
        description="Register a client. Recommended: the service runs `keygen` on its own machine and you register "
                    "the public key it printed with --public-key (or let the broker fetch it: --jwks-uri). Without "
                    "either, a key pair is generated here (ES256 unless --alg), the private key written to "
                    "<keys-dir>/<client_id>.jwk (0600, never overwritten) for you to hand over, and only the public "
                    "key registered. Prints JSON with client_id, kid, token_endpoint, issuer (the assertion aud) and "
                    "private_key_path.")
    reg.add_argument("client_id", help="the client's name, e.g. billing-api (A-Z a-z 0-9 . _ : -, max 128)")
    _metadata_options(reg, required_audience=True)
    reg.add_argument("--alg", choices=KEY_ALGS, default=None,
                     help="key algorithm to generate (default ES256); with --public-key or --jwks-uri: the alg "
                          "for keys that name none (by default inferred from the key type; an RSA PEM key: RS256, "
                          "what most libraries sign with)")
    src = reg.add_mutually_exclusive_group()
    src.add_argument("--public-key", type=Path, metavar="FILE",
                     help="the client's own key: a public JWK, JWK Set or PEM file (the private key stays with it)")
    src.add_argument("--jwks-uri", metavar="URL", help="the broker fetches the client's keys from this https URL")
    src.add_argument("--no-key", action="store_true",
                     help="no key at all: the client authenticates only with its platform's token (Kubernetes, "
                          "SPIFFE, GitHub Actions) through a trusted issuer, see `trust add`")
    src.add_argument("--reuse-key", action="store_true",
                     help="register the key already in <keys-dir>/<client_id>.jwk (left by a deleted client) "
                          "instead of generating one")


def _key_commands(sub: Any) -> None:
    """``add-key`` and ``remove-key``: the two ends of a key rotation."""
    add = sub.add_parser(
        "add-key", help="add a key (rotation step 1): generated here, or --public-key FILE",
        description="Add a key to a client. Without --public-key a new pair is generated and the private key "
                    "written to <keys-dir>/<client_id>.<kid>.jwk. Both keys stay valid until you remove the old one.")
    add.add_argument("client_id")
    add.add_argument("--alg", choices=KEY_ALGS, default=None,
                     help="algorithm for a generated key (default ES256); with --public-key: the alg for a key that "
                          "names none (by default inferred from the key type; an RSA PEM key: RS256, what most "
                          "libraries sign with)")
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
    p.add_argument("--compat", action="append", metavar="FEATURE[=VALUE]",
                   help="relax the strict assertion rules for a client library that cannot follow them (off by "
                        "default; every use logged and counted), repeatable: token_endpoint_aud (accept the token "
                        "endpoint URL as aud), assertion_max_lifetime=SECONDS (its own lifetime cap, 1-3600), "
                        "assertion_reuse (accept the same assertion again until its exp); 'none' clears the profile. "
                        "Given to update, it replaces the whole profile (docs/onboarding.md)")
    p.add_argument("--dpop-bound-access-tokens", action=argparse.BooleanOptionalAction, default=None,
                   help="require a DPoP proof (RFC 9449) with every token request of this client, so it never gets "
                        "a bearer token; --no-dpop-bound-access-tokens lifts it (docs/dpop.md)")


def _scopes(values: list[str] | None, option: str) -> list[str] | None:
    """Space-separated scopes (RFC 6749 §3.3); a comma is refused: it is legal in a scope name, but
    nobody typing ``a,b`` means one scope called that."""
    if values is None:
        return None
    for value in values:
        if "," in value:
            spaced = " ".join(s for s in value.replace(",", " ").split() if s)
            raise UsageError(f"{option} {value!r}: scopes are separated by spaces, not commas: {option} {spaced!r}")
    return [s for v in values for s in v.split() if s]


def _compat(values: list[str] | None) -> dict[str, Any] | None:
    """``--compat`` options as the ``compat`` member: ``name`` → true, ``name=N`` → N; the broker
    validates the names and values (one place says what is allowed). ``none`` → {} (cleared)."""
    if values is None:
        return None
    if "none" in values:
        if len(values) > 1:
            raise UsageError("--compat none clears the compat profile: give it alone")
        return {}
    profile: dict[str, Any] = {}
    for value in values:
        name, eq, given = value.partition("=")
        profile[name] = (int(given) if given.isdigit() else {"true": True, "false": False}.get(given, given)) if eq else True
    return profile


def _metadata(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in (("scopes", _scopes(args.scope, "--scope")),
                        ("default_scopes", _scopes(args.default_scope, "--default-scope")),
                        ("audiences", args.audience), ("default_audience", args.default_audience),
                        ("token_lifetime", args.token_lifetime),
                        ("legacy_token_endpoint_aud_until", args.legacy_aud_until),
                        ("compat", _compat(args.compat)),
                        ("dpop_bound_access_tokens", args.dpop_bound_access_tokens)):
        if value is not None:
            out[name] = value
    if args.command == "register" and not out.get("scopes"):
        raise UsageError("register needs --scope: a client with no allowed scopes can never get a token "
                         "(e.g. --scope 'orders:read orders:write')")
    if args.command == "update" and not out:
        raise UsageError("nothing to change: give at least one option (see `update --help`)")
    return out


def client_table(records: list[dict[str, Any]]) -> str:
    """``list`` for people: client_id, enabled, scopes, kids, created (UTC, ISO 8601); one row per client."""
    rows = [("client_id", "enabled", "scopes", "kids", "created")]
    for r in records:
        kids = " ".join(k["kid"] for k in r.get("jwks", {}).get("keys", ()))
        created = r.get("created_at")
        rows.append((
            r["client_id"], "true" if r.get("enabled", True) else "false", " ".join(r.get("scopes", ())) or "-",
            kids or ("(jwks_uri)" if r.get("jwks_uri") else "-"),
            datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if created else "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]) + "\n" for row in rows)


def _record(record: dict[str, Any]) -> dict[str, Any]:
    # The broker omits fields at their default; ``enabled`` and whether DPoP is required are what
    # an operator looks for.
    return {"enabled": True, "dpop_bound_access_tokens": False, **record}


def run(args: argparse.Namespace) -> Any:
    """The command's result: JSON-able, or text (``list`` without ``--json``)."""
    if args.command == "keygen":  # offline: no broker, no admin key
        return keygen(args.out, args.alg)
    if args.command == "why":  # offline too: reads the broker's log
        return why(args)
    if args.command == "trust":  # the record is read and checked before any broker is asked
        record = build_record(args) if args.trust_command == "add" else None
        with BrokerAdmin(args.broker, args.admin_key, admin_client_id=args.admin_client_id) as admin:
            return trust(admin, args, record)
    metadata = _metadata(args) if args.command in ("register", "update") else {}
    with BrokerAdmin(args.broker, args.admin_key, admin_client_id=args.admin_client_id) as admin:
        return _call(admin, args, metadata)


def _call(admin: BrokerAdmin, args: argparse.Namespace, metadata: dict[str, Any]) -> Any:
    cmd = args.command
    if cmd == "register":
        return onboard(admin, {"client_id": args.client_id, **metadata}, keys_dir=args.keys_dir, alg=args.alg,
                       public_key_file=args.public_key, jwks_uri=args.jwks_uri, reuse_key=args.reuse_key,
                       no_key=args.no_key)
    if cmd == "list":
        records = [_record(r) for r in admin.list()]
        return records if args.json else client_table(records)
    if cmd == "show":
        return _record(admin.show(args.client_id))
    if cmd == "update":
        return _record(admin.update(args.client_id, metadata))
    if cmd == "add-key":
        window = {k: v for k, v in (("nbf", args.not_before), ("exp", args.expires)) if v is not None}
        if args.public_key is None:
            return add_generated_key(admin, args.client_id, keys_dir=args.keys_dir, alg=args.alg or "ES256",
                                     window=window)
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
    if cmd in ("export", "import"):
        return _backup(admin, args)
    raise AssertionError(cmd)  # pragma: no cover - argparse restricts the commands


class _Printed(int):
    """The exit status of a command that printed its own output as it went (``import``)."""


def _backup(admin: BrokerAdmin, args: argparse.Namespace) -> Any:
    if args.command == "import":
        return _Printed(import_file(admin, args.file, admin_client_id=args.admin_client_id, force=args.force,
                                    emit=lambda line: print(line, flush=True)))
    document = export_document(admin, args.admin_client_id)
    if args.out is None:
        return document
    write_export(args.out, document)
    return f"exported {len(document['clients'])} clients to {args.out}\n"


def kid_values_joined(argv: list[str]) -> list[str]:
    """``--kid X`` as ``--kid=X``: a kid is a base64url thumbprint (RFC 7638), so one in 64
    begins with ``-``, which argparse would take for an option and refuse."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--kid":
            out[-1] = "--kid=" + arg
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(kid_values_joined(sys.argv[1:] if argv is None else argv))
    try:
        result = run(args)
    except AdminError as exc:
        print(f"broker_admin.py {args.command}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    except KeyboardInterrupt:  # pragma: no cover
        return 130
    if isinstance(result, _Printed):
        return int(result)
    try:
        sys.stdout.write(result if isinstance(result, str) else json.dumps(result, indent=2, sort_keys=True) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader left; not an error
        sys.stdout = None  # type: ignore[assignment]
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
