"""
From what a user types to a request. Words after the command fill the
command's fields in the registry's order (C{find people {"age": 1}} sets
C{collection} and C{query}); C{name=value} sets any field. A value is JSON
when it parses as JSON (objects, arrays, numbers, C{true}, C{null}, quoted
strings), and otherwise a plain string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from oxidb.cli.catalog import lookup

__all__ = ["Bare", "ParseError", "build_request", "split_line", "unbalanced", "words_to_items"]

_DECODER = json.JSONDecoder()
_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
_WORD_END = re.compile(r"\s")


class ParseError(ValueError):
    """The input cannot be made into a request; the message says why, in one line."""


class Bare(str):
    """
    A word typed without quotes: a string for a string field (C{find 2024}
    names the collection C{"2024"}), else its JSON value when it has one.
    """

    def value(self, field_type: str) -> Any:
        if field_type.startswith("string"):
            return str(self)
        try:
            return json.loads(self)
        except ValueError:
            return str(self)


def _value(word: str) -> Any:
    if word[:1] in "{[\"":
        try:
            return json.loads(word)
        except ValueError:
            raise ParseError(f"invalid JSON: {word[:60]}") from None
    return Bare(word)


def split_line(line: str) -> list[tuple[str | None, Any]]:
    """
    A shell line as C{(field name or None, value)} pairs, the command name
    first. JSON values may hold spaces and span lines.

    @raise ParseError: malformed JSON.
    """
    items: list[tuple[str | None, Any]] = []
    pos, end = 0, len(line)
    while True:
        while pos < end and line[pos].isspace():
            pos += 1
        if pos >= end:
            return items
        key = None
        match = _KEY.match(line, pos)
        if match and items:
            key, pos = match.group(1), match.end()
        if pos < end and line[pos] in "{[\"":
            try:
                value, pos = _DECODER.raw_decode(line, pos)
            except ValueError as e:
                raise ParseError(f"invalid JSON at column {pos + 1}: {e}") from None
        else:
            found = _WORD_END.search(line, pos)
            stop = found.start() if found else end
            value = _value(line[pos:stop]) if items else line[pos:stop]
            pos = stop
        items.append((key, value))


def unbalanced(text: str) -> bool:
    """Whether C{text} has unclosed brackets or quotes (the shell then reads another line)."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
    return depth > 0 or in_string


def build_request(items: Sequence[tuple[str | None, Any]]) -> dict[str, Any]:
    """
    The request for parsed items (L{split_line}, or C{argv} words through
    L{words_to_items}).

    @raise ParseError: an unknown command, too many values, or a field given twice.
    """
    if not items:
        raise ParseError("no command")
    name = items[0][1]
    if not isinstance(name, str):
        raise ParseError("the command must be a word")
    entry = lookup(name)
    if entry is None:
        raise ParseError(f"unknown command: {name} (try 'help')")
    names = [f["name"] for f in entry["fields"]]
    types = {f["name"]: f["type"] for f in entry["fields"]}
    request: dict[str, Any] = {"cmd": name}
    positional = iter(names)
    for key, value in items[1:]:
        if key is None:
            key = next(positional, None)
            if key is None:
                raise ParseError(f"{name} takes at most {len(names)} values ({' '.join(names) or 'none'})")
        if key in request:
            raise ParseError(f"{key} given twice")
        request[key] = value.value(types.get(key, "any")) if isinstance(value, Bare) else value
    return request


def words_to_items(words: Sequence[str]) -> list[tuple[str | None, Any]]:
    """Command-line words (one value each, already split by the shell) as items."""
    items: list[tuple[str | None, Any]] = []
    for i, word in enumerate(words):
        match = _KEY.match(word)
        if i and match:
            items.append((match.group(1), _value(word[match.end():])))
        else:
            items.append((None, _value(word) if i else word))
    return items
