"""
Write C{docs/commands.md} from the registry rows::

    python -m oxidb.commands.docs > docs/commands.md

C{tests/test_commands_doc.py} fails when the checked-in file differs from
what this writes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from oxidb.commands import Command, all_commands
from oxidb.commands._schema import Field
from oxidb.commands.auth import LOGIN_COMMANDS, USER_COMMANDS
from oxidb.commands.raft import RAFT_COMMANDS

HEADER = """\
<!-- Generated from the command registry by `python -m oxidb.commands.docs`; do not edit. -->

# Commands

Every command the server has, from its registry row (`oxidb/commands/`): the
least role that may run it once logged in (`docs/security.md`, "Roles"),
whether it changes state (replicated and forwarded to the leader in a
cluster), whether it runs before login, and its request fields.

A required field that is absent, null or of the wrong type is an error,
`missing '<field>'` unless another text is given; an optional field of the
wrong type is ignored (its default applies) unless an error text is given.
The server checks the fields in the order listed, before the command runs;
rules marked "checked by the handler" (or by the engine) are checked when
the command runs, with the texts in `docs/` and `../shared/spec/server.md`.
Reads also accept `"consistency": "linearizable"` in a cluster
(`docs/clustering.md`).
"""


def _availability(name: str) -> str:
    if name in {row.name for row in [*LOGIN_COMMANDS, *USER_COMMANDS]}:
        return "with `OXIDB_AUTH`"
    if name in {row.name for row in RAFT_COMMANDS}:
        return "cluster mode"
    return "always"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _role(command: Command) -> str:
    role = command.role.wire
    if command.pre_auth and command.name in {row.name for row in LOGIN_COMMANDS}:
        return f"{role} (anyone before login; once logged in an unknown command, denied to other roles)"
    if command.health_check:
        role += " (any role, and before login, with `OXIDB_HEALTH_OPEN`)"
    return role


def _field_row(field: Field) -> str:
    if field.required:
        required = "required"
        error = field.message or f"missing '{field.name}'"
    else:
        required = "optional"
        error = field.invalid or ""
    if field.items_message:
        error = f"{error}; items: {field.items_message}" if error else f"items: {field.items_message}"
    notes = field.doc
    if field.handler:
        notes = f"{notes} (checked by the handler)" if "checked by" not in notes else notes
    error_cell = f"`{_cell(error)}`" if error else ""
    return f"| `{field.name}` | {_cell(field.describe())} | {required} | {error_cell} | {_cell(notes)} |"


def render(commands: Iterable[Command]) -> str:
    """The whole of C{docs/commands.md}."""
    rows = sorted(commands, key=lambda c: c.name)
    lines = [HEADER, "## Overview", ""]
    lines.append("| command | role | writes | before login | available | summary |")
    lines.append("|---|---|---|---|---|---|")
    for command in rows:
        lines.append(
            f"| [`{command.name}`](#{command.name}) | {command.role.wire} | {'yes' if command.writes else 'no'} "
            f"| {'yes' if command.pre_auth else 'no'} | {_availability(command.name)} | {_cell(command.summary)} |"
        )
    lines.append("")
    for command in rows:
        lines.append(f"## {command.name}")
        lines.append("")
        lines.append(command.summary)
        lines.append("")
        lines.append(
            f"Role: {_role(command)}. Writes: {'yes' if command.writes else 'no'}. "
            f"Before login: {'yes' if command.pre_auth else 'no'}. Available: {_availability(command.name)}."
        )
        lines.append("")
        if len(command.schema):
            lines.append("| field | type | required | error | notes |")
            lines.append("|---|---|---|---|---|")
            lines.extend(_field_row(field) for field in command.schema)
        else:
            lines.append("No request fields.")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    sys.stdout.write(render(all_commands()))


if __name__ == "__main__":
    main()
