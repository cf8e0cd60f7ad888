"""
Optimistic transactions (engine.md 6) on top of the engine's reads and one
write operation.

A L{Transaction} lives in memory while it is open. It keeps:

  - a I{read set}: the committed C{_version} of every document the
    transaction read or matched, recorded the first time it saw it;
  - an I{overlay}: the transaction's own view of every document it wrote
    (the new document, or C{None} once deleted), so that its reads see its
    writes (the docs' behaviour, engine.md 6.2 REC);
  - the buffered I{write operations}, in order.

Buffering runs each operation on the transaction's private view at once:
an update or delete matches against committed data overlaid with the
transaction's earlier writes, computes the new documents into the overlay,
and records the ids it touched. The buffered operation is pinned to those
ids, so that the commit writes exactly the documents the transaction saw
(documents that start matching only after buffering are not touched).

Commit is one write operation, L{CommitTransaction} (JSON:
C{{"CommitTransaction": {"read_set": [[collection, id, version], ...],
"collections": {name: incarnation}, "write_ops": [...]}}}), applied on the
writer thread: it
checks every read-set version against the current one, and that each
collection read from is still the same incarnation (a collection dropped
and created again restarts its ids and versions at 1, so a version alone
cannot tell its documents from the old ones); a mismatch is a
L{TransactionConflictError}. It then
applies the write operations one after another in the same SQLite
transaction, so each sees the previous ones, unique indexes are checked
across the whole transaction, and a failure or a crash leaves nothing. The
operation is deterministic (it carries every id it writes), so a Raft
replica applying it validates and writes exactly as the leader does.

Inserted documents get their ids when they are buffered, through a
L{ReserveIds} write operation that advances the
collection's persisted id high-water mark: a reserved id is never handed out
again, whether the transaction commits, rolls back or dies with its
connection, and every replica reserves the same range.

Update options inside a transaction: C{array_filters} and C{$} paths are
carried by the buffered update (C{"array_filters"}, and the original
C{"query"} that C{$} refers to; the ids still select the documents). An
upsert that matches nothing in the view builds its document at once
(L{Transaction.upsert_document}) and buffers it as an insert under a reserved
id. As with any transaction, only the documents read join the read set: an
upsert's "nothing matched" is not validated at commit (a concurrent insert
of a matching document is not a conflict; a unique index prevents the
duplicate).

Nothing here imports Twisted: the methods taking a C{reader} run inside
L{oxidb.engine.engine.Engine.read} on a pool thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import attrs

from oxidb.engine import databases, store
from oxidb.engine.governor import approx_size, reply_cap
from oxidb.engine.matcher import apply_find, compile_query
from oxidb.engine.operations import VERSION_KEY, Operation, check, collection_name, malformed
from oxidb.engine.reads import Reader, plan_query
from oxidb.engine.updates import bump_version, compile_update, upsert_document
from oxidb.engine.writes import WriteTxn
from oxidb.errors import DocumentNotObjectError, TransactionConflictError

Document = dict[str, Any]


def _doc_id(doc: Document) -> int:
    return int(doc["_id"])


def _id_runs(ids: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Ascending ids as C{((first, last), ...)} runs of consecutive ids."""
    runs: list[list[int]] = []
    for doc_id in ids:
        if runs and runs[-1][1] + 1 == doc_id:
            runs[-1][1] = doc_id
        else:
            runs.append([doc_id, doc_id])
    return tuple((first, last) for first, last in runs)


def reserve_operation(collection: str, count: int) -> ReserveIds:
    """The write operation reserving C{count} new ids in C{collection}."""
    return ReserveIds(collection, count)


@attrs.define(eq=False)
class Transaction:
    """
    One open transaction. Not thread-safe: its owner (a connection, or a
    procedure call) uses it from one thread at a time.

    @ivar tx_id: the number C{begin_tx} answered.
    @ivar read_set: C{(collection, _id)} -> the committed C{_version} seen.
    @ivar collections: collection -> its L{store.incarnation} when the read
        set first took a document from it.
    @ivar overlay: collection -> C{_id} -> the transaction's document, or
        C{None} if the transaction deleted it.
    @ivar ops: the buffered writes (see L{CommitTransaction}).
    """

    tx_id: int
    read_set: dict[tuple[str, int], int] = attrs.Factory(dict)
    collections: dict[str, str | None] = attrs.Factory(dict)
    overlay: dict[str, dict[int, Document | None]] = attrs.Factory(dict)
    ops: list[TxWrite] = attrs.Factory(list)

    # --- reads ------------------------------------------------------------

    def _view(self, reader: Reader, collection: str, query: object) -> list[Document]:
        """Every document matching C{query} in this transaction's view, by C{_id}."""
        committed = reader.find(collection, query, capped=False)
        touched = self.overlay.get(collection)
        if not touched:
            return committed
        matcher = compile_query({} if query is None else query, reader.limits)
        docs = [doc for doc in committed if doc["_id"] not in touched]
        docs.extend(doc for doc in touched.values() if doc is not None and matcher.matches(doc))
        docs.sort(key=_doc_id)
        return docs

    def _record(self, reader: Reader, collection: str, docs: Iterable[Document]) -> None:
        """Add the committed documents among C{docs} to the read set."""
        touched = self.overlay.get(collection, {})
        for doc in docs:
            doc_id = doc["_id"]
            if doc_id not in touched:
                self.read_set.setdefault((collection, doc_id), doc["_version"])
                if collection not in self.collections:
                    # The same snapshot as the versions just read.
                    self.collections[collection] = store.incarnation(reader.conn, collection)

    def find(
        self,
        reader: Reader,
        collection: str,
        query: object = None,
        sort: object = None,
        skip: object = None,
        limit: object = None,
    ) -> list[Document]:
        """
        C{find} in the transaction's view, with sort, skip and limit as
        outside a transaction; the returned documents join the read set.
        """
        if self.overlay.get(collection):
            docs = apply_find(self._view(reader, collection, query), None, sort, skip, limit)
            cap = reply_cap(reader.limits)
            for doc in docs:
                cap.add(approx_size(doc) + 1)
        else:
            docs = reader.find(collection, query, sort, skip, limit)
        self._record(reader, collection, docs)
        return docs

    def find_one(self, reader: Reader, collection: str, query: object = None) -> Document | None:
        """The matching document with the lowest C{_id} in the view (read-set entry), or None."""
        if self.overlay.get(collection):
            docs = self._view(reader, collection, query)[:1]
        else:
            one = reader.find_one(collection, query)
            docs = [] if one is None else [one]
        self._record(reader, collection, docs)
        return docs[0] if docs else None

    def count(self, reader: Reader, collection: str, query: object = None) -> int:
        """The number of matching documents in the view; all of them join the read set."""
        docs = self._view(reader, collection, query)
        self._record(reader, collection, docs)
        return len(docs)

    # --- buffered writes --------------------------------------------------

    def stage_insert(self, collection: str, first_id: int, documents: list[Any]) -> list[int]:
        """
        Buffer an insert of C{documents} with the reserved ids C{first_id},
        C{first_id + 1}, ...; their ids.
        """
        if any(type(doc) is not dict for doc in documents):
            raise DocumentNotObjectError()
        ids = list(range(first_id, first_id + len(documents)))
        touched = self.overlay.setdefault(collection, {})
        for doc_id, doc in zip(ids, documents, strict=True):
            touched[doc_id] = {**doc, "_id": doc_id, "_version": 1}
        self.ops.append(TxInsert(collection, first_id, documents))
        return ids

    def stage_update(
        self,
        reader: Reader,
        collection: str,
        query: object,
        update: object,
        now: float,
        limit: int | None = None,
        array_filters: list[Any] | None = None,
    ) -> int:
        """
        Buffer an update of the matching documents (the first C{limit} by
        C{_id}); the number matched. An invalid update fails here and
        buffers nothing.
        """
        compiled = compile_update(update, array_filters)
        matcher = compile_query({} if query is None else query, reader.limits)
        matched = self._view(reader, collection, query)[:limit]
        updated = [bump_version(compiled.apply(doc, now, matcher)) for doc in matched]
        self._record(reader, collection, matched)
        if updated:
            touched = self.overlay.setdefault(collection, {})
            for doc in updated:
                touched[doc["_id"]] = doc
            ids = _id_runs(doc["_id"] for doc in updated)
            positional = query if compiled.positional else None
            self.ops.append(TxUpdate(collection, ids, update, array_filters, positional))
        return len(updated)

    @staticmethod
    def upsert_document(query: object, update: object, now: float, array_filters: list[Any] | None = None) -> Any:
        """The document an upsert inserts when nothing matches (L{oxidb.engine.writes.WriteTxn.upsert})."""
        matcher = compile_query({} if query is None else query)
        compiled = compile_update(update, array_filters)
        return compiled.apply(upsert_document(matcher), now, matcher, inserting=True)

    def stage_delete(self, reader: Reader, collection: str, query: object, limit: int | None = None) -> int:
        """Buffer a delete of the matching documents (the first C{limit}); the number matched."""
        matched = self._view(reader, collection, query)[:limit]
        self._record(reader, collection, matched)
        if matched:
            touched = self.overlay.setdefault(collection, {})
            for doc in matched:
                touched[doc["_id"]] = None
            ids = _id_runs(doc["_id"] for doc in matched)
            self.ops.append(TxDelete(collection, ids))
        return len(matched)

    # --- commit -----------------------------------------------------------

    def commit_operation(self) -> CommitTransaction | None:
        """
        The write operation committing this transaction, or C{None} when it
        neither read nor wrote anything (nothing to check, nothing to do).
        """
        if not self.ops and not self.read_set:
            return None
        read_set = tuple((collection, doc_id, version) for (collection, doc_id), version in self.read_set.items())
        collections = dict(self.collections) if self.collections else None
        return CommitTransaction(read_set, tuple(self.ops), collections, self.tx_id)


# --- operations (writer thread) -----------------------------------------------


def _is_id(value: object) -> bool:
    return type(value) is int and 0 < value < 2**63


def _id_range(first: int, last: int) -> dict[str, Any]:
    """The query selecting ids C{first..last} (the primary key, in SQL)."""
    if first == last:
        return {"_id": first}
    return {"_id": {"$gte": first, "$lte": last}}


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _runs_of(value: object) -> tuple[tuple[int, int], ...]:
    """C{[[first, last], ...]} as decoded, checked."""
    if type(value) is not list:
        raise malformed()
    runs = []
    for run in value:
        if type(run) is not list or len(run) != 2 or not all(_is_id(i) for i in run) or run[0] > run[1]:
            raise malformed()
        runs.append((run[0], run[1]))
    return tuple(runs)


@attrs.frozen
class TxInsert:
    """Buffered: insert C{documents} with the reserved ids C{first_id}, C{first_id + 1}, ..."""

    OP: ClassVar[str] = "insert"

    collection: str = attrs.field(validator=check(_is_str, malformed))
    first_id: int = attrs.field(validator=check(_is_id, malformed))
    documents: list[Any] = attrs.field(validator=check(lambda v: type(v) is list and bool(v), malformed))

    def to_json(self) -> dict[str, Any]:
        return {"op": self.OP, "collection": self.collection, "first_id": self.first_id, "documents": self.documents}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> TxInsert:
        # Whatever the body holds: the field validators refuse a wrong value.
        return cls(value.get("collection"), value.get("first_id"), value.get("documents"))  # type: ignore[arg-type]

    def apply(self, txn: WriteTxn) -> None:
        """
        Insert documents with the ids reserved for them. The engine's insert
        takes the next ids after the collection's high-water mark, so the
        mark is moved just below the reserved range for the insert and put
        back afterwards. A reserved id that is taken (the collection was
        dropped and re-created since the reservation) is a conflict.
        """
        first = self.first_id
        last = first + len(self.documents) - 1
        info = txn.ensure_collection(self.collection)
        for doc_id, version, _ in txn.rows(info, plan_query(_id_range(first, last)), None, None, 1):
            raise TransactionConflictError(databases.bare(self.collection), doc_id, 0, version)
        store.set_last_id(txn.conn, info.name, first - 1)
        txn.insert_many(self.collection, self.documents)
        store.set_last_id(txn.conn, info.name, max(info.last_id, last))


@attrs.frozen
class TxUpdate:
    """
    Buffered: apply C{update} to the documents with the ids in C{ids} (runs
    C{(first, last)}), with its C{array_filters}, and the C{query} its C{$}
    paths refer to (both only when used).
    """

    OP: ClassVar[str] = "update"

    collection: str = attrs.field(validator=check(_is_str, malformed))
    ids: tuple[tuple[int, int], ...]
    update: Any
    array_filters: list[Any] | None = attrs.field(
        default=None, validator=check(lambda v: v is None or type(v) is list, malformed)
    )
    query: Any = None

    @property
    def uses_options(self) -> bool:
        return self.array_filters is not None or self.query is not None

    def to_json(self) -> dict[str, Any]:
        value = {
            "op": self.OP,
            "collection": self.collection,
            "ids": [list(run) for run in self.ids],
            "update": self.update,
        }
        if self.array_filters is not None:
            value["array_filters"] = self.array_filters
        if self.query is not None:
            value["query"] = self.query
        return value

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> TxUpdate:
        # Whatever the body holds: the field validators refuse a wrong value.
        return cls(
            value.get("collection"),  # type: ignore[arg-type]
            _runs_of(value.get("ids")),
            value.get("update"),
            value.get("array_filters"),
            value.get("query"),
        )

    def apply(self, txn: WriteTxn) -> None:
        for first, last in self.ids:
            txn.update(
                self.collection,
                _id_range(first, last),
                self.update,
                array_filters=self.array_filters,
                positional_query=self.query,
            )


@attrs.frozen
class TxDelete:
    """Buffered: delete the documents with the ids in C{ids}."""

    OP: ClassVar[str] = "delete"

    collection: str = attrs.field(validator=check(_is_str, malformed))
    ids: tuple[tuple[int, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {"op": self.OP, "collection": self.collection, "ids": [list(run) for run in self.ids]}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> TxDelete:
        # Whatever the body holds: the field validators refuse a wrong value.
        return cls(value.get("collection"), _runs_of(value.get("ids")))  # type: ignore[arg-type]

    def apply(self, txn: WriteTxn) -> None:
        for first, last in self.ids:
            txn.delete(self.collection, _id_range(first, last))


TxWrite = TxInsert | TxUpdate | TxDelete

_TX_WRITES: dict[str, type[TxInsert] | type[TxUpdate] | type[TxDelete]] = {
    write.OP: write for write in (TxInsert, TxUpdate, TxDelete)
}


def _tx_write(value: object) -> TxWrite:
    write = _TX_WRITES.get(str(value.get("op"))) if type(value) is dict else None
    if write is None:
        raise malformed()
    assert isinstance(value, dict)
    return write.from_json(value)


def _read_set_entry(entry: object) -> tuple[str, int, int]:
    if (
        type(entry) is not list
        or len(entry) != 3
        or not isinstance(entry[0], str)
        or not _is_id(entry[1])
        or type(entry[2]) is not int
    ):
        raise malformed()
    return (entry[0], entry[1], entry[2])


@attrs.frozen
class CommitTransaction(Operation):
    """
    Commit a transaction: C{"committed"}. Validates the read set
    (C{(collection, _id, version)} entries; C{collections}: the incarnation
    of each collection read from, absent in entries written before they
    were recorded), then applies the buffered writes in order. Any error (a
    conflict, a unique violation, an invalid document) raises, and the
    writer rolls the whole operation back.
    """

    KIND: ClassVar[str] = "CommitTransaction"
    #: Version 2: buffered updates may carry C{array_filters} and C{query}
    #: (written as version 2 only then, so that a node knowing only
    #: version 1 refuses them rather than ignoring them).
    VERSION: ClassVar[int] = 2

    read_set: tuple[tuple[str, int, int], ...]
    write_ops: tuple[TxWrite, ...]
    collections: dict[str, Any] | None = None
    #: The number C{begin_tx} answered, for change events (absent in
    #: entries written before events carried it; older nodes ignore it).
    tx_id: int | None = attrs.field(default=None, validator=check(lambda v: v is None or _is_id(v), malformed))

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "read_set": [list(entry) for entry in self.read_set],
            "write_ops": [write.to_json() for write in self.write_ops],
        }
        if self.collections is not None:
            body["collections"] = dict(self.collections)
        if self.tx_id is not None:
            body["tx_id"] = self.tx_id
        return body

    def to_json(self) -> dict[str, Any]:
        options = any(isinstance(write, TxUpdate) and write.uses_options for write in self.write_ops)
        return {self.KIND: {**self.to_body(), VERSION_KEY: 2 if options else 1}}

    @classmethod
    def from_body(cls, body: dict[str, Any], version: int) -> CommitTransaction:
        read_set, write_ops = body.get("read_set"), body.get("write_ops")
        collections = body.get("collections")
        if type(read_set) is not list or type(write_ops) is not list:
            raise malformed()
        if collections is not None and type(collections) is not dict:
            raise malformed()
        return cls(
            tuple(_read_set_entry(entry) for entry in read_set),
            tuple(_tx_write(write) for write in write_ops),
            collections,
            body.get("tx_id"),
        )

    def apply(self, txn: WriteTxn, now: float) -> str:
        if txn.changes is not None:
            txn.changes.tx_id = self.tx_id
        incarnations = self.collections or {}
        for collection, doc_id, expected in self.read_set:
            if collection in incarnations and store.incarnation(txn.conn, collection) != incarnations[collection]:
                # Dropped (and perhaps created again): what was read is gone.
                raise TransactionConflictError(databases.bare(collection), doc_id, expected, 0)
            found = txn.version_of(collection, doc_id)
            if found != expected:
                raise TransactionConflictError(databases.bare(collection), doc_id, expected, found)
        for write in self.write_ops:
            write.apply(txn)
        return "committed"


@attrs.frozen
class ReserveIds(Operation):
    """
    Advance the collection's id high-water mark by C{count} (creating the
    collection if needed): the first reserved id.
    """

    KIND: ClassVar[str] = "ReserveIds"

    collection: str = attrs.field(validator=collection_name)
    count: int = attrs.field(validator=check(lambda v: type(v) is int and v >= 1, malformed))

    def apply(self, txn: WriteTxn, now: float) -> int:
        info = txn.ensure_collection(self.collection)
        store.set_last_id(txn.conn, info.name, info.last_id + self.count)
        return info.last_id + 1


#: The transaction operation types.
OPERATIONS: tuple[type[Operation], ...] = (CommitTransaction, ReserveIds)


def register_appliers(engine: Any) -> None:
    """Register L{CommitTransaction} and L{ReserveIds} with an engine."""
    for op_type in OPERATIONS:
        engine.register_operation(op_type)
