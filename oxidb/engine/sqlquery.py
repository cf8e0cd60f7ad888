"""
The query compiler: a matcher tree (L{oxidb.engine.matcher}) to an SQL
condition over a collection table, plus the C{ORDER BY} of a sort.

Every condition is written over L{oxidb.engine.keys} keys (an indexed
path's key column, else the key expression over the document), which encode
the engine.md 2.1 order exactly, so a compiled condition gives the pure
matcher's answer and can use the indexes:

  - C{$eq v}: C{K = key(v)}; for C{null} also the presence test (a missing
    path has the null key too). On a path without a key column, a number,
    boolean or plain string compares the stored JSON text with every text
    an equal value can have instead (L{_equal_texts}), which SQLite checks
    without calling back into Python.
  - C{$gt}/C{$gte}: C{K > key}/C{K >= key} (the null key is the smallest, so
    missing paths fail by themselves, except C{$gte: null}).
  - C{$ne}, C{$lt}, C{$lte}: the comparison and presence.
  - C{$in}/C{$nin}: C{K IN (...)} (with presence when C{null} is listed) /
    C{K NOT IN (...)}.
  - C{$exists}: presence or its negation; C{$not} of compiled operators:
    C{NOT (...)}.
  - C{_id} with numeric operands compares the integer primary key directly.

The key and presence expressions never yield SQL NULL, so C{NOT} is safe.
Operators without an exact SQL form (C{$regex}, C{$all}, C{$elemMatch},
C{$size}, C{$type}, oversized C{$in} lists) compile to no condition: the
result is then a I{pre-filter} (a necessary condition: C{AND} and C{OR} of
pre-filters are pre-filters of the C{AND}/C{OR}) and the caller runs the
pure matcher on the rows it returns (L{Plan.exact} is false).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from oxidb.engine import keys, store, values
from oxidb.engine.matcher import And, FieldOp, Matcher, Or, SortSpec

if TYPE_CHECKING:
    from oxidb.engine.aggregate import GroupPushdown

#: Longest C{$in}/C{$nin} list compiled to SQL; longer ones are checked in
#: Python (SQLite limits the number of parameters of a statement).
MAX_IN_KEYS = 500

#: Most parameters one compiled condition may bind.
MAX_PARAMS = 10_000

_DIGITS = frozenset("0123456789")
_TRUE = "1"
_FALSE = "0"
_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1


@attrs.frozen
class Plan:
    """
    A compiled query.

    @ivar where: an SQL condition over the collection table's C{doc} and
        C{_id} columns (C{"1"} when nothing could be compiled).
    @ivar params: the values of the condition's C{?} placeholders.
    @ivar exact: C{where} is the whole query; otherwise rows it selects must
        still pass C{matcher}.
    @ivar matcher: the compiled reference matcher.
    @ivar columns: see L{compile_plan}.
    """

    where: str
    params: tuple[Any, ...]
    exact: bool
    matcher: Matcher
    columns: Mapping[str, str] = attrs.field(factory=dict, eq=False, repr=False)
    """The key columns the plan was compiled against (for L{order_by})."""
    statements: dict[Any, Any] = attrs.field(factory=dict, eq=False, repr=False)
    """The read statements built over the plan, by shape (kept by L{oxidb.engine.reads.Reader.scan_statement})."""

    def accepts(self, doc: dict[str, Any]) -> bool:
        """The residual test for a row the condition selected."""
        return self.exact or self.matcher.matches(doc)


@attrs.define(eq=False)
class _Compiler:
    columns: Mapping[str, str]
    params: list[Any] = attrs.field(init=False, factory=list)

    def node(self, node: And | Or | FieldOp, present: frozenset[str] = frozenset()) -> tuple[str, bool]:
        """
        (condition, exact) for one node; an inexact condition is a
        pre-filter. C{present}: paths a sibling condition already proves
        present (see L{_proves_presence}).
        """
        if isinstance(node, And):
            return self._junction(node.children, " AND ", _TRUE)
        if isinstance(node, Or):
            return self._junction(node.children, " OR ", _FALSE)
        mark = len(self.params)
        try:
            sql = self.field(node, node.path in present)
        except (ValueError, TypeError, OverflowError):
            sql = None
        if sql is None:
            del self.params[mark:]
            return _TRUE, False
        return sql, True

    def _junction(self, children: tuple[Any, ...], glue: str, empty: str) -> tuple[str, bool]:
        if not children:
            return empty, True
        mark = len(self.params)
        parts = []
        exact = True
        present: frozenset[str] = frozenset()
        if glue == " AND ":
            present = frozenset(
                child.path for child in children if isinstance(child, FieldOp) and _proves_presence(child)
            )
        for child in children:
            sql, child_exact = self.node(child, present)
            exact = exact and child_exact
            parts.append(sql)
        if glue == " AND ":
            parts = [part for part in parts if part != _TRUE] or [_TRUE]
        elif _TRUE in parts:
            # An OR with an unconstrained branch constrains nothing.
            del self.params[mark:]
            return _TRUE, exact
        if len(parts) == 1:
            return parts[0], exact
        return "(" + glue.join(parts) + ")", exact

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return "?"

    def field(self, node: FieldOp, known_present: bool = False) -> str | None:
        """
        The exact SQL of one operator, or None. C{known_present}: the
        enclosing conjunction already proves the path present, so the
        presence test (which reads the document's JSON) can be left out.
        """
        op, operand, path = node.op, node.operand, node.path
        if path == "_id":
            sql = self._id_field(op, operand)
            if sql is not None:
                return sql
        column = self.columns.get(path)
        key = column or keys.key_sql(path)
        present = keys.present_sql(path)
        if op in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte"):
            k = keys.encode_key(operand)
            null = k == keys.NULL_KEY
            if op == "$eq":
                if null:
                    return f"({key} = X'00' AND {present})"
                value = keys.value_sql(path)
                texts = None if column is not None or value is None else _equal_texts(operand)
                if texts is not None:
                    # No index to use: compare the stored JSON text, without
                    # calling back into Python for every row (never NULL, so
                    # that NOT stays exact).
                    return f"ifnull({value} IN ({', '.join(self.bind(text) for text in texts)}), 0)"
                return f"{key} = {self.bind(k)}"
            if op == "$gt":
                return f"{key} > {self.bind(k)}"
            if op == "$gte":
                return present if null else f"{key} >= {self.bind(k)}"
            if op == "$lt" and null:
                return _FALSE
            if op == "$lte" and null:
                return f"({key} = X'00' AND {present})"
            if op == "$ne" and null:
                return f"{key} != X'00'"
            sign = {"$ne": "!=", "$lt": "<", "$lte": "<="}[op]
            if known_present:
                return f"{key} {sign} {self.bind(k)}"
            return f"({key} {sign} {self.bind(k)} AND {present})"
        if op in ("$in", "$nin"):
            if len(operand) > MAX_IN_KEYS:
                return None
            encoded = sorted({keys.encode_key(item) for item in operand})
            if op == "$nin":
                if not encoded:
                    return _TRUE
                return f"{key} NOT IN ({', '.join(self.bind(k) for k in encoded)})"
            has_null = keys.NULL_KEY in encoded
            others = [k for k in encoded if k != keys.NULL_KEY]
            terms = []
            if others:
                terms.append(f"{key} IN ({', '.join(self.bind(k) for k in others)})")
            if has_null:
                terms.append(f"({key} = X'00' AND {present})")
            if not terms:
                return _FALSE
            return terms[0] if len(terms) == 1 else "(" + " OR ".join(terms) + ")"
        if op == "$exists":
            return present if operand else f"({key} = X'00' AND NOT {present})"
        if op == "$not":
            inner = []
            for item in operand:
                sql = self.field(item)
                if sql is None:
                    return None
                inner.append(sql)
            return "NOT (" + " AND ".join(inner) + ")"
        return None

    def _id_field(self, op: str, operand: Any) -> str | None:
        """C{_id} against a number: the integer primary key itself."""
        kind = type(operand)
        if op not in _ID_COMPARISONS:
            return None
        if kind is float:
            if not math.isfinite(operand):
                return None
        elif kind is not int or not _I64_MIN <= operand <= _I64_MAX:
            return None
        return f"_id {_ID_COMPARISONS[op]} {self.bind(operand)}"


_ID_COMPARISONS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def _equal_texts(operand: Any) -> list[str] | None:
    """
    Every JSON text a stored value equal to C{operand} (engine.md 2.1) can
    have, or None when they cannot be listed. Stored documents are written
    by orjson, whose text for a value is unique, and SQLite's C{->} returns a
    scalar's text as stored. Equal values of other types: an integer and
    the float of the same value, C{0.0} and C{-0.0}; a date string has
    equal spellings and a string starting with C{[} or C{{} may equal an
    array or object, so neither is listed.
    """
    kind = type(operand)
    if kind is bool:
        return ["true" if operand else "false"]
    if kind is int:
        texts = {str(operand)}
        try:
            nearest = float(operand)
        except OverflowError:
            return sorted(texts)
        if nearest == operand:
            texts.add(orjson.dumps(nearest).decode())
            if operand == 0:
                texts.add("-0.0")
        return sorted(texts)
    if kind is float:
        if not math.isfinite(operand):
            return None
        texts = {orjson.dumps(operand).decode()}
        if operand == 0:
            texts.update(("0.0", "-0.0"))
        if operand.is_integer():
            texts.add(str(int(operand)))
        return sorted(texts)
    if kind is str:
        if operand[:1] in ("[", "{") or values.parse_date_ms(operand) is not None:
            return None
        try:
            return [orjson.dumps(operand).decode()]
        except orjson.JSONEncodeError:
            return None
    return None


def _proves_presence(node: FieldOp) -> bool:
    """
    The compiled C{node} holds only for documents where its path is
    present: C{$gt} anything, C{$gte} or C{$eq} a non-null value (the key
    then differs from the null key that missing paths share). Should it
    compile to no condition, the plan is inexact and the matcher checks
    everything anyway.
    """
    if node.op == "$gt":
        return True
    if node.op not in ("$gte", "$eq"):
        return False
    try:
        return keys.encode_key(node.operand) != keys.NULL_KEY
    except (ValueError, TypeError, OverflowError):
        return False


def compile_plan(matcher: Matcher, columns: Mapping[str, str] | None = None) -> Plan:
    """
    Compile a matcher to a L{Plan}. C{columns} maps indexed paths to the
    collection table's key columns (L{oxidb.engine.store.column_map}), which
    then stand for the key expressions; without it the plan reads every key
    from the document and suits any collection.
    """
    compiler = _Compiler(columns or {})
    sql, exact = compiler.node(matcher.root)
    if len(compiler.params) > MAX_PARAMS:
        return Plan(_TRUE, (), False, matcher, compiler.columns)
    return Plan(sql, tuple(compiler.params), exact, matcher, compiler.columns)


def order_by(spec: SortSpec | None, *, index_arrays: bool = True, columns: Mapping[str, str] | None = None) -> str:
    """
    The C{ORDER BY} clause of a sort (engine.md 2.5): each key in order,
    missing as null, then ascending C{_id}; without a sort, C{_id}.
    C{index_arrays} selects C{find}'s path reading (numeric steps index
    arrays) over the objects-only one of the aggregation C{$sort};
    C{columns} as for L{compile_plan}.
    """
    if not spec:
        return "ORDER BY _id"
    columns = columns or {}

    def key(path: str) -> str:
        if index_arrays and any(ch in _DIGITS for ch in path):
            return keys.sort_key_sql(path)  # may index arrays: no key column
        return columns.get(path) or keys.key_sql(path)

    terms = [key(path) + (" DESC" if direction == -1 else "") for path, direction in spec]
    return "ORDER BY " + ", ".join(terms) + ", _id"


#: The most rows (C{skip + limit}) a L{top_rows_statement} read takes.
TOP_ROWS_MAX = 1000

#: The most characters of document text a L{top_rows_statement} read holds
#: to order them; a longer answer is read with the sorted statement, which
#: streams.
TOP_ROWS_CHARS = 1 << 20

#: The most parameters of a condition a L{top_rows_statement} repeats.
TOP_ROWS_PARAMS = 100


def top_rows_column(spec: SortSpec | None, plan: Plan, *, index_arrays: bool = True) -> str | None:
    """
    The key column L{top_rows_statement} reads for C{spec} over C{plan}, if
    it suits them: C{spec} sorts on one path, descending, that L{order_by}
    reads from a key column, and the plan is exact and filters on that path
    alone, if at all (with another path's condition SQLite may choose that
    path's index, and the statement would then sort three times where
    C{order_by} sorts once); else None.
    """
    if not spec or len(spec) != 1 or not plan.exact or len(plan.params) > TOP_ROWS_PARAMS:
        return None
    ((path, direction),) = spec
    if direction != -1 or (index_arrays and any(ch in _DIGITS for ch in path)):
        return None
    column = plan.columns.get(path)
    if column is None or not _only_path(plan.matcher.root, path):
        return None
    return column


def _only_path(node: And | Or | FieldOp, path: str) -> bool:
    """Does every condition under C{node} test C{path}?"""
    if isinstance(node, FieldOp):
        return node.path == path
    return all(_only_path(child, path) for child in node.children)


def top_rows_statement(select: str, tbl: str, plan: Plan, column: str, rows: int) -> tuple[str, tuple[Any, ...]]:
    """
    The first C{rows} rows of C{plan} in the order C{ORDER BY column DESC,
    _id} without a sort: a single-column index runs C{(key, _id)}
    ascending, so read backwards it breaks ties by descending C{_id}, and
    that C{ORDER BY} makes SQLite sort every key's ties. Instead, with C{b}
    the key of the C{rows}-th row (one read down the index), the statement
    selects the rows keyed above C{b} (fewer than C{rows}), then the rows
    keyed C{b} in ascending C{_id} (the index's own order), as many as make
    C{rows}. C{select} lists the wanted columns; the statement adds the key
    as the last one, and its rows come in no particular order: the caller
    orders them by key (descending) then C{_id}. When the plan selects
    fewer than C{rows} rows (or the C{rows}-th key is SQL C{NULL}), it
    returns none. The plan must be exact.
    """
    where = "" if plan.where == _TRUE else f" AND ({plan.where})"
    cond = "" if plan.where == _TRUE else f" WHERE {plan.where}"
    above = f"{column} > (SELECT k FROM b){where}"
    sql = (
        f"WITH b(k) AS (SELECT {column} FROM {tbl}{cond} ORDER BY {column} DESC LIMIT 1 OFFSET ?) "
        f"SELECT {select}, {column} FROM {tbl} WHERE {above} "
        f"UNION ALL SELECT * FROM (SELECT {select}, {column} FROM {tbl} WHERE {column} = (SELECT k FROM b){where} "
        f"ORDER BY _id LIMIT ? - (SELECT count(*) FROM {tbl} WHERE {above}))"
    )
    params = plan.params
    return sql, (*params, rows - 1, *params, *params, rows, *params)


#: A document's compact JSON text is at most this many times longer than its
#: JSONB form: every JSONB element has a header byte at least, and the text
#: of a one-byte element with its separator is at most 6 bytes (C{false,});
#: strings and numbers are stored as their text (see L{group_statement}).
JSONB_TEXT_RATIO = 6


def group_statement(
    table: str,
    where: str,
    group: GroupPushdown,
    columns: Mapping[str, str] | None = None,
    *,
    measure: bool = False,
) -> str:
    """
    One statement computing a C{$group} over the rows C{where} selects
    (L{oxidb.engine.aggregate.GroupPushdown}, whose C{groups} reads the
    rows): per group, in order of its first C{_id}, the key's JSON type
    (C{null} for missing) and value, the first C{_id}, the row count, for
    each C{$sum}/C{$avg} of a path the count, sum, sum of magnitudes and
    count of non-integral floats of its numbers, for each C{$min}/C{$max}
    the extreme integer, the extreme float and the count of other non-null
    values; last, the total size of the documents' JSONB forms, which
    L{JSONB_TEXT_RATIO} times bounds their JSON texts' (the aggregation
    budget counts the texts; reading them with C{json(doc)} would cost a
    fifth of the statement), or with C{measure} the texts' own total UTF-8
    length (for when the caller knows the bound will not settle it): the
    stored L{store.DOC_SIZE}, measured only in rows written without it.
    Paths are plain names (checked by C{GroupPushdown}), written into the
    statement.

    When the key's path has a key column in C{columns}, the rows are
    grouped by that column (no JSON read per row for the key): its keys are
    equal exactly when the C{$group} identities are, except that an integer
    and a float of equal value share a key. The key shown is then read from
    each group's first document, and its type is C{'mixed'} (a case left to
    Python) when a numeric group holds both integers and floats.

    An inner query reads each path once per row (its C{LIMIT -1} keeps
    SQLite from flattening it into the grouping query, which would read
    every path again for each aggregate that uses it).
    """
    slots: dict[tuple[str, ...], int] = {}
    reads = ["_id", f"{store.TEXT_SIZE if measure else 'octet_length(doc)'} AS n"]

    def read(parts: tuple[str, ...]) -> tuple[str, str]:
        slot = slots.get(parts)
        if slot is None:
            slot = slots[parts] = len(slots)
            at = _json_path(parts)
            reads.append(f"json_type(doc, {at}) AS t{slot}, json_extract(doc, {at}) AS v{slot}")
        return f"t{slot}", f"v{slot}"

    key_column = group_key_column(group, columns)
    aggregates: list[str] = []
    for _, op, operand in group.accumulators:
        if not isinstance(operand, tuple):
            continue
        kind, value = read(operand)
        number = f"{kind} IN ('integer', 'real')"
        if op in ("$sum", "$avg"):
            aggregates += [
                f"count(CASE WHEN {number} THEN 1 END)",
                f"total(CASE WHEN {number} THEN {value} END)",
                f"total(CASE WHEN {number} THEN abs({value} * 1.0) END)",
                f"count(CASE WHEN {kind} = 'real' AND {value} <> round({value}) THEN 1 END)",
            ]
        else:
            extreme = "max" if op == "$max" else "min"
            aggregates += [
                f"{extreme}(CASE WHEN {kind} = 'integer' THEN {value} END)",
                f"{extreme}(CASE WHEN {kind} = 'real' THEN {value} END)",
                f"count(CASE WHEN {kind} NOT IN ('integer', 'real', 'null') THEN 1 END)",
            ]
    aggregates.append("total(n)")
    condition = "" if where == _TRUE else f" WHERE {where}"
    if group.key is not None and key_column is not None:
        at = _json_path(group.key)
        low, high = _rank_bounds(values.RANK_NUMBER)
        reads.append(f"{key_column} AS k")
        reads.append(f"CASE WHEN {key_column} >= {low} AND {key_column} < {high} THEN json_type(doc, {at}) END AS r")
        named = ", ".join(f"{aggregate} AS a{i}" for i, aggregate in enumerate(aggregates))
        grouped = (
            f"SELECT min(_id) AS f0, count(*) AS c0, max(r) IS NOT min(r) AS mixed, {named}"
            f" FROM (SELECT {', '.join(reads)} FROM {table}{condition} LIMIT -1) GROUP BY k"
        )
        outer = [
            f"CASE WHEN g.mixed THEN 'mixed' ELSE coalesce(json_type(d.doc, {at}), 'null') END",
            f"json_extract(d.doc, {at})",
            "g.f0",
            "g.c0",
        ] + [f"g.a{i}" for i in range(len(aggregates))]
        return f"SELECT {', '.join(outer)} FROM ({grouped}) AS g JOIN {table} AS d ON d._id = g.f0 ORDER BY g.f0"
    if group.key is None:
        head = ["'null'", "NULL"]
    else:
        kind, value = read(group.key)
        head = [f"coalesce({kind}, 'null')", value]
    head += ["min(_id)", "count(*)"]
    inner = f"SELECT {', '.join(reads)} FROM {table}{condition}"
    return f"SELECT {', '.join(head + aggregates)} FROM ({inner} LIMIT -1) GROUP BY 1, 2 ORDER BY 3"


#: C{group_scan_statement}'s kinds of accumulator (L{oxidb.engine.grouphash}).
_HASH_KINDS = {"$sum": 0, "$avg": 0, "$min": 1, "$max": 2}


def group_scan_statement(
    table: str, where: str, group: GroupPushdown, columns: Mapping[str, str], size: str
) -> tuple[str, tuple[tuple[int, int], ...]]:
    """
    The rows L{oxidb.engine.grouphash.hash_rows} aggregates for a C{$group}
    whose key has a key column in C{columns} (see L{group_statement}), and
    its specs: per row the C{_id}, the SQL expression C{size} (the
    document's text size, or C{0}), the key column, then each accumulated
    path once: its key column if it has one and is only summed, else its
    JSON text (C{doc -> path}: one path read per row, where C{json_type}
    and C{json_extract} took two).
    """
    assert group.key is not None
    paths, specs = _hash_specs(group)
    reads = ["_id", size, columns[".".join(group.key)]]
    for parts, summed_only in paths.items():
        column = columns.get(".".join(parts)) if summed_only else None
        reads.append(column or f"doc -> {_json_path(parts)}")
    condition = "" if where == _TRUE else f" WHERE {where}"
    return f"SELECT {', '.join(reads)} FROM {table}{condition}", specs


def _hash_specs(group: GroupPushdown) -> tuple[dict[tuple[str, ...], bool], tuple[tuple[int, int], ...]]:
    """
    Each path the accumulators read (in column order), whether it is only
    summed; the specs of L{oxidb.engine.grouphash.hash_rows}.
    """
    paths: dict[tuple[str, ...], bool] = {}
    specs: list[tuple[int, int]] = []
    for _, op, operand in group.accumulators:
        if isinstance(operand, tuple):
            kind = _HASH_KINDS[op]
            paths[operand] = paths.get(operand, True) and kind == _HASH_KINDS["$sum"]
            specs.append((list(paths).index(operand), kind))
    return paths, tuple(specs)


def group_blob_statement(
    table: str, group: GroupPushdown, columns: Mapping[str, str], size: str | None
) -> tuple[str, tuple[tuple[int, int], ...]] | None:
    """
    L{group_scan_statement}'s rows of the first C{?2} C{_id}s after C{?1},
    packed in one blob for L{oxidb.engine.grouphash.hash_blobs}, and the
    last C{_id} read (None past the last row)
    (C{size}: the SQL expression of a row's size, or None to leave it out),
    when the key and every accumulated path, only summed, have key columns
    (else None: a JSON text could hold the records' separator): a record per
    row, each key column's length (C{char()}) then its bytes, and the C{_id}
    and size as decimals ended by C{x'1e'}. SQLite builds the blob at a
    fraction of the cost of a tuple of Python objects per row.
    """
    assert group.key is not None
    paths, specs = _hash_specs(group)
    key_column = columns[".".join(group.key)]
    parts = [f"char(length({key_column}))", key_column, "_id", "x'1e'"]
    if size is not None:
        parts += [size, "x'1e'"]
    for path, summed_only in paths.items():
        column = columns.get(".".join(path))
        if not summed_only or column is None:
            return None
        parts += [f"char(length({column}))", column]
    record = " || ".join(parts)
    rows = f"SELECT {record} AS r, _id AS i FROM {table} WHERE _id > ?1 ORDER BY _id LIMIT ?2"
    return f"SELECT CAST(group_concat(r, '') AS BLOB), max(i) FROM ({rows})", specs


def group_numeric_keys_statement(table: str, key_column: str) -> str:
    """
    One row if any document's key column holds a number (through the
    column's index). The hash aggregate does not tell an integer key from a
    float of equal value (they share a key but not a C{$group} identity),
    so such groups are left to L{group_statement}, which does.
    """
    low, high = _rank_bounds(values.RANK_NUMBER)
    return f"SELECT 1 FROM {table} WHERE {key_column} >= {low} AND {key_column} < {high} LIMIT 1"


def group_first_keys_statement(table: str, group: GroupPushdown) -> str:
    """
    The key's JSON type and value in each of the documents whose C{_id}s
    the statement's one parameter lists as a JSON array (each group's
    first, for L{group_scan_statement}'s groups).
    """
    assert group.key is not None
    at = _json_path(group.key)
    return (
        f"SELECT _id, coalesce(json_type(doc, {at}), 'null'), json_extract(doc, {at}) FROM {table}"
        " WHERE _id IN (SELECT value FROM json_each(?))"
    )


def group_key_column(group: GroupPushdown, columns: Mapping[str, str] | None) -> str | None:
    """The key column L{group_statement} groups by, if the key's path has one in C{columns}."""
    if group.key is None or not columns:
        return None
    return columns.get(".".join(group.key))


def _json_path(parts: tuple[str, ...]) -> str:
    return "'$." + ".".join(parts) + "'"


def _rank_bounds(rank: int) -> tuple[str, str]:
    """SQL blobs bounding the keys of one rank: C{low <= key < high}."""
    return f"x'{rank:02x}'", f"x'{rank + 1:02x}'"
