"""
Dotted field paths (engine.md 2.4, 2.5, 3.2).

A path is split on every C{.}; there is no escaping, so a field whose name
contains a dot cannot be addressed.

  - Reading (queries, updates, aggregation) descends through objects only: a
    missing key or a non-object step means "not found"; numeric steps never
    index arrays. L{get_path}.
  - C{find}'s sort alone may also index arrays by a numeric step
    (C{"scores.0"}). L{get_path_sort}.
  - Writing creates missing intermediate objects and replaces an
    intermediate that is not an object (scalar, array, null) by C{{}}.
    L{set_path} mutates the dict it is given; L{with_path} returns a copy that
    shares every untouched subtree with the original.
  - Removing through a missing or non-object parent does nothing.
    L{unset_path}.
"""

from __future__ import annotations

import re
from typing import Any

_NOT_FOUND: tuple[bool, Any] = (False, None)
_MISSING = object()
# Rust's usize::from_str: ASCII digits with an optional leading '+'.
_INDEX = re.compile(r"\+?[0-9]+")


def get_parts(doc: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
    """L{get_path} on a pre-split path."""
    current = doc
    for part in parts:
        if type(current) is not dict:
            return _NOT_FOUND
        current = current.get(part, _MISSING)
        if current is _MISSING:
            return _NOT_FOUND
    return (True, current)


def get_path(doc: Any, path: str) -> tuple[bool, Any]:
    """
    C{(True, value)} if C{path} resolves in C{doc} through objects only,
    else C{(False, None)}. An explicit C{null} is found.
    """
    return get_parts(doc, tuple(path.split(".")))


def get_parts_sort(doc: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
    """L{get_path_sort} on a pre-split path."""
    current = doc
    for part in parts:
        kind = type(current)
        if kind is dict:
            current = current.get(part, _MISSING)
            if current is _MISSING:
                return _NOT_FOUND
        elif kind is list and _INDEX.fullmatch(part):
            index = int(part)
            if index >= len(current):
                return _NOT_FOUND
            current = current[index]
        else:
            return _NOT_FOUND
    return (True, current)


def get_path_sort(doc: Any, path: str) -> tuple[bool, Any]:
    """
    Like L{get_path}, but a numeric step indexes an array: the reading
    C{find}'s sort uses (engine.md 2.5).
    """
    return get_parts_sort(doc, tuple(path.split(".")))


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """
    Store C{value} at C{path} in C{doc} (mutating it), creating missing
    intermediate objects and replacing non-object intermediates by C{{}}.
    An existing key keeps its position.
    """
    parts = path.split(".")
    current = doc
    for part in parts[:-1]:
        child = current.get(part)
        if type(child) is not dict:
            child = {}
            current[part] = child
        current = child
    current[parts[-1]] = value


def with_path(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """
    A copy of C{doc} with C{value} stored at C{path} as L{set_path} would;
    only the objects along the path are copied, C{doc} is not modified.
    """
    parts = path.split(".")
    result = dict(doc)
    current = result
    for part in parts[:-1]:
        child = current.get(part)
        child = dict(child) if type(child) is dict else {}
        current[part] = child
        current = child
    current[parts[-1]] = value
    return result


def unset_path(doc: dict[str, Any], path: str) -> bool:
    """
    Remove the key at C{path} from C{doc} (mutating it). Returns whether
    something was removed; a missing or non-object parent is a no-op.
    """
    parts = path.split(".")
    found, parent = get_parts(doc, tuple(parts[:-1]))
    if not found or type(parent) is not dict or parts[-1] not in parent:
        return False
    del parent[parts[-1]]
    return True
