"""
The writer's cache of index definitions (L{oxidb.engine.catalog}): every
path that changes a collection's indexes (DDL, a rollback of DDL, a
replaced database file) leaves the writer writing what the catalog tables
say. Each test first makes the writer cache the collection's indexes
(an insert), then changes them, then writes again; a stale cache would
fill a dropped key column (an SQL error), skip a new one (an indexed read
misses the document) or miss a unique check. After each, L{_Check} compares
the cache with the catalog tables.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any, ClassVar

import apsw
import attrs
import pytest

from oxidb.engine import store
from oxidb.engine.engine import Engine
from oxidb.engine.operations import Operation
from oxidb.engine.writes import WriteTxn
from oxidb.errors import StorageIOError, UniqueViolationError


@attrs.frozen
class _Check(Operation):
    """The cached and the stored index definitions of a collection."""

    KIND: ClassVar[str] = "CatalogCheck"

    collection: str


@attrs.frozen
class _UndoneIndex(Operation):
    """Creates an index inside a savepoint that rolls back, then inserts."""

    KIND: ClassVar[str] = "UndoneIndex"

    collection: str


@attrs.frozen
class _FailedBatch(Operation):
    """Creates an index and inserts, then fails as a full disk does."""

    KIND: ClassVar[str] = "FailedBatch"

    collection: str


def _check(txn: WriteTxn, op: _Check, now: float) -> tuple[list[store.IndexDef], list[store.IndexDef]]:
    return list(txn.catalog.defs(txn.conn, op.collection)), store.list_index_defs(txn.conn, op.collection)


def _undone_index(txn: WriteTxn, op: _UndoneIndex, now: float) -> int:
    try:
        with txn.savepoint():
            txn.create_index(op.collection, "x")
            txn.insert(op.collection, {"x": 0})
            raise ValueError("undo")
    except ValueError:
        pass
    return txn.insert(op.collection, {"x": 1})


def _failed_batch(txn: WriteTxn, op: _FailedBatch, now: float) -> None:
    txn.create_index(op.collection, "x")
    txn.insert(op.collection, {"x": 0})
    raise apsw.FullError("database or disk is full")


def _open(data_dir: str) -> Engine:
    engine = Engine(data_dir, synchronous="OFF")
    engine.register_operation(_Check, _check)
    engine.register_operation(_UndoneIndex, _undone_index)
    engine.register_operation(_FailedBatch, _failed_batch)
    engine.open()
    return engine


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[Engine]:
    engine = _open(str(tmp_path / "data"))
    yield engine
    engine.close()


def _insert(engine: Engine, collection: str, document: dict[str, Any]) -> int:
    result = engine.apply({"Insert": {"collection": collection, "document": document}}, 0.0)
    return int(result["id"])


def _op(engine: Engine, kind: str, **body: Any) -> Any:
    return engine.apply({kind: body}, 0.0)


def _assert_fresh(engine: Engine, collection: str) -> None:
    cached, stored = engine.apply(_Check(collection), 0.0)
    assert cached == stored


def _indexed_ids(engine: Engine, collection: str, query: dict[str, Any]) -> list[int]:
    """Ids an indexed read finds (it reads the key columns, not the documents)."""
    return [doc["_id"] for doc in engine.find(collection, query)]


def test_create_index(engine: Engine) -> None:
    _insert(engine, "c", {"x": 1})
    _op(engine, "CreateIndex", collection="c", field="x")
    new = _insert(engine, "c", {"x": 2})
    assert _indexed_ids(engine, "c", {"x": 2}) == [new]
    _assert_fresh(engine, "c")


def test_create_unique_index(engine: Engine) -> None:
    _insert(engine, "c", {"x": 1})
    _op(engine, "CreateUniqueIndex", collection="c", field="x")
    with pytest.raises(UniqueViolationError):
        _insert(engine, "c", {"x": 1})
    _assert_fresh(engine, "c")


def test_plain_index_made_unique(engine: Engine) -> None:
    _op(engine, "CreateIndex", collection="c", field="x")
    _insert(engine, "c", {"x": 1})
    _op(engine, "CreateUniqueIndex", collection="c", field="x")
    with pytest.raises(UniqueViolationError):
        _insert(engine, "c", {"x": 1})
    _assert_fresh(engine, "c")


def test_create_composite_index(engine: Engine) -> None:
    _insert(engine, "c", {"x": 1, "y": 1})
    _op(engine, "CreateCompositeIndex", collection="c", fields=["x", "y"])
    new = _insert(engine, "c", {"x": 2, "y": 3})
    assert _indexed_ids(engine, "c", {"x": 2, "y": 3}) == [new]
    _assert_fresh(engine, "c")


def test_create_text_index(engine: Engine) -> None:
    _insert(engine, "c", {"t": "apple"})
    _op(engine, "CreateTextIndex", collection="c", fields=["t"])
    new = _insert(engine, "c", {"t": "banana"})
    assert [doc["_id"] for doc in engine.text_search("c", "banana")] == [new]
    _assert_fresh(engine, "c")


def test_create_vector_index(engine: Engine) -> None:
    _insert(engine, "c", {"v": [1.0, 0.0]})
    _op(engine, "CreateVectorIndex", collection="c", field="v", dimension=2)
    new = _insert(engine, "c", {"v": [0.0, 1.0]})
    assert engine.vector_search("c", "v", [0.0, 1.0], limit=1)[0]["_id"] == new
    _assert_fresh(engine, "c")


def test_drop_index(engine: Engine) -> None:
    _op(engine, "CreateUniqueIndex", collection="c", field="x")
    _insert(engine, "c", {"x": 1})
    assert _op(engine, "DropIndex", collection="c", index="x") == "index dropped"
    # A stale cache would write the dropped key column, or refuse the duplicate.
    _insert(engine, "c", {"x": 1})
    assert len(engine.find("c", {"x": 1})) == 2
    _assert_fresh(engine, "c")


def test_drop_collection(engine: Engine) -> None:
    _op(engine, "CreateUniqueIndex", collection="c", field="x")
    _insert(engine, "c", {"x": 1})
    _op(engine, "DropCollection", name="c")
    _insert(engine, "c", {"x": 1})
    _insert(engine, "c", {"x": 1})
    assert engine.count("c", {"x": 1}) == 2
    _assert_fresh(engine, "c")


def test_drop_database(engine: Engine) -> None:
    _op(engine, "CreateDatabase", name="d")
    _op(engine, "CreateUniqueIndex", collection="d/c", field="x")
    _insert(engine, "d/c", {"x": 1})
    _op(engine, "DropDatabase", name="d")
    _op(engine, "CreateDatabase", name="d")
    _insert(engine, "d/c", {"x": 1})
    _insert(engine, "d/c", {"x": 1})
    assert engine.count("d/c", {"x": 1}) == 2
    _assert_fresh(engine, "d/c")


def test_failed_unique_index_rolls_back(engine: Engine) -> None:
    _insert(engine, "c", {"x": 1})
    _insert(engine, "c", {"x": 1})
    # The definition is added, then the duplicates fail the operation: its
    # savepoint rolls back, and so must the cache.
    with pytest.raises(UniqueViolationError):
        _op(engine, "CreateUniqueIndex", collection="c", field="x")
    _insert(engine, "c", {"x": 1})
    assert engine.list_indexes("c") == []
    _assert_fresh(engine, "c")


def test_savepoint_rollback_of_ddl(engine: Engine) -> None:
    _insert(engine, "c", {"x": 1})
    new = engine.apply(_UndoneIndex("c"), 0.0)
    assert engine.list_indexes("c") == []
    assert engine.find("c", {"x": 1})[-1]["_id"] == new
    _assert_fresh(engine, "c")


def test_batch_rollback_of_ddl(engine: Engine) -> None:
    _insert(engine, "c", {"x": 1})
    with pytest.raises(StorageIOError, match="full"):
        engine.apply(_FailedBatch("c"), 0.0)
    assert engine.list_indexes("c") == []
    _insert(engine, "c", {"x": 2})
    assert engine.count("c") == 2
    _assert_fresh(engine, "c")


def test_database_file_replaced_while_closed(tmp_path: Any) -> None:
    """A Raft snapshot install and a restored backup swap the file under a closed engine."""
    data_dir = str(tmp_path / "data")
    engine = _open(data_dir)
    try:
        _insert(engine, "c", {"x": 1})
        plain = str(tmp_path / "plain.sqlite3")
        engine.backup(plain)
        _op(engine, "CreateUniqueIndex", collection="c", field="x")
        indexed = str(tmp_path / "indexed.sqlite3")
        engine.backup(indexed)
        for replacement, duplicates_allowed in ((plain, True), (indexed, False)):
            _insert(engine, "c", {"x": 5})  # caches the indexes of the file in use
            engine.close()
            for suffix in ("-wal", "-shm"):
                if os.path.exists(engine.path + suffix):
                    os.remove(engine.path + suffix)
            shutil.copyfile(replacement, engine.path)
            engine.open()
            _insert(engine, "c", {"x": 7})
            if duplicates_allowed:
                _insert(engine, "c", {"x": 7})
            else:
                with pytest.raises(UniqueViolationError):
                    _insert(engine, "c", {"x": 7})
            assert _indexed_ids(engine, "c", {"x": 7})
            _assert_fresh(engine, "c")
    finally:
        engine.close()


def test_restore_documents_fill_new_index(engine: Engine) -> None:
    _insert(engine, "c", {"x": 1})
    _op(engine, "CreateIndex", collection="c", field="x")
    _op(engine, "RestoreDocuments", collection="c", documents=[{"_id": 10, "_version": 3, "x": 9}], last_id=10)
    assert _indexed_ids(engine, "c", {"x": 9}) == [10]
    _assert_fresh(engine, "c")


def test_compact_keeps_indexes(engine: Engine) -> None:
    _op(engine, "CreateIndex", collection="c", field="x")
    _insert(engine, "c", {"x": 1})
    _op(engine, "Compact", collection="c")
    new = _insert(engine, "c", {"x": 2})
    assert _indexed_ids(engine, "c", {"x": 2}) == [new]
    _assert_fresh(engine, "c")
