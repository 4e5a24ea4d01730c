"""Write docs/settings.md from app/config.py (``Settings`` and ``SETTING_DOCS``), the one source.

    .venv/bin/python scripts/gen_settings_doc.py           # rewrite docs/settings.md
    .venv/bin/python scripts/gen_settings_doc.py --check   # exit 1 if it differs (tests/test_settings_doc.py does the same)

Type and default come from each ``Settings`` field; meaning, range and security note from its
``SettingDoc``. The exit statuses of a failed start come from ``serve --help``'s epilog.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.__main__ import SERVE_EPILOG  # noqa: E402
from app.config import OTHER_VARIABLES, SETTING_DOCS, SETTING_GROUPS, Settings, variable  # noqa: E402

DOC = ROOT / "docs" / "settings.md"
COMMAND = ".venv/bin/python scripts/gen_settings_doc.py"

_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path", tuple[str, ...]: "list"}


def _type(field: Any) -> str:
    kinds = [t for t in getattr(field.type, "__args__", (field.type,)) if t is not type(None)]
    if field.type == tuple[str, ...]:
        kinds = [field.type]
    return _TYPES.get(kinds[0], str(kinds[0]))


def _default(field: Any) -> str:
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`" if value else "empty"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or "—"


def render() -> str:
    fields = {f.name: f for f in msgspec.structs.fields(Settings)}
    missing = sorted(set(fields) - set(SETTING_DOCS))
    if missing:
        raise SystemExit(f"Settings fields without a SettingDoc in app/config.py SETTING_DOCS: {', '.join(missing)}")
    out = [
        "# Settings",
        "",
        f"<!-- Generated from app/config.py (Settings, SETTING_DOCS) by `{COMMAND}`: edit those, not this file. -->",
        "",
        "Every setting is a `BROKER_*` environment variable, read and checked at start; an empty value keeps",
        "the default. `token-broker settings` prints the effective values (secrets redacted; `--json` for",
        "tools). A bad value, or a `BROKER_*` variable the broker does not know, stops the start with one",
        "line naming it (see [a failed start](#a-failed-start)). Names in backquotes in the Security column",
        "are entries of [attack-matrix.md](attack-matrix.md).",
        "",
    ]
    for group in SETTING_GROUPS:
        out += [f"## {group}", "", "| Variable | Type | Default | Allowed | Meaning | Security |", "|---|---|---|---|---|---|"]
        for name, doc in SETTING_DOCS.items():
            if doc.group == group:
                field = fields[name]
                out.append(f"| `{variable(name)}` | {_type(field)} | {_cell(_default(field))} | {_cell(doc.range)} "
                           f"| {_cell(doc.meaning)} | {_cell(doc.security)} |")
        out.append("")
    out += ["## Read by other commands", "", "Not broker settings, but known names (the start does not call them unknown):", ""]
    out += [f"- `{name}`: {meaning}" for name, meaning in OTHER_VARIABLES.items()]
    out += ["", "## A failed start", "", "`token-broker serve --help` ends with this:", "", "```text",
            SERVE_EPILOG.rstrip("\n"), "```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/settings.md is not what would be written")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if DOC.read_text() != text:
            print(f"docs/settings.md is out of date: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
