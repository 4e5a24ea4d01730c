"""``broker_admin.py why REQUEST_ID``: why the broker refused one request, and what fixes it.

A refused caller has the answer's ``X-Request-Id``; the broker's JSON log carries the same id as
``request_id`` on every line it wrote for that request, with the ``reason`` code the answer never
shows (``invalid_client`` is one text for every cause, on purpose). This reads the log (``--log
FILE`` or stdin: ``kubectl logs deploy/token-broker | broker_admin.py why ID``), picks the lines of
that request and prints each logged reason in words with its fix (``app.client.reasons``). Only
named fields of a line are printed: the log holds no secrets, and this adds none.

The log holds what callers sent (a refused assertion's ``iss`` is logged as ``client_id``), so
everything printed is escaped (control and format characters as ``\\xNN``/``\\uNNNN``, at most
200 characters a field: no forged lines, no terminal escapes), and a client_id is put into a
suggested command only when it is a valid client_id (no shell metacharacters), else ``ID``.

The issuer the fixes name comes from ``--issuer``, else from the last ``broker.started`` line in
the log. For a replayed assertion it also says when the same assertion (its ``jti_hash``) was used
before, if the log still has that line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import IO, Any

from app.client.admin import AdminError
from app.client.reasons import explanation
from app.oauth.clients import CLIENT_ID_RE

#: The fields printed for a line (never the whole line); in this order.
_SHOWN = ("error", "reason", "detail", "client_id", "source", "status", "cache", "scope", "aud")
#: jti_hash → first line that had it; bounded so a day of logs does not fill memory.
_SIGHTINGS_MAX = 200_000
_UNKNOWN_ISSUER = "the broker's issuer (BROKER_ISSUER; its /.well-known/oauth-authorization-server shows it)"


def add_why_command(add_parser: Any) -> None:
    why = add_parser(
        "why", help="explain a refused request from the broker's log: its reason and the fix",
        description="Read the broker's JSON log (--log FILE, or stdin: kubectl logs deploy/token-broker | "
                    "broker_admin.py why ID), find the lines of the request whose X-Request-Id is ID and print "
                    "each logged reason with what fixes it. Works offline: no broker, no admin key.")
    why.add_argument("request_id", metavar="REQUEST_ID", help="the X-Request-Id of the refused answer")
    why.add_argument("--log", type=Path, metavar="FILE", help="the broker's log (default: stdin)")
    why.add_argument("--issuer", metavar="URL", help="the broker's issuer, if the log has no broker.started line")


def why(args: argparse.Namespace) -> str:
    """The command: the explanation text, or ``AdminError`` when the log has no line of the request."""
    if args.log is None:
        if sys.stdin.isatty():
            raise AdminError("why reads the broker's log: give --log FILE, or pipe it in "
                             "(kubectl logs deploy/token-broker | broker_admin.py why ID)")
        return explain(sys.stdin, args.request_id, args.issuer)
    try:
        with args.log.open(encoding="utf-8", errors="replace") as stream:
            return explain(stream, args.request_id, args.issuer)
    except OSError as exc:
        raise AdminError(f"cannot read {args.log} ({type(exc).__name__}): give the broker's log file") from None


def explain(stream: IO[str], request_id: str, issuer: str | None = None) -> str:
    """Read the log from ``stream`` and explain the request ``request_id``."""
    found = _scan(stream, request_id)
    if not found.events:
        raise AdminError(f"no line of the log ({found.lines} lines read) has request_id {request_id}: check the id "
                         "(the X-Request-Id header of the answer) and that the log covers that time and replica")
    known_issuer = _safe(issuer or found.issuer) if (issuer or found.issuer) else None
    values = {"{issuer}": known_issuer or _UNKNOWN_ISSUER,
              "{token_endpoint}": known_issuer + "/token" if known_issuer else "the token endpoint URL"}
    out = [f"request {_safe(request_id)}: {len(found.events)} log line(s)"]
    explained: set[str] = set()  # replay.rejected and token.rejected carry the same reason: say it once
    for event in found.events:
        out.append("  " + _summary(event))
        reason = event.get("reason")
        if isinstance(reason, str) and reason not in explained:
            explained.add(reason)
            out += _reason_lines(event, {**values, "{client_id}": _command_client_id(event.get("client_id"))})
            out += _earlier_use(event, found.sightings)
    if not explained:
        out.append("  no line of this request carries a reason: it was not refused by the broker")
    return "\n".join(out) + "\n"


class _Found:
    def __init__(self) -> None:
        self.lines = 0
        self.issuer: str | None = None
        self.events: list[dict[str, Any]] = []
        self.sightings: dict[str, dict[str, Any]] = {}


def _scan(stream: IO[str], request_id: str) -> _Found:
    found = _Found()
    for text in stream:
        found.lines += 1
        event = _parse(text)
        if event is None:
            continue
        if event.get("event") == "broker.started" and isinstance(event.get("issuer"), str):
            found.issuer = event["issuer"]
        if event.get("request_id") == request_id:
            found.events.append(event)
        digest = event.get("jti_hash")
        if isinstance(digest, str) and digest not in found.sightings:
            if len(found.sightings) >= _SIGHTINGS_MAX:  # forget the oldest half (dicts keep insertion order)
                for old in list(found.sightings)[: _SIGHTINGS_MAX // 2]:
                    del found.sightings[old]
            found.sightings[digest] = event
    return found


def _parse(text: str) -> dict[str, Any] | None:
    """One JSON log line; tolerates a prefix before the object (``kubectl logs --prefix``)."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        event = json.loads(text[start:])
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


def _safe(value: Any, limit: int = 200) -> str:
    """A logged value as printable text: what a caller sent cannot start a line or drive the terminal."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _command_client_id(value: Any) -> str:
    """The client_id to put into a suggested command: only a valid one (no shell metacharacters)."""
    return value if isinstance(value, str) and CLIENT_ID_RE.fullmatch(value) else "ID"


def _summary(event: dict[str, Any]) -> str:
    fields = ", ".join(f"{name} {_safe(event[name])}" for name in _SHOWN if event.get(name) not in (None, ""))
    return f"{_safe(event.get('timestamp', '?'))} {_safe(event['event'])}" + (f": {fields}" if fields else "")


def _reason_lines(event: dict[str, Any], values: dict[str, str]) -> list[str]:
    reason = event["reason"]
    detail = event.get("detail") if isinstance(event.get("detail"), str) else ""
    kind, _, also = detail.partition("; also ")
    # A refused aud logs what it was (detail: token_endpoint, ...): that case has its own, exact fix;
    # "; also lifetime ..." says the lifetime would be refused next: both fixes are named at once.
    known = (explanation(event["event"], f"{reason}:{kind}") if kind else None) or explanation(event["event"], reason)
    if known is not None and also.startswith("lifetime"):
        extra = explanation(event["event"], "exp_too_far")
        if extra is not None:
            known = type(known)(f"{known.found} The assertion's {_safe(also)} too.", f"{known.fix}; and {extra.fix}")
    if known is None:
        return [f"    found: reason {_safe(reason)} has no explanation here (a broker newer than this broker_admin.py?)"]
    return [f"    found: {_fill(known.found, values)}", f"    fix:   {_fill(known.fix, values)}"]


def _fill(text: str, values: dict[str, str]) -> str:
    for name, value in values.items():  # not str.format: the texts may hold literal braces
        text = text.replace(name, value)
    return text


def _earlier_use(event: dict[str, Any], sightings: dict[str, dict[str, Any]]) -> list[str]:
    """For a replay: the line that first had the same assertion, when the log still has it."""
    if event.get("reason") != "jti_replayed":
        return []
    first = sightings.get(event.get("jti_hash") or "")
    if first is None or first.get("request_id") == event.get("request_id"):
        return []
    return [f"    the same assertion was first used by request {_safe(first.get('request_id'))} at "
            f"{_safe(first.get('timestamp', '?'))} ({_safe(first['event'])}): the client re-sent an assertion it had kept"]
