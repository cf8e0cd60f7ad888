"""The operator docs cover every setting the server has."""

from __future__ import annotations

import os

from oxidb.config import SETTINGS
from oxidb.limits import LIMIT_ROWS

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def test_operations_doc_lists_every_variable_and_option() -> None:
    with open(os.path.join(DOCS, "operations.md"), encoding="utf-8") as f:
        text = f.read()
    limits = {row.env for row in LIMIT_ROWS}
    for setting in SETTINGS:
        if setting.env in limits:
            continue  # documented in security.md, see below
        assert f"`{setting.env}`" in text, setting.env
        assert f"`--{setting.option}`" in text, setting.option


def test_security_doc_limits_tables_list_every_limit() -> None:
    """
    Each limit row appears in docs/security.md's "Limits" section with its
    variable, option and default, in the table of its own group.
    """
    from oxidb.limits import AUTH_ROWS, ENGINE_ROWS, RAFT_ROWS, SERVER_ROWS

    with open(os.path.join(DOCS, "security.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Limits", 1)[1].split("\n## ", 1)[0]
    groups = section.split("\n### ")[1:]
    titles = ["Queries, aggregation and search", "Connections, frames and the worker pool", "Login", "Raft port"]
    assert [g.splitlines()[0] for g in groups] == titles
    for group, rows in zip(groups, (ENGINE_ROWS, SERVER_ROWS, AUTH_ROWS, RAFT_ROWS), strict=True):
        for row in rows:
            line = f"| `{row.env}` | `--{row.option}` | `{row.default}` |"
            assert line in group, line
