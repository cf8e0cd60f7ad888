"""
The command catalog the shell uses for completion, positional arguments and
C{help <command>}: every registry row's name, role, summary and fields, in
L{oxidb.cli._catalog} (generated, so that the CLI starts without importing
the server)::

    python -m oxidb.cli.catalog > oxidb/cli/_catalog.py

C{tests/test_cli.py} fails when the checked-in file differs from what this writes.
"""

from __future__ import annotations

import pprint
import sys
from typing import Any

__all__ = ["CATALOG", "help_text", "lookup", "render"]

HEADER = '''"""Generated from the command registry by C{python -m oxidb.cli.catalog}; do not edit."""

from __future__ import annotations

from typing import Any

CATALOG: dict[str, dict[str, Any]] = '''


def build() -> dict[str, dict[str, Any]]:
    """The catalog, from the registry rows."""
    from oxidb.commands import all_commands

    catalog: dict[str, dict[str, Any]] = {}
    for command in sorted(all_commands(), key=lambda c: c.name):
        catalog[command.name] = {
            "summary": command.summary,
            "role": command.role.wire,
            "writes": command.writes,
            "fields": [
                {"name": f.name, "type": f.describe(), "required": f.required, "doc": f.doc} for f in command.schema
            ],
        }
    return catalog


def render(catalog: dict[str, dict[str, Any]]) -> str:
    """The text of C{oxidb/cli/_catalog.py}."""
    return HEADER + pprint.pformat(catalog, width=120, sort_dicts=False) + "\n"


def _load() -> dict[str, dict[str, Any]]:
    from oxidb.cli._catalog import CATALOG as catalog

    return catalog


CATALOG = _load()
_live: dict[str, dict[str, Any]] | None = None


def lookup(name: str) -> dict[str, Any] | None:
    """
    The catalog entry of command C{name}. A name the generated catalog lacks
    (it is stale: a command was added since) is looked up in the registry
    itself, which is slower to import but always current.
    """
    global _live
    entry = CATALOG.get(name)
    if entry is None and name:
        if _live is None:
            _live = build()
        entry = _live.get(name)
    return entry


def help_text(name: str) -> str:
    """The help for one command: summary, role, and its fields (positional order)."""
    entry = lookup(name)
    if entry is None:
        return f"unknown command: {name}"
    lines = [f"{name}: {entry['summary']}", f"role: {entry['role']}; writes: {'yes' if entry['writes'] else 'no'}"]
    fields = entry["fields"]
    if fields:
        usage = " ".join(f["name"] if f["required"] else f"[{f['name']}]" for f in fields)
        lines.append(f"usage: {name} {usage}   (or name=value for any field)")
        for f in fields:
            need = "required" if f["required"] else "optional"
            doc = f"  {f['doc']}" if f["doc"] else ""
            lines.append(f"  {f['name']:<14} {f['type']} ({need}){doc}")
    else:
        lines.append(f"usage: {name}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render(build()))
