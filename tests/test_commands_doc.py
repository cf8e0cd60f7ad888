"""
docs/commands.md is generated from the registry rows and up to date; the
hand-written docs name only commands that exist, and name every command.
"""

from __future__ import annotations

import re
from pathlib import Path

from oxidb.commands import all_commands
from oxidb.commands.docs import render

DOCS = Path(__file__).resolve().parent.parent / "docs"

#: The first word of a command-shaped identifier (C{verb_noun}).
VERBS = {
    "aggregate", "archive", "auth", "authenticate", "backup", "begin", "call", "commit", "compact", "count",
    "create", "delete", "disable", "drop", "enable", "explain", "extract", "find", "fts", "get", "head",
    "hello", "insert", "list", "ping", "pipeline", "proc", "put", "raft", "restore", "rollback", "search",
    "server", "snapshot", "text", "unwatch", "update", "use", "vector", "watch",
}  # fmt: skip

#: Command-shaped identifiers the docs use for other things.
NOT_COMMANDS = {
    "raft_forward": "the audit name of a write forwarded to the leader",
    "snapshot_built": "a state machine callback (raft-internals.md)",
    "snapshot_id": "a snapshot's identifier field",
    "snapshot_threshold": "a Raft setting",
    "commit_id": "a Raft message field",
    "use_database": "the client method that sends use_db (client.md)",
    "insert_stream": "the client method that pipelines insert_many batches (client.md)",
}

#: Commands of the product matrix this server does not have yet, named in
#: any code span (single words included): the docs must not list them as
#: if they existed (docs/security.md describes them in prose).
PLANNED = {
    "fts_status",
    "find_for_update", "create_geo_index",
    "create_collection_with_options", "restore_to_point", "archive_status",
}  # fmt: skip

SPAN = re.compile(r"`([^`\n]+)`")
CMD_JSON = re.compile(r'"(?:cmd|command)"\s*:\s*"([^"]*)"')
IDENT = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9*]+)*")


def hand_written() -> list[Path]:
    return [p for p in sorted(DOCS.rglob("*.md")) if p.name != "commands.md"]


def command_mentions(text: str) -> set[str]:
    """
    Names used as commands: in C{"cmd": "..."}, in the first column of a
    table whose header starts with C{command}, and code spans holding a
    command-shaped identifier (optionally followed by C{{fields}}).
    """
    found = set(CMD_JSON.findall(text))
    in_command_table = False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else []
        if not cells:
            in_command_table = False
            continue
        if cells[0].lower() == "command":
            in_command_table = True
            continue
        if in_command_table and not set(cells[0]) <= set("-: "):
            first = SPAN.search(cells[0])
            if first:
                found.add(first.group(1).split(" ")[0])
    for span in SPAN.findall(text):
        word = span.split(" {")[0]
        if not IDENT.fullmatch(word):
            continue
        if word in PLANNED or ("_" in word and word.split("_")[0] in VERBS):
            found.add(word)
    return found - set(NOT_COMMANDS)


def exists(name: str, names: set[str]) -> bool:
    if name.endswith("_*"):
        return any(n.startswith(name[:-1]) for n in names)
    return name in names


def test_commands_md_is_up_to_date() -> None:
    expected = render(all_commands())
    actual = (DOCS / "commands.md").read_text(encoding="utf-8")
    assert actual == expected, "run: python -m oxidb.commands.docs > docs/commands.md"


def test_docs_name_only_existing_commands() -> None:
    from oxidb.pool.router import ROUTER_COMMANDS

    names = set(all_commands().names()) | ROUTER_COMMANDS  # oxipool answers these itself
    wrong = {}
    for path in hand_written():
        unknown = sorted(m for m in command_mentions(path.read_text(encoding="utf-8")) if not exists(m, names))
        if unknown:
            wrong[path.name] = unknown
    assert wrong == {}


def test_every_command_is_documented() -> None:
    text = (DOCS / "commands.md").read_text(encoding="utf-8")
    spans: set[str] = set()
    for path in hand_written():
        content = path.read_text(encoding="utf-8")
        spans |= {span.split(" ")[0] for span in SPAN.findall(content)} | set(CMD_JSON.findall(content))
    for command in all_commands():
        assert command.summary, command.name
        assert f"\n## {command.name}\n" in text, command.name
        assert command.name in spans, f"{command.name} is in no hand-written doc"


def test_the_mention_finder() -> None:
    text = """
| command | fields |
|---|---|
| `create_index {field}` | x |
| `frobnicate` | y |

Send `{"cmd": "ping"}`; `drop_everything` and `use_db` are commands, `max_time_ms` and
`raft_forward` are not; `snapshot_*` is a family.
"""
    assert command_mentions(text) == {"create_index", "frobnicate", "ping", "drop_everything", "use_db", "snapshot_*"}


def test_exceptions_are_not_commands() -> None:
    names = set(all_commands().names())
    assert not set(NOT_COMMANDS) & names
    assert not PLANNED & names, "a planned command exists now: drop it from PLANNED"
