"""
The reference query matcher (engine.md 2.2-2.6): parses a query document
once into a tree of nodes and evaluates it against documents.

Tree
====

L{compile_query} returns a L{Matcher} whose C{root} is an L{And}. Nodes:

  - L{And}C{(children)} / L{Or}C{(children)}: C{And(())} matches everything,
    C{Or(())} nothing. Each element of a C{$and}/C{$or} array becomes an
    L{And} child.
  - L{FieldOp}C{(path, op, operand)}: one condition on the value at a dotted
    path (objects-only traversal, engine.md 2.4). A field with an operator
    object yields one C{FieldOp} per operator, in key order, flattened into
    the enclosing C{And}; a bare value yields C{FieldOp(path, "$eq", value)}.

Operands by C{op}:

  - C{$eq $ne $gt $gte $lt $lte}: the raw JSON operand.
  - C{$in $nin $all}: a tuple of raw JSON values.
  - C{$exists}: a bool.
  - C{$regex}: a L{Regex} (pattern, options, compiled pattern).
  - C{$not}: a tuple of L{FieldOp} on the same path (their conjunction is
    negated).
  - C{$elemMatch}: an L{ElemMatch}.
  - C{$size}: an int. C{$type}: a tuple of type names.

Semantics
=========

Comparisons use L{oxidb.engine.values.sort_key}: C{1 == 1.0}, equal-instant
date strings are equal, arrays/objects compare as canonical JSON text (no
"any element" matching), ranges cross types. A missing path fails every
operator except those listed below (so C{$ne} and C{$in: [null]} fail, as in
v0.15); an explicit C{null} is present.

The v0.15 operators: C{$eq $ne $gt $gte $lt $lte $in $exists $regex}
(C{$options} containing C{i} makes the regex case-insensitive, other letters
are ignored, a non-string C{$options} is ignored; an object holding only
C{$options} imposes nothing).

Extensions, with MongoDB meaning (engine.md 2.3 allows them):

  - C{$nin: [..]}: the value equals no element; a missing field matches
    unless the list contains C{null} (MongoDB reads missing as null here).
  - C{$not: {ops}}: the negation of the operator object; a missing field
    therefore matches. The operand must be an object with at least one
    operator.
  - C{$all: [..]}: every element equals the value or, for an array value,
    one of its elements. C{$all: []} and missing fields match nothing.
  - C{$elemMatch: {..}}: the value is an array with an element that
    satisfies the operand. An operand with a C{$} key other than
    C{$and}/C{$or} holds operators applied to the element itself
    (C{{"$gte": 80, "$lt": 85}}); otherwise it is a query run against
    elements that are objects (C{{"qty": {"$gt": 5}}}).
  - C{$size: n}: the value is an array of exactly n elements (n a
    non-negative integer).
  - C{$type: name | [names]}: the value has one of the types C{null},
    C{bool}/C{boolean}, C{number}, C{int}/C{integer}/C{long} (an integral
    JSON number written without a fraction), C{double} (a float),
    C{string}, C{date} (a date-time string), C{array}, C{object}. Missing
    fields match nothing.

Everything else (C{$mod}, C{$text}, geo operators, ...) raises
C{unknown operator}. Top-level keys other than C{$and}/C{$or} are field
names, even C{$nor}/C{$where} (v0.15; such a query matches nothing unless a
document really has that field).

Regular expressions run on RE2 (google-re2), in time linear in the text, with
C{search} semantics; client patterns never reach Python's C{re}. Like
v0.15's Rust C{regex}, RE2 has no back-references, look-around, conditionals,
atomic groups or possessive repetition: such patterns are C{invalid regex}
with a message naming the construct, as are patterns longer than the
C{max_regex_length} limit.

Shape limits (L{oxidb.engine.governor.QueryLimits}): nesting depth,
elements of one C{$and}/C{$or}/C{$in}/C{$nin}/C{$all} array, sort keys.

Ordering of results (L{apply_find}): documents in ascending C{_id}, a stable
sort, ties broken by ascending C{_id}; missing sort fields sort as null.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeGuard

import attrs
import re2

from oxidb.engine.governor import DEFAULT_LIMITS, QueryLimits
from oxidb.engine.paths import get_parts, get_parts_sort
from oxidb.engine.values import I64_MAX, check_depth, is_date_string, sort_key
from oxidb.errors import InvalidQueryError

MAX_REGEX_LENGTH = DEFAULT_LIMITS.max_regex_length
"""Longest C{$regex} pattern accepted by default, in characters."""

Predicate = Callable[[bool, Any], bool]
"""C{predicate(found, value)}: does a (possibly missing) value satisfy a condition?"""

_MISSING = object()


@attrs.frozen
class Regex:
    """The operand of C{$regex}."""

    pattern: str
    options: str
    compiled: Any = attrs.field(eq=False, repr=False)
    """The RE2 pattern."""

    @property
    def ignore_case(self) -> bool:
        return "i" in self.options


@attrs.frozen
class FieldOp:
    """One operator applied to the value at C{path}."""

    path: str
    op: str
    operand: Any
    predicate: Predicate = attrs.field(eq=False, repr=False)
    parts: tuple[str, ...] = attrs.field(
        init=False,
        eq=False,
        repr=False,
        default=attrs.Factory(lambda self: tuple(self.path.split(".")), takes_self=True),
    )

    def test(self, found: bool, value: Any) -> bool:
        """Evaluate the operator on an already-resolved value."""
        return self.predicate(found, value)

    def matches(self, doc: Any) -> bool:
        current = doc
        for part in self.parts:
            if type(current) is not dict:
                return self.predicate(False, None)
            current = current.get(part, _MISSING)
            if current is _MISSING:
                return self.predicate(False, None)
        return self.predicate(True, current)


@attrs.frozen
class And:
    """All children match (vacuously true when empty)."""

    children: tuple[Node, ...]

    def matches(self, doc: Any) -> bool:
        for child in self.children:
            if not child.matches(doc):
                return False
        return True


@attrs.frozen
class Or:
    """Some child matches (false when empty)."""

    children: tuple[Node, ...]

    def matches(self, doc: Any) -> bool:
        for child in self.children:
            if child.matches(doc):
                return True
        return False


@attrs.frozen
class ElemMatch:
    """
    The operand of C{$elemMatch}: either C{ops}, conditions on each element
    value itself (their C{path} is empty), or C{query}, a query run against
    each element that is an object. Exactly one is set.
    """

    ops: tuple[FieldOp, ...] | None
    query: And | None

    def element_matches(self, element: Any) -> bool:
        if self.ops is not None:
            return all(op.predicate(True, element) for op in self.ops)
        assert self.query is not None
        return type(element) is dict and self.query.matches(element)


Node = And | Or | FieldOp


@attrs.frozen
class Matcher:
    """A compiled query."""

    root: And

    def matches(self, doc: Any) -> bool:
        return self.root.matches(doc)

    @property
    def matches_all(self) -> bool:
        """True for a query with no conditions (C{{}})."""
        return not self.root.children


# --- parsing ----------------------------------------------------------------------


def compile_query(query: object, limits: QueryLimits = DEFAULT_LIMITS) -> Matcher:
    """
    Parse and validate a query document (engine.md 2.2); every error is an
    L{InvalidQueryError} with the v0.15 text (or L{TooLargeError} for a
    query nested too deep), raised before any document is looked at.
    """
    if type(query) is not dict:
        raise InvalidQueryError("query must be a JSON object")
    check_depth(query, "query", limits.query_max_depth)
    return Matcher(_parse_query(query, limits))


def _check_array(op: str, items: list[Any], limits: QueryLimits) -> None:
    if len(items) > limits.query_max_array:
        raise InvalidQueryError(f"{op} has more than {limits.query_max_array} elements")


def _parse_query(query: object, limits: QueryLimits) -> And:
    if type(query) is not dict:
        raise InvalidQueryError("query must be a JSON object")
    children: list[Node] = []
    for key, value in query.items():
        if key == "$and" or key == "$or":
            if type(value) is not list:
                raise InvalidQueryError(f"{key} must be an array")
            _check_array(key, value, limits)
            subs = tuple(_parse_query(sub, limits) for sub in value)
            children.append(And(subs) if key == "$and" else Or(subs))
        elif type(value) is dict and any(k.startswith("$") for k in value):
            children.extend(_parse_operators(key, value, limits))
        else:
            children.append(_eq(key, value))
    return And(tuple(children))


def _parse_operators(path: str, ops: dict[str, Any], limits: QueryLimits) -> list[FieldOp]:
    return [_parse_op(path, op, operand, ops, limits) for op, operand in ops.items() if op != "$options"]


def _eq(path: str, operand: Any) -> FieldOp:
    key = sort_key(operand)
    return FieldOp(path, "$eq", operand, lambda found, value: found and sort_key(value) == key)


def _parse_op(path: str, op: str, operand: Any, siblings: dict[str, Any], limits: QueryLimits) -> FieldOp:
    parser = _OPERATORS.get(op)
    if parser is None:
        raise InvalidQueryError(f"unknown operator: {op}")
    return parser(path, op, operand, siblings, limits)


def _comparison(path: str, op: str, operand: Any, siblings: dict[str, Any], limits: QueryLimits) -> FieldOp:
    key = sort_key(operand)
    predicate: Predicate
    if op == "$eq":
        return _eq(path, operand)
    if op == "$ne":
        predicate = lambda found, value: found and sort_key(value) != key  # noqa: E731
    elif op == "$gt":
        predicate = lambda found, value: found and sort_key(value) > key  # noqa: E731
    elif op == "$gte":
        predicate = lambda found, value: found and sort_key(value) >= key  # noqa: E731
    elif op == "$lt":
        predicate = lambda found, value: found and sort_key(value) < key  # noqa: E731
    else:
        predicate = lambda found, value: found and sort_key(value) <= key  # noqa: E731
    return FieldOp(path, op, operand, predicate)


def _in(path: str, op: str, operand: Any, siblings: dict[str, Any], limits: QueryLimits) -> FieldOp:
    if type(operand) is not list:
        raise InvalidQueryError(f"{op} must be an array")
    _check_array(op, operand, limits)
    keys = frozenset(sort_key(item) for item in operand)
    predicate: Predicate
    if op == "$in":
        predicate = lambda found, value: found and sort_key(value) in keys  # noqa: E731
    else:
        null_listed = sort_key(None) in keys
        predicate = lambda found, value: (  # noqa: E731
            sort_key(value) not in keys if found else not null_listed
        )
    return FieldOp(path, op, tuple(operand), predicate)


def _all(path: str, op: str, operand: Any, siblings: dict[str, Any], limits: QueryLimits) -> FieldOp:
    if type(operand) is not list:
        raise InvalidQueryError("$all must be an array")
    _check_array(op, operand, limits)
    keys = tuple(sort_key(item) for item in operand)

    def predicate(found: bool, value: Any) -> bool:
        if not found or not keys:
            return False
        whole = sort_key(value)
        if type(value) is list:
            elements = {sort_key(item) for item in value}
            return all(key == whole or key in elements for key in keys)
        return all(key == whole for key in keys)

    return FieldOp(path, op, tuple(operand), predicate)


def _exists(path: str, op: str, operand: Any, siblings: dict[str, Any], limits: QueryLimits) -> FieldOp:
    if type(operand) is not bool:
        raise InvalidQueryError("$exists must be a boolean")
    return FieldOp(path, op, operand, lambda found, value: found is operand)


def _regex(path: str, op: str, operand: Any, siblings: dict[str, Any], limits: QueryLimits) -> FieldOp:
    if type(operand) is not str:
        raise InvalidQueryError("$regex must be a string")
    options = siblings.get("$options")
    if type(options) is not str:
        options = ""
    compiled = compile_regex(operand, "i" in options, limits.max_regex_length)
    search = regex_searcher(compiled)
    return FieldOp(
        path,
        op,
        Regex(operand, options, compiled),
        lambda found, value: found and type(value) is str and search(value),
    )


def _not(path: str, op: str, operand: Any, siblings: dict[str, Any], limits: QueryLimits) -> FieldOp:
    if type(operand) is not dict:
        raise InvalidQueryError("$not must be an object")
    inner = tuple(_parse_operators(path, operand, limits))
    if not inner:
        raise InvalidQueryError("$not must contain at least one operator")
    predicates = tuple(item.predicate for item in inner)
    return FieldOp(
        path,
        op,
        inner,
        lambda found, value: not all(p(found, value) for p in predicates),
    )


def _elem_match(path: str, op: str, operand: Any, siblings: dict[str, Any], limits: QueryLimits) -> FieldOp:
    if type(operand) is not dict:
        raise InvalidQueryError("$elemMatch must be an object")
    if any(key.startswith("$") and key not in ("$and", "$or") for key in operand):
        spec = ElemMatch(tuple(_parse_operators("", operand, limits)), None)
    else:
        spec = ElemMatch(None, _parse_query(operand, limits))
    element_matches = spec.element_matches
    return FieldOp(
        path,
        op,
        spec,
        lambda found, value: found
        and type(value) is list
        and any(element_matches(item) for item in value),
    )


def _size(path: str, op: str, operand: Any, siblings: dict[str, Any], limits: QueryLimits) -> FieldOp:
    if type(operand) is not int or operand < 0:
        raise InvalidQueryError("$size must be a non-negative integer")
    return FieldOp(
        path,
        op,
        operand,
        lambda found, value: found and type(value) is list and len(value) == operand,
    )


_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "null": lambda value: value is None,
    "bool": lambda value: type(value) is bool,
    "boolean": lambda value: type(value) is bool,
    "number": lambda value: type(value) is int or type(value) is float,
    "int": lambda value: type(value) is int,
    "integer": lambda value: type(value) is int,
    "long": lambda value: type(value) is int,
    "double": lambda value: type(value) is float,
    "string": lambda value: type(value) is str,
    "date": is_date_string,
    "array": lambda value: type(value) is list,
    "object": lambda value: type(value) is dict,
}


def _type(path: str, op: str, operand: Any, siblings: dict[str, Any], limits: QueryLimits) -> FieldOp:
    names = operand if type(operand) is list else [operand]
    if not names or any(type(name) is not str for name in names):
        raise InvalidQueryError("$type must be a string or an array of strings")
    for name in names:
        if name not in _TYPE_TESTS:
            raise InvalidQueryError(f"$type: unknown type '{name}'")
    tests = tuple(_TYPE_TESTS[name] for name in names)
    return FieldOp(
        path,
        op,
        tuple(names),
        lambda found, value: found and any(test(value) for test in tests),
    )


_OPERATORS: dict[str, Callable[[str, str, Any, dict[str, Any], QueryLimits], FieldOp]] = {
    "$eq": _comparison,
    "$ne": _comparison,
    "$gt": _comparison,
    "$gte": _comparison,
    "$lt": _comparison,
    "$lte": _comparison,
    "$in": _in,
    "$nin": _in,
    "$all": _all,
    "$exists": _exists,
    "$regex": _regex,
    "$not": _not,
    "$elemMatch": _elem_match,
    "$size": _size,
    "$type": _type,
}

OPERATORS = frozenset(_OPERATORS)
"""Every field operator the matcher accepts."""

# --- regular expressions -------------------------------------------------------------

# RE2's parse errors for constructs it does not have, by the text it quotes,
# mapped to what the client is told.
_UNSUPPORTED_OPERATORS = (
    ("(?=", "look-around is not supported"),
    ("(?!", "look-around is not supported"),
    ("(?<=", "look-around is not supported"),
    ("(?<!", "look-around is not supported"),
    ("(?>", "atomic groups are not supported"),
    ("(?(", "conditional groups are not supported"),
)


def _regex_problem(message: str) -> str:
    """The client's text for an RE2 parse error."""
    if message.startswith("invalid escape sequence: \\") and message[-1:].isdigit():
        return "back-references are not supported"
    if message.startswith("invalid perl operator: ") or message.startswith("missing argument to repetition operator"):
        quoted = message.split(": ", 1)[-1]
        for prefix, problem in _UNSUPPORTED_OPERATORS:
            if quoted.startswith(prefix):
                return problem
    if message.startswith("bad repetition operator: ") and message[-1:] == "+" and len(message.split(": ", 1)[1]) == 2:
        return "possessive repetition is not supported"
    return message


def _regex_options(ignore_case: bool) -> Any:
    options = re2.Options()
    options.log_errors = False
    options.never_capture = True  # only "is there a match" is asked
    options.case_sensitive = not ignore_case
    return options


_OPTIONS = {False: _regex_options(False), True: _regex_options(True)}


def regex_searcher(compiled: Any) -> Callable[[str], bool]:
    """
    C{found(text)}: does the RE2 pattern match somewhere in C{text}? Calls
    RE2's matcher directly when the binding exposes it (google-re2's
    C{search} decodes match offsets back to characters in Python, several
    times slower), else C{search}. Lone surrogates are passed through
    rather than failing the encoding.
    """
    regexp = getattr(compiled, "_regexp", None)
    anchor = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)
    match = getattr(regexp, "Match", None)
    if match is None or anchor is None:
        search = compiled.search
        return lambda text: search(text) is not None

    def found(text: str) -> bool:
        data = text.encode("utf-8", "surrogatepass")
        return bool(match(anchor, data, 0, len(data))[0][0] != -1)

    return found


def compile_regex(pattern: str, ignore_case: bool, max_length: int = MAX_REGEX_LENGTH) -> Any:
    """
    Compile a C{$regex} pattern with RE2, raising C{invalid regex: <detail>}
    for patterns that v0.15 would not accept (see the module docstring) or
    longer than C{max_length} characters.
    """
    if len(pattern) > max_length:
        raise InvalidQueryError(f"invalid regex: pattern longer than {max_length} characters")
    try:
        return re2.compile(pattern, _OPTIONS[ignore_case])
    except re2.error as e:
        detail = e.args[0] if e.args else str(e)
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise InvalidQueryError(f"invalid regex: {_regex_problem(str(detail))}") from None
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidQueryError(f"invalid regex: {e}") from None


# --- sort, skip, limit --------------------------------------------------------------

SortSpec = tuple[tuple[str, int], ...]
"""C{((path, 1 | -1), ...)} in the order given."""


def parse_sort(sort: object, limits: QueryLimits = DEFAULT_LIMITS) -> SortSpec | None:
    """
    Validate C{find}'s C{sort} (engine.md 2.5). A non-object or empty sort is
    ignored (C{None}); a direction other than the integer 1 or -1 raises
    C{sort direction must be 1 (asc) or -1 (desc)}; more keys than the
    C{sort_max_keys} limit are an error.
    """
    if type(sort) is not dict or not sort:
        return None
    if len(sort) > limits.sort_max_keys:
        raise InvalidQueryError(f"sort has more than {limits.sort_max_keys} keys")
    spec = []
    for path, direction in sort.items():
        if type(direction) is not int or direction not in (1, -1):
            raise InvalidQueryError("sort direction must be 1 (asc) or -1 (desc)")
        spec.append((path, direction))
    return tuple(spec)


@attrs.define(eq=False, weakref_slot=False)
class _Descending:
    """Wraps a key so that it sorts in reverse."""

    key: tuple[Any, ...]

    # Written out rather than generated: sorting compares keys element by
    # element, and this is faster than attrs' tuple-building equality.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.key == other.key

    def __lt__(self, other: _Descending) -> bool:
        return other.key < self.key

    def __hash__(self) -> int:
        return hash(self.key)


def sort_key_function(
    spec: SortSpec, *, index_arrays: bool, tie_break_id: bool
) -> Callable[[Any], tuple[Any, ...]]:
    """
    A C{key=} function for C{sorted} ordering documents by C{spec} under
    engine.md 2.1 (missing fields as null). C{index_arrays} selects
    C{find}'s path reading (numeric steps index arrays) over the objects-only
    one of C{$sort}; C{tie_break_id} appends ascending C{_id}.
    """
    getter = get_parts_sort if index_arrays else get_parts
    fields = tuple((tuple(path.split(".")), direction) for path, direction in spec)

    def key(doc: Any) -> tuple[Any, ...]:
        parts: list[Any] = []
        for steps, direction in fields:
            value = sort_key(getter(doc, steps)[1])
            parts.append(value if direction == 1 else _Descending(value))
        if tie_break_id:
            parts.append(sort_key(doc.get("_id") if type(doc) is dict else None))
        return tuple(parts)

    return key


def sort_documents(docs: list[Any], spec: SortSpec, *, index_arrays: bool) -> None:
    """
    Sort C{docs} in place by C{spec} (engine.md 2.1 order, missing fields as
    null), stably: documents that tie keep their relative order. Same order
    as L{sort_key_function} without the C{_id} tie-break, computed with one
    stable pass per field, which is much faster than a composite key.
    """
    getter = get_parts_sort if index_arrays else get_parts
    for path, direction in reversed(spec):
        steps = tuple(path.split("."))
        docs.sort(key=lambda doc: sort_key(getter(doc, steps)[1]), reverse=direction == -1)


def compile_sort(sort: object) -> Callable[[Any], tuple[Any, ...]] | None:
    """
    The C{key=} function for C{find}'s C{sort}, or C{None} when there is
    nothing to sort by. Ties are broken by ascending C{_id}.
    """
    spec = parse_sort(sort)
    if spec is None:
        return None
    return sort_key_function(spec, index_arrays=True, tie_break_id=True)


def _id_order(doc: Any) -> tuple[Any, ...]:
    return sort_key(doc.get("_id") if type(doc) is dict else None)


def is_uint(value: object) -> TypeGuard[int]:
    """A non-negative integer (never a bool or a float)."""
    return type(value) is int and value >= 0


def _window_value(name: str, value: object) -> int | None:
    if not is_uint(value):
        return None
    if value > I64_MAX:
        raise InvalidQueryError(f"{name} must be at most {I64_MAX}")
    return value


def find_window(skip: object, limit: object) -> tuple[int | None, int | None]:
    """
    C{find}'s C{skip} and C{limit}: non-negative integers count, anything
    else is ignored (engine.md 2.5); an integer past 2**63 - 1 is an
    C{invalid query} error (it cannot reach SQLite).
    """
    return _window_value("skip", skip), _window_value("limit", limit)


def apply_find(
    docs: Iterable[dict[str, Any]],
    query: object = None,
    sort: object = None,
    skip: object = None,
    limit: object = None,
) -> list[dict[str, Any]]:
    """
    The reference C{find} (engine.md 2.5): filter, then sort (stable, ties
    and unsorted results in ascending C{_id}), then skip, then limit.

    C{query} is a query document, a compiled L{Matcher} or C{None} (match
    all). C{skip}/C{limit} apply only when they are non-negative integers;
    C{limit: 0} returns nothing.
    """
    matcher = query if isinstance(query, Matcher) else compile_query({} if query is None else query)
    spec = parse_sort(sort)
    first, most = find_window(skip, limit)
    result = [doc for doc in sorted(docs, key=_id_order) if matcher.matches(doc)]
    if spec is not None:
        sort_documents(result, spec, index_arrays=True)
    if first is not None:
        result = result[first:]
    if most is not None:
        result = result[:most]
    return result
