"""
The C{fields} projection of C{find_and_modify} (MongoDB's find projection,
inclusion or exclusion only).

A projection is an object of dotted paths to C{1}/C{true} (include) or
C{0}/C{false} (exclude); C{{}} keeps the whole document. Included paths are
copied through objects only (L{oxidb.engine.paths}); C{_id} is kept unless
excluded, whatever the mode; other paths cannot mix the two modes.
"""

from __future__ import annotations

from typing import Any

import attrs

from oxidb.engine.paths import get_path, set_path, unset_path
from oxidb.engine.values import deep_copy
from oxidb.errors import InvalidQueryError


def _mode(path: str, value: Any) -> bool:
    """True to include, False to exclude."""
    if value is True or (type(value) is int and value == 1):
        return True
    if value is False or (type(value) is int and value == 0):
        return False
    raise InvalidQueryError(f"projection value for '{path}' must be 0, 1, true or false")


@attrs.frozen
class Projection:
    """A checked projection; L{apply} returns a new document."""

    paths: tuple[str, ...]
    inclusion: bool
    keep_id: bool

    def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        if self.inclusion:
            out: dict[str, Any] = {}
            if self.keep_id and "_id" in doc:
                out["_id"] = doc["_id"]
            for path in self.paths:
                found, value = get_path(doc, path)
                if found:
                    set_path(out, path, deep_copy(value))
            return out
        result: dict[str, Any] = deep_copy(doc)
        for path in self.paths:
            unset_path(result, path)
        if not self.keep_id:
            result.pop("_id", None)
        return result


def compile_projection(spec: object) -> Projection | None:
    """
    The projection of C{spec}, or None for C{None} or C{{}} (whole
    documents).

    @raise InvalidQueryError: not an object, a value other than 0/1/true/
        false, or inclusions mixed with exclusions.
    """
    if spec is None:
        return None
    if type(spec) is not dict:
        raise InvalidQueryError("projection must be an object")
    if not spec:
        return None
    keep_id = True
    modes: dict[str, bool] = {}
    for path, value in spec.items():
        include = _mode(path, value)
        if path == "_id":
            keep_id = include
        else:
            modes[path] = include
    if len(set(modes.values())) > 1:
        raise InvalidQueryError("projection cannot mix inclusion and exclusion")
    inclusion = all(modes.values()) if modes else keep_id
    return Projection(tuple(modes), inclusion, keep_id)
