"""
Write operations on the writer connection.

A L{WriteTxn} is what one queued operation (and a registered applier) works
with: the writer connection inside the batch's open transaction, the
operation's C{now}, and the engine's write primitives. It is also a
L{Reader}, so it reads its own batch's uncommitted changes.

Every multi-document write (C{insert_many}, C{update}, C{delete}) computes
and checks everything before it changes a row, and the writer wraps each
operation in a SAVEPOINT, so a failing operation leaves no trace: no row, no
index entry, no consumed C{_id}.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import orjson

from oxidb.engine import databases, keys, paths, sqlite, store, textstore, ttl, values, vectors
from oxidb.engine.catalog import IndexCatalog
from oxidb.engine.changes import ChangeRecorder
from oxidb.engine.matcher import parse_sort
from oxidb.engine.projection import compile_projection
from oxidb.engine.reads import Reader, check_query
from oxidb.engine.store import CollectionInfo, IndexDef
from oxidb.engine.updates import compile_update, upsert_document
from oxidb.errors import (
    BadRequestError,
    CollectionExistsError,
    DatabaseExistsError,
    DatabaseNotFoundError,
    DefaultDatabaseError,
    DocumentNotObjectError,
    IndexNotFoundError,
    InvalidQueryError,
    TooLargeError,
    UniqueViolationError,
)

#: Largest stored document (its compact JSON text), in bytes: the request
#: frame limit, so that every stored document can be sent back.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024


class WriteTxn(Reader):
    """
    The engine's write primitives inside the writer's open transaction.

    @ivar now: the operation's time (seconds since the epoch); the only
        clock writes may consult, so that replicas applying the same
        operations stay identical.
    @ivar changes: the writer's L{ChangeRecorder}: every document inserted,
        updated or deleted is recorded there (None: not recorded).
    @ivar catalog: the writer's L{IndexCatalog} (None: one of this
        transaction's own). Every change to index definitions here tells it.
    """

    def __init__(
        self,
        conn: sqlite.Connection,
        now: float,
        changes: ChangeRecorder | None = None,
        catalog: IndexCatalog | None = None,
    ) -> None:
        super().__init__(conn, None)
        self.now = now
        self.changes = changes
        self.catalog = IndexCatalog() if catalog is None else catalog
        self._savepoints = 0

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested all-or-nothing block: an exception rolls back its changes."""
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        mark = None if self.changes is None else self.changes.mark()
        generation = self.catalog.mark()
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.conn.execute(f"ROLLBACK TO {name}")
            self.conn.execute(f"RELEASE {name}")
            self.catalog.rolled_back(generation)
            if self.changes is not None and mark is not None:
                self.changes.rollback_to(mark)
            raise
        else:
            self.conn.execute(f"RELEASE {name}")
        finally:
            self._savepoints -= 1

    def _columns(self, info: CollectionInfo) -> dict[str, str]:
        return self.catalog.get(self.conn, info.name).columns

    # --- collections ------------------------------------------------------

    def ensure_collection(self, name: object) -> CollectionInfo:
        """
        The named collection (a qualified name, L{oxidb.engine.databases}),
        created if missing (engine.md 1.6); not in a database that does not
        exist.
        """
        store.validate_qualified_name(name)
        assert isinstance(name, str)
        info = store.get_collection(self.conn, name)
        if info is not None:
            return info
        databases.check_exists(self.conn, databases.database_of(name))
        return store.create_collection(self.conn, name)

    def create_collection(self, name: object) -> str:
        store.validate_qualified_name(name)
        assert isinstance(name, str)
        databases.check_exists(self.conn, databases.database_of(name))
        if store.get_collection(self.conn, name) is not None:
            raise CollectionExistsError(databases.bare(name))
        store.create_collection(self.conn, name)
        return "collection created"

    def drop_collection(self, name: object) -> str:
        """
        Drop a collection; an unknown (or invalid) name is no error, a
        database that does not exist is.
        """
        if isinstance(name, str):
            info = store.get_collection(self.conn, name)
            if info is not None:
                store.drop_collection(self.conn, info)
                self.catalog.forget(info.name)
                ttl.drop_collection(self.conn, info.name)
            elif databases.SEPARATOR in name and databases.is_valid_name(databases.database_of(name)):
                databases.check_exists(self.conn, databases.database_of(name))
        return "collection dropped"

    # --- databases --------------------------------------------------------

    def create_database(self, name: object, if_not_exists: bool = False) -> str:
        """C{"database '<n>' created"}; an existing one is an error unless C{if_not_exists}."""
        database = databases.validate_name(name)
        if databases.exists(self.conn, database):
            if not if_not_exists:
                raise DatabaseExistsError(database)
        else:
            databases.add(self.conn, database)
        return f"database '{database}' created"

    def drop_database(self, name: object, if_exists: bool = False) -> str:
        """
        Drop a database and, in this one transaction, every collection of
        it with its indexes, text and vector tables and TTL indexes. The
        default database cannot be dropped; an unknown one is an error
        unless C{if_exists}.
        """
        database = databases.validate_name(name)
        if database == databases.DEFAULT:
            raise DefaultDatabaseError(database)
        if not databases.exists(self.conn, database):
            if not if_exists:
                raise DatabaseNotFoundError(database)
            return f"database '{database}' dropped"
        for qualified in databases.collection_names(self.conn, database):
            self.drop_collection(qualified)
        databases.remove(self.conn, database)
        return f"database '{database}' dropped"

    def compact(self, collection: object) -> dict[str, int]:
        """
        Rewrite a collection's table, indexes, text postings and vectors into fresh,
        densely packed B-trees and give every free page of the database file
        back to the file system (SQLite frees emptied pages on delete, but
        keeps them in the file).

        C{old_size} is the bytes of the pages the collection used plus the
        free pages of the file (what this call can reclaim); C{new_size} the
        bytes of the collection's pages afterwards (L{store.storage_bytes}).
        """
        info = self.ensure_collection(collection)
        page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        free_pages = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        old_size = store.storage_bytes(self.conn, info.tbl) + free_pages * page_size
        tbl = store.new_table_name(self.conn)
        conn = self.conn
        indexes = self.catalog.get(conn, info.name)
        defs = indexes.defs
        columns = "".join(f", {column}" for column, _ in indexes.key_columns)
        store.create_table(conn, tbl, [column for column, _ in indexes.key_columns])
        conn.execute(
            f"INSERT INTO {tbl}(_id, _version, doc, {store.DOC_SIZE}{columns})"
            f" SELECT _id, _version, doc, {store.DOC_SIZE}{columns} FROM {info.tbl} ORDER BY _id"
        )
        for index in defs:
            if index.kind == store.INDEX_TEXT:
                store.create_text_tables(conn, tbl)
                conn.execute(f"INSERT INTO {tbl}_tt SELECT * FROM {info.tbl}_tt ORDER BY term, id")
                conn.execute(f"INSERT INTO {tbl}_td SELECT * FROM {info.tbl}_td ORDER BY id")
            elif index.kind == store.INDEX_VECTOR:
                vectors.copy_tables(conn, info.tbl, tbl, index)
            else:
                store.create_sql_index(conn, tbl, index, add_columns=False)
        conn.execute(f"DROP TABLE {info.tbl}")
        store.drop_text_tables(conn, info.tbl)
        store.set_table(conn, info.name, tbl)
        _release_free_pages(conn)
        new_size = store.storage_bytes(conn, tbl)
        kept = conn.execute(f"SELECT count(*) FROM {tbl}").fetchone()[0]
        return {"old_size": old_size, "new_size": new_size, "docs_kept": kept}

    # --- documents --------------------------------------------------------

    def insert(self, collection: object, document: Any) -> int:
        """Insert one document; its new C{_id}."""
        info = self.ensure_collection(collection)
        return self._insert(info, [document])[0]

    def insert_many(self, collection: object, documents: Any) -> list[int]:
        """Insert documents all-or-nothing; their consecutive new ids."""
        if type(documents) is not list:
            raise BadRequestError("missing or invalid 'docs' array")
        info = self.ensure_collection(collection)
        if not documents:
            return []
        return self._insert(info, documents)

    def _insert(self, info: CollectionInfo, documents: list[Any]) -> list[int]:
        first = info.last_id + 1
        rows = [_prepare(document, first + i, 1) for i, document in enumerate(documents)]
        self._store_rows(info, rows)
        last = first + len(rows) - 1
        store.set_last_id(self.conn, info.name, last)
        return list(range(first, last + 1))

    def insert_each(
        self, info: CollectionInfo, documents: Sequence[Any], each: Callable[[int], None]
    ) -> list[tuple[bool, Any]] | None:
        """
        Insert C{documents} into one existing collection as if each were
        L{insert}ed in turn (a document that fails, not an object or a
        unique clash with the collection or an earlier one of them, gets its
        error and takes no C{_id}), but with one catalog lookup, one
        C{INSERT} statement and one C{last_id} write for all. C{each(k)} is
        called once the changes of document C{k} are recorded. Outcomes are
        C{(True, id)} or C{(False, exception)}; None (nothing done) for a
        collection with a text or vector index, whose documents go one by one.

        An error of the database itself is raised: the caller rolls back and
        inserts the documents one by one instead.
        """
        conn = self.conn
        defs = self.catalog.defs(conn, info.name)
        if any(d.kind not in store.KEYED_KINDS for d in defs):
            return None
        uniques = [d for d in defs if d.kind == store.INDEX_FIELD and d.unique]
        probes = [
            f"SELECT 1 FROM {info.tbl} WHERE {d.columns[0]} = ? AND {keys.present_sql(d.fields[0])} LIMIT 1"
            for d in uniques
        ]
        seen: list[set[bytes]] = [set() for _ in uniques]
        outcomes: list[tuple[bool, Any]] = []
        rows: list[_PreparedRow] = []
        recorder = self.changes
        next_id = info.last_id + 1
        for k, document in enumerate(documents):
            try:
                row = _prepare(document, next_id, 1)
                found_keys: list[bytes | None] = []
                for index, probe, taken in zip(uniques, probes, seen, strict=True):
                    path = index.fields[0]
                    found, value = paths.get_path(row[2], path)
                    if not found:
                        found_keys.append(None)
                        continue
                    key = keys.key_of_value(value)
                    if key in taken or conn.execute(probe, (key,)).fetchone() is not None:
                        raise UniqueViolationError(path)
                    found_keys.append(key)
            except sqlite.Error:
                raise
            except Exception as e:  # noqa: BLE001 - this document's outcome, as insert() would raise it
                outcomes.append((False, e))
                each(k)
                continue
            for found_key, taken in zip(found_keys, seen, strict=True):
                if found_key is not None:
                    taken.add(found_key)
            rows.append(row)
            outcomes.append((True, next_id))
            next_id += 1
            if recorder is not None:
                recorder.record_inserts(info.name, [row])
            each(k)
        if rows:
            key_columns = self.catalog.get(conn, info.name).key_columns
            names = "".join(f", {column}" for column, _ in key_columns)
            marks = ", ?" * len(key_columns)
            conn.executemany(
                f"INSERT INTO {info.tbl}(_id, _version, doc, {store.DOC_SIZE}{names})"
                f" VALUES (?, ?, {store.doc_values(3)}{marks})",
                _with_keys(rows, key_columns, lambda row: (row[0], row[1], row[3])),
            )
            store.set_last_id(conn, info.name, next_id - 1)
        return outcomes

    def restore_documents(self, collection: object, documents: Any, last_id: int) -> dict[str, int]:
        """
        Insert documents that keep the C{_id} and C{_version} they carry (a
        restore), all-or-nothing, and raise the collection's id high-water
        mark to at least C{last_id} and every restored id, so that the next
        insert gets the id it would have got on the dumped server.

        @raise BadRequestError: a document without an integer C{_id} and
            C{_version} of at least 1, or an C{_id} the collection (or the
            batch) already has.
        """
        if type(documents) is not list:
            raise BadRequestError("missing or invalid 'docs' array")
        info = self.ensure_collection(collection)
        rows = []
        for document in documents:
            if type(document) is not dict:
                raise DocumentNotObjectError()
            doc_id, version = document.get("_id"), document.get("_version")
            if type(doc_id) is not int or type(version) is not int or not 0 < doc_id <= MAX_ID or version < 1:
                raise BadRequestError("restore: every document needs an integer '_id' and '_version' of at least 1")
            body = {k: v for k, v in document.items() if k not in ("_id", "_version")}
            rows.append(_prepare(body, doc_id, version))
        ids = [row[0] for row in rows]
        if len(set(ids)) != len(ids):
            raise BadRequestError(f"restore: _id {_first_repeated(ids)} appears twice")
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            taken = self.conn.execute(f"SELECT _id FROM {info.tbl} WHERE _id IN ({marks}) LIMIT 1", chunk).fetchone()
            if taken is not None:
                raise BadRequestError(f"restore: _id {taken[0]} already exists in {info.name}")
        if rows:
            self._store_rows(info, rows)
        high = max([info.last_id, last_id, *ids])
        store.set_last_id(self.conn, info.name, high)
        return {"restored": len(rows), "last_id": high}

    def _store_rows(self, info: CollectionInfo, rows: list[_PreparedRow]) -> None:
        """Store new prepared documents with their index keys, text postings and vectors."""
        indexes = self.catalog.get(self.conn, info.name)
        defs = indexes.defs
        self._check_unique(info, defs, rows, replacing=False)
        key_columns = indexes.key_columns
        names = "".join(f", {column}" for column, _ in key_columns)
        marks = ", ?" * len(key_columns)
        self.conn.executemany(
            f"INSERT INTO {info.tbl}(_id, _version, doc, {store.DOC_SIZE}{names})"
            f" VALUES (?, ?, {store.doc_values(3)}{marks})",
            _with_keys(rows, key_columns, lambda row: (row[0], row[1], row[3])),
        )
        if self.changes is not None:
            self.changes.record_inserts(info.name, rows)
        text_index = _text_index(defs)
        if text_index is not None:
            textstore.add(self.conn, info.tbl, text_index.fields, [(row[0], row[2]) for row in rows])
        vectors.sync(self.conn, info.tbl, defs, [(row[0], row[2]) for row in rows], new=True)

    def update(
        self,
        collection: object,
        query: object,
        update: object,
        *,
        one: bool = False,
        array_filters: object = None,
        positional_query: object = None,
    ) -> int:
        """
        Apply an update to every matching document (or the one with the
        lowest C{_id}); the number matched. All-or-nothing.

        @param array_filters: the C{arrayFilters} of C{$[<id>]} paths.
        @param positional_query: the query C{$} paths refer to, when it is
            not C{query} (a transaction's commit selects by C{_id}).
        """
        if query is None:
            raise BadRequestError("missing 'query'")
        if update is None:
            raise BadRequestError("missing 'update'")
        matcher = check_query(query)
        compiled = compile_update(update, array_filters)
        positional = matcher if positional_query is None else check_query(positional_query)
        info = self.ensure_collection(collection)
        matched = list(self.rows(info, self.plan_for(info, matcher), None, None, 1 if one else None))
        if not matched:
            return 0
        rows = []
        for doc_id, version, doc in matched:
            new = compiled.apply(doc, self.now, positional)
            rows.append(_prepare(new, doc_id, version + 1))
        indexes = self.catalog.get(self.conn, info.name)
        defs = indexes.defs
        self._check_unique(info, defs, rows, replacing=True)
        key_columns = indexes.key_columns
        assignments = "".join(f", {column} = ?" for column, _ in key_columns)
        self.conn.executemany(
            f"UPDATE {info.tbl} SET _version = ?, {store.doc_assignments(2)}{assignments} WHERE _id = ?",
            _with_keys(rows, key_columns, lambda row: (row[1], row[3]), lambda row: (row[0],)),
        )
        if self.changes is not None:
            self.changes.record_many("update", info.name, [row[0] for row in rows])
        text_index = _text_index(defs)
        if text_index is not None:
            ids = [row[0] for row in rows]
            textstore.remove(self.conn, info.tbl, ids)
            textstore.add(self.conn, info.tbl, text_index.fields, [(row[0], row[2]) for row in rows])
        vectors.sync(self.conn, info.tbl, defs, [(row[0], row[2]) for row in rows])
        return len(rows)

    def upsert(self, collection: object, query: object, update: object, array_filters: object = None) -> int:
        """
        Insert the document an upsert that matched nothing creates: the
        query's equality fields (L{upsert_document}), then the update
        applied as to a new document (C{$setOnInsert} included); its new
        C{_id}, the collection's next one. Deterministic given the state and
        C{now}, so every replica computes the same document and id.
        """
        matcher = check_query(query)
        compiled = compile_update(update, array_filters)
        document = compiled.apply(upsert_document(matcher), self.now, matcher, inserting=True)
        return self.insert(collection, document)

    def find_and_modify(
        self,
        collection: object,
        query: object,
        update: object,
        *,
        remove: bool = False,
        new: bool = False,
        upsert: bool = False,
        sort: object = None,
        fields: object = None,
        array_filters: object = None,
    ) -> dict[str, Any] | None:
        """
        Update or remove the first document C{query} matches in C{sort}
        order (ties and no sort: lowest C{_id}), in this one write: the
        document before the change, or after it with C{new}, projected by
        C{fields}; None when nothing matched (or an upsert inserted and
        C{new} is false). Everything is checked before anything changes.
        """
        if query is None:
            raise BadRequestError("missing 'query'")
        matcher = check_query(query, self.limits)
        spec = parse_sort(sort, self.limits)
        projection = compile_projection(fields)
        if not remove:
            if update is None:
                raise BadRequestError("missing 'update'")
            compile_update(update, array_filters)
        info = self.ensure_collection(collection)
        row = next(iter(self.rows(info, self.plan_for(info, matcher), spec, None, 1)), None)
        result: dict[str, Any] | None
        if row is None:
            if remove or not upsert:
                return None
            doc_id = self.upsert(collection, query, update, array_filters)
            result = self.find_one(info.name, {"_id": doc_id}) if new else None
        else:
            doc_id, _, result = row
            if remove:
                self.delete(collection, {"_id": doc_id})
            else:
                self.update(
                    collection, {"_id": doc_id}, update, one=True, array_filters=array_filters, positional_query=query
                )
                if new:
                    result = self.find_one(info.name, {"_id": doc_id})
        if result is None or projection is None:
            return result
        return projection.apply(result)

    def delete(self, collection: object, query: object, limit: int | None = None) -> int:
        """
        Delete the matching documents (at most C{limit}, lowest C{_id}
        first); the number deleted.
        """
        if query is None:
            raise BadRequestError("missing 'query'")
        matcher = check_query(query)
        info = self.ensure_collection(collection)
        plan = self.plan_for(info, matcher)
        defs = self.catalog.defs(self.conn, info.name)
        text_index = _text_index(defs)
        derived = text_index is not None or any(index.kind == store.INDEX_VECTOR for index in defs)
        changes = self.changes
        if plan.exact and limit is None and not derived:
            sql = f"DELETE FROM {info.tbl}"
            if plan.where != "1":
                sql += f" WHERE {plan.where}"
            if changes is None:
                self.conn.execute(sql, plan.params)
                return self.conn.changes()
            # The lowest ids, in order (the same on every replica), up to
            # what the recorder keeps; the others are only counted.
            where = "" if plan.where == "1" else f" WHERE {plan.where}"
            kept = [
                row[0]
                for row in self.conn.execute(
                    f"SELECT _id FROM {info.tbl}{where} ORDER BY _id LIMIT ?", (*plan.params, changes.room)
                )
            ]
            self.conn.execute(sql, plan.params)
            count = self.conn.changes()
            changes.record_many("delete", info.name, kept)
            changes.count_lost(count - len(kept))
            return count
        ids = [(doc_id,) for doc_id, _, _ in self.rows(info, plan, None, None, limit)]
        self.conn.executemany(f"DELETE FROM {info.tbl} WHERE _id = ?", ids)
        if changes is not None:
            changes.record_many("delete", info.name, [doc_id for (doc_id,) in ids])
        if text_index is not None:
            textstore.remove(self.conn, info.tbl, [doc_id for (doc_id,) in ids])
        vectors.sync(self.conn, info.tbl, defs, removed=[doc_id for (doc_id,) in ids])
        return len(ids)

    def _check_unique(
        self,
        info: CollectionInfo,
        defs: Sequence[IndexDef],
        rows: list[tuple[int, int, dict[str, Any], str]],
        *,
        replacing: bool,
    ) -> None:
        """
        Refuse the batch if a unique field (engine.md 4.2) would hold one
        value twice: within the batch, or against any other stored document
        as the collection is before the batch (for an update, each document
        is only exempt from clashing with its own old value).
        """
        uniques = [d for d in defs if d.kind == store.INDEX_FIELD and d.unique]
        for index in uniques:
            path = index.fields[0]
            seen: set[bytes] = set()
            present_sql = keys.present_sql(path)
            probe = f"SELECT 1 FROM {info.tbl} WHERE {index.columns[0]} = ? AND {present_sql}"
            if replacing:
                probe += " AND _id != ?"
            probe += " LIMIT 1"
            for doc_id, _, doc, _ in rows:
                found, value = paths.get_path(doc, path)
                if not found:
                    continue
                key = keys.key_of_value(value)
                if key in seen:
                    raise UniqueViolationError(path)
                seen.add(key)
                params = (key, doc_id) if replacing else (key,)
                if self.conn.execute(probe, params).fetchone() is not None:
                    raise UniqueViolationError(path)

    # --- indexes ----------------------------------------------------------

    def _find_def(self, info: CollectionInfo, kind: str, name: str) -> IndexDef | None:
        for index in self.catalog.defs(self.conn, info.name):
            if index.kind == kind and index.name == name:
                return index
        return None

    def create_index(self, collection: object, field: object) -> str:
        """A field index (idempotent; an existing unique index stays unique)."""
        path = _field_name(field)
        info = self.ensure_collection(collection)
        if self._find_def(info, store.INDEX_FIELD, path) is None:
            index = store.add_index_def(self.conn, info.name, store.INDEX_FIELD, path, (path,), False)
            self.catalog.forget(info.name)
            store.create_sql_index(self.conn, info.tbl, index)
        return "index created"

    def create_unique_index(self, collection: object, field: object) -> str:
        """
        A unique field index; an existing plain index on the field is
        upgraded. Existing duplicates make it fail without creating anything.
        """
        path = _field_name(field)
        info = self.ensure_collection(collection)
        existing = self._find_def(info, store.INDEX_FIELD, path)
        if existing is not None and existing.unique:
            return "unique index created"
        index = existing
        if index is None:
            index = store.add_index_def(self.conn, info.name, store.INDEX_FIELD, path, (path,), True)
            self.catalog.forget(info.name)
            store.create_sql_index(self.conn, info.tbl, index)
        else:
            store.set_index_unique(self.conn, info.name, index)
            self.catalog.forget(info.name)
        column = index.columns[0]
        duplicate = self.conn.execute(
            f"SELECT 1 FROM {info.tbl} WHERE {keys.present_sql(path)}"
            f" GROUP BY {column} HAVING count(*) > 1 LIMIT 1"
        ).fetchone()
        if duplicate is not None:
            raise UniqueViolationError(path)
        return "unique index created"

    def create_composite_index(self, collection: object, fields: object) -> dict[str, str]:
        """A composite index named by its fields joined with C{_} (idempotent by name)."""
        names = _field_list(fields)
        info = self.ensure_collection(collection)
        name = "_".join(names)
        if self._find_def(info, store.INDEX_COMPOSITE, name) is None:
            index = store.add_index_def(self.conn, info.name, store.INDEX_COMPOSITE, name, names, False)
            self.catalog.forget(info.name)
            store.create_sql_index(self.conn, info.tbl, index)
        return {"index": name}

    def create_text_index(self, collection: object, fields: object) -> str:
        """The collection's text index; if one exists, its fields are kept."""
        names = _field_list(fields)
        info = self.ensure_collection(collection)
        if self._find_def(info, store.INDEX_TEXT, store.TEXT_INDEX_NAME) is None:
            store.add_index_def(self.conn, info.name, store.INDEX_TEXT, store.TEXT_INDEX_NAME, names, False)
            self.catalog.forget(info.name)
            store.create_text_tables(self.conn, info.tbl)
            textstore.rebuild(self.conn, info.tbl, names)
        return "text index created"

    def create_vector_index(self, collection: object, field: object, dimension: object, metric: object) -> str:
        """
        The vector index C{_vec_<field>} (engine.md 10), filled from the
        stored documents; idempotent (an existing one keeps its dimension and
        metric).
        """
        path = _field_name(field)
        size = vectors.check_dimension(dimension)
        info = self.ensure_collection(collection)
        name = vectors.index_name(path)
        if self._find_def(info, store.INDEX_VECTOR, name) is None:
            index = store.add_index_def(self.conn, info.name, store.INDEX_VECTOR, name, (path,), False)
            self.catalog.forget(info.name)
            store.set_vector_spec(self.conn, index, size, vectors.normalize_metric(metric))
            store.create_vector_tables(self.conn, info.tbl, index)
            vectors.fill(self.conn, info, index)
        return "vector index created"

    def drop_index(self, collection: object, name: object) -> str:
        """
        Drop an index looked up as a field/unique index on C{name}, then a
        composite of that name, then the text index (engine.md 4.7), then a
        vector index, then a TTL index (L{oxidb.engine.ttl}).
        """
        if not isinstance(name, str):
            raise BadRequestError("missing 'index'")
        info = self.ensure_collection(collection)
        for kind in (store.INDEX_FIELD, store.INDEX_COMPOSITE, store.INDEX_TEXT, store.INDEX_VECTOR):
            index = self._find_def(info, kind, name)
            if index is None:
                continue
            store.remove_index_def(self.conn, info.name, index)
            self.catalog.forget(info.name)
            if kind == store.INDEX_TEXT:
                store.drop_text_tables(self.conn, info.tbl)
            elif kind == store.INDEX_VECTOR:
                store.drop_vector_tables(self.conn, info.tbl, index)
                store.remove_vector_spec(self.conn, index)
            else:
                store.drop_sql_index(self.conn, info.tbl, index)
            return "index dropped"
        if ttl.drop(self.conn, info.name, name):
            return "index dropped"
        raise IndexNotFoundError(name)


def _field_name(field: object) -> str:
    if not isinstance(field, str):
        raise BadRequestError("missing 'field'")
    return field


def _field_list(fields: object) -> tuple[str, ...]:
    if type(fields) is not list:
        raise BadRequestError("missing 'fields' array")
    if not all(isinstance(field, str) for field in fields):
        raise BadRequestError("'fields' must be an array of strings")
    if not fields:
        raise InvalidQueryError("an index needs at least one field")
    return tuple(fields)


def _text_index(defs: Iterable[IndexDef]) -> IndexDef | None:
    for index in defs:
        if index.kind == store.INDEX_TEXT:
            return index
    return None


def _release_free_pages(conn: sqlite.Connection) -> None:
    """Give the free pages back to the file system (incremental auto-vacuum)."""
    # Each execution of the pragma moves one page (one step of the statement).
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    while free:
        conn.execute("PRAGMA incremental_vacuum")
        remaining = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if remaining >= free:
            break
        free = remaining


_PreparedRow = tuple[int, int, dict[str, Any], str]


def _with_keys(
    rows: list[_PreparedRow],
    key_columns: Sequence[tuple[str, str]],
    head: Callable[[_PreparedRow], tuple[Any, ...]],
    tail: Callable[[_PreparedRow], tuple[Any, ...]] = lambda row: (),
) -> list[tuple[Any, ...]]:
    """
    Statement parameters per prepared row: C{head(row)}, the row's key of
    every key column (computed from the stored form of the document), then
    C{tail(row)}.
    """
    if not key_columns:
        return [head(row) + tail(row) for row in rows]
    split = [tuple(path.split(".")) for _, path in key_columns]
    keys_at = keys.keys_at

    def row_keys(row: _PreparedRow) -> tuple[bytes, ...]:
        try:
            return keys_at(row[2], split)
        except TypeError:
            # A value of a subclass of a JSON type: read the stored form.
            return keys_at(orjson.loads(row[3]), split)

    return [head(row) + row_keys(row) + tail(row) for row in rows]


#: The largest `_id` (SQLite integers are 64-bit signed).
MAX_ID = 2**63 - 1


def _first_repeated(ids: list[int]) -> int:
    seen: set[int] = set()
    for doc_id in ids:
        if doc_id in seen:
            return doc_id
        seen.add(doc_id)
    raise ValueError("no repeated id")


def _prepare(document: Any, doc_id: int, version: int) -> _PreparedRow:
    """
    Validate a document and give it its C{_id} and C{_version}; returns
    C{(_id, _version, document, json_text)}. The returned document is the one
    the stored text decodes to.
    """
    if type(document) is not dict:
        raise DocumentNotObjectError()
    doc = dict(document)
    doc["_id"] = doc_id
    doc["_version"] = version
    try:
        data = orjson.dumps(doc)
    except orjson.JSONEncodeError:
        values.check_depth(document, "document")
        doc = _to_storable(doc)
        try:
            data = orjson.dumps(doc)
        except orjson.JSONEncodeError as e:
            raise InvalidQueryError(f"document is not valid JSON: {e}") from None
    else:
        # Nesting needs as many brackets in the text: most documents have
        # too few to need the walk.
        if data.count(b"{") + data.count(b"[") > values.MAX_DEPTH:
            values.check_depth(document, "document")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise TooLargeError(f"document too large: {len(data)} bytes (limit {MAX_DOCUMENT_BYTES})")
    return doc_id, version, doc, data.decode()


def _to_storable(value: Any) -> Any:
    """
    A copy of C{value} with integers beyond 64 bits turned into floats (the
    way they compare, engine.md Appendix D) and non-finite floats into null.
    """
    kind = type(value)
    if kind is dict:
        return {key: _to_storable(item) for key, item in value.items()}
    if kind is list:
        return [_to_storable(item) for item in value]
    if kind is int and not -(2**63) <= value < 2**64:
        return values.normalize_number(values.to_float(value))
    if kind is float and not math.isfinite(value):
        return None
    return value
