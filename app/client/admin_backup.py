"""``broker_admin.py export`` and ``import``: the registry's clients as a file, and back again.

``export`` writes every client the admin API lists, whole: metadata, public keys or ``jwks_uri``,
``enabled``, ``registration_id``, ``version``, ``created_at``, ``updated_at``, and ``admin`` where
set, as ``{"clients": [...]}``: the format ``BROKER_CLIENTS_FILE`` reads (an entry's identity
fields are used when a client is created from it). The bootstrap admin client is left out: every
broker start writes it from the broker's own configuration (``BROKER_ADMIN_JWKS`` or the admin
key file).

``import`` puts each record back through ``PUT /admin/clients/{id}/record``: one compare-and-set
write per client, so a client is restored whole or not at all, and a second run changes nothing.
A record the registry holds in a newer version, or a different registration of the same client_id,
is skipped unless ``force``. Admin clients are never imported (they come from the operator's
configuration). One line per client (``created``, ``updated``, ``skipped``, with the reason), then
a summary; the exit status is 1 when a client was refused, so a restore that left something out
does not pass for a complete one.

Trusted issuers (workload identity federation) are part of the registry: ``export`` adds them as
``"trusted_issuers"`` (when there are any, in the format the clients file reads), and ``import``
puts each back after the clients (their rules name clients) through ``PUT /admin/trusted-issuers``,
with the same kind of line (``created``, ``updated``, ``skipped``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.client.admin import BrokerAdmin
from app.client.admin_keys import AdminError
from app.client.admin_trust import HINTS as TRUST_HINTS
from app.client.admin_trust import PATH as TRUST_PATH

#: What the broker leaves out of a record at its default; an export spells them out.
_DEFAULTS = {"enabled": True, "registration_id": "", "version": 0}
_ADMIN_SKIP = ("an admin client: admin clients come from the broker's configuration (BROKER_ADMIN_JWKS, or "
               "\"admin\": true in the clients file), never from an import")


def export_document(admin: BrokerAdmin, admin_client_id: str) -> dict[str, Any]:
    """Every client but the bootstrap admin, whole, and every trusted issuer, in the clients-file format."""
    document: dict[str, Any] = {
        "clients": [{**_DEFAULTS, **record} for record in admin.list() if record["client_id"] != admin_client_id]}
    issuers = admin.call("GET", TRUST_PATH, hints=TRUST_HINTS)["trusted_issuers"]
    if issuers:
        document["trusted_issuers"] = issuers
    return document


def write_export(path: Path, document: dict[str, Any]) -> None:
    """Write the export next to ``path`` and rename it over: a reader (a broker watching it as its
    clients file, a backup job) never sees half of it."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise AdminError(f"cannot write {path} ({type(exc).__name__}: {exc.strerror}): choose another --out") from None


def read_export(path: Path) -> list[Any]:
    """The entries of an export (or any clients file): ``{"clients": [...]}`` or a list."""
    return _read(path)[0]


def _read(path: Path) -> tuple[list[Any], list[Any]]:
    """(clients, trusted issuers) of an export or any clients file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AdminError(f"{path} not found: give the file `export --out` wrote") from None
    except (OSError, ValueError) as exc:
        raise AdminError(f"cannot read {path} ({type(exc).__name__}): it must be the JSON file `export` writes") from None
    entries = data.get("clients") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise AdminError(f"{path} holds no list of clients: expected {{\"clients\": [...]}} as `export` writes it")
    issuers = data.get("trusted_issuers", []) if isinstance(data, dict) else []
    if not isinstance(issuers, list):
        raise AdminError(f"{path}: trusted_issuers is not a list of trusted issuers")
    return entries, issuers


def import_file(admin: BrokerAdmin, path: Path, *, admin_client_id: str, force: bool,
                emit: Callable[[str], None]) -> int:
    """Restore every client of an export; ``emit`` gets one line per client, then the summary.

    Returns: the exit status, 0 when every client is in the registry as the file has it (created,
    updated, unchanged) or is an admin client; 1 when the registry refused one."""
    counts = {"created": 0, "updated": 0, "skipped": 0}
    refused = False
    clients, issuers = _read(path)
    outcomes = [_import_one(admin, entry, index, admin_client_id=admin_client_id, force=force)
                for index, entry in enumerate(clients)]
    for outcome, line, problem in outcomes + [_import_issuer(admin, entry, index) for index, entry in enumerate(issuers)]:
        counts[outcome] += 1
        refused = refused or problem
        emit(line)
    emit(f"import: {counts['created']} created, {counts['updated']} updated, {counts['skipped']} skipped")
    return 1 if refused else 0


def _import_one(admin: BrokerAdmin, entry: Any, index: int, *, admin_client_id: str,
                force: bool) -> tuple[str, str, bool]:
    """(outcome, the line to print, whether the registry refused the client)."""
    client_id = entry.get("client_id") if isinstance(entry, dict) else None
    if not isinstance(client_id, str) or not client_id:
        return "skipped", f"skipped entry #{index}: not a client record (no client_id)", True
    if entry.get("admin", False) is not False or client_id == admin_client_id:
        return "skipped", f"skipped {client_id}: {_ADMIN_SKIP}", False
    status, body = admin.put_record(entry, force=force)
    if status in (200, 201):
        result, version = body.get("result"), body.get("client", {}).get("version", 0)
        if result == "unchanged":
            return "skipped", f"skipped {client_id}: unchanged (version {version})", False
        return str(result), f"{result} {client_id} (version {version})", False
    description = str(body.get("error_description") or body.get("error") or f"HTTP {status}")
    return "skipped", f"skipped {client_id}: {description.replace('force=true', '--force')}", True


def _import_issuer(admin: BrokerAdmin, entry: Any, index: int) -> tuple[str, str, bool]:
    """A trusted issuer put back whole (create or replace): (outcome, line, whether it was refused)."""
    issuer = entry.get("issuer") if isinstance(entry, dict) else None
    if not isinstance(issuer, str) or not issuer:
        return "skipped", f"skipped trusted issuer #{index}: not a trusted-issuer record (no issuer)", True
    response = admin.request("PUT", TRUST_PATH, entry)
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code in (200, 201):
        result = {"created": "created", "replaced": "updated"}.get(body.get("result"), "skipped")
        return result, f"{result} trusted issuer {issuer}" + (": unchanged" if result == "skipped" else ""), False
    description = str(body.get("error_description") or body.get("error") or f"HTTP {response.status_code}")
    return "skipped", f"skipped trusted issuer {issuer}: {description}", True
