"""How results are shown: compact JSON (C{--json}), a table for a list of documents, pretty JSON otherwise."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["show"]

_MAX_COLUMNS = 12


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def show(console: Console, data: Any, *, raw: bool = False) -> None:
    """Print C{data}: one line of JSON when C{raw}, else a table or indented JSON."""
    if raw:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        console.print(text, markup=False, highlight=False, soft_wrap=True)
        return
    if isinstance(data, list) and data and all(isinstance(d, dict) for d in data):
        columns: list[str] = []
        for doc in data:
            for key in doc:
                if key not in columns:
                    columns.append(key)
        # _id first, _version last: the way people read documents.
        columns.sort(key=lambda c: (c != "_id", c == "_version"))
        if len(columns) <= _MAX_COLUMNS:
            table = Table(show_lines=False)
            for column in columns:
                table.add_column(column, overflow="fold")
            for doc in data:
                table.add_row(*(_cell(doc[c]) if c in doc else "" for c in columns))
            console.print(table)
            console.print(f"{len(data)} document{'s' if len(data) != 1 else ''}", style="dim")
            return
    if isinstance(data, str):
        console.print(data, highlight=False, markup=False)
        return
    console.print_json(json.dumps(data, ensure_ascii=False))
