"""
Aggregation pipelines (engine.md 5).

L{compile_pipeline} validates the whole pipeline eagerly (stage shapes,
expressions, accumulators, C{$match} queries) and returns a L{Pipeline};
L{Pipeline.run} streams documents through the stages. Shape errors raise
L{InvalidPipelineError} (C{invalid pipeline: ...}), C{$match} errors
L{InvalidQueryError} (C{invalid query: ...}).

Expressions (5.2) are compiled by L{oxidb.engine.expressions}.

Stages (5.3), with the decisions taken where the spec leaves room:

  - C{$group}: groups by engine.md 2.1 equality except that an integer and a
    float are different groups and containers group by canonical JSON text
    (so, as in queries, key order inside objects does not matter); the
    C{_id} shown is the first value seen. Groups come out in order of first
    appearance; no input gives no groups. A non-object C{$group} raises
    C{$group must be an object}.
  - C{$sort}: stable, objects-only paths, missing as null; C{{}} sorts
    nothing.
  - C{$project}: C{1}/C{true} include, C{0}/C{false} exclude (integers and
    booleans only: C{1.0} is a literal). Inclusion mode puts C{_id} first
    (unless excluded; a computed C{_id} replaces it), then the fields in
    spec order with dotted names as flat keys. Exclusion mode removes each
    excluded key verbatim from the top level, so a dotted exclusion removes
    only a literal flat key of that name.
  - C{$lookup}: a spec that is not an object reports C{$lookup requires
    'from' string}. For each document it runs C{lookup(from, {foreignField:
    localValue})} (full query semantics); results for an identical local
    value are reused within one run.
  - C{$unwind}: C{preserveNullAndEmptyArrays} counts only when it is
    C{true}.
  - Issue 14 adds C{$set} (C{$addFields}), C{$unset}, C{$replaceRoot} /
    C{$replaceWith}, C{$sortByCount}, C{$bucket} and C{$facet} (no
    C{$facet} inside C{$facet}); docs/aggregation.md has their rules.

Output documents may share structure with the input documents, with each
other and with the pipeline's literals: treat them as read-only. No stage
mutates its input.

For the storage layer, L{Pipeline.prefix} describes the leading run of
C{$match}, C{$sort}, C{$skip} and C{$limit} stages as one find-like
operation that it may evaluate itself; C{run(docs, lookup,
skip_stages=prefix.stages)} then continues after it.

Budget: L{Pipeline.run_sized} carries each document's size (its JSON
length) along with it and runs every stage under a
L{oxidb.engine.governor.Budget}: a stage counts the documents and bytes it
is about to produce (C{$unwind} the array's elements, C{$lookup} the
matched documents, C{$group} and C{$bucket} each new group and each
C{$push}; inside C{$facet}, on top of what the earlier facets hold) and fails
with L{AggregationLimitError} before building past the budget; loops check
the budget's deadline. Shapes are checked at compile time against
L{QueryLimits}: stage count, nesting depth, sort keys, fields per stage,
and C{$skip}/C{$limit} within 64 bits.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs

from oxidb.engine.expressions import MISSING, Expression, compile_expression, compile_raw, type_name
from oxidb.engine.governor import DEFAULT_LIMITS, DOC_OVERHEAD, Budget, QueryLimits, approx_size
from oxidb.engine.matcher import (
    And,
    Matcher,
    SortSpec,
    compile_query,
    is_uint,
    sort_documents,
)
from oxidb.engine.paths import get_parts, get_path, with_path
from oxidb.engine.store import check_client_collection
from oxidb.engine.values import (
    I64_MAX,
    check_depth,
    compact_json,
    is_number,
    normalize_number,
    parse_date_ms,
    sort_key,
    to_float,
)
from oxidb.errors import InvalidPipelineError

Document = dict[str, Any]
Lookup = Callable[[str, Document], list[Document]]
"""C{lookup(collection, query)}: the documents of a C{find} on C{collection}."""
SizedLookup = Callable[[str, Document], tuple[list[Document], int]]
"""Like L{Lookup}, with the documents' total JSON size."""

# --- stages ---------------------------------------------------------------------------


class _Stage(Protocol):
    """
    One compiled stage: a function from the stream (documents and their
    sizes) to the next stream, within C{budget}.
    """

    def run(
        self, docs: list[Document], sizes: list[int], lookup: SizedLookup, budget: Budget
    ) -> tuple[list[Document], list[int]]: ...


Stream = tuple[list[Document], list[int]]


@attrs.frozen
class _Match:
    query: Any
    matcher: Matcher

    def run(self, docs: list[Document], sizes: list[int], lookup: SizedLookup, budget: Budget) -> Stream:
        matches = self.matcher.matches
        check = budget.deadline.check
        out: list[Document] = []
        out_sizes: list[int] = []
        for doc, size in zip(docs, sizes, strict=True):
            check()
            if matches(doc):
                out.append(doc)
                out_sizes.append(size)
        return out, out_sizes


def _sort_stream(docs: list[Document], sizes: list[int], spec: SortSpec, budget: Budget) -> Stream:
    """L{sort_documents} (objects-only paths) over a sized stream, checking the deadline."""
    check = budget.deadline.check
    pairs = list(zip(docs, sizes, strict=True))
    for path, direction in reversed(spec):
        steps = tuple(path.split("."))

        def key(pair: tuple[Document, int], steps: tuple[str, ...] = steps) -> tuple[Any, ...]:
            check()
            return sort_key(get_parts(pair[0], steps)[1])

        pairs.sort(key=key, reverse=direction == -1)
    return [doc for doc, _ in pairs], [size for _, size in pairs]


@attrs.frozen
class _Sort:
    spec: SortSpec

    def run(self, docs: list[Document], sizes: list[int], lookup: SizedLookup, budget: Budget) -> Stream:
        return _sort_stream(docs, sizes, self.spec, budget)


@attrs.frozen
class _Skip:
    count: int

    def run(self, docs: list[Document], sizes: list[int], lookup: SizedLookup, budget: Budget) -> Stream:
        return docs[self.count :], sizes[self.count :]


@attrs.frozen
class _Limit:
    count: int

    def run(self, docs: list[Document], sizes: list[int], lookup: SizedLookup, budget: Budget) -> Stream:
        return docs[: self.count], sizes[: self.count]


@attrs.frozen
class _Count:
    name: str

    def run(self, docs: list[Document], sizes: list[int], lookup: SizedLookup, budget: Budget) -> Stream:
        out = {self.name: len(docs)}
        return [out], [approx_size(out)]


class _Accumulator(Protocol):
    """The running state of one accumulator over one group."""

    def add(self, value: Any) -> None: ...

    def result(self) -> Any: ...


@attrs.define(eq=False)
class _Sum:
    total: float = 0.0

    def add(self, value: Any) -> None:
        if is_number(value):
            self.total += to_float(value)

    def result(self) -> Any:
        return normalize_number(self.total)


@attrs.define(eq=False)
class _Avg:
    total: float = 0.0
    count: int = 0

    def add(self, value: Any) -> None:
        if is_number(value):
            self.total += to_float(value)
            self.count += 1

    def result(self) -> Any:
        return normalize_number(self.total / self.count) if self.count else None


@attrs.define(eq=False)
class _Extreme:
    wanted = -1

    best: Any = None
    best_key: tuple[Any, ...] | None = None

    def add(self, value: Any) -> None:
        if value is None:
            return
        key = sort_key(value)
        if self.best_key is None or (key > self.best_key) - (key < self.best_key) == self.wanted:
            self.best, self.best_key = value, key

    def result(self) -> Any:
        return self.best


@attrs.define(eq=False)
class _Min(_Extreme):
    wanted = -1


@attrs.define(eq=False)
class _Max(_Extreme):
    wanted = 1


@attrs.define(eq=False)
class _CountAcc:
    count: int = 0

    def add(self, value: Any) -> None:
        self.count += 1

    def result(self) -> Any:
        return self.count


@attrs.define(eq=False)
class _First:
    value: Any = None
    seen: bool = False

    def add(self, value: Any) -> None:
        if not self.seen:
            self.value, self.seen = value, True

    def result(self) -> Any:
        return self.value


@attrs.define(eq=False)
class _Last:
    value: Any = None

    def add(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


@attrs.define(eq=False)
class _Push:
    values: list[Any] = attrs.Factory(list)

    def add(self, value: Any) -> None:
        self.values.append(value)

    def result(self) -> Any:
        return self.values


_ACCUMULATORS: dict[str, Callable[[], _Accumulator]] = {
    "$sum": _Sum,
    "$avg": _Avg,
    "$min": _Min,
    "$max": _Max,
    "$count": _CountAcc,
    "$first": _First,
    "$last": _Last,
    "$push": _Push,
}

ACCUMULATORS = frozenset(_ACCUMULATORS)


def group_identity(value: Any) -> tuple[Any, ...]:
    """
    The C{$group} identity of a key value: engine.md 2.1 equality, except
    that integers and floats never share a group.
    """
    key = sort_key(value)
    if type(value) is float:
        return key + (True,)
    return key


def _mapped(items: Iterable[Any], fn: Callable[[Any], Document], budget: Budget) -> Stream:
    """
    A stage's output, one document C{fn(item)} per item: the deadline is
    checked before each, and each counts against the budget with its size.
    """
    check = budget.deadline.check
    result: list[Document] = []
    result_sizes: list[int] = []
    for item in items:
        check()
        out = fn(item)
        size = approx_size(out)
        budget.add(1, size)
        result.append(out)
        result_sizes.append(size)
    return result, result_sizes


def _accumulated(
    key: Any, accumulators: tuple[tuple[str, Callable[[], _Accumulator], Expression], ...], states: list[_Accumulator]
) -> Document:
    """The output document of one group or bucket: C{_id}, then each accumulator's result."""
    out: Document = {"_id": key}
    for (name, _, _), state in zip(accumulators, states, strict=True):
        out[name] = state.result()
    return out


@attrs.frozen
class _Group:
    key: Expression
    accumulators: tuple[tuple[str, Callable[[], _Accumulator], Expression], ...]
    #: the same stage in a form SQL can compute, or None (L{GroupPushdown}).
    pushdown: GroupPushdown | None = None

    def run(self, docs: list[Document], sizes: list[int], lookup: SizedLookup, budget: Budget) -> Stream:
        check = budget.deadline.check
        pushes = tuple(factory is _Push for _, factory, _ in self.accumulators)
        state_size = 16 * len(self.accumulators)
        groups: dict[tuple[Any, ...], tuple[Any, list[_Accumulator]]] = {}
        for doc in docs:
            check()
            key = self.key(doc)
            identity = group_identity(key)
            group = groups.get(identity)
            if group is None:
                budget.add(1, approx_size(key) + state_size)
                group = (key, [factory() for _, factory, _ in self.accumulators])
                groups[identity] = group
            for (_, _, expression), state, push in zip(self.accumulators, group[1], pushes, strict=True):
                value = expression(doc)
                if push:
                    budget.add(0, approx_size(value) + 1)
                state.add(value)
        budget.start(budget.stage)
        accumulators = self.accumulators
        return _mapped(groups.values(), lambda group: _accumulated(group[0], accumulators, group[1]), budget)


_INCLUDE = "include"
_EXCLUDE = "exclude"
_COMPUTE = "compute"


def _projection_kind(spec: Any) -> str:
    if spec is True or (type(spec) is int and spec == 1):
        return _INCLUDE
    if spec is False or (type(spec) is int and spec == 0):
        return _EXCLUDE
    return _COMPUTE


@attrs.frozen
class _Project:
    fields: tuple[tuple[str, str, Expression | None], ...]
    inclusion: bool
    id_kind: str
    id_expression: Expression | None

    def run(self, docs: list[Document], sizes: list[int], lookup: SizedLookup, budget: Budget) -> Stream:
        check = budget.deadline.check
        result: list[Document] = []
        result_sizes: list[int] = []
        if self.inclusion:
            for doc in docs:
                check()
                out = self._include(doc)
                size = approx_size(out)
                budget.add(1, size)
                result.append(out)
                result_sizes.append(size)
            return result, result_sizes
        excluded = [name for name, kind, _ in self.fields if kind == _EXCLUDE]
        if self.id_kind == _EXCLUDE:
            excluded.append("_id")
        for doc, size in zip(docs, sizes, strict=True):
            check()
            out = dict(doc)
            for name in excluded:
                out.pop(name, None)
            result.append(out)
            result_sizes.append(size)  # at most the input's
        return result, result_sizes

    def _include(self, doc: Document) -> Document:
        out: Document = {}
        if self.id_expression is not None:
            out["_id"] = self.id_expression(doc)
        elif self.id_kind == _INCLUDE and "_id" in doc:
            out["_id"] = doc["_id"]
        for name, kind, expression in self.fields:
            if expression is not None:
                out[name] = expression(doc)
            elif kind == _INCLUDE:
                if "." not in name:
                    if name in doc:
                        out[name] = doc[name]
                else:
                    found, value = get_path(doc, name)
                    if found and value is not None:
                        out[name] = value
        return out


@attrs.frozen
class _Unwind:
    path: str
    preserve: bool

    def run(self, docs: list[Document], sizes: list[int], lookup: SizedLookup, budget: Budget) -> Stream:
        check = budget.deadline.check
        parts = tuple(self.path.split("."))
        result: list[Document] = []
        result_sizes: list[int] = []
        for doc, size in zip(docs, sizes, strict=True):
            check()
            value = get_parts(doc, parts)[1]
            if type(value) is list and value:
                # Each output is the document with one element for the
                # array: counted before any is built.
                array_size = approx_size(value)
                item_size = max(array_size // len(value), 1)
                base = max(size - array_size, 0)
                budget.add(len(value), len(value) * (base + item_size))
                result.extend(with_path(doc, self.path, item) for item in value)
                result_sizes.extend([base + item_size] * len(value))
            elif type(value) is list or value is None:
                if self.preserve:
                    budget.add(1, size)
                    result.append(doc)
                    result_sizes.append(size)
            else:
                budget.add(1, size)
                result.append(doc)
                result_sizes.append(size)
        return result, result_sizes


@attrs.frozen
class _AddFields:
    fields: tuple[tuple[str, Expression], ...]

    def run(self, docs: list[Document], sizes: list[int], lookup: SizedLookup, budget: Budget) -> Stream:
        return _mapped(docs, self._added, budget)

    def _added(self, doc: Document) -> Document:
        for path, expression in self.fields:
            doc = with_path(doc, path, expression(doc))
        return doc


@attrs.frozen
class _Lookup:
    source: str
    local_field: str
    foreign_field: str
    target: str

    def run(self, docs: list[Document], sizes: list[int], lookup: SizedLookup, budget: Budget) -> Stream:
        check = budget.deadline.check
        local_parts = tuple(self.local_field.split("."))
        cache: dict[str, tuple[list[Document], int]] = {}
        result: list[Document] = []
        result_sizes: list[int] = []
        extra = len(self.target) + 4
        for doc, size in zip(docs, sizes, strict=True):
            check()
            local = get_parts(doc, local_parts)[1]
            text = compact_json(local)
            found = cache.get(text)
            if found is None:
                found = lookup(self.source, {self.foreign_field: local})
                cache[text] = found
            matches, matches_size = found
            out_size = size + matches_size + extra
            budget.add(1, out_size)
            result.append(with_path(doc, self.target, matches))
            result_sizes.append(out_size)
        return result, result_sizes


def _without_path(doc: Document, parts: tuple[str, ...]) -> Document:
    """A copy of C{doc} without the key at C{parts}; only objects along the path are copied."""
    head = parts[0]
    if head not in doc:
        return doc
    if len(parts) == 1:
        out = dict(doc)
        del out[head]
        return out
    child = doc[head]
    if type(child) is not dict:
        return doc
    new_child = _without_path(child, parts[1:])
    if new_child is child:
        return doc
    out = dict(doc)
    out[head] = new_child
    return out


@attrs.frozen
class _Unset:
    paths: tuple[tuple[str, ...], ...]

    def run(self, docs: list[Document], sizes: list[int], lookup: SizedLookup, budget: Budget) -> Stream:
        check = budget.deadline.check
        result: list[Document] = []
        for doc in docs:
            check()
            for parts in self.paths:
                doc = _without_path(doc, parts)
            result.append(doc)
        return result, list(sizes)  # at most the input's


@attrs.frozen
class _ReplaceRoot:
    new_root: Expression
    name: str

    def run(self, docs: list[Document], sizes: list[int], lookup: SizedLookup, budget: Budget) -> Stream:
        return _mapped(docs, self._root, budget)

    def _root(self, doc: Document) -> Document:
        value = self.new_root(doc)
        if type(value) is not dict:
            shown = "MISSING" if value is MISSING else compact_json(value)
            raise InvalidPipelineError(
                f"'newRoot' expression must evaluate to an object, but resulting value was: {shown}. "
                f"Type of resulting value: '{type_name(value)}'"
            )
        return value


@attrs.frozen
class _SortByCount:
    group: _Group

    def run(self, docs: list[Document], sizes: list[int], lookup: SizedLookup, budget: Budget) -> Stream:
        grouped, grouped_sizes = self.group.run(docs, sizes, lookup, budget)
        return _sort_stream(grouped, grouped_sizes, (("count", -1),), budget)


@attrs.frozen
class _Bucket:
    group_by: Expression
    boundaries: tuple[Any, ...]
    keys: tuple[tuple[Any, ...], ...]
    default: tuple[Any, ...]
    """C{(value,)}, or C{()} when there is no default bucket."""
    accumulators: tuple[tuple[str, Callable[[], _Accumulator], Expression], ...]

    def run(self, docs: list[Document], sizes: list[int], lookup: SizedLookup, budget: Budget) -> Stream:
        check = budget.deadline.check
        pushes = tuple(factory is _Push for _, factory, _ in self.accumulators)
        state_size = 16 * len(self.accumulators)
        last = len(self.boundaries) - 1
        buckets: dict[int, list[_Accumulator]] = {}
        for doc in docs:
            check()
            value = self.group_by(doc)
            position = bisect.bisect_right(self.keys, sort_key(None if value is MISSING else value)) - 1
            if not 0 <= position < last:
                if not self.default:
                    raise InvalidPipelineError(
                        "$bucket could not find a matching branch for an input, and no default was specified"
                    )
                position = last
            states = buckets.get(position)
            if states is None:
                bucket_id = self.default[0] if position == last else self.boundaries[position]
                budget.add(1, approx_size(bucket_id) + state_size)
                states = [factory() for _, factory, _ in self.accumulators]
                buckets[position] = states
            for (_, _, expression), state, push in zip(self.accumulators, states, pushes, strict=True):
                item = expression(doc)
                if push:
                    budget.add(0, approx_size(item) + 1)
                state.add(item)
        budget.start(budget.stage)

        def output(position: int) -> Document:
            bucket_id = self.default[0] if position == last else self.boundaries[position]
            return _accumulated(bucket_id, self.accumulators, buckets[position])

        return _mapped(sorted(buckets), output, budget)


@attrs.define(eq=False)
class _HeldBudget(Budget):
    """A L{Budget} whose every stage starts with what earlier facets hold."""

    held_docs: int = 0
    held_bytes: int = 0

    def start(self, stage: str) -> None:
        super().start(stage)
        self.docs = self.held_docs
        self.bytes = self.held_bytes


@attrs.frozen
class _Facet:
    facets: tuple[tuple[str, Pipeline], ...]

    def run(self, docs: list[Document], sizes: list[int], lookup: SizedLookup, budget: Budget) -> Stream:
        # Every facet's output is held until the last one has run: each
        # sub-pipeline's stages count what the earlier facets hold.
        held = _HeldBudget(budget.max_bytes, budget.max_docs, budget.deadline)
        out: Document = {}
        total = 2
        for name, pipeline in self.facets:
            held.stage = f"$facet.{name}"
            facet_docs, facet_sizes = pipeline.run_sized(docs, sizes, lookup, held, prefix=f"$facet.{name}.")
            held.held_docs += len(facet_docs)
            held.held_bytes += sum(facet_sizes) + len(facet_sizes) * DOC_OVERHEAD
            held.start(f"$facet.{name}")
            held.add(0, 0)  # what all facets so far hold, whether or not a stage counted it
            out[name] = facet_docs
            total += approx_size(name) + 3 + sum(facet_sizes) + len(facet_sizes)
        budget.start("$facet")
        budget.add(1, total)
        return [out], [total]


# --- $group in SQL ----------------------------------------------------------------------

#: A path SQL may read: object keys only, each a plain name (no quoting needed in a JSON path).
_PLAIN_PATH = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

#: Integer sums up to this magnitude are exact in a float, in any order.
_EXACT_FLOAT = 2.0**53

_PUSHED_OPS = frozenset({"$sum", "$avg", "$min", "$max", "$count"})


def _pushed_path(spec: Any) -> tuple[str, ...] | None:
    if type(spec) is str and _PLAIN_PATH.fullmatch(spec):
        return tuple(spec[1:].split("."))
    return None


@attrs.frozen
class GroupPushdown:
    """
    A C{$group} whose key and accumulators SQL can compute with the Python
    path's exact answer (L{_Group.run}), described for
    L{oxidb.engine.sqlquery.group_statement}; L{groups} turns the
    statement's rows into the stage's output, or gives up (None) when the
    data holds a case SQL cannot decide exactly, and the caller then runs
    the Python path.

    Shapes pushed down: a key of C{null} or a plain field path (objects
    only, as C{$group} reads it: a path through an array is missing);
    C{$sum}/C{$avg} of a plain field path or an integer constant;
    C{$min}/C{$max} of a plain field path; C{$count}.

    Cases left to Python, found in the rows: a key that is an array or an
    object (canonical-JSON grouping), a string key that reads as a date
    (dates group by instant; exact when grouped by the key's index key
    column), an integer and a float of equal value in one group (grouped by
    a key column), an integer past 64 bits, a float key C{0.0}
    (C{-0.0} is the same group and the first one seen is shown); a sum or
    average with a non-integral float or a magnitude past 2**53 (the Python
    path adds floats in C{_id} order, so only exact sums are
    order-free); a minimum or maximum over non-numbers, over an integer and a
    float of equal value (the first seen wins), or that is C{0.0}.

    @ivar key: the key's path, or None for C{_id: null}.
    @ivar accumulators: C{(output name, operator, path or integer constant)};
        the operand of C{$count} is None.
    """

    key: tuple[str, ...] | None
    accumulators: tuple[tuple[str, str, tuple[str, ...] | int | None], ...]

    @classmethod
    def of(cls, key_spec: Any, outputs: dict[str, Any]) -> GroupPushdown | None:
        """The pushdown of a validated C{$group}, or None if its shape is not pushed down."""
        key: tuple[str, ...] | None = None
        if key_spec is not None:
            key = _pushed_path(key_spec)
            if key is None:
                return None
        accumulators: list[tuple[str, str, tuple[str, ...] | int | None]] = []
        for name, acc in outputs.items():
            ((op, operand),) = acc.items()
            if op not in _PUSHED_OPS:
                return None
            if op == "$count":
                accumulators.append((name, op, None))
                continue
            path = _pushed_path(operand)
            if path is not None:
                accumulators.append((name, op, path))
            elif op in ("$sum", "$avg") and type(operand) is int and abs(operand) < 2**31:
                accumulators.append((name, op, operand))
            else:
                return None
        return cls(key, tuple(accumulators))

    def groups(self, rows: Iterable[tuple[Any, ...]], budget: Budget, *, dates: bool = False) -> Stream | None:
        """
        The C{$group} output from L{oxidb.engine.sqlquery.group_statement}'s
        rows (in order of each group's first document), counted against
        C{budget} as L{_Group.run} counts it; None when the rows hold a case
        left to Python (see the class docstring). C{dates}: the rows were
        grouped by the key's index key column, which groups dates by
        instant, so a date key (its first document's text) is exact too.
        """
        groups: list[tuple[Any, list[Any]]] = []
        state_size = 16 * len(self.accumulators)
        for row in rows:
            budget.deadline.check()
            key_type, key_value, _, count = row[0], row[1], row[2], row[3]
            key = _group_key(key_type, key_value, dates)
            if key is _INEXACT:
                return None
            results = []
            column = 4
            for _, op, operand in self.accumulators:
                if op == "$count":
                    results.append(count)
                    continue
                if type(operand) is int:
                    # An integer constant per document: count * operand, exactly.
                    if abs(count * operand) >= _EXACT_FLOAT:
                        return None
                    total = float(count * operand)
                    results.append(normalize_number(total) if op == "$sum" else normalize_number(total / count))
                    continue
                if op in ("$sum", "$avg"):
                    numbers, total, magnitude, fractions = row[column : column + 4]
                    column += 4
                    if fractions or magnitude >= _EXACT_FLOAT:
                        return None
                    exact = float(total)
                    if op == "$sum":
                        results.append(normalize_number(exact))
                    else:
                        results.append(normalize_number(exact / numbers) if numbers else None)
                    continue
                ints, floats, others = row[column : column + 3]
                column += 3
                best = _extreme(ints, floats, others, op == "$max")
                if best is _INEXACT:
                    return None
                results.append(best)
            budget.add(1, approx_size(key) + state_size)
            groups.append((key, results))
        budget.start(budget.stage)
        out: list[Document] = []
        sizes: list[int] = []
        for key, results in groups:
            doc: Document = {"_id": key}
            for (name, _, _), result in zip(self.accumulators, results, strict=True):
                doc[name] = result
            size = approx_size(doc)
            budget.add(1, size)
            out.append(doc)
            sizes.append(size)
        return out, sizes


_INEXACT: Any = object()


def _group_key(json_type: str, value: Any, dates: bool = False) -> Any:
    """
    A group's key from its SQL C{json_type} (null for missing) and value;
    L{_INEXACT} if left to Python (a date unless C{dates}).
    """
    if json_type == "null":
        return None
    if json_type == "true":
        return True
    if json_type == "false":
        return False
    if json_type == "integer":
        return value if type(value) is int else _INEXACT
    if json_type == "real":
        return value if type(value) is float and value != 0.0 else _INEXACT
    if json_type == "text":
        return value if type(value) is str and (dates or parse_date_ms(value) is None) else _INEXACT
    return _INEXACT


def _extreme(ints: Any, floats: Any, others: int, largest: bool) -> Any:
    """C{$min}/C{$max} from the group's extreme integer and float; L{_INEXACT} if left to Python."""
    if others:
        return _INEXACT
    if ints is not None and type(ints) is not int:
        return _INEXACT
    if floats is not None and (type(floats) is not float or floats == 0.0):
        return _INEXACT
    if ints is None:
        return floats
    if floats is None:
        return ints
    if ints == floats:
        return _INEXACT
    return ints if (ints > floats) == largest else floats


# --- parsing ---------------------------------------------------------------------------


def _check_fields(stage: str, spec: dict[str, Any], limits: QueryLimits) -> None:
    if len(spec) > limits.pipeline_max_fields:
        raise InvalidPipelineError(f"{stage} has more than {limits.pipeline_max_fields} fields")


def _parse_match(spec: Any, limits: QueryLimits) -> _Stage:
    return _Match(spec, compile_query(spec, limits))


def _parse_group(spec: Any, limits: QueryLimits) -> _Stage:
    if type(spec) is not dict:
        raise InvalidPipelineError("$group must be an object")
    _check_fields("$group", spec, limits)
    if "_id" not in spec:
        raise InvalidPipelineError("$group requires '_id' field")
    key_spec = spec["_id"]
    key: Expression
    if type(key_spec) is dict and not any(name.startswith("$") for name in key_spec):
        parts = tuple((name, compile_expression(expr, limits)) for name, expr in key_spec.items())
        key = lambda doc: {name: expr(doc) for name, expr in parts}  # noqa: E731
    else:
        key = compile_expression(key_spec, limits)
    outputs = {name: acc for name, acc in spec.items() if name != "_id"}
    accumulators = _parse_accumulators("$group", outputs, limits)
    return _Group(key, accumulators, GroupPushdown.of(key_spec, outputs))


def parse_pipeline_sort(spec: Any, limits: QueryLimits = DEFAULT_LIMITS) -> SortSpec:
    """Validate a C{$sort} stage's operand."""
    if type(spec) is not dict:
        raise InvalidPipelineError("$sort must be an object")
    if len(spec) > limits.sort_max_keys:
        raise InvalidPipelineError(f"$sort has more than {limits.sort_max_keys} keys")
    fields = []
    for path, direction in spec.items():
        if type(direction) is not int or direction not in (1, -1):
            raise InvalidPipelineError("sort direction must be 1 or -1")
        fields.append((path, direction))
    return tuple(fields)


def _parse_sort(spec: Any, limits: QueryLimits) -> _Stage:
    return _Sort(parse_pipeline_sort(spec, limits))


def _parse_skip(spec: Any, limits: QueryLimits) -> _Stage:
    if not is_uint(spec):
        raise InvalidPipelineError("$skip must be a non-negative integer")
    if spec > I64_MAX:
        raise InvalidPipelineError(f"$skip must be at most {I64_MAX}")
    return _Skip(spec)


def _parse_limit(spec: Any, limits: QueryLimits) -> _Stage:
    if not is_uint(spec):
        raise InvalidPipelineError("$limit must be a positive integer")
    if spec > I64_MAX:
        raise InvalidPipelineError(f"$limit must be at most {I64_MAX}")
    return _Limit(spec)


def _parse_project(spec: Any, limits: QueryLimits) -> _Stage:
    if type(spec) is not dict:
        raise InvalidPipelineError("$project must be an object")
    _check_fields("$project", spec, limits)
    fields = []
    id_kind, id_expression = _INCLUDE, None
    for name, value in spec.items():
        kind = _projection_kind(value)
        expression = compile_expression(value, limits) if kind == _COMPUTE else None
        if name == "_id":
            id_kind, id_expression = kind, expression
        else:
            fields.append((name, kind, expression))
    inclusion = id_kind == _COMPUTE or any(kind != _EXCLUDE for _, kind, _ in fields)
    return _Project(tuple(fields), inclusion, id_kind, id_expression)


def _parse_count(spec: Any, limits: QueryLimits) -> _Stage:
    if type(spec) is not str:
        raise InvalidPipelineError("$count must be a string")
    return _Count(spec)


def _parse_unwind(spec: Any, limits: QueryLimits) -> _Stage:
    if type(spec) is str:
        if not spec.startswith("$"):
            raise InvalidPipelineError("$unwind must be a string or object")
        return _Unwind(spec[1:], False)
    if type(spec) is not dict:
        raise InvalidPipelineError("$unwind must be a string or object")
    path = spec.get("path")
    if type(path) is not str:
        raise InvalidPipelineError("$unwind requires 'path' string")
    if not path.startswith("$"):
        raise InvalidPipelineError("$unwind path must start with $")
    return _Unwind(path[1:], spec.get("preserveNullAndEmptyArrays") is True)


def _parse_add_fields(spec: Any, limits: QueryLimits) -> _Stage:
    if type(spec) is not dict:
        raise InvalidPipelineError("$addFields must be an object")
    _check_fields("$addFields", spec, limits)
    return _AddFields(tuple((path, compile_expression(expr, limits)) for path, expr in spec.items()))


def _parse_lookup(spec: Any, limits: QueryLimits) -> _Stage:
    values = []
    for key in ("from", "localField", "foreignField", "as"):
        value = spec.get(key) if type(spec) is dict else None
        if type(value) is not str:
            raise InvalidPipelineError(f"$lookup requires '{key}' string")
        values.append(value)
    check_client_collection(values[0])
    return _Lookup(*values)


def _parse_set(spec: Any, limits: QueryLimits) -> _Stage:
    if type(spec) is not dict:
        raise InvalidPipelineError("$set must be an object")
    return _parse_add_fields(spec, limits)


def _parse_unset(spec: Any, limits: QueryLimits) -> _Stage:
    names = [spec] if type(spec) is str else spec
    if type(names) is not list or not all(type(name) is str for name in names):
        raise InvalidPipelineError("$unset specification must be a string or an array of strings")
    if not names:
        raise InvalidPipelineError("$unset specification must be a string or an array with at least one field")
    if len(names) > limits.pipeline_max_fields:
        raise InvalidPipelineError(f"$unset has more than {limits.pipeline_max_fields} fields")
    for name in names:
        if not name or name.startswith("$") or "" in name.split("."):
            raise InvalidPipelineError(f"$unset: invalid field path '{name}'")
    return _Unset(tuple(tuple(name.split(".")) for name in names))


def _parse_replace_root(spec: Any, limits: QueryLimits) -> _Stage:
    if type(spec) is not dict or set(spec) != {"newRoot"}:
        raise InvalidPipelineError("$replaceRoot requires exactly one field, 'newRoot'")
    return _ReplaceRoot(compile_raw(spec["newRoot"], limits, nested=True), "$replaceRoot")


def _parse_replace_with(spec: Any, limits: QueryLimits) -> _Stage:
    return _ReplaceRoot(compile_raw(spec, limits, nested=True), "$replaceWith")


def _is_computed(spec: Any) -> bool:
    """A C{$}-path or an operator object (what C{$sortByCount} and C{$bucket} group by)."""
    if type(spec) is str:
        return spec.startswith("$")
    return type(spec) is dict and len(spec) == 1 and next(iter(spec)).startswith("$")


def _parse_sort_by_count(spec: Any, limits: QueryLimits) -> _Stage:
    if not _is_computed(spec):
        raise InvalidPipelineError("$sortByCount must be a $-prefixed path or an expression object")
    return _SortByCount(_Group(compile_expression(spec, limits), (("count", _CountAcc, lambda doc: None),)))


def _parse_accumulators(
    stage: str, spec: dict[str, Any], limits: QueryLimits
) -> tuple[tuple[str, Callable[[], _Accumulator], Expression], ...]:
    accumulators = []
    for name, acc in spec.items():
        if type(acc) is not dict:
            raise InvalidPipelineError("accumulator must be an object")
        if len(acc) != 1:
            raise InvalidPipelineError("accumulator must have exactly one operator")
        ((op, operand),) = acc.items()
        factory = _ACCUMULATORS.get(op)
        if factory is None:
            raise InvalidPipelineError(f"unknown accumulator: {op}")
        expression = (lambda doc: None) if op == "$count" else compile_expression(operand, limits)
        accumulators.append((name, factory, expression))
    return tuple(accumulators)


_BUCKET_KEYS = frozenset({"groupBy", "boundaries", "default", "output"})


def _parse_bucket(spec: Any, limits: QueryLimits) -> _Stage:
    if type(spec) is not dict:
        raise InvalidPipelineError("$bucket must be an object")
    for key in spec:
        if key not in _BUCKET_KEYS:
            raise InvalidPipelineError(f"unrecognized option to $bucket: {key}")
    if "groupBy" not in spec or "boundaries" not in spec:
        raise InvalidPipelineError("$bucket requires 'groupBy' and 'boundaries' to be specified")
    if not _is_computed(spec["groupBy"]):
        raise InvalidPipelineError("$bucket's 'groupBy' must be a $-prefixed path or an expression object")
    boundaries = spec["boundaries"]
    if type(boundaries) is not list or len(boundaries) < 2:
        raise InvalidPipelineError("$bucket's 'boundaries' must be an array of at least 2 values")
    if len(boundaries) > limits.query_max_array:
        raise InvalidPipelineError(f"$bucket has more than {limits.query_max_array} boundaries")
    keys = []
    for value in boundaries:
        if type(value) in (dict, list) or value is None or type(value) is bool:
            raise InvalidPipelineError("$bucket's 'boundaries' must be numbers, strings or dates")
        if type(value) is str and value.startswith("$"):
            raise InvalidPipelineError("$bucket's 'boundaries' must be constant values")
        keys.append(sort_key(value))
    if len({key[0] for key in keys}) != 1:
        raise InvalidPipelineError("$bucket's 'boundaries' must all be of one type")
    for index in range(len(keys) - 1):
        if not keys[index] < keys[index + 1]:
            raise InvalidPipelineError(
                f"$bucket's 'boundaries' must be sorted in ascending order without duplicates "
                f"(elements {index} and {index + 1} are not)"
            )
    default: tuple[Any, ...] = ()
    if "default" in spec:
        value = spec["default"]
        key = sort_key(value)
        if key[0] == keys[0][0] and keys[0] <= key < keys[-1]:
            raise InvalidPipelineError(
                "$bucket's 'default' must be less than the lowest boundary or at least the highest"
            )
        default = (value,)
    output = spec.get("output", {"count": {"$sum": 1}})
    if type(output) is not dict:
        raise InvalidPipelineError("$bucket's 'output' must be an object")
    _check_fields("$bucket", output, limits)
    accumulators = _parse_accumulators("$bucket", output, limits)
    return _Bucket(compile_expression(spec["groupBy"], limits), tuple(boundaries), tuple(keys), default, accumulators)


def _parse_facet(spec: Any, limits: QueryLimits) -> _Stage:
    if type(spec) is not dict or not spec:
        raise InvalidPipelineError("$facet must be a non-empty object")
    _check_fields("$facet", spec, limits)
    facets = []
    stages = 0
    for name, pipeline in spec.items():
        if not name or name.startswith("$") or "." in name:
            raise InvalidPipelineError(f"$facet output names must be non-empty, without '.' or a leading '$': {name!r}")
        if type(pipeline) is not list:
            raise InvalidPipelineError(f"$facet '{name}' must be an array of stages")
        if not pipeline:
            raise InvalidPipelineError(f"$facet '{name}' must not be empty")
        stages += len(pipeline)
        if stages > limits.pipeline_max_stages:
            raise InvalidPipelineError(f"$facet has more than {limits.pipeline_max_stages} stages")
        facets.append((name, _compile(pipeline, limits, in_facet=True)))
    return _Facet(tuple(facets))


_STAGES: dict[str, Callable[[Any, QueryLimits], _Stage]] = {
    "$match": _parse_match,
    "$group": _parse_group,
    "$sort": _parse_sort,
    "$skip": _parse_skip,
    "$limit": _parse_limit,
    "$project": _parse_project,
    "$count": _parse_count,
    "$unwind": _parse_unwind,
    "$addFields": _parse_add_fields,
    "$lookup": _parse_lookup,
    "$set": _parse_set,
    "$unset": _parse_unset,
    "$replaceRoot": _parse_replace_root,
    "$replaceWith": _parse_replace_with,
    "$sortByCount": _parse_sort_by_count,
    "$bucket": _parse_bucket,
    "$facet": _parse_facet,
}

STAGES = frozenset(_STAGES)


# --- the pipeline ------------------------------------------------------------------------


@attrs.frozen
class Prefix:
    """
    The leading C{$match}/C{$sort}/C{$skip}/C{$limit} stages of a pipeline
    as one find-like operation, in this order: keep the documents matching
    C{query} (C{None}: all), sort them by C{sort} (C{None}: keep input
    order), drop the first C{skip}, keep at most C{limit} (C{None}: all).

    The sort is the aggregation one, not C{find}'s: objects-only paths
    (C{"a.0"} never indexes an array), missing fields as null, stable, so
    ties stay in input order (ascending C{_id}). C{stages} is the number of
    pipeline stages covered (0 when the pipeline starts otherwise).
    """

    query: dict[str, Any] | None
    sort: SortSpec | None
    skip: int
    limit: int | None
    stages: int
    matcher: Matcher | None = attrs.field(default=None, eq=False, repr=False)
    """C{query} compiled (C{None} when C{query} is), for the SQL compiler."""

    def apply(self, docs: Iterable[Document]) -> list[Document]:
        """Evaluate the prefix in Python (the reference for pushdown)."""
        result = list(docs)
        if self.matcher is not None:
            matches = self.matcher.matches
            result = [doc for doc in result if matches(doc)]
        if self.sort:
            sort_documents(result, self.sort, index_arrays=False)
        result = result[self.skip :]
        if self.limit is not None:
            result = result[: self.limit]
        return result


def _prefix(stages: tuple[_Stage, ...]) -> Prefix:
    matches: list[_Match] = []
    sort: SortSpec | None = None
    skip = 0
    limit: int | None = None
    covered = 0
    for stage in stages:
        if isinstance(stage, _Match) and sort is None and skip == 0 and limit is None:
            matches.append(stage)
        elif isinstance(stage, _Sort) and sort is None and skip == 0 and limit is None:
            sort = stage.spec
        elif isinstance(stage, _Skip):
            # Past 2**63 - 1 rows every later row is skipped anyway.
            skip = min(skip + stage.count, I64_MAX)
            if limit is not None:
                limit = max(limit - stage.count, 0)
        elif isinstance(stage, _Limit):
            limit = stage.count if limit is None else min(limit, stage.count)
        else:
            break
        covered += 1
    if not matches:
        return Prefix(None, sort, skip, limit, covered)
    if len(matches) == 1:
        return Prefix(matches[0].query, sort, skip, limit, covered, matches[0].matcher)
    query = {"$and": [stage.query for stage in matches]}
    matcher = Matcher(And(tuple(stage.matcher.root for stage in matches)))
    return Prefix(query, sort, skip, limit, covered, matcher)


@attrs.frozen
class Pipeline:
    """A compiled, validated pipeline."""

    stages: tuple[_Stage, ...] = attrs.field(repr=False)
    names: tuple[str, ...] = attrs.field(default=(), repr=False)
    """Each stage's operator (C{$unwind}, ...), for budget errors."""
    prefix: Prefix = attrs.field(init=False)

    @prefix.default
    def _compute_prefix(self) -> Prefix:
        return _prefix(self.stages)

    @property
    def leading_match(self) -> dict[str, Any] | None:
        """The query of the leading C{$match} stage(s), or C{None}."""
        return self.prefix.query

    @property
    def pushed_group(self) -> GroupPushdown | None:
        """
        The C{$group} right after a prefix of C{$match} stages only, when
        SQL can compute it (L{GroupPushdown}); the storage layer may then
        run both in one statement and continue at stage
        C{prefix.stages + 1}.
        """
        prefix = self.prefix
        if prefix.sort is not None or prefix.skip or prefix.limit is not None:
            return None
        if prefix.stages >= len(self.stages):
            return None
        stage = self.stages[prefix.stages]
        return stage.pushdown if isinstance(stage, _Group) else None

    def run(self, docs: Iterable[Document], lookup: Lookup, *, skip_stages: int = 0) -> list[Document]:
        """
        Run the stages after the first C{skip_stages} over C{docs} (the
        collection in ascending C{_id}, or the result of L{Prefix.apply}
        when C{skip_stages} is C{prefix.stages}), without a budget.
        """
        stream = list(docs)

        def sized(collection: str, query: Document) -> tuple[list[Document], int]:
            found = lookup(collection, query)
            return found, sum(approx_size(doc) + 1 for doc in found)

        out, _ = self.run_sized(
            stream, [approx_size(doc) for doc in stream], sized, Budget.unlimited(), skip_stages=skip_stages
        )
        return out

    def run_sized(
        self,
        docs: list[Document],
        sizes: list[int],
        lookup: SizedLookup,
        budget: Budget,
        *,
        skip_stages: int = 0,
        prefix: str = "",
    ) -> Stream:
        """
        L{run} over documents with their JSON sizes, each stage within
        C{budget} (see the module docstring); the output and its sizes.
        """
        for index in range(skip_stages, len(self.stages)):
            budget.start(prefix + (self.names[index] if index < len(self.names) else "stage"))
            docs, sizes = self.stages[index].run(docs, sizes, lookup, budget)
        return docs, sizes


def compile_pipeline(pipeline: object, limits: QueryLimits = DEFAULT_LIMITS) -> Pipeline:
    """Validate C{pipeline} (engine.md 5.1) within C{limits} and compile every stage."""
    if type(pipeline) is not list:
        raise InvalidPipelineError("pipeline must be an array")
    if len(pipeline) > limits.pipeline_max_stages:
        raise InvalidPipelineError(f"pipeline has more than {limits.pipeline_max_stages} stages")
    check_depth(pipeline, "pipeline", limits.query_max_depth)
    return _compile(pipeline, limits, in_facet=False)


def _compile(pipeline: list[Any], limits: QueryLimits, *, in_facet: bool) -> Pipeline:
    stages = []
    names = []
    for stage in pipeline:
        if type(stage) is not dict:
            raise InvalidPipelineError("each pipeline stage must be an object")
        if len(stage) != 1:
            raise InvalidPipelineError("each pipeline stage must have exactly one key")
        ((name, spec),) = stage.items()
        parser = _STAGES.get(name)
        if parser is None:
            raise InvalidPipelineError(f"unknown stage: {name}")
        if in_facet and name == "$facet":
            raise InvalidPipelineError("$facet is not allowed inside $facet")
        stages.append(parser(spec, limits))
        names.append(name)
    return Pipeline(tuple(stages), tuple(names))
