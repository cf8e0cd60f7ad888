"""
Queries over one SQLite connection.

A L{Reader} runs on a pool thread's reader connection inside a read
transaction (one consistent WAL snapshot per engine call), or on the writer
connection inside the open write transaction (then it sees the batch's own
uncommitted changes; L{oxidb.engine.writes.WriteTxn} builds on it).

Reads of a collection that does not exist answer as for an empty one and
call C{on_missing(name)} (the engine creates the collection through the
writer when auto-creation on read is on).
"""

from __future__ import annotations

import operator
import sqlite3
from typing import Any, Callable, Iterator

import orjson

from oxidb.engine import store, textindex, textstore
from oxidb.engine.aggregate import compile_pipeline
from oxidb.engine.matcher import Matcher, SortSpec, compile_query, is_uint, parse_sort
from oxidb.engine.sqlquery import Plan, compile_plan, order_by
from oxidb.engine.store import CollectionInfo
from oxidb.errors import BadRequestError, InvalidQueryError

Row = tuple[int, int, dict[str, Any]]
"""C{(_id, _version, document)}."""


_row_id = operator.itemgetter(0)


def plan_query(query: object) -> Plan:
    """
    Validate and compile a query (C{None} means C{{}}) into a plan that
    suits any collection (see L{Reader.plan_for} for one that uses a
    collection's indexes).
    """
    return compile_plan(compile_query({} if query is None else query))


def check_query(query: object) -> Matcher:
    """Validate and compile a query (C{None} means C{{}}) to its matcher."""
    return compile_query({} if query is None else query)


class Reader:
    """
    Engine reads over C{conn}; the caller owns the transaction.

    @ivar conn: the connection.
    @ivar on_missing: called with the name of a missing collection a read
        named (after validating the name), or None.

    C{column_cache}, owned by the caller and kept for the connection's
    life, remembers each collection's key columns with the schema version
    they were read at (every change to them is DDL, which bumps the
    version).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        on_missing: Callable[[str], None] | None = None,
        column_cache: dict[str, tuple[int, str, dict[str, str]]] | None = None,
    ) -> None:
        self.conn = conn
        self.on_missing = on_missing
        self._column_cache = column_cache

    # --- collections ------------------------------------------------------

    def collection(self, name: object) -> CollectionInfo | None:
        """The catalog row of a collection named by a read, or None."""
        store.validate_collection_name(name)
        assert isinstance(name, str)
        info = store.get_collection(self.conn, name)
        if info is None and self.on_missing is not None:
            self.on_missing(name)
        return info

    def list_collections(self) -> list[str]:
        """Every collection, sorted by name (engine.md 1.6 REC)."""
        return [info.name for info in store.list_collections(self.conn)]

    def collection_counts(self) -> dict[str, int]:
        """Documents per collection."""
        return {
            info.name: self.conn.execute(f"SELECT count(*) FROM {info.tbl}").fetchone()[0]
            for info in store.list_collections(self.conn)
        }

    def list_indexes(self, collection: str) -> list[dict[str, Any]]:
        """
        Index descriptors (engine.md 4.6): field and unique indexes, then
        composites, then the text index, each group in creation order.
        """
        info = self.collection(collection)
        if info is None:
            return []
        defs = store.list_index_defs(self.conn, info.name)
        order = {store.INDEX_FIELD: 0, store.INDEX_COMPOSITE: 1, store.INDEX_TEXT: 2}
        return [d.describe() for d in sorted(defs, key=lambda d: (order[d.kind], d.seq))]

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
        cache = self._column_cache
        if cache is None:
            return store.column_map(store.list_index_defs(self.conn, info.name))
        (version,) = self.conn.execute("PRAGMA schema_version").fetchone()
        cached = cache.get(info.name)
        if cached is not None and cached[0] == version and cached[1] == info.tbl:
            return cached[2]
        columns = store.column_map(store.list_index_defs(self.conn, info.name))
        cache[info.name] = (version, info.tbl, columns)
        return columns

    def rows(
        self,
        info: CollectionInfo,
        plan: Plan,
        spec: SortSpec | None = None,
        skip: int | None = None,
        limit: int | None = None,
        *,
        index_arrays: bool = True,
    ) -> Iterator[Row]:
        """
        Matching rows in C{find} order (sort, then ascending C{_id}), after
        C{skip}, at most C{limit}. C{index_arrays}: see L{order_by}.
        """
        return self._select(info, plan, spec, skip, limit, index_arrays, raw=False)

    def texts(
        self,
        info: CollectionInfo,
        plan: Plan,
        spec: SortSpec | None = None,
        skip: int | None = None,
        limit: int | None = None,
    ) -> Iterator[str]:
        """
        The stored JSON texts of the rows L{rows} gives, in its order. A text
        is only parsed when the query needs the reference matcher.
        """
        return self._select(info, plan, spec, skip, limit, True, raw=True)

    def _select(
        self,
        info: CollectionInfo,
        plan: Plan,
        spec: SortSpec | None,
        skip: int | None,
        limit: int | None,
        index_arrays: bool,
        *,
        raw: bool,
    ) -> Iterator[Any]:
        """L{rows} (C{raw} false) or L{texts} (C{raw} true)."""
        if limit == 0:
            return
        sql = f"SELECT _id, _version, doc FROM {info.tbl}"
        if plan.where != "1":
            sql += f" WHERE {plan.where}"
        params = plan.params
        loads = orjson.loads
        if spec is None and limit is None and not skip:
            found = self._all_selected(info, plan, versions=not raw)
            if not plan.exact:
                matches = plan.matcher.matches
                if raw:
                    found = [row for row in found if matches(loads(row[-1]))]
                else:
                    found = [(row[0], row[1], doc) for row in found if matches(doc := loads(row[2]))]
                    yield from found
                    return
            if raw:
                for row in found:
                    yield row[-1]
            else:
                for _id, version, text in found:
                    yield _id, version, loads(text)
            return
        sql += " " + order_by(spec, index_arrays=index_arrays, columns=plan.columns)
        if plan.exact:
            if limit is not None or skip:
                sql += " LIMIT ? OFFSET ?"
                params = params + (-1 if limit is None else limit, skip or 0)
            if raw:
                for _id, version, text in self.conn.execute(sql, params):
                    yield text
                return
            for _id, version, text in self.conn.execute(sql, params):
                yield _id, version, loads(text)
            return
        to_skip = skip or 0
        remaining = limit
        for _id, version, text in self.conn.execute(sql, params):
            doc = loads(text)
            if not plan.matcher.matches(doc):
                continue
            if to_skip:
                to_skip -= 1
                continue
            yield text if raw else (_id, version, doc)
            if remaining is not None:
                remaining -= 1
                if remaining == 0:
                    return

    def _all_selected(self, info: CollectionInfo, plan: Plan, *, versions: bool) -> list[tuple[Any, ...]]:
        """
        Every row C{plan.where} selects, in ascending C{_id}: C{(_id,
        _version, text)}, or C{(_id, text)} without C{versions}.

        One aggregate query concatenates the columns inside SQLite (stored
        texts never hold a raw U+001F: the JSON encoder escapes control
        characters), so that fetching takes one step: a query stepped once
        per row gives up and takes back the GIL for every row, which stalls
        when other threads are busy. The rows are sorted here rather than by
        an C{ORDER BY _id}, which would tempt the planner into a full scan
        to avoid a sort.
        """
        columns = "_id, _version, doc" if versions else "_id, doc"
        inner = f"SELECT {columns} FROM {info.tbl}"
        if plan.where != "1":
            inner += f" WHERE {plan.where}"
        concat = "group_concat(_id), group_concat(_version), " if versions else "group_concat(_id), "
        sql = f"SELECT {concat}group_concat(doc, char(31)) FROM ({inner})"
        try:
            result = self.conn.execute(sql, plan.params).fetchone()
        except sqlite3.DataError:
            # Longer than SQLite's string limit: row by row.
            rows: list[tuple[Any, ...]] = self.conn.execute(inner, plan.params).fetchall()
        else:
            if result[-1] is None:
                return []
            ids = map(int, result[0].split(","))
            texts = result[-1].split("\x1f")
            if versions:
                rows = list(zip(ids, map(int, result[1].split(",")), texts))
            else:
                rows = list(zip(ids, texts))
        rows.sort(key=_row_id)
        return rows

    def find(
        self,
        collection: str,
        query: object = None,
        sort: object = None,
        skip: object = None,
        limit: object = None,
    ) -> list[dict[str, Any]]:
        """C{find} (engine.md 2.5): filter, sort, skip, limit."""
        matcher = check_query(query)
        spec = parse_sort(sort)
        planned = self._planned(collection, matcher)
        if planned is None:
            return []
        return [doc for _, _, doc in self.rows(*planned, spec, *_window(skip, limit))]

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
        matcher = check_query(query)
        spec = parse_sort(sort)
        planned = self._planned(collection, matcher)
        if planned is None:
            return "[]"
        return "[" + ",".join(self.texts(*planned, spec, *_window(skip, limit))) + "]"

    def find_one_raw(self, collection: str, query: object = None) -> str | None:
        """L{find_one}'s document as its stored JSON text, or None."""
        planned = self._planned(collection, check_query(query))
        if planned is None:
            return None
        return next(self.texts(*planned, None, None, 1), None)

    def find_one(self, collection: str, query: object = None) -> dict[str, Any] | None:
        """The matching document with the lowest C{_id}, or None."""
        planned = self._planned(collection, check_query(query))
        if planned is None:
            return None
        for _, _, doc in self.rows(*planned, None, None, 1):
            return doc
        return None

    def count(self, collection: str, query: object = None) -> int:
        """The number of matching documents (canonical: C{len(find(query))})."""
        planned = self._planned(collection, check_query(query))
        if planned is None:
            return 0
        info, plan = planned
        if plan.exact:
            sql = f"SELECT count(*) FROM {info.tbl}"
            if plan.where != "1":
                sql += f" WHERE {plan.where}"
            return int(self.conn.execute(sql, plan.params).fetchone()[0])
        return sum(1 for _ in self.rows(info, plan))

    def text_search(self, collection: str, query: object, limit: int = textindex.DEFAULT_LIMIT) -> list[dict[str, Any]]:
        """
        Documents containing query terms, best TF-IDF score first (ties by
        ascending C{_id}), at most C{limit}, each with C{_score}
        (engine.md 8.3).
        """
        if not isinstance(query, str):
            raise BadRequestError("missing 'query' string")
        info = self.collection(collection)
        index = None
        if info is not None:
            index = next((d for d in store.list_index_defs(self.conn, info.name) if d.kind == store.INDEX_TEXT), None)
        if info is None or index is None:
            raise InvalidQueryError("no text index on this collection; create one with create_text_index")
        ranked = textstore.search(self.conn, info.tbl, query, limit)
        if not ranked:
            return []
        docs = self._docs_by_id(info, [doc_id for doc_id, _ in ranked])
        result = []
        for doc_id, score in ranked:
            doc = docs[doc_id]
            doc["_score"] = score
            result.append(doc)
        return result

    def _docs_by_id(self, info: CollectionInfo, ids: list[int]) -> dict[int, dict[str, Any]]:
        docs: dict[int, dict[str, Any]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for doc_id, text in self.conn.execute(f"SELECT _id, doc FROM {info.tbl} WHERE _id IN ({marks})", chunk):
                docs[doc_id] = orjson.loads(text)
        return docs

    def aggregate(self, collection: str, pipeline: object) -> list[dict[str, Any]]:
        """
        Run a pipeline (engine.md 5) over the collection; its leading
        C{$match}/C{$sort}/C{$skip}/C{$limit} stages run in SQL, C{$lookup}
        runs real finds.
        """
        compiled = compile_pipeline(pipeline)
        info = self.collection(collection)
        prefix = compiled.prefix
        docs: list[dict[str, Any]] = []
        if info is not None:
            plan = self.plan_for(info, prefix.matcher if prefix.matcher is not None else check_query(None))
            docs = [
                doc
                for _, _, doc in self.rows(
                    info, plan, prefix.sort, prefix.skip or None, prefix.limit, index_arrays=False
                )
            ]
        return compiled.run(docs, self._lookup, skip_stages=prefix.stages)

    def _lookup(self, collection: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        return self.find(collection, query)

    def version_of(self, collection: str, doc_id: int) -> int:
        """A document's C{_version}, 0 if it (or the collection) does not exist."""
        info = store.get_collection(self.conn, collection)
        if info is None or type(doc_id) is not int or not 0 < doc_id < 2**63:
            return 0
        row = self.conn.execute(f"SELECT _version FROM {info.tbl} WHERE _id = ?", (doc_id,)).fetchone()
        return 0 if row is None else int(row[0])


def _window(skip: object, limit: object) -> tuple[int | None, int | None]:
    """C{find}'s C{skip} and C{limit}: non-negative integers, anything else ignored (engine.md 2.5)."""
    return (skip if is_uint(skip) else None, limit if is_uint(limit) else None)
