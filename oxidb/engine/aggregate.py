"""
Aggregation pipelines (engine.md 5).

L{compile_pipeline} validates the whole pipeline eagerly (stage shapes,
expressions, accumulators, C{$match} queries) and returns a L{Pipeline};
L{Pipeline.run} streams documents through the stages. Shape errors raise
L{InvalidPipelineError} (C{invalid pipeline: ...}), C{$match} errors
L{InvalidQueryError} (C{invalid query: ...}).

Expressions (5.2): C{"$a.b"} reads an objects-only path (missing -> null);
C{{"$add"|"$multiply": [..]}} take any number of operands (empty -> 0 / 1),
C{{"$subtract"|"$divide": [a, b]}} exactly two; operands are expressions;
arithmetic is f64 with integral results as integers, and any non-number
operand (null, missing, bool, string...) or a division by zero gives null.
Everything else is a literal, including arrays (elements not evaluated) and
objects other than a single-key arithmetic object.

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
matched documents, C{$group} each new group and each C{$push}) and fails
with L{AggregationLimitError} before building past the budget; loops check
the budget's deadline. Shapes are checked at compile time against
L{QueryLimits}: stage count, nesting depth, sort keys, fields per stage,
and C{$skip}/C{$limit} within 64 bits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs

from oxidb.engine.governor import DEFAULT_LIMITS, Budget, QueryLimits, approx_size
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
    sort_key,
    to_float,
)
from oxidb.errors import InvalidPipelineError

Document = dict[str, Any]
Expression = Callable[[Any], Any]
"""A compiled expression: document -> value."""
Lookup = Callable[[str, Document], list[Document]]
"""C{lookup(collection, query)}: the documents of a C{find} on C{collection}."""
SizedLookup = Callable[[str, Document], tuple[list[Document], int]]
"""Like L{Lookup}, with the documents' total JSON size."""

# --- expressions ----------------------------------------------------------------------

_ARITHMETIC = ("$add", "$multiply", "$subtract", "$divide")


def _field_reference(path: str) -> Expression:
    parts = tuple(path.split("."))
    return lambda doc: get_parts(doc, parts)[1]


def _arithmetic(op: str, operands: tuple[Expression, ...]) -> Expression:
    def evaluate(doc: Any) -> Any:
        values = []
        for operand in operands:
            value = operand(doc)
            if not is_number(value):
                return None
            values.append(to_float(value))
        if op == "$add":
            result = 0.0
            for value in values:
                result += value
        elif op == "$multiply":
            result = 1.0
            for value in values:
                result *= value
        elif op == "$subtract":
            result = values[0] - values[1]
        else:
            if values[1] == 0:
                return None
            result = values[0] / values[1]
        return normalize_number(result)

    return evaluate


def compile_expression(spec: Any) -> Expression:
    """
    Compile an engine.md 5.2 expression; raises L{InvalidPipelineError} for
    a malformed arithmetic operator.
    """
    if type(spec) is str and spec.startswith("$"):
        return _field_reference(spec[1:])
    if type(spec) is dict and len(spec) == 1:
        ((op, arguments),) = spec.items()
        if op in _ARITHMETIC:
            if type(arguments) is not list:
                raise InvalidPipelineError(f"{op} requires an array")
            if op in ("$subtract", "$divide") and len(arguments) != 2:
                raise InvalidPipelineError(f"{op} requires exactly 2 arguments")
            return _arithmetic(op, tuple(compile_expression(item) for item in arguments))
    return lambda doc: spec


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


@attrs.frozen
class _Group:
    key: Expression
    accumulators: tuple[tuple[str, Callable[[], _Accumulator], Expression], ...]

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
        result: list[Document] = []
        result_sizes: list[int] = []
        budget.start(budget.stage)
        for key, states in groups.values():
            check()
            out: Document = {"_id": key}
            for (name, _, _), state in zip(self.accumulators, states, strict=True):
                out[name] = state.result()
            size = approx_size(out)
            budget.add(1, size)
            result.append(out)
            result_sizes.append(size)
        return result, result_sizes


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
        check = budget.deadline.check
        result: list[Document] = []
        result_sizes: list[int] = []
        for doc in docs:
            check()
            for path, expression in self.fields:
                doc = with_path(doc, path, expression(doc))
            size = approx_size(doc)
            budget.add(1, size)
            result.append(doc)
            result_sizes.append(size)
        return result, result_sizes


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
        parts = tuple((name, compile_expression(expr)) for name, expr in key_spec.items())
        key = lambda doc: {name: expr(doc) for name, expr in parts}  # noqa: E731
    else:
        key = compile_expression(key_spec)
    accumulators = []
    for name, acc in spec.items():
        if name == "_id":
            continue
        if type(acc) is not dict:
            raise InvalidPipelineError("accumulator must be an object")
        if len(acc) != 1:
            raise InvalidPipelineError("accumulator must have exactly one operator")
        ((op, operand),) = acc.items()
        factory = _ACCUMULATORS.get(op)
        if factory is None:
            raise InvalidPipelineError(f"unknown accumulator: {op}")
        expression = (lambda doc: None) if op == "$count" else compile_expression(operand)
        accumulators.append((name, factory, expression))
    return _Group(key, tuple(accumulators))


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
        expression = compile_expression(value) if kind == _COMPUTE else None
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
    return _AddFields(tuple((path, compile_expression(expr)) for path, expr in spec.items()))


def _parse_lookup(spec: Any, limits: QueryLimits) -> _Stage:
    values = []
    for key in ("from", "localField", "foreignField", "as"):
        value = spec.get(key) if type(spec) is dict else None
        if type(value) is not str:
            raise InvalidPipelineError(f"$lookup requires '{key}' string")
        values.append(value)
    check_client_collection(values[0])
    return _Lookup(*values)


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

    def run(
        self, docs: Iterable[Document], lookup: Lookup, *, skip_stages: int = 0
    ) -> list[Document]:
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
    ) -> Stream:
        """
        L{run} over documents with their JSON sizes, each stage within
        C{budget} (see the module docstring); the output and its sizes.
        """
        for index in range(skip_stages, len(self.stages)):
            budget.start(self.names[index] if index < len(self.names) else "stage")
            docs, sizes = self.stages[index].run(docs, sizes, lookup, budget)
        return docs, sizes


def compile_pipeline(pipeline: object, limits: QueryLimits = DEFAULT_LIMITS) -> Pipeline:
    """Validate C{pipeline} (engine.md 5.1) within C{limits} and compile every stage."""
    if type(pipeline) is not list:
        raise InvalidPipelineError("pipeline must be an array")
    if len(pipeline) > limits.pipeline_max_stages:
        raise InvalidPipelineError(f"pipeline has more than {limits.pipeline_max_stages} stages")
    check_depth(pipeline, "pipeline", limits.query_max_depth)
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
        stages.append(parser(spec, limits))
        names.append(name)
    return Pipeline(tuple(stages), tuple(names))
