"""``token-broker-client keygen``: a service's key pair, made on the machine the service runs on.

The private key is written there (mode 0600, never over an existing file) and never leaves it;
the operator gets only the public JWK, registered with ``scripts/broker_admin.py register ID
--public-key FILE`` (the command is printed, ready to copy). The private key is a JWK, not PEM: a
JWK file names the ``kid`` and ``alg`` the broker registers, so ``BrokerClient`` signs with exactly
what the broker expects for every key type (an RSA key may be PS256 or RS256; a PEM file cannot
say which), and it is the format ``broker_admin.py register`` writes on the quick development path,
so both paths end in the same kind of file. ``BrokerClient`` reads PEM keys too, for keys made
elsewhere.

stdout is the public JWK alone (so ``> FILE`` keeps it); what to do next goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from token_broker_jose.constants import ALG_KEY_TYPES, CLIENT_ID_PATTERN
from token_broker_jose.credentials import generate_key_pair

#: The broker's client_id rule, checked here before a file is named after the client_id.
_CLIENT_ID = re.compile(CLIENT_ID_PATTERN)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="token-broker-client", description="token-broker client tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser(
        "keygen", help="make this service's key pair: private JWK written here, public JWK printed",
        description="Generate the service's key pair on the machine it runs on (no broker is contacted). The private "
                    "JWK goes to --out (default ./<client-id>.jwk; mode 0600, never overwritten), the public JWK to "
                    "--public-out (default ./<client-id>.pub.jwk) and stdout. Hand the operator the public file and "
                    "the printed broker_admin.py register command.")
    gen.add_argument("--client-id", required=True, help="the client_id the operator registers, e.g. billing-api")
    gen.add_argument("--alg", choices=tuple(ALG_KEY_TYPES), default="ES256", help="key algorithm (default ES256)")
    gen.add_argument("--out", type=Path, metavar="FILE", help="where to write the private JWK")
    gen.add_argument("--public-out", type=Path, metavar="FILE", help="where to write the public JWK")
    gen.add_argument("--scope", default="SCOPES", help="the scopes to put in the printed register command")
    gen.add_argument("--audience", default="AUDIENCE_URI", help="the audience to put in the printed register command")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not _CLIENT_ID.fullmatch(args.client_id):
        print("token-broker-client keygen: --client-id must be 1-128 characters of A-Z a-z 0-9 . _ : - starting "
              "with a letter or digit", file=sys.stderr)
        return 2
    out = args.out or Path(f"{args.client_id}.jwk")
    public_out = args.public_out or Path(f"{args.client_id}.pub.jwk")
    private, public = generate_key_pair(args.alg)
    try:
        _write(out, private, mode=0o600, exclusive=True)
        _write(public_out, public, mode=0o644, exclusive=False)
    except FileExistsError:
        print(f"token-broker-client keygen: {out} already exists: refusing to overwrite a private key "
              "(give another --out)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"token-broker-client keygen: cannot write the key files ({type(exc).__name__}: {exc.filename})",
              file=sys.stderr)
        return 1
    print(json.dumps(public, indent=2))
    print(_next_steps(args, out, public_out, public["kid"]), file=sys.stderr)
    return 0


def register_command(client_id: str, public_file: Path, scope: str, audience: str) -> str:
    """The operator's command that registers this key (run in the broker's checkout)."""
    words = ["register", client_id, "--public-key", str(public_file), "--scope", scope, "--audience", audience]
    return ".venv/bin/python scripts/broker_admin.py " + " ".join(shlex.quote(w) for w in words)


def _next_steps(args: Any, out: Path, public_out: Path, kid: str) -> str:
    return (f"wrote the private key to {out} (mode 0600: it stays on this machine) and the public key to {public_out}"
            f" (kid {kid}).\nSend {public_out} to the broker operator, who registers it with:\n  "
            + register_command(args.client_id, public_out, args.scope, args.audience)
            + f"\nThen: BrokerClient(BROKER_URL, {args.client_id!r}, {str(out)!r}, scope=..., resource=...)")


def _write(path: Path, data: dict[str, Any], *, mode: int, exclusive: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), mode)  # whatever the umask
        json.dump(data, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    sys.exit(main())
