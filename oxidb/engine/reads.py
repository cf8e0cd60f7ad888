"""
Queries over one SQLite connection.

A L{Reader} runs on a pool thread's reader connection inside a read
transaction (one consistent WAL snapshot per engine call), or on the writer
connection inside the open write transaction (then it sees the batch's own
uncommitted changes; L{oxidb.engine.writes.WriteTxn} builds on it).

Reads of a collection that does not exist answer as for an empty one and
call C{on_missing(name)} (the engine creates the collection through the
writer when auto-creation on read is on).

Every read runs under the reader's L{QueryLimits} and L{Deadline}: query
shapes are checked when compiled, loops over rows check the deadline, and
results that become replies are counted as their stored texts are read, so
that a result past the reply frame stops early with L{ReplyTooLargeError}
instead of being built.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import orjson

from oxidb.engine import databases, grouphash, sqlite, sqlquery, store, textindex, textstore, ttl
from oxidb.engine.aggregate import GroupPushdown, Pipeline, compile_pipeline
from oxidb.engine.governor import (
    DEFAULT_LIMITS,
    DOC_OVERHEAD,
    NO_DEADLINE,
    Budget,
    ByteCap,
    Deadline,
    NotInline,
    QueryLimits,
    approx_size,
    reply_cap,
    text_size,
)
from oxidb.engine.matcher import Matcher, SortSpec, compile_query, find_window, parse_sort
from oxidb.engine.sqlquery import Plan, compile_plan, order_by
from oxidb.engine.store import CollectionInfo
from oxidb.errors import BadRequestError, DocumentNotObjectError, InvalidQueryError, OxiError
from oxidb.wire.limits import MAX_FRAME

#: SQLite's string limit for the one-step fetch of a capped read (a reply,
#: an aggregation): a little over a reply frame. Longer results are read row
#: by row, so that the cap stops them early instead of after building them.
CAPPED_CONCAT_LENGTH = MAX_FRAME + 1024 * 1024

#: The largest C{limit} of an indexed equality read that L{Reader.is_small} accepts.
SMALL_READ_LIMIT = 100

#: Plans of small reads kept per collection and reader connection
#: (L{Reader.small_plan}); the cache starts over when full.
SMALL_PLANS = 512

#: The longest string operand whose plan is kept (longer ones are compiled
#: each time, so that the cache stays small).
SMALL_PLAN_TEXT = 256


def small_shape(query: object, limit: object) -> bool:
    """
    The shape of a small read (L{Reader.is_small} checks the index): one
    equality with a scalar operand (no operators), with no C{limit} or one
    of at most L{SMALL_READ_LIMIT}.
    """
    if type(query) is not dict or len(query) != 1:
        return False
    for value in query.values():
        if type(value) is dict or type(value) is list:
            return False
    return limit is None or (type(limit) is int and 0 < limit <= SMALL_READ_LIMIT)


#: The comparison operators of a range read that may be small (L{small_range_shape}).
_RANGE_OPERATORS = frozenset({"$gt", "$gte", "$lt", "$lte"})


def small_range_shape(query: object, limit: object) -> bool:
    """
    The shape of a range read that may be small (L{Reader.small_range}
    counts it on the index): one path compared with C{$gt}, C{$gte},
    C{$lt} or C{$lte} to scalars, with no C{limit} or one of at most
    L{SMALL_READ_LIMIT}.
    """
    if type(query) is not dict or len(query) != 1:
        return False
    for condition in query.values():
        if type(condition) is not dict or not condition or not _RANGE_OPERATORS.issuperset(condition):
            return False
        for operand in condition.values():
            if type(operand) is dict or type(operand) is list:
                return False
    return limit is None or (type(limit) is int and 0 < limit <= SMALL_READ_LIMIT)


def small_sorted_shape(query: object, sort: object, skip: object, limit: object) -> str | None:
    """
    The sort path of a small sorted read (L{Reader.is_small_sorted} checks
    the indexes), else None: a sort on one path, a C{limit} of at most
    L{SMALL_READ_LIMIT}, a C{skip} of at most that, and no query or one
    scalar equality.
    """
    if type(sort) is not dict or len(sort) != 1:
        return None
    if type(limit) is not int or not 0 < limit <= SMALL_READ_LIMIT:
        return None
    if skip is not None and (type(skip) is not int or not 0 <= skip <= SMALL_READ_LIMIT):
        return None
    if query is not None and query != {} and not small_shape(query, None):
        return None
    (path,) = sort
    return path if type(path) is str else None


Charge = Callable[[int], None]
"""C{charge(size)}: count one row of C{size} bytes against a cap (may raise)."""

_Scanned = tuple[int, int, str, Any]
"""C{(_id, _version, text, document or None if not parsed yet)}."""

Row = tuple[int, int, dict[str, Any]]
"""C{(_id, _version, document)}."""

_ColumnEntry = tuple[int, str, dict[str, str], dict[tuple[Any, ...], Plan]]
"""A column cache entry: C{(schema version, table, key columns by path, small plans by query)}."""


#: The most statements a plan keeps (L{Reader.scan_statement}).
PLAN_STATEMENTS = 16

_row_id = operator.itemgetter(0)
_row_key = operator.itemgetter(3)


def plan_query(query: object) -> Plan:
    """
    Validate and compile a query (C{None} means C{{}}) into a plan that
    suits any collection (see L{Reader.plan_for} for one that uses a
    collection's indexes).
    """
    return compile_plan(compile_query({} if query is None else query))


def check_query(query: object, limits: QueryLimits = DEFAULT_LIMITS) -> Matcher:
    """Validate and compile a query (C{None} means C{{}}) to its matcher."""
    return compile_query({} if query is None else query, limits)


@attrs.frozen
class ScanStatement:
    """
    The statement of a read (L{Reader.scan_statement}).

    @ivar sql: the C{SELECT _id, _version, doc} statement.
    @ivar params: its parameters.
    @ivar whole: no sort, skip or limit: fetched in one step, C{_id} order
        made in Python.
    @ivar window_in_sql: skip and limit (if any) are in the SQL; otherwise
        they apply in Python after the residual matcher.
    @ivar fallback: for a L{sqlquery.top_rows_statement} (the first C{skip
        + limit} rows of a descending sort, each with its key, unordered:
        they are ordered and skipped in Python), the read to run instead
        when it returns no row or more than L{sqlquery.TOP_ROWS_CHARS} of
        text; else None.
    """

    sql: str
    params: tuple[Any, ...]
    whole: bool
    window_in_sql: bool
    fallback: ScanStatement | None = None


#: Documents per blob of L{grouphash.hash_blobs}: a blob holds a record of
#: a few dozen bytes per document.
BLOB_IDS = 8192


@attrs.define(eq=False)
class Reader:
    """
    Engine reads over C{conn}; the caller owns the transaction.

    @ivar conn: the connection.
    @ivar on_missing: called with the name of a missing collection a read
        named (after validating the name), or None.

    @ivar limits: the L{QueryLimits} queries are checked against.
    @ivar deadline: the read's L{Deadline} (none by default).

    C{column_cache}, owned by the caller and kept for the connection's
    life, remembers each collection's key columns with the schema version
    they were read at (every change to them is DDL, which bumps the
    version), and the plans of small reads compiled against them
    (L{small_plan}). A reader lives for one transaction, so it reads the
    schema version once.
    """

    conn: sqlite.Connection
    on_missing: Callable[[str], None] | None = None
    _column_cache: dict[str, _ColumnEntry] | None = None
    limits: QueryLimits = attrs.field(default=DEFAULT_LIMITS, kw_only=True)
    deadline: Deadline = attrs.field(default=NO_DEADLINE, kw_only=True)
    _schema_version: int | None = attrs.field(init=False, default=None)

    def check_query(self, query: object) -> Matcher:
        """L{check_query} under this reader's limits."""
        return check_query(query, self.limits)

    # --- collections ------------------------------------------------------

    def collection(self, name: object) -> CollectionInfo | None:
        """The catalog row of a collection named by a read, or None."""
        store.validate_qualified_name(name)
        assert isinstance(name, str)
        info = store.get_collection(self.conn, name)
        if info is None:
            databases.check_exists(self.conn, databases.database_of(name))
            if self.on_missing is not None:
                self.on_missing(name)
        return info

    def list_collections(self) -> list[str]:
        """Every collection, sorted by name (engine.md 1.6 REC)."""
        return [info.name for info in store.list_collections(self.conn)]

    def list_databases(self) -> list[str]:
        """Every database: the default one first, then by name."""
        return databases.list_names(self.conn)

    def database_collections(self, database: str) -> list[str]:
        """
        The collections of C{database} by their bare names, sorted;
        L{oxidb.errors.DatabaseNotFoundError} if it does not exist.
        """
        databases.check_exists(self.conn, database)
        return [databases.bare(name) for name in databases.collection_names(self.conn, database)]

    def collection_counts(self) -> dict[str, int]:
        """Documents per collection."""
        return {
            info.name: self.conn.execute(f"SELECT count(*) FROM {info.tbl}").fetchone()[0]
            for info in store.list_collections(self.conn)
        }

    def list_indexes(self, collection: str) -> list[dict[str, Any]]:
        """
        Index descriptors (engine.md 4.6): field and unique indexes, then
        composites, then the text index, then vector indexes (with their
        C{dimension} and C{metric}), each group in creation order; then
        TTL indexes by field (L{oxidb.engine.ttl}).
        """
        info = self.collection(collection)
        if info is None:
            return []
        defs = store.list_index_defs(self.conn, info.name)
        order = {store.INDEX_FIELD: 0, store.INDEX_COMPOSITE: 1, store.INDEX_TEXT: 2, store.INDEX_VECTOR: 3}
        described = []
        for index in sorted(defs, key=lambda d: (order[d.kind], d.seq)):
            descriptor = index.describe()
            if index.kind == store.INDEX_VECTOR:
                descriptor["dimension"], descriptor["metric"] = store.get_vector_spec(self.conn, index)
            described.append(descriptor)
        return described + ttl.list_for(self.conn, info.name)

    # --- documents --------------------------------------------------------

    def _planned(self, collection: str, matcher: Matcher) -> tuple[CollectionInfo, Plan] | None:
        """The collection and C{matcher}'s plan over it; None if it does not exist."""
        info = self.collection(collection)
        if info is None:
            return None
        return info, self.plan_for(info, matcher)

    def plan_for(self, info: CollectionInfo, matcher: Matcher) -> Plan:
        """C{matcher} compiled against the collection's index key columns."""
        return compile_plan(matcher, self._columns(info))

    def _columns(self, info: CollectionInfo) -> dict[str, str]:
        entry = self._column_entry(info)
        if entry is None:
            return store.column_map(store.list_index_defs(self.conn, info.name))
        return entry[2]

    def _column_entry(self, info: CollectionInfo) -> _ColumnEntry | None:
        """The column cache's entry of the collection, brought up to date (None without a cache)."""
        cache = self._column_cache
        if cache is None:
            return None
        version = self._schema_version
        if version is None:
            (version,) = self.conn.execute("PRAGMA schema_version").fetchone()
            self._schema_version = version
        cached = cache.get(info.name)
        if cached is not None and cached[0] == version and cached[1] == info.tbl:
            return cached
        entry: _ColumnEntry = (version, info.tbl, store.column_map(store.list_index_defs(self.conn, info.name)), {})
        cache[info.name] = entry
        return entry

    def small_plan(self, info: CollectionInfo, query: object) -> Plan | None:
        """
        The plan of a small read's C{query} (none, C{{}}, or one equality of
        C{_id} or an indexed path to a scalar) over the collection, else
        None. Such plans are kept with the collection's key columns, so a
        read repeating a query does not compile it again.
        """
        if query is None or query == {}:
            key: tuple[Any, ...] = ()
        else:
            if type(query) is not dict or len(query) != 1:
                return None
            ((path, value),) = query.items()
            if type(value) is dict or type(value) is list:
                return None
            # The type keeps 1, 1.0 and true apart; a float by its exact
            # text keeps 0.0 and -0.0 apart.
            key = (path, type(value), value.hex() if type(value) is float else value)
        entry = self._column_entry(info)
        columns = entry[2] if entry is not None else self._columns(info)
        if key and key[0] != "_id" and key[0] not in columns:
            return None
        plans = None if entry is None else entry[3]
        plan = None if plans is None else plans.get(key)
        if plan is None:
            plan = compile_plan(self.check_query(query), columns)
            if plans is not None and not (key and type(key[2]) is str and len(key[2]) > SMALL_PLAN_TEXT):
                if len(plans) >= SMALL_PLANS:
                    plans.clear()
                plans[key] = plan
        return plan

    def rows(
        self,
        info: CollectionInfo,
        plan: Plan,
        spec: SortSpec | None = None,
        skip: int | None = None,
        limit: int | None = None,
        *,
        index_arrays: bool = True,
        charge: Charge | None = None,
    ) -> Iterator[Row]:
        """
        Matching rows in C{find} order (sort, then ascending C{_id}), after
        C{skip}, at most C{limit}. C{index_arrays}: see L{order_by}.
        C{charge} is called with each row's stored text size before the
        row is given out.
        """
        loads = orjson.loads
        for _id, version, text, doc in self._scan(info, plan, spec, skip, limit, index_arrays, charge):
            yield _id, version, loads(text) if doc is None else doc

    def texts(
        self,
        info: CollectionInfo,
        plan: Plan,
        spec: SortSpec | None = None,
        skip: int | None = None,
        limit: int | None = None,
        *,
        charge: Charge | None = None,
    ) -> Iterator[str]:
        """
        The stored JSON texts of the rows L{rows} gives, in its order. A text
        is only parsed when the query needs the reference matcher.
        """
        for _, _, text, _ in self._scan(info, plan, spec, skip, limit, True, charge, versions=False):
            yield text

    def _scan(
        self,
        info: CollectionInfo,
        plan: Plan,
        spec: SortSpec | None,
        skip: int | None,
        limit: int | None,
        index_arrays: bool,
        charge: Charge | None,
        *,
        versions: bool = True,
    ) -> Iterator[_Scanned]:
        """
        The rows of L{rows} as L{_Scanned} (with C{_version} 0 unless
        C{versions}), checking the deadline for each row that needs Python
        work (rows SQLite has already fetched in one step are checked in
        batches).
        """
        if limit == 0:
            return
        check = self.deadline.check
        loads = orjson.loads
        matches = None if plan.exact else plan.matcher.matches
        statement = self.scan_statement(info, plan, spec, skip, limit, index_arrays)
        if statement.whole:
            concat_limit = None if charge is None else CAPPED_CONCAT_LENGTH
            selected = self._all_selected(info, plan, concat_limit, versions=versions, inner=statement.sql)
            if matches is None:
                for n, (_id, version, text) in enumerate(selected):
                    if not n & 1023:
                        check()
                    if charge is not None:
                        charge(text_size(text))
                    yield _id, version, text, None
                return
            for _id, version, text in selected:
                check()
                doc = loads(text)
                if matches(doc):
                    if charge is not None:
                        charge(text_size(text))
                    yield _id, version, text, doc
            return
        if statement.fallback is not None:
            # The rows are held to be ordered: past TOP_ROWS_CHARS of text,
            # the sorted statement streams them instead.
            top: list[Any] = []
            chars = 0
            for row in self.conn.execute(statement.sql, statement.params):
                chars += len(row[2])
                if chars > sqlquery.TOP_ROWS_CHARS:
                    break
                top.append(row)
            else:
                if top:
                    # Key descending, then ascending _id (stable sorts).
                    top.sort(key=_row_id)
                    top.sort(key=_row_key, reverse=True)
                    for _id, version, text, _ in top[skip or 0 :]:
                        check()
                        if charge is not None:
                            charge(text_size(text))
                        yield _id, version, text, None
                    return
            del top
            statement = statement.fallback
        if plan.exact:
            for _id, version, text in self.conn.execute(statement.sql, statement.params):
                check()
                if charge is not None:
                    charge(text_size(text))
                yield _id, version, text, None
            return
        to_skip = skip or 0
        remaining = limit
        for _id, version, text in self.conn.execute(statement.sql, statement.params):
            check()
            doc = loads(text)
            assert matches is not None
            if not matches(doc):
                continue
            if to_skip:
                to_skip -= 1
                continue
            if charge is not None:
                charge(text_size(text))
            yield _id, version, text, doc
            if remaining is not None:
                remaining -= 1
                if remaining == 0:
                    return

    def scan_statement(
        self,
        info: CollectionInfo,
        plan: Plan,
        spec: SortSpec | None = None,
        skip: int | None = None,
        limit: int | None = None,
        index_arrays: bool = True,
    ) -> ScanStatement:
        """
        The SQL statement a read of C{plan}'s rows runs (L{rows}, L{texts},
        and through them every read; C{explain} shows it): the rows
        C{plan.where} selects, ordered by C{spec} then C{_id}, with C{skip}
        and C{limit} in SQL when the plan is exact (else the residual
        matcher runs first and they are applied in Python). Without sort,
        skip or limit the statement is fetched in one step (see
        L{_all_selected}) and sorted by C{_id} in Python. A limited
        descending sort that L{sqlquery.top_rows_column} suits runs
        L{sqlquery.top_rows_statement} (see L{ScanStatement.fallback}).
        The statement is kept with the plan (small reads reuse their plans).
        """
        shape = (info.tbl, spec, skip, limit, index_arrays)
        kept = plan.statements
        statement: ScanStatement | None = kept.get(shape)
        if statement is None:
            statement = self._scan_statement(info, plan, spec, skip, limit, index_arrays)
            if len(kept) >= PLAN_STATEMENTS:
                kept.clear()
            kept[shape] = statement
        return statement

    def _scan_statement(
        self,
        info: CollectionInfo,
        plan: Plan,
        spec: SortSpec | None,
        skip: int | None,
        limit: int | None,
        index_arrays: bool,
    ) -> ScanStatement:
        select = f"_id, _version, {store.DOC_TEXT} AS doc"
        sql = f"SELECT {select} FROM {info.tbl}"
        if plan.where != "1":
            sql += f" WHERE {plan.where}"
        params = plan.params
        if spec is None and limit is None and not skip:
            return ScanStatement(sql, params, whole=True, window_in_sql=True)
        sql += " " + order_by(spec, index_arrays=index_arrays, columns=plan.columns)
        if plan.exact and (limit is not None or skip):
            sql += " LIMIT ? OFFSET ?"
            params = params + (-1 if limit is None else limit, skip or 0)
        statement = ScanStatement(sql, params, whole=False, window_in_sql=plan.exact)
        column = sqlquery.top_rows_column(spec, plan, index_arrays=index_arrays)
        if column is not None and limit is not None and (skip or 0) + limit <= sqlquery.TOP_ROWS_MAX:
            top_sql, top_params = sqlquery.top_rows_statement(select, info.tbl, plan, column, (skip or 0) + limit)
            return ScanStatement(top_sql, top_params, whole=False, window_in_sql=True, fallback=statement)
        return statement

    def count_statement(self, info: CollectionInfo, plan: Plan) -> tuple[str, tuple[Any, ...]]:
        """
        The C{count(*)} of the rows C{plan.where} selects: L{count}'s whole
        answer for an exact plan, otherwise the rows its residual matcher
        then checks.
        """
        sql = f"SELECT count(*) FROM {info.tbl}"
        if plan.where != "1":
            sql += f" WHERE {plan.where}"
        return sql, plan.params

    def _all_selected(
        self,
        info: CollectionInfo,
        plan: Plan,
        concat_limit: int | None = None,
        *,
        versions: bool = True,
        inner: str | None = None,
    ) -> Iterator[tuple[int, int, str]]:
        """
        Every row C{plan.where} selects, C{(_id, _version, text)} in
        ascending C{_id} (C{_version} 0 unless C{versions}).

        One aggregate query concatenates the columns inside SQLite (stored
        texts never hold a raw U+001F: the JSON encoder escapes control
        characters), so that fetching takes one step: a query stepped once
        per row gives up and takes back the GIL for every row, which stalls
        when other threads are busy. The rows are sorted here rather than by
        an C{ORDER BY _id}, which would tempt the planner into a full scan
        to avoid a sort. A concatenation longer than SQLite's string limit
        (C{concat_limit} if given, else the connection's: the engine sets it
        on reader connections, see L{oxidb.engine.engine.READ_LENGTH_LIMIT})
        falls back to stepping through the rows in C{_id} order, so that a
        capped caller can stop early. C{inner}: the plan's L{scan_statement}
        if the caller has it.
        """
        if inner is None:
            inner = self.scan_statement(info, plan).sql
        version_sql = "group_concat(_version)" if versions else "NULL"
        sql = f"SELECT group_concat(_id), {version_sql}, group_concat(doc, char(31)) FROM ({inner})"
        saved = None
        if concat_limit is not None:
            saved = self.conn.limit(sqlite.LIMIT_LENGTH, concat_limit)
        try:
            result = self.conn.execute(sql, plan.params).fetchone()
        except sqlite.TooBigError:
            if saved is not None:
                self.conn.limit(sqlite.LIMIT_LENGTH, saved)
                saved = None
            # Longer than SQLite's string limit: row by row.
            yield from self.conn.execute(inner + " ORDER BY _id", plan.params)
            return
        finally:
            if saved is not None:
                self.conn.limit(sqlite.LIMIT_LENGTH, saved)
        if result[-1] is None:
            return
        ids = map(int, result[0].split(","))
        texts = result[-1].split("\x1f")
        if versions:
            rows = list(zip(ids, map(int, result[1].split(",")), texts, strict=True))
        else:
            rows = list(zip(ids, itertools.repeat(0), texts))
        del result, texts
        rows.sort(key=_row_id)
        yield from rows

    def find(
        self,
        collection: str,
        query: object = None,
        sort: object = None,
        skip: object = None,
        limit: object = None,
        *,
        capped: bool = True,
    ) -> list[dict[str, Any]]:
        """
        C{find} (engine.md 2.5): filter, sort, skip, limit. The result must
        fit in a reply unless C{capped} is false (for callers that do not
        send it).
        """
        matcher = self.check_query(query)
        spec = parse_sort(sort, self.limits)
        window = _window(skip, limit)
        planned = self._planned(collection, matcher)
        if planned is None:
            return []
        charge = reply_cap(self.limits).add if capped else None
        return [doc for _, _, doc in self.rows(*planned, spec, *window, charge=charge)]

    def find_raw(
        self,
        collection: str,
        query: object = None,
        sort: object = None,
        skip: object = None,
        limit: object = None,
    ) -> str:
        """
        L{find}'s result as one JSON array text, built from the stored
        document texts: byte for byte what encoding L{find}'s list gives
        (documents are stored as the compact JSON the wire codec writes).
        """
        matcher = self.check_query(query)
        spec = parse_sort(sort, self.limits)
        window = _window(skip, limit)
        return self._raw_array(self._planned(collection, matcher), spec, window)

    def _raw_array(
        self, planned: tuple[CollectionInfo, Plan] | None, spec: SortSpec | None, window: tuple[int | None, int | None]
    ) -> str:
        if planned is None:
            return "[]"
        cap = reply_cap(self.limits)
        return "[" + ",".join(self.texts(*planned, spec, *window, charge=lambda n: cap.add(n + 1))) + "]"

    def _existing(self, collection: object) -> CollectionInfo | None:
        """The catalog row of C{collection} if it names one that exists; None for a bad name too."""
        try:
            store.validate_qualified_name(collection)
        except OxiError:
            return None
        assert isinstance(collection, str)
        return store.get_collection(self.conn, collection)

    def small_eq(self, collection: object, query: object, limit: object) -> tuple[CollectionInfo, Plan] | None:
        """
        The collection and plan of a read that is surely small:
        L{small_shape}, on C{_id} or an indexed path of a collection that
        exists; else None.
        """
        if not small_shape(query, limit):
            return None
        info = self._existing(collection)
        if info is None:
            return None
        plan = self.small_plan(info, query)
        return None if plan is None else (info, plan)

    def is_small(self, collection: object, query: object, limit: object) -> bool:
        """Is this read surely small (L{small_eq})?"""
        return self.small_eq(collection, query, limit) is not None

    def small_sorted(
        self, collection: object, query: object, sort: object, skip: object, limit: object
    ) -> tuple[CollectionInfo, Plan] | None:
        """
        The collection and plan of a sorted read that is surely small:
        L{small_sorted_shape}, sorting on C{_id} or an indexed path and
        filtering on none or on one of them, of a collection that exists;
        else None. SQLite then walks the index in order and stops after
        C{skip + limit} rows.
        """
        path = small_sorted_shape(query, sort, skip, limit)
        if path is None:
            return None
        info = self._existing(collection)
        if info is None or (path != "_id" and path not in self._columns(info)):
            return None
        plan = self.small_plan(info, query)
        return None if plan is None else (info, plan)

    def is_small_sorted(self, collection: object, query: object, sort: object, skip: object, limit: object) -> bool:
        """Is this sorted read surely small (L{small_sorted})?"""
        return self.small_sorted(collection, query, sort, skip, limit) is not None

    def small_range(self, collection: object, query: object, limit: object) -> tuple[CollectionInfo, Plan] | None:
        """
        The collection and plan of a range read that is surely small:
        L{small_range_shape}, on C{_id} or an indexed path of a collection
        that exists, selecting at most L{SMALL_READ_LIMIT} documents; else
        None. The index is counted up to one past that, so the estimate
        costs little whatever the range holds, and the read reuses the plan.
        """
        if not small_range_shape(query, limit):
            return None
        assert isinstance(query, dict)
        (path,) = query
        info = self._existing(collection)
        if info is None or (path != "_id" and path not in self._columns(info)):
            return None
        plan = self.plan_for(info, self.check_query(query))
        if not plan.exact:
            return None
        sql = f"SELECT count(*) FROM (SELECT 1 FROM {info.tbl} WHERE {plan.where} LIMIT ?)"
        (count,) = self.conn.execute(sql, (*plan.params, SMALL_READ_LIMIT + 1)).fetchone()
        return (info, plan) if int(count) <= SMALL_READ_LIMIT else None

    def find_raw_small(
        self,
        collection: str,
        query: object = None,
        sort: object = None,
        skip: object = None,
        limit: object = None,
    ) -> str:
        """
        L{find_raw} if L{small_eq} or L{small_range} (L{small_sorted} with
        a sort), else L{NotInline}; the read runs the plan the check made.
        """
        spec = None
        if sort is None:
            planned = self.small_eq(collection, query, limit) or self.small_range(collection, query, limit)
        else:
            planned = self.small_sorted(collection, query, sort, skip, limit)
            spec = parse_sort(sort, self.limits)
        if planned is None:
            raise NotInline()
        return self._raw_array(planned, spec, _window(skip, limit))

    def find_one_raw_small(self, collection: str, query: object = None) -> str | None:
        """L{find_one_raw} if L{small_eq} (as with a limit of 1), else L{NotInline}."""
        planned = self.small_eq(collection, query, 1)
        if planned is None:
            raise NotInline()
        return next(self.texts(*planned, None, None, 1), None)

    def find_one_raw(self, collection: str, query: object = None) -> str | None:
        """L{find_one}'s document as its stored JSON text, or None."""
        planned = self._planned(collection, self.check_query(query))
        if planned is None:
            return None
        return next(self.texts(*planned, None, None, 1), None)

    def find_one(self, collection: str, query: object = None) -> dict[str, Any] | None:
        """The matching document with the lowest C{_id}, or None."""
        planned = self._planned(collection, self.check_query(query))
        if planned is None:
            return None
        for _, _, doc in self.rows(*planned, None, None, 1):
            return doc
        return None

    def count(self, collection: str, query: object = None) -> int:
        """The number of matching documents (canonical: C{len(find(query))})."""
        planned = self._planned(collection, self.check_query(query))
        if planned is None:
            return 0
        info, plan = planned
        if plan.exact:
            return int(self.conn.execute(*self.count_statement(info, plan)).fetchone()[0])
        return sum(1 for _ in self._scan(info, plan, None, None, None, True, None))

    def text_search(self, collection: str, query: object, limit: int = textindex.DEFAULT_LIMIT) -> list[dict[str, Any]]:
        """
        Documents containing query terms, best TF-IDF score first (ties by
        ascending C{_id}), at most C{limit}, each with C{_score}
        (engine.md 8.3).
        """
        if not isinstance(query, str):
            raise BadRequestError("missing 'query' string")
        terms = textindex.query_terms(query, self.limits.search_max_query_length, self.limits.search_max_terms)
        info = self.collection(collection)
        index = None
        if info is not None:
            index = next((d for d in store.list_index_defs(self.conn, info.name) if d.kind == store.INDEX_TEXT), None)
        if info is None or index is None:
            raise InvalidQueryError("no text index on this collection; create one with create_text_index")
        ranked = textstore.search(self.conn, info.tbl, terms, limit, self.deadline)
        if not ranked:
            return []
        docs = self._docs_by_id(info, [doc_id for doc_id, _ in ranked], reply_cap(self.limits))
        result = []
        for doc_id, score in ranked:
            doc = docs[doc_id]
            doc["_score"] = score
            result.append(doc)
        return result

    def _docs_by_id(self, info: CollectionInfo, ids: list[int], cap: ByteCap) -> dict[int, dict[str, Any]]:
        docs: dict[int, dict[str, Any]] = {}
        for start in range(0, len(ids), 500):
            self.deadline.check()
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT _id, {store.DOC_TEXT} FROM {info.tbl} WHERE _id IN ({marks})"
            for doc_id, text in self.conn.execute(sql, chunk):
                cap.add(text_size(text) + 12)
                docs[doc_id] = orjson.loads(text)
        return docs

    def aggregate(self, collection: str, pipeline: object) -> list[dict[str, Any]]:
        """
        Run a pipeline (engine.md 5) over the collection; its leading
        C{$match}/C{$sort}/C{$skip}/C{$limit} stages run in SQL, C{$lookup}
        runs real finds. Every stage stays within the aggregation budget
        (L{Budget}), and the output must fit in a reply.
        """
        compiled = compile_pipeline(pipeline, self.limits)
        budget = Budget.of(self.limits, self.deadline)
        info = self.collection(collection)
        prefix = compiled.prefix
        docs: list[dict[str, Any]] = []
        sizes: list[int] = []
        if info is not None:
            plan = self.plan_for(info, prefix.matcher if prefix.matcher is not None else self.check_query(None))
            pushed = self._group_in_sql(info, plan, compiled, budget)
            if pushed is not None:
                return self._finish_aggregate(
                    compiled, pushed, budget, prefix.stages + 1, databases.database_of(collection)
                )
            budget.start("$match" if prefix.stages else "input")
            loads = orjson.loads
            for _, _, text, doc in self._scan(
                info, plan, prefix.sort, prefix.skip or None, prefix.limit, False, lambda n: budget.add(1, n)
            ):
                docs.append(loads(text) if doc is None else doc)
                sizes.append(text_size(text))
        return self._finish_aggregate(
            compiled, (docs, sizes), budget, prefix.stages, databases.database_of(collection)
        )

    def _finish_aggregate(
        self,
        compiled: Pipeline,
        stream: tuple[list[dict[str, Any]], list[int]],
        budget: Budget,
        skip_stages: int,
        database: str,
    ) -> list[dict[str, Any]]:
        """
        Run the stages from C{skip_stages} on (C{$lookup} reads C{database});
        the output must fit in a reply.
        """
        out, out_sizes = compiled.run_sized(
            stream[0], stream[1], self._lookup_in(budget, database), budget, skip_stages=skip_stages
        )
        cap = reply_cap(self.limits, "$skip and $limit")
        for size in out_sizes:
            cap.add(size + 1)
        return out

    def _group_in_sql(
        self, info: CollectionInfo, plan: Plan, compiled: Pipeline, budget: Budget
    ) -> tuple[list[dict[str, Any]], list[int]] | None:
        """
        The output of the C{$group} after the leading C{$match} stages,
        computed by one SQL statement (L{GroupPushdown}; keyed by an index
        key column, by a hash aggregate over one scan), or None when the
        pipeline or the data needs the Python path: the match is not exact
        in SQL, the documents are more than the aggregation budget takes as
        input (the Python path then fails as it always did), or a group
        holds a case SQL cannot decide exactly.
        """
        group = compiled.pushed_group
        if group is None or not plan.exact:
            return None
        measure = False
        count: int | None = None
        if plan.where == "1":
            # Without a condition the JSONB sizes cost one quick pass: a
            # collection they do not settle has its texts measured inline.
            count, stored = self.conn.execute(f"SELECT count(*), total(octet_length(doc)) FROM {info.tbl}").fetchone()
            measure = stored * sqlquery.JSONB_TEXT_RATIO > budget.max_bytes - count * DOC_OVERHEAD
        key_column = sqlquery.group_key_column(group, plan.columns)
        rows: list[tuple[Any, ...]] | None
        if (
            key_column is not None
            and grouphash.hash_rows is not None
            and self.conn.execute(sqlquery.group_numeric_keys_statement(info.tbl, key_column)).fetchone() is None
        ):
            rows = self._group_hashed(info, plan, group, measure, count)
            if rows is None:
                return None
        else:
            statement = sqlquery.group_statement(info.tbl, plan.where, group, plan.columns, measure=measure)
            rows = self.conn.execute(statement, plan.params).fetchall()
        count = sum(row[3] for row in rows)
        if count > budget.max_docs:
            return None
        room = budget.max_bytes - count * DOC_OVERHEAD
        if measure:
            if sum(row[-1] for row in rows) > room:
                return None
        elif sum(row[-1] for row in rows) * sqlquery.JSONB_TEXT_RATIO > room:
            # The bound does not settle it: measure the texts.
            where = "" if plan.where == "1" else f" WHERE {plan.where}"
            sql = f"SELECT total({store.TEXT_SIZE}) FROM {info.tbl}{where}"
            if self.conn.execute(sql, plan.params).fetchone()[0] > room:
                return None
        budget.start(compiled.names[compiled.prefix.stages])
        return group.groups(rows, budget, dates=key_column is not None)

    def _group_hashed(
        self,
        info: CollectionInfo,
        plan: Plan,
        group: GroupPushdown,
        measure: bool,
        count: int | None,
    ) -> list[tuple[Any, ...]] | None:
        """
        L{sqlquery.group_statement}'s rows for a C{$group} keyed by a key
        column that holds no number, aggregated by
        L{grouphash.hash_rows} over one scan (no sort), the key shown read
        from each group's first document; None when the hash aggregate
        leaves the data to Python. Without a
        condition the caller has the documents' sizes already (unless
        C{measure}): the rows then count none. C{count}: without a
        condition, the count of documents; when every path read has a key
        column, the rows are then read in blobs (L{grouphash.hash_blobs}),
        L{BLOB_IDS} documents at a time.
        """
        assert grouphash.hash_rows is not None
        if plan.where != "1":
            size = store.TEXT_SIZE if measure else "octet_length(doc)"
        else:
            size = store.TEXT_SIZE if measure else "0"
        hashed: list[tuple[Any, ...]] | None
        blobs = None
        if count is not None and grouphash.hash_blobs is not None:
            blobs = sqlquery.group_blob_statement(info.tbl, group, plan.columns, store.TEXT_SIZE if measure else None)
        if blobs is not None:
            assert grouphash.hash_blobs is not None
            sql, specs = blobs

            def chunks() -> Iterator[bytes | None]:
                last = -(2**63)
                while True:
                    blob, last = self.conn.execute(sql, (last, BLOB_IDS)).fetchone()
                    if last is None:
                        return
                    yield blob

            packed = grouphash.hash_blobs(chunks(), specs, measure)
            if packed is None or packed[1] != count:  # a NULL key column leaves its row out
                return None
            hashed = packed[0]
        else:
            scan, specs = sqlquery.group_scan_statement(info.tbl, plan.where, group, plan.columns, size)
            hashed = grouphash.hash_rows(self.conn.execute(scan, plan.params), specs)
        if hashed is None:
            return None
        firsts = orjson.dumps([row[0] for row in hashed]).decode()
        keys_sql = sqlquery.group_first_keys_statement(info.tbl, group)
        first = {doc_id: (kind, value) for doc_id, kind, value in self.conn.execute(keys_sql, (firsts,))}
        return [(*first[row[0]], *row) for row in hashed]

    def aggregate_docs(
        self, pipeline: object, docs: object, database: str = databases.DEFAULT
    ) -> list[dict[str, Any]]:
        """
        Run a pipeline over C{docs}, documents given in the request
        (server.md 3.4) rather than a collection's: every stage runs in
        Python, C{$lookup} still reads collections. The input counts
        against the budget as a first stage; the output must fit in a
        reply.
        """
        compiled = compile_pipeline(pipeline, self.limits)
        if type(docs) is not list:
            raise BadRequestError("missing or invalid 'docs' array")
        budget = Budget.of(self.limits, self.deadline)
        budget.start("input")
        sizes: list[int] = []
        for doc in docs:
            if type(doc) is not dict:
                raise DocumentNotObjectError()
            size = approx_size(doc)
            budget.add(1, size)
            sizes.append(size)
        out, out_sizes = compiled.run_sized(list(docs), sizes, self._lookup_in(budget, database), budget)
        cap = reply_cap(self.limits, "$skip and $limit")
        for size in out_sizes:
            cap.add(size + 1)
        return out

    def _lookup_in(
        self, budget: Budget, database: str
    ) -> Callable[[str, dict[str, Any]], tuple[list[dict[str, Any]], int]]:
        """
        C{$lookup}'s find: the documents and their total size, within the
        budget. C{from} names a collection of the pipeline's C{database}.
        """

        def lookup(collection: str, query: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
            matcher = self.check_query(query)
            store.validate_collection_name(collection)
            planned = self._planned(databases.qualify(database, collection), matcher)
            if planned is None:
                return [], 0
            cap = budget.cap()
            docs = [doc for _, _, doc in self.rows(*planned, charge=lambda n: cap.add(n + 1))]
            return docs, cap.total

        return lookup

    def version_of(self, collection: str, doc_id: int) -> int:
        """A document's C{_version}, 0 if it (or the collection) does not exist."""
        info = store.get_collection(self.conn, collection)
        if info is None or type(doc_id) is not int or not 0 < doc_id < 2**63:
            return 0
        row = self.conn.execute(f"SELECT _version FROM {info.tbl} WHERE _id = ?", (doc_id,)).fetchone()
        return 0 if row is None else int(row[0])


def _window(skip: object, limit: object) -> tuple[int | None, int | None]:
    """
    C{find}'s C{skip} and C{limit}: non-negative integers, anything else
    ignored (engine.md 2.5); integers past 2**63 - 1 are an error.
    """
    return find_window(skip, limit)
