"""
Update operators (engine.md 3).

L{compile_update} performs only the up-front checks v0.15 makes (the update
is an object with at least one key); everything else is checked by
L{Update.apply} against each matched document, so a malformed update that
matches nothing succeeds with C{modified: 0}, as in v0.15. C{apply} never
mutates its input and returns a new document, or raises
L{InvalidQueryError} with the engine.md 3.3 text.

Per operator, in the order the keys appear (and paths in order within one):
the operator must be known (C{unknown update operator: <op>}, so a
replacement-style C{{"name": "x"}} fails that way), then its operand must be
an object (C{<op> value must be an object}); later steps see earlier
results. Reading a path follows objects only and treats an explicit
C{null} like a missing value; writing creates intermediate objects and
replaces non-object intermediates by C{{}} (L{oxidb.engine.paths}).

Decisions where the spec leaves room:

  - Deliberate deviation (REC of engine.md 1.2): any operator whose path (or
    C{$rename} target) is C{_id} or C{_version}, or lies under them, raises
    C{invalid query: <op> cannot modify reserved field '<path>'}. Like every
    other update error it is raised only for a matched document.
  - C{$inc} on an absent field stores the operand unchanged (C{1.0} stays a
    float); every computed result goes through
    L{oxidb.engine.values.normalize_number} (f64 arithmetic, integral results
    become integers, overflow becomes null).
  - C{$currentDate} formats the C{now} argument (never the wall clock) with
    L{oxidb.engine.values.format_rfc3339}: C{+00:00} and milli- or
    microsecond digits, e.g. C{2026-02-21T10:11:12.123456+00:00}.
  - The result is checked against L{oxidb.engine.values.MAX_DEPTH}
    (C{document exceeds the maximum nesting depth of 100}).
  - Bumping C{_version} is the storage layer's job; L{bump_version} helps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from oxidb.engine.paths import get_path, set_path, unset_path
from oxidb.engine.values import (
    check_depth,
    deep_copy,
    format_rfc3339,
    is_number,
    json_equal,
    normalize_number,
    sort_key,
    to_float,
)
from oxidb.errors import InvalidQueryError

RESERVED_FIELDS = ("_id", "_version")


def _check_reserved(op: str, path: str) -> None:
    for field in RESERVED_FIELDS:
        if path == field or path.startswith(field + "."):
            raise InvalidQueryError(f"{op} cannot modify reserved field '{path}'")


def _current(doc: dict[str, Any], path: str) -> Any:
    """The value at C{path}, C{None} when missing (3.2: absent == null)."""
    return get_path(doc, path)[1]


def _set(doc: dict[str, Any], fields: dict[str, Any], now: float) -> None:
    for path, value in fields.items():
        _check_reserved("$set", path)
        set_path(doc, path, deep_copy(value))


def _unset(doc: dict[str, Any], fields: dict[str, Any], now: float) -> None:
    for path in fields:
        _check_reserved("$unset", path)
        unset_path(doc, path)


def _arithmetic(
    op: str, absent: Callable[[Any], Any], combine: Callable[[float, float], float]
) -> Callable[[dict[str, Any], dict[str, Any], float], None]:
    def apply(doc: dict[str, Any], fields: dict[str, Any], now: float) -> None:
        for path, operand in fields.items():
            _check_reserved(op, path)
            if not is_number(operand):
                raise InvalidQueryError(f"{op} value for '{path}' must be numeric")
            current = _current(doc, path)
            if current is None:
                result = absent(operand)
            elif not is_number(current):
                raise InvalidQueryError(f"{op} cannot be applied to non-numeric field '{path}'")
            else:
                result = normalize_number(combine(to_float(current), to_float(operand)))
            set_path(doc, path, result)

    return apply


_inc = _arithmetic("$inc", lambda operand: operand, lambda a, b: a + b)
_mul = _arithmetic("$mul", lambda operand: 0, lambda a, b: a * b)


def _extreme(op: str, wanted: int) -> Callable[[dict[str, Any], dict[str, Any], float], None]:
    def apply(doc: dict[str, Any], fields: dict[str, Any], now: float) -> None:
        for path, value in fields.items():
            _check_reserved(op, path)
            current = _current(doc, path)
            if current is None:
                set_path(doc, path, deep_copy(value))
                continue
            new_key, current_key = sort_key(value), sort_key(current)
            if (new_key > current_key) - (new_key < current_key) == wanted:
                set_path(doc, path, deep_copy(value))

    return apply


_min = _extreme("$min", -1)
_max = _extreme("$max", 1)


def _rename(doc: dict[str, Any], fields: dict[str, Any], now: float) -> None:
    for old, new in fields.items():
        _check_reserved("$rename", old)
        if type(new) is not str:
            raise InvalidQueryError(f"$rename target for '{old}' must be a string")
        _check_reserved("$rename", new)
        value = _current(doc, old)
        if value is None:
            continue
        unset_path(doc, old)
        set_path(doc, new, value)


def _current_date(doc: dict[str, Any], fields: dict[str, Any], now: float) -> None:
    stamp = format_rfc3339(now)
    for path in fields:
        _check_reserved("$currentDate", path)
        set_path(doc, path, stamp)


def _array(op: str, doc: dict[str, Any], path: str) -> list[Any] | None:
    """The array at C{path}, C{None} if absent; an error for any other value."""
    current = _current(doc, path)
    if current is not None and type(current) is not list:
        raise InvalidQueryError(f"{op} requires field '{path}' to be an array")
    return current


def _push(doc: dict[str, Any], fields: dict[str, Any], now: float) -> None:
    for path, value in fields.items():
        _check_reserved("$push", path)
        current = _array("$push", doc, path)
        if current is None:
            set_path(doc, path, [deep_copy(value)])
        else:
            current.append(deep_copy(value))


def _pull(doc: dict[str, Any], fields: dict[str, Any], now: float) -> None:
    for path, value in fields.items():
        _check_reserved("$pull", path)
        current = _array("$pull", doc, path)
        if current is not None:
            current[:] = [item for item in current if not json_equal(item, value)]


def _add_to_set(doc: dict[str, Any], fields: dict[str, Any], now: float) -> None:
    for path, value in fields.items():
        _check_reserved("$addToSet", path)
        current = _array("$addToSet", doc, path)
        if current is None:
            set_path(doc, path, [deep_copy(value)])
        elif not any(json_equal(item, value) for item in current):
            current.append(deep_copy(value))


def _pop(doc: dict[str, Any], fields: dict[str, Any], now: float) -> None:
    for path, direction in fields.items():
        _check_reserved("$pop", path)
        current = _array("$pop", doc, path)
        if not current:
            continue
        if type(direction) is not int or direction not in (1, -1):
            raise InvalidQueryError(f"$pop value for '{path}' must be 1 or -1")
        current.pop(-1 if direction == 1 else 0)


_OPERATORS: dict[str, Callable[[dict[str, Any], dict[str, Any], float], None]] = {
    "$set": _set,
    "$unset": _unset,
    "$inc": _inc,
    "$mul": _mul,
    "$min": _min,
    "$max": _max,
    "$rename": _rename,
    "$currentDate": _current_date,
    "$push": _push,
    "$pull": _pull,
    "$addToSet": _add_to_set,
    "$pop": _pop,
}

UPDATE_OPERATORS = tuple(_OPERATORS)
"""The 12 update operators of engine.md 3.3."""


@attrs.frozen
class Update:
    """A compiled update document; see the module docstring."""

    spec: dict[str, Any]

    def apply(self, doc: dict[str, Any], now: float) -> dict[str, Any]:
        """
        The updated copy of C{doc}. C{now} is the current time in seconds
        since the epoch, used by C{$currentDate}. C{_version} is left as is.
        """
        result: dict[str, Any] = deep_copy(doc)
        for op, fields in self.spec.items():
            operator = _OPERATORS.get(op)
            if operator is None:
                raise InvalidQueryError(f"unknown update operator: {op}")
            if type(fields) is not dict:
                raise InvalidQueryError(f"{op} value must be an object")
            operator(result, fields, now)
        check_depth(result, "document")
        return result


def compile_update(update: object) -> Update:
    """
    The up-front checks of engine.md 3.1: C{update must be an object},
    C{update must contain at least one operator}, and the nesting limit.
    """
    if type(update) is not dict:
        raise InvalidQueryError("update must be an object")
    if not update:
        raise InvalidQueryError("update must contain at least one operator")
    check_depth(update, "update")
    return Update(update)


def bump_version(doc: dict[str, Any]) -> dict[str, Any]:
    """
    A shallow copy of C{doc} with C{_version} one higher (a missing or
    non-integer version counts as 0).
    """
    version = doc.get("_version")
    if type(version) is not int:
        version = 0
    return {**doc, "_version": version + 1}
