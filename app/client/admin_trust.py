"""``broker_admin.py trust add|list|show|remove``: trusted issuers of workload identity federation
(``/admin/trusted-issuers``; docs/workload-identity.md).

``trust add`` builds the record from options, or sends a whole record (``--file``), and creates or
replaces it. Each ``--map`` is one mapping rule: ``CLIENT_ID:COND[,COND...]``, where a condition is
``sub=EXACT``, ``sub_pattern=PATTERN`` or ``CLAIM.PATH=VALUE`` (a claim path as
``app.oauth.trust`` reads it). The client_id ends at the first ``:`` (a client_id holding one needs
``--file``); a ``,`` starts a new condition only where ``NAME=`` follows it, so values may hold
commas and every value may hold ``:`` and ``=``::

    --map payments-api:sub=system:serviceaccount:payments:api
    --map 'payments-api:kubernetes.io.namespace=payments,kubernetes.io.serviceaccount.name=api'
    --map 'payments-api:sub_pattern=spiffe://prod.example/ns/payments/sa/*'
    --map 'deployer:repository=octo/app,ref=refs/heads/main'
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from app.client.admin import AdminError, BrokerAdmin, UsageError
from app.oauth.constants import ASSERTION_ALGS

PATH = "/admin/trusted-issuers"
_CONDITION = re.compile(r",(?=[A-Za-z0-9_.:/-]+=)")
_NAME = re.compile(r"[A-Za-z0-9_.:/-]+")
_EXAMPLES = """\
examples:
  broker_admin.py trust add https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE \\
      --map 'payments-api:kubernetes.io.namespace=payments,kubernetes.io.serviceaccount.name=api'
  broker_admin.py trust add https://kubernetes.default.svc --jwks-file cluster-jwks.json \\
      --map payments-api:sub=system:serviceaccount:payments:api
  broker_admin.py trust add spiffe://prod.example --jwks-uri https://spire.prod.example/bundle \\
      --map 'payments-api:sub_pattern=spiffe://prod.example/ns/payments/sa/*'
  broker_admin.py trust add https://token.actions.githubusercontent.com \\
      --map 'deployer:repository=octo/app,ref=refs/heads/main'
"""


def add_trust_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``trust`` command and its actions (``common``: the connection options, accepted after each)."""
    trust = sub.add_parser("trust", help="manage trusted issuers: workloads authenticate with their platform's token",
                           description="Workload identity federation: the platforms (Kubernetes, SPIRE, GitHub "
                                       "Actions...) whose signed workload tokens a client may present instead of a "
                                       "private_key_jwt assertion, and which client each token maps to "
                                       "(docs/workload-identity.md).",
                           epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = trust.add_subparsers(dest="trust_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", parents=[common], help="create or replace a trusted issuer",
                             description="Create the trusted issuer, or replace its whole record. Keys: --jwks-file "
                                         "(a static JWKS), --jwks-uri, or neither (OIDC discovery below ISSUER). "
                                         "Each --map is one mapping rule (docs/workload-identity.md).",
                             epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_options(add)
    listing = actions.add_parser("list", parents=[common], help="list trusted issuers (a table; --json for every field)",
                                 description="Print every trusted issuer: its key source, audience, rules and the "
                                             "clients they map to; --json prints the full records.")
    listing.add_argument("--json", action="store_true", help="print the full records as JSON")
    for name, text in (("show", "print one trusted issuer's record"), ("remove", "remove a trusted issuer: its "
                                                                               "tokens are refused within 1 s")):
        p = actions.add_parser(name, parents=[common], help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("issuer", metavar="ISSUER", help="the issuer identifier (a token's iss, or spiffe://DOMAIN)")


def _add_options(add: argparse.ArgumentParser) -> None:
    add.add_argument("issuer", metavar="ISSUER", nargs="?",
                     help="the tokens' iss (an https URL), or a SPIFFE trust domain spiffe://DOMAIN")
    add.add_argument("--file", type=Path, metavar="FILE", help="a whole record (JSON), instead of ISSUER and options")
    keys = add.add_mutually_exclusive_group()
    keys.add_argument("--jwks-file", type=Path, metavar="FILE",
                      help="the issuer's public keys as a JWKS file (kubectl get --raw /openid/v1/jwks > FILE)")
    keys.add_argument("--jwks-uri", metavar="URL", help="where the broker fetches the issuer's keys (https)")
    add.add_argument("--audience", metavar="AUD", help="the aud tokens must carry (default: the broker's issuer)")
    add.add_argument("--alg", action="append", choices=ASSERTION_ALGS, metavar="ALG",
                     help=f"an accepted signing algorithm, repeatable (default: all of {', '.join(ASSERTION_ALGS)})")
    add.add_argument("--max-token-age", type=int, metavar="SECONDS", help="the oldest iat accepted (default 3600)")
    add.add_argument("--max-lifetime", type=int, metavar="SECONDS", help="the longest exp - iat accepted (default 3600)")
    add.add_argument("--single-use", action="store_true",
                     help="tokens must carry a jti and are accepted once (default: reuse until exp, counted)")
    add.add_argument("--allow-other-audiences", action="store_true",
                     help="accept an aud array holding other members next to the audience")
    add.add_argument("--map", action="append", metavar="CLIENT_ID:COND[,COND...]",
                     help="a mapping rule, repeatable; COND is sub=EXACT, sub_pattern=PATTERN (* one segment, ** "
                          "anything) or CLAIM.PATH=VALUE, e.g. 'payments-api:kubernetes.io.namespace=payments,"
                          "kubernetes.io.serviceaccount.name=api'")


def parse_map(value: str) -> dict[str, Any]:
    """One ``--map`` as a mapping rule (module docstring); ``UsageError`` names what is wrong."""
    client_id, colon, text = value.partition(":")
    if not colon or not client_id or not text:
        raise UsageError(f"--map {value!r}: expected CLIENT_ID:sub=EXACT, CLIENT_ID:sub_pattern=PATTERN or "
                         "CLIENT_ID:CLAIM.PATH=VALUE[,CLAIM.PATH=VALUE...]")
    rule: dict[str, Any] = {"client_id": client_id}
    claims: dict[str, str] = {}
    for condition in _CONDITION.split(text):
        name, eq, expected = condition.partition("=")
        if not eq or not _NAME.fullmatch(name) or not expected:
            raise UsageError(f"--map {value!r}: condition {condition!r} is not NAME=VALUE")
        target = rule if name in ("sub", "sub_pattern") else claims
        if name in target:
            raise UsageError(f"--map {value!r}: {name} appears twice")
        target[name] = expected
    if claims:
        rule["claims"] = claims
    return rule


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AdminError(f"cannot read {what} {path} ({type(exc).__name__}): it must be a JSON file") from None


def build_record(args: argparse.Namespace) -> dict[str, Any]:
    """The record ``trust add`` sends: ``--file``, or ISSUER and the options (the broker validates)."""
    given = [f"--{n.replace('_', '-')}" for n in ("jwks_file", "jwks_uri", "audience", "alg", "max_token_age",
                                                   "max_lifetime", "map") if getattr(args, n) is not None]
    given += [f"--{n.replace('_', '-')}" for n in ("single_use", "allow_other_audiences") if getattr(args, n)]
    if args.file is not None:
        if args.issuer is not None or given:
            raise UsageError(f"--file holds the whole record: give neither ISSUER nor {(given or ['options'])[0]}")
        return _read_json(args.file, "the record file")
    if args.issuer is None or not args.map:
        raise UsageError("trust add needs ISSUER and at least one --map CLIENT_ID:COND (or --file RECORD.json)")
    record: dict[str, Any] = {"issuer": args.issuer}
    if args.jwks_file is not None:
        record["jwks"] = _read_json(args.jwks_file, "the JWKS file")
    for name in ("jwks_uri", "audience", "max_token_age", "max_lifetime"):
        if getattr(args, name) is not None:
            record[name] = getattr(args, name)
    if args.alg:
        record["algs"] = list(dict.fromkeys(args.alg))
    if args.single_use:
        record["single_use"] = True
    if args.allow_other_audiences:
        record["allow_other_audiences"] = True
    record["rules"] = [parse_map(value) for value in args.map]
    return record


def _one(issuer: str) -> str:
    return f"{PATH}?issuer={quote(issuer, safe='')}"


#: What to do after an error answer about a trusted issuer (``BrokerAdmin.call``).
HINTS = {404: "`broker_admin.py trust list` shows the trusted issuers: give the identifier exactly",
         409: "remove the unreadable record (`broker_admin.py trust remove ISSUER`) and add it again"}


def issuer_table(records: list[dict[str, Any]]) -> str:
    """``trust list`` for people: issuer, keys, audience, rules, the clients they map to."""
    rows = [("issuer", "keys", "audience", "rules", "clients")]
    for r in records:
        keys = "jwks" if "jwks" in r else "jwks_uri" if "jwks_uri" in r else "discovery"
        clients = sorted({rule["client_id"] for rule in r.get("rules", ())})
        rows.append((r["issuer"], keys, r.get("audience", "(the broker)"), str(len(r.get("rules", ()))),
                     " ".join(clients) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]) + "\n" for row in rows)


def trust(admin: BrokerAdmin, args: argparse.Namespace, record: dict[str, Any] | None) -> Any:
    """Run ``trust ACTION``; ``record``: what ``add`` sends (built before any broker is asked)."""
    action = args.trust_command
    if action == "add":
        return admin.call("PUT", PATH, record, hints=HINTS)
    if action == "list":
        records = admin.call("GET", PATH, hints=HINTS)["trusted_issuers"]
        return records if args.json else issuer_table(records)
    if action == "show":
        return admin.call("GET", _one(args.issuer), hints=HINTS)
    admin.call("DELETE", _one(args.issuer), hints=HINTS)
    return {"issuer": args.issuer, "removed": True}
