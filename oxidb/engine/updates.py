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

Additions beyond v0.15, with MongoDB's meaning (docs/queries.md, "Upserts and
array updates"):

  - C{$setOnInsert} acts like C{$set} when the update inserts a document (an
    upsert that matched nothing, C{inserting=True}) and does nothing
    otherwise.
  - Array update operators in paths: C{$[]} (every element), C{$[<id>]}
    (the elements the array filter C{<id>} matches) and C{$} (the first
    element matched by the query's C{$elemMatch} on that array, since
    queries never match array elements otherwise). A path using them is
    expanded against the document into concrete paths whose numeric steps
    index arrays; the array must exist (C{the path '<p>' must exist in the
    document in order to apply array updates}). Array filters are checked
    up front by L{compile_update}: each is an object whose keys all start
    with one identifier (a lower-case letter, then letters and digits),
    each identifier is defined once, used by the update, and every
    C{$[<id>]} of the update has one. C{$rename} refuses them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs

from oxidb.engine.matcher import And, FieldOp, Matcher, compile_query
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

#: A path as written (dotted), or expanded from array update operators into
#: steps (strings index objects, integers index arrays).
Path = str | tuple[str | int, ...]

#: An operator's targets: C{(path, operand)} in the order written.
Items = list[tuple[Path, Any]]

_IDENTIFIER = re.compile(r"[a-z][a-zA-Z0-9]*")
_FILTERED = re.compile(r"\$\[([^\]]*)\]")


def _text(path: Path) -> str:
    return path if isinstance(path, str) else ".".join(str(step) for step in path)


def _check_reserved(op: str, path: Path) -> None:
    text = _text(path)
    for field in RESERVED_FIELDS:
        if text == field or text.startswith(field + "."):
            raise InvalidQueryError(f"{op} cannot modify reserved field '{text}'")


def _current(doc: dict[str, Any], path: Path) -> Any:
    """The value at C{path}, C{None} when missing (3.2: absent == null)."""
    if isinstance(path, str):
        return get_path(doc, path)[1]
    current: Any = doc
    for step in path:
        if isinstance(step, int):
            if type(current) is not list or step >= len(current):
                return None
            current = current[step]
        elif type(current) is dict:
            current = current.get(step)
        else:
            return None
    return current


def _put(doc: dict[str, Any], path: Path, value: Any) -> None:
    """
    Store C{value} at C{path}. Expanded paths index arrays at their integer
    steps (the elements exist: expansion found them) and otherwise write as
    L{set_path} does.
    """
    if isinstance(path, str):
        set_path(doc, path, value)
        return
    container: Any = doc
    for step, following in zip(path, path[1:], strict=False):
        child = container[step] if isinstance(step, int) else container.get(step)
        if isinstance(following, str) and type(child) is not dict:
            child = {}
            container[step] = child
        container = child
    container[path[-1]] = value


def _drop(doc: dict[str, Any], path: Path) -> None:
    """Remove the value at C{path}; an array element becomes null (MongoDB's C{$unset})."""
    if isinstance(path, str):
        unset_path(doc, path)
        return
    parent = _current(doc, path[:-1]) if len(path) > 1 else doc
    last = path[-1]
    if isinstance(last, int):
        if type(parent) is list and last < len(parent):
            parent[last] = None
    elif type(parent) is dict:
        parent.pop(last, None)


Operator = Callable[[dict[str, Any], Items, float], None]


def _set(doc: dict[str, Any], fields: Items, now: float) -> None:
    for path, value in fields:
        _check_reserved("$set", path)
        _put(doc, path, deep_copy(value))


def _unset(doc: dict[str, Any], fields: Items, now: float) -> None:
    for path, _ in fields:
        _check_reserved("$unset", path)
        _drop(doc, path)


def _arithmetic(op: str, absent: Callable[[Any], Any], combine: Callable[[float, float], float]) -> Operator:
    def apply(doc: dict[str, Any], fields: Items, now: float) -> None:
        for path, operand in fields:
            _check_reserved(op, path)
            if not is_number(operand):
                raise InvalidQueryError(f"{op} value for '{_text(path)}' must be numeric")
            current = _current(doc, path)
            if current is None:
                result = absent(operand)
            elif not is_number(current):
                raise InvalidQueryError(f"{op} cannot be applied to non-numeric field '{_text(path)}'")
            else:
                result = normalize_number(combine(to_float(current), to_float(operand)))
            _put(doc, path, result)

    return apply


_inc = _arithmetic("$inc", lambda operand: operand, lambda a, b: a + b)
_mul = _arithmetic("$mul", lambda operand: 0, lambda a, b: a * b)


def _extreme(op: str, wanted: int) -> Operator:
    def apply(doc: dict[str, Any], fields: Items, now: float) -> None:
        for path, value in fields:
            _check_reserved(op, path)
            current = _current(doc, path)
            if current is None:
                _put(doc, path, deep_copy(value))
                continue
            new_key, current_key = sort_key(value), sort_key(current)
            if (new_key > current_key) - (new_key < current_key) == wanted:
                _put(doc, path, deep_copy(value))

    return apply


_min = _extreme("$min", -1)
_max = _extreme("$max", 1)


def _rename(doc: dict[str, Any], fields: Items, now: float) -> None:
    for old, new in fields:
        assert isinstance(old, str)
        _check_reserved("$rename", old)
        if type(new) is not str:
            raise InvalidQueryError(f"$rename target for '{old}' must be a string")
        _check_reserved("$rename", new)
        value = _current(doc, old)
        if value is None:
            continue
        unset_path(doc, old)
        set_path(doc, new, value)


def _current_date(doc: dict[str, Any], fields: Items, now: float) -> None:
    stamp = format_rfc3339(now)
    for path, _ in fields:
        _check_reserved("$currentDate", path)
        _put(doc, path, stamp)


def _array(op: str, doc: dict[str, Any], path: Path) -> list[Any] | None:
    """The array at C{path}, C{None} if absent; an error for any other value."""
    current = _current(doc, path)
    if current is not None and type(current) is not list:
        raise InvalidQueryError(f"{op} requires field '{_text(path)}' to be an array")
    return current


def _push(doc: dict[str, Any], fields: Items, now: float) -> None:
    for path, value in fields:
        _check_reserved("$push", path)
        current = _array("$push", doc, path)
        if current is None:
            _put(doc, path, [deep_copy(value)])
        else:
            current.append(deep_copy(value))


def _pull(doc: dict[str, Any], fields: Items, now: float) -> None:
    for path, value in fields:
        _check_reserved("$pull", path)
        current = _array("$pull", doc, path)
        if current is not None:
            current[:] = [item for item in current if not json_equal(item, value)]


def _add_to_set(doc: dict[str, Any], fields: Items, now: float) -> None:
    for path, value in fields:
        _check_reserved("$addToSet", path)
        current = _array("$addToSet", doc, path)
        if current is None:
            _put(doc, path, [deep_copy(value)])
        elif not any(json_equal(item, value) for item in current):
            current.append(deep_copy(value))


def _pop(doc: dict[str, Any], fields: Items, now: float) -> None:
    for path, direction in fields:
        _check_reserved("$pop", path)
        current = _array("$pop", doc, path)
        if not current:
            continue
        if type(direction) is not int or direction not in (1, -1):
            raise InvalidQueryError(f"$pop value for '{_text(path)}' must be 1 or -1")
        current.pop(-1 if direction == 1 else 0)


def _set_on_insert(doc: dict[str, Any], fields: Items, now: float) -> None:
    """C{$set} when inserting; L{Update.apply} skips it otherwise (after checking its paths)."""
    for path, value in fields:
        _check_reserved("$setOnInsert", path)
        _put(doc, path, deep_copy(value))


_OPERATORS: dict[str, Operator] = {
    "$set": _set,
    "$setOnInsert": _set_on_insert,
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

UPDATE_OPERATORS = tuple(op for op in _OPERATORS if op != "$setOnInsert")
"""The 12 update operators of engine.md 3.3 (C{$setOnInsert} is an addition)."""


@attrs.frozen
class ArrayFilter:
    """One C{arrayFilters} element: C{identifier} and the query run on C{{identifier: element}}."""

    identifier: str
    matcher: Matcher

    def matches(self, element: Any) -> bool:
        return self.matcher.matches({self.identifier: element})


def _is_array_step(step: str) -> bool:
    return step == "$" or (step.startswith("$[") and step.endswith("]"))


def _positional_index(query: Matcher | None, prefix: str, array: list[Any]) -> int:
    """
    The index C{$} stands for in the array at C{prefix}: the first element
    matching the query's C{$elemMatch} on that path (in its top-level
    conditions or C{$and}).
    """
    if query is not None:
        for op in _elem_matches(query.root, prefix):
            for index, element in enumerate(array):
                if op.operand.element_matches(element):
                    return index
    raise InvalidQueryError("the positional operator did not find the match needed from the query")


def _elem_matches(node: And, prefix: str) -> list[FieldOp]:
    found: list[FieldOp] = []
    for child in node.children:
        if isinstance(child, FieldOp):
            if child.op == "$elemMatch" and child.path == prefix:
                found.append(child)
        elif isinstance(child, And):
            found.extend(_elem_matches(child, prefix))
    return found


@attrs.frozen
class Update:
    """A compiled update document; see the module docstring."""

    spec: dict[str, Any]
    array_filters: dict[str, ArrayFilter] = attrs.Factory(dict)

    @property
    def positional(self) -> bool:
        """Does a path use C{$} (so that applying it needs the query)?"""
        return any(
            type(fields) is dict and any("$" in path.split(".") for path in fields) for fields in self.spec.values()
        )

    def apply(
        self, doc: dict[str, Any], now: float, query: Matcher | None = None, *, inserting: bool = False
    ) -> dict[str, Any]:
        """
        The updated copy of C{doc}. C{now} is the current time in seconds
        since the epoch, used by C{$currentDate}; C{query} is the matched
        query, which C{$} paths refer to; C{inserting}: the document is an
        upsert's new one (C{$setOnInsert} applies). C{_version} is left as
        is.
        """
        result: dict[str, Any] = deep_copy(doc)
        for op, fields in self.spec.items():
            operator = _OPERATORS.get(op)
            if operator is None:
                raise InvalidQueryError(f"unknown update operator: {op}")
            if type(fields) is not dict:
                raise InvalidQueryError(f"{op} value must be an object")
            if op == "$setOnInsert" and not inserting:
                for path in fields:
                    _check_reserved(op, path)
                continue
            items: Items = []
            for path, value in fields.items():
                if op == "$rename" and (
                    _uses_array_steps(path) or (isinstance(value, str) and _uses_array_steps(value))
                ):
                    raise InvalidQueryError("$rename does not support array update operators")
                if _uses_array_steps(path):
                    items.extend((target, value) for target in self._expand(result, path, query))
                else:
                    items.append((path, value))
            operator(result, items, now)
        check_depth(result, "document")
        return result

    def _expand(self, doc: dict[str, Any], path: str, query: Matcher | None) -> list[Path]:
        """The concrete paths C{path} stands for in C{doc} (see the module docstring)."""
        targets: list[tuple[str | int, ...]] = [()]
        steps = path.split(".")
        for position, step in enumerate(steps):
            if not _is_array_step(step):
                targets = [target + (step,) for target in targets]
                continue
            prefix = ".".join(steps[:position])
            expanded: list[tuple[str | int, ...]] = []
            for target in targets:
                array = _current(doc, target)
                if type(array) is not list:
                    raise InvalidQueryError(
                        f"the path '{prefix}' must exist in the document in order to apply array updates"
                    )
                if step == "$":
                    expanded.append(target + (_positional_index(query, prefix, array),))
                elif step == "$[]":
                    expanded.extend(target + (index,) for index in range(len(array)))
                else:
                    array_filter = self.array_filters[step[2:-1]]
                    expanded.extend(
                        target + (index,) for index, element in enumerate(array) if array_filter.matches(element)
                    )
            targets = expanded
        return list(targets)


def _uses_array_steps(path: str) -> bool:
    return "$" in path and any(_is_array_step(step) for step in path.split("."))


def _compile_array_filters(array_filters: object) -> dict[str, ArrayFilter]:
    if array_filters is None:
        return {}
    if type(array_filters) is not list:
        raise InvalidQueryError("arrayFilters must be an array of objects")
    compiled: dict[str, ArrayFilter] = {}
    for array_filter in array_filters:
        if type(array_filter) is not dict or not array_filter:
            raise InvalidQueryError("each array filter must be a non-empty object")
        identifiers = {key.split(".", 1)[0] for key in array_filter}
        if len(identifiers) != 1:
            raise InvalidQueryError("an array filter must use a single top-level identifier")
        (identifier,) = identifiers
        if not _IDENTIFIER.fullmatch(identifier):
            raise InvalidQueryError(
                f"array filter identifier '{identifier}' must start with a lower-case letter"
                " and contain only letters and digits"
            )
        if identifier in compiled:
            raise InvalidQueryError(f"array filter identifier '{identifier}' is defined more than once")
        compiled[identifier] = ArrayFilter(identifier, compile_query(array_filter))
    return compiled


def compile_update(update: object, array_filters: object = None) -> Update:
    """
    The up-front checks of engine.md 3.1: C{update must be an object},
    C{update must contain at least one operator}, and the nesting limit;
    then the array filters' (see the module docstring).
    """
    if type(update) is not dict:
        raise InvalidQueryError("update must be an object")
    if not update:
        raise InvalidQueryError("update must contain at least one operator")
    check_depth(update, "update")
    if array_filters is not None:
        check_depth(array_filters, "arrayFilters")
    filters = _compile_array_filters(array_filters)
    used: set[str] = set()
    for fields in update.values():
        if type(fields) is not dict:
            continue
        for path in fields:
            for identifier in _FILTERED.findall(path):
                if identifier == "":
                    continue
                if identifier not in filters:
                    raise InvalidQueryError(f"no array filter found for identifier '{identifier}' in path '{path}'")
                used.add(identifier)
    for identifier in filters:
        if identifier not in used:
            raise InvalidQueryError(f"the array filter for identifier '{identifier}' was not used in the update")
    return Update(update, filters)


def upsert_document(query: Matcher) -> dict[str, Any]:
    """
    The start of an upsert's new document: the query's equality conditions
    (C{{"a.b": 1}} and C{{"a": {"$eq": 1}}}, also inside C{$and}) as fields,
    dotted paths as nested objects. Other operators, C{$or} branches and
    C{_id}/C{_version} (assigned by the server) are left out.
    """
    doc: dict[str, Any] = {}
    _copy_equalities(query.root, doc)
    return doc


def _copy_equalities(node: And, doc: dict[str, Any]) -> None:
    for child in node.children:
        if isinstance(child, And):
            _copy_equalities(child, doc)
        elif isinstance(child, FieldOp) and child.op == "$eq":
            root = child.path.split(".", 1)[0]
            if root not in RESERVED_FIELDS:
                set_path(doc, child.path, deep_copy(child.operand))


def bump_version(doc: dict[str, Any]) -> dict[str, Any]:
    """
    A shallow copy of C{doc} with C{_version} one higher (a missing or
    non-integer version counts as 0).
    """
    version = doc.get("_version")
    if type(version) is not int:
        version = 0
    return {**doc, "_version": version + 1}
