"""
Storage behaviour of the engine: ids, versions, collections, unique
constraints, atomicity of multi-document writes, indexes, compaction and
persistence across restarts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from oxidb.engine import store, writes
from oxidb.engine.engine import Engine
from oxidb.errors import (
    BadRequestError,
    CollectionExistsError,
    DocumentNotObjectError,
    IndexNotFoundError,
    InvalidQueryError,
    OxiError,
    TooLargeError,
    UniqueViolationError,
)


@pytest.fixture
def data_dir(tmp_path: Any) -> str:
    return str(tmp_path / "data")


@pytest.fixture
def engine(data_dir: str) -> Iterator[Engine]:
    with Engine(data_dir, synchronous="NORMAL") as engine:
        yield engine


def run(engine: Engine, kind: str, **body: Any) -> Any:
    return engine.apply({kind: body}, 1_700_000_000.0)


def insert(engine: Engine, collection: str, doc: dict[str, Any]) -> int:
    result: int = run(engine, "Insert", collection=collection, document=doc)["id"]
    return result


def ids(engine: Engine, collection: str) -> list[int]:
    return [doc["_id"] for doc in engine.find(collection)]


# --- ids and versions ------------------------------------------------------------


def test_ids_start_at_one_and_versions_at_one(engine: Engine) -> None:
    assert insert(engine, "c", {"_id": 99, "_version": 7, "x": 1}) == 1
    assert insert(engine, "c", {"x": 2}) == 2
    assert insert(engine, "other", {"x": 3}) == 1
    assert engine.find("c") == [{"_id": 1, "_version": 1, "x": 1}, {"x": 2, "_id": 2, "_version": 1}]


def test_insert_many_assigns_consecutive_ids(engine: Engine) -> None:
    insert(engine, "c", {})
    assert run(engine, "InsertMany", collection="c", documents=[{"n": i} for i in range(5)]) == [2, 3, 4, 5, 6]
    assert run(engine, "InsertMany", collection="c", documents=[]) == []
    assert [doc["n"] for doc in engine.find("c", {"n": {"$exists": True}})] == [0, 1, 2, 3, 4]


def test_ids_are_never_reused(data_dir: str) -> None:
    with Engine(data_dir) as engine:
        run(engine, "InsertMany", collection="c", documents=[{}, {}, {}])
        run(engine, "Delete", collection="c", query={"_id": 3})
    with Engine(data_dir) as engine:  # restart after deleting the highest id
        assert insert(engine, "c", {}) == 4
        run(engine, "Delete", collection="c", query={})
        assert run(engine, "Compact", collection="c")["docs_kept"] == 0
        assert insert(engine, "c", {}) == 5
        run(engine, "DeleteOne", collection="c", query={"_id": 5})
    with Engine(data_dir) as engine:
        assert insert(engine, "c", {}) == 6
        assert run(engine, "DropCollection", name="c") == "collection dropped"
        assert insert(engine, "c", {}) == 1  # a new collection starts again


def test_every_matched_update_bumps_the_version(engine: Engine) -> None:
    insert(engine, "c", {"x": 1})
    assert run(engine, "Update", collection="c", query={"x": 1}, update={"$set": {"x": 1}}) == {"modified": 1}
    assert run(engine, "UpdateOne", collection="c", query={}, update={"$pull": {"nothing": 1}}) == {"modified": 1}
    assert engine.find_one("c") == {"x": 1, "_id": 1, "_version": 3}
    assert engine.version_of("c", 1) == 3
    assert engine.version_of("c", 2) == 0
    assert engine.version_of("missing", 1) == 0


def test_update_one_and_delete_one_take_the_lowest_id(engine: Engine) -> None:
    run(engine, "InsertMany", collection="c", documents=[{"k": 1}, {"k": 0}, {"k": 1}])
    run(engine, "UpdateOne", collection="c", query={"k": 1}, update={"$inc": {"hits": 1}})
    assert [doc.get("hits") for doc in engine.find("c")] == [1, None, None]
    assert run(engine, "DeleteOne", collection="c", query={"k": 1}) == {"deleted": 1}
    assert ids(engine, "c") == [2, 3]


def test_update_cannot_touch_reserved_fields(engine: Engine) -> None:
    insert(engine, "c", {"x": 1})
    with pytest.raises(InvalidQueryError):
        run(engine, "Update", collection="c", query={}, update={"$set": {"_id": 5}})
    assert engine.find("c") == [{"x": 1, "_id": 1, "_version": 1}]


def test_malformed_update_matching_nothing_succeeds(engine: Engine) -> None:
    insert(engine, "c", {"x": 1})
    assert run(engine, "Update", collection="c", query={"x": 2}, update={"$bogus": {"a": 1}}) == {"modified": 0}
    with pytest.raises(InvalidQueryError, match="update must be an object"):
        run(engine, "Update", collection="c", query={"x": 2}, update=[1])


def test_current_date_uses_the_operation_time(engine: Engine) -> None:
    insert(engine, "c", {})
    engine.apply({"Update": {"collection": "c", "query": {}, "update": {"$currentDate": {"t": True}}}}, 86400.5)
    assert engine.find_one("c")["t"] == "1970-01-02T00:00:00.500+00:00"  # type: ignore[index]


# --- atomicity --------------------------------------------------------------------


def test_update_is_all_or_nothing(engine: Engine) -> None:
    run(engine, "InsertMany", collection="c", documents=[{"n": 1}, {"n": "text"}, {"n": 3}])
    with pytest.raises(InvalidQueryError, match="non-numeric field 'n'"):
        run(engine, "Update", collection="c", query={}, update={"$inc": {"n": 1}})
    assert [(doc["n"], doc["_version"]) for doc in engine.find("c")] == [(1, 1), ("text", 1), (3, 1)]


def test_insert_many_is_all_or_nothing(engine: Engine) -> None:
    insert(engine, "c", {})
    with pytest.raises(DocumentNotObjectError):
        run(engine, "InsertMany", collection="c", documents=[{"a": 1}, 5])
    assert ids(engine, "c") == [1]
    assert insert(engine, "c", {}) == 2  # no id consumed


def test_bad_documents(engine: Engine) -> None:
    for doc in (None, [1], "x", 3):
        with pytest.raises(DocumentNotObjectError, match="^document must be a JSON object$"):
            run(engine, "Insert", collection="c", document=doc)
    with pytest.raises(BadRequestError, match="missing or invalid 'docs' array"):
        run(engine, "InsertMany", collection="c", documents={"a": 1})
    deep: dict[str, Any] = {}
    for _ in range(120):
        deep = {"a": deep}
    with pytest.raises(TooLargeError, match="document exceeds the maximum nesting depth of 100"):
        run(engine, "Insert", collection="c", document=deep)
    assert engine.find("c") == []


def _nested(depth: int, container: str) -> dict[str, Any]:
    """A document nesting C{depth} containers (itself included)."""
    value: Any = 1
    for _ in range(depth - 1):
        value = {"a": value} if container == "object" else [value]
    return {"a": value}


@pytest.mark.parametrize("container", ["object", "array"])
def test_nesting_limit_boundary(engine: Engine, container: str) -> None:
    insert(engine, "c", _nested(100, container))
    for depth in (101, 300):  # 300: beyond what orjson itself encodes
        with pytest.raises(TooLargeError, match="document exceeds the maximum nesting depth of 100"):
            run(engine, "Insert", collection="c", document=_nested(depth, container))
    # Brackets inside strings are no nesting.
    insert(engine, "c", {"s": "{[" * 200, "t": ["{" * 120]})
    assert [doc["_id"] for doc in engine.find("c")] == [1, 2]


def test_oversized_document(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writes, "MAX_DOCUMENT_BYTES", 100)
    insert(engine, "c", {"x": 1})
    with pytest.raises(TooLargeError, match=r"document too large: \d+ bytes \(limit 100\)"):
        run(engine, "Insert", collection="c", document={"x": "y" * 100})
    with pytest.raises(TooLargeError):
        run(engine, "Update", collection="c", query={}, update={"$set": {"x": "y" * 100}})
    assert engine.find("c") == [{"x": 1, "_id": 1, "_version": 1}]


def test_values_json_cannot_store(engine: Engine) -> None:
    insert(engine, "c", {"big": 2**70, "nan": float("nan"), "inf": float("-inf"), "ok": 2**64 - 1})
    doc = engine.find_one("c")
    assert doc == {"big": float(2**70), "nan": None, "inf": None, "ok": 2**64 - 1, "_id": 1, "_version": 1}
    assert engine.find("c", {"nan": None}) == [doc]


# --- collections --------------------------------------------------------------------


def test_collection_lifecycle(engine: Engine) -> None:
    assert run(engine, "CreateCollection", name="b") == "collection created"
    with pytest.raises(CollectionExistsError, match="^collection already exists: b$"):
        run(engine, "CreateCollection", name="b")
    insert(engine, "a", {})
    insert(engine, "_system", {})
    assert engine.list_collections() == ["_system", "a", "b"]
    assert run(engine, "DropCollection", name="a") == "collection dropped"
    assert run(engine, "DropCollection", name="never-existed") == "collection dropped"
    assert engine.list_collections() == ["_system", "b"]
    assert engine.collection_counts() == {"_system": 1, "b": 0}


@pytest.mark.parametrize("name", ["", ".hidden", "a\\b", "nul\x00", "..", 5])
def test_invalid_collection_names(engine: Engine, name: Any) -> None:
    with pytest.raises(InvalidQueryError, match="^invalid query: invalid collection name: "):
        run(engine, "CreateCollection", name=name)
    with pytest.raises(InvalidQueryError, match="invalid collection name"):
        run(engine, "Insert", collection=name, document={})
    if isinstance(name, str):
        with pytest.raises(InvalidQueryError, match="invalid collection name"):
            engine.find(name)
    assert engine.list_collections() == []


def test_slash_names_a_database_in_the_engine(engine: Engine) -> None:
    # Inside the engine `a/b` is collection `b` of database `a` (oxidb.engine.databases);
    # a client's `a/b` is still `invalid collection name: a/b`
    # (tests/test_commands_databases.py::test_slash_in_a_client_collection_name).
    with pytest.raises(InvalidQueryError, match="^database not found: a$"):
        run(engine, "CreateCollection", name="a/b")
    with pytest.raises(InvalidQueryError, match="^database not found: a$"):
        run(engine, "Insert", collection="a/b", document={})
    with pytest.raises(InvalidQueryError, match="^database not found: a$"):
        engine.find("a/b")
    assert engine.list_collections() == []


def test_reads_create_missing_collections_when_told_to(data_dir: str) -> None:
    # Upstream's auto-creation on read is opt-in (the server never turns it on).
    with Engine(data_dir, auto_create_on_read=True) as engine:
        assert engine.find("f") == []
        assert engine.find_one("o") is None
        assert engine.count("n") == 0
        assert engine.list_indexes("i") == []
        assert engine.aggregate("g", [{"$count": "n"}]) == [{"n": 0}]
        assert engine.list_collections() == ["f", "g", "i", "n", "o"]


def test_reads_do_not_create_by_default(engine: Engine) -> None:
    assert engine.find("f") == []
    assert engine.find_one("o") is None
    assert engine.count("f", {"a": 1}) == 0
    assert engine.list_indexes("i") == []
    assert engine.aggregate("g", [{"$count": "n"}]) == [{"n": 0}]
    assert engine.list_collections() == []


def test_a_failing_command_still_creates_its_collection(engine: Engine) -> None:
    with pytest.raises(IndexNotFoundError, match="^index not found: nope$"):
        run(engine, "DropIndex", collection="c", index="nope")
    with pytest.raises(DocumentNotObjectError):
        run(engine, "Insert", collection="d", document=[])
    assert engine.list_collections() == ["c", "d"]


# --- unique indexes ---------------------------------------------------------------


def test_unique_index_semantics(engine: Engine) -> None:
    assert run(engine, "CreateUniqueIndex", collection="u", field="email") == "unique index created"
    insert(engine, "u", {"email": "a"})
    insert(engine, "u", {})
    insert(engine, "u", {})  # missing is exempt
    insert(engine, "u", {"email": None})
    for clash in ({"email": "a"}, {"email": None}):
        with pytest.raises(
            UniqueViolationError, match="^unique constraint violated: field 'email' value already exists$"
        ):
            insert(engine, "u", clash)
    insert(engine, "u", {"email": 1})
    with pytest.raises(UniqueViolationError):
        insert(engine, "u", {"email": 1.0})
    insert(engine, "u", {"email": "2024-01-15"})
    with pytest.raises(UniqueViolationError):
        insert(engine, "u", {"email": "2024-01-15T00:00:00Z"})
    insert(engine, "u", {"email": {"b": 1, "a": 2}})
    with pytest.raises(UniqueViolationError):
        insert(engine, "u", {"email": {"a": 2, "b": 1}})
    assert insert(engine, "u", {"email": "b"}) == 8  # failed inserts consumed no id


def test_unique_within_an_insert_many_batch(engine: Engine) -> None:
    run(engine, "CreateUniqueIndex", collection="u", field="k")
    with pytest.raises(UniqueViolationError):
        run(engine, "InsertMany", collection="u", documents=[{"k": 1}, {"k": 2}, {"k": 1}])
    assert engine.find("u") == []
    assert run(engine, "InsertMany", collection="u", documents=[{"k": 1}, {"k": 2}]) == [1, 2]


def test_unique_on_update(engine: Engine) -> None:
    run(engine, "CreateUniqueIndex", collection="u", field="k")
    run(engine, "InsertMany", collection="u", documents=[{"k": 1}, {"k": 2}, {"k": 3}])
    # Updating a document to its own value is fine.
    assert run(engine, "Update", collection="u", query={"k": 1}, update={"$set": {"k": 1}}) == {"modified": 1}
    with pytest.raises(UniqueViolationError):
        run(engine, "Update", collection="u", query={"k": 1}, update={"$set": {"k": 2}})
    # Two documents moved to one value within the batch.
    with pytest.raises(UniqueViolationError):
        run(engine, "Update", collection="u", query={"k": {"$gte": 2}}, update={"$set": {"k": 9}})
    # Checked against the collection as it was before the batch (engine.md 3.4).
    with pytest.raises(UniqueViolationError):
        run(engine, "Update", collection="u", query={}, update={"$inc": {"k": 1}})
    assert [(doc["k"], doc["_version"]) for doc in engine.find("u")] == [(1, 2), (2, 1), (3, 1)]
    assert run(engine, "Update", collection="u", query={"k": 3}, update={"$unset": {"k": 1}}) == {"modified": 1}


def test_unique_index_over_duplicates_creates_nothing(engine: Engine) -> None:
    run(engine, "InsertMany", collection="u", documents=[{"k": 1}, {"k": 1.0}])
    with pytest.raises(UniqueViolationError, match="field 'k'"):
        run(engine, "CreateUniqueIndex", collection="u", field="k")
    assert engine.list_indexes("u") == []
    run(engine, "CreateIndex", collection="u", field="k")
    with pytest.raises(UniqueViolationError):
        run(engine, "CreateUniqueIndex", collection="u", field="k")
    assert engine.list_indexes("u") == [{"name": "k", "index_type": "field", "fields": ["k"], "unique": False}]
    run(engine, "Delete", collection="u", query={"_id": 2})
    assert run(engine, "CreateUniqueIndex", collection="u", field="k") == "unique index created"
    assert engine.list_indexes("u") == [{"name": "k", "index_type": "unique", "fields": ["k"], "unique": True}]
    with pytest.raises(UniqueViolationError):
        insert(engine, "u", {"k": 1})
    # create_index on a unique field keeps it unique; dropping removes the constraint.
    assert run(engine, "CreateIndex", collection="u", field="k") == "index created"
    assert engine.list_indexes("u")[0]["unique"] is True
    assert run(engine, "DropIndex", collection="u", index="k") == "index dropped"
    insert(engine, "u", {"k": 1})


def test_failed_batch_member_leaves_the_rest_of_the_batch(engine: Engine) -> None:
    run(engine, "CreateUniqueIndex", collection="u", field="k")
    futures = [
        engine.submit({"Insert": {"collection": "u", "document": {"k": k}}}, 0.0) for k in (1, 2, 1, 3)
    ]
    outcomes = [f.exception() or f.result() for f in futures]
    assert outcomes[0] == {"id": 1} and outcomes[1] == {"id": 2} and outcomes[3] == {"id": 3}
    assert isinstance(outcomes[2], UniqueViolationError)
    assert [doc["k"] for doc in engine.find("u")] == [1, 2, 3]


# --- indexes ------------------------------------------------------------------------


def test_index_catalog(engine: Engine) -> None:
    assert run(engine, "CreateTextIndex", collection="c", fields=["title"]) == "text index created"
    assert run(engine, "CreateCompositeIndex", collection="c", fields=["a", "b"]) == {"index": "a_b"}
    assert run(engine, "CreateIndex", collection="c", field="x.y") == "index created"
    assert run(engine, "CreateUniqueIndex", collection="c", field="email") == "unique index created"
    assert run(engine, "CreateCompositeIndex", collection="c", fields=["a", "b"]) == {"index": "a_b"}
    assert run(engine, "CreateTextIndex", collection="c", fields=["other"]) == "text index created"
    assert run(engine, "CreateIndex", collection="c", field="a_b") == "index created"
    assert engine.list_indexes("c") == [
        {"name": "x.y", "index_type": "field", "fields": ["x.y"], "unique": False},
        {"name": "email", "index_type": "unique", "fields": ["email"], "unique": True},
        {"name": "a_b", "index_type": "field", "fields": ["a_b"], "unique": False},
        {"name": "a_b", "index_type": "composite", "fields": ["a", "b"], "unique": False},
        {"name": "_text", "index_type": "text", "fields": ["title"], "unique": False},
    ]
    # Lookup order: the field index first, then the composite, then _text.
    run(engine, "DropIndex", collection="c", index="a_b")
    assert [i["index_type"] for i in engine.list_indexes("c") if i["name"] == "a_b"] == ["composite"]
    run(engine, "DropIndex", collection="c", index="a_b")
    run(engine, "DropIndex", collection="c", index="_text")
    with pytest.raises(IndexNotFoundError):
        run(engine, "DropIndex", collection="c", index="_text")
    assert [i["name"] for i in engine.list_indexes("c")] == ["x.y", "email"]


def test_index_requests_are_validated(engine: Engine) -> None:
    with pytest.raises(BadRequestError, match="^missing 'field'$"):
        run(engine, "CreateIndex", collection="c", field=3)
    with pytest.raises(BadRequestError, match="^missing 'fields' array$"):
        run(engine, "CreateCompositeIndex", collection="c", fields="a")
    with pytest.raises(BadRequestError, match="^'fields' must be an array of strings$"):
        run(engine, "CreateTextIndex", collection="c", fields=["a", 1])
    with pytest.raises(InvalidQueryError, match="at least one field"):
        run(engine, "CreateCompositeIndex", collection="c", fields=[])
    with pytest.raises(BadRequestError, match="^missing 'index'$"):
        run(engine, "DropIndex", collection="c", index=None)


def test_indexes_and_data_persist(data_dir: str) -> None:
    with Engine(data_dir) as engine:
        run(engine, "CreateUniqueIndex", collection="c", field="k")
        run(engine, "CreateCompositeIndex", collection="c", fields=["a", "b"])
        run(engine, "CreateTextIndex", collection="c", fields=["t"])
        run(engine, "InsertMany", collection="c", documents=[{"k": 1, "t": "hello world"}, {"k": 2, "t": "world"}])
        before = engine.list_indexes("c")
    with Engine(data_dir) as engine:
        assert engine.list_indexes("c") == before
        with pytest.raises(UniqueViolationError):
            insert(engine, "c", {"k": 2})
        assert [doc["k"] for doc in engine.text_search("c", "hello", 10)] == [1]
        assert engine.count("c") == 2


def test_index_creation_backfills_and_never_changes_answers(engine: Engine) -> None:
    docs = [{"a": v} for v in (3, None, "x", 1.5, [1], {"b": 1}, "2024-01-01", True)] + [{}]
    run(engine, "InsertMany", collection="c", documents=docs)
    queries = [{"a": {"$gt": 1}}, {"a": None}, {"a": {"$exists": False}}, {"a": {"$lt": "a"}}]
    before = [engine.find("c", q, {"a": -1}) for q in queries]
    run(engine, "CreateIndex", collection="c", field="a")
    assert [engine.find("c", q, {"a": -1}) for q in queries] == before


# --- compaction ---------------------------------------------------------------------


def test_compact_reports_sizes_and_shrinks_the_file(engine: Engine) -> None:
    run(engine, "CreateIndex", collection="c", field="n")
    run(engine, "CreateTextIndex", collection="c", fields=["t"])
    docs = [{"n": i, "keep": i % 30 == 0, "t": f"word{i % 10} text", "pad": "x" * 500} for i in range(3000)]
    run(engine, "InsertMany", collection="c", documents=docs)
    # Scattered deletes leave sparse pages behind.
    run(engine, "Delete", collection="c", query={"keep": False})
    engine._writer_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
    before = os.path.getsize(engine.path)
    result = run(engine, "Compact", collection="c")
    assert result["docs_kept"] == 100
    assert 0 < result["new_size"] < result["old_size"] / 5
    engine._writer_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
    assert os.path.getsize(engine.path) < before / 2
    # Everything still works on the rewritten table.
    assert engine.count("c", {"n": {"$lt": 300}}) == 10
    assert len(engine.text_search("c", "word0", 1000)) == 100
    assert insert(engine, "c", {"n": -1}) == 3001
    page = store.PAGE_SIZE
    assert run(engine, "Compact", collection="fresh") == {"old_size": page, "new_size": page, "docs_kept": 0}


def test_errors_are_oxi_errors(engine: Engine) -> None:
    with pytest.raises(OxiError, match="query must be a JSON object"):
        engine.find("c", [1])
    with pytest.raises(OxiError, match="sort direction"):
        engine.find("c", {}, {"a": 2})
    insert(engine, "c", {})
    with pytest.raises(BadRequestError, match="^missing 'query'$"):
        run(engine, "Delete", collection="c")
    with pytest.raises(BadRequestError, match="^missing 'query'$"):
        run(engine, "Update", collection="c", update={"$set": {"a": 1}})
    with pytest.raises(BadRequestError, match="^missing 'update'$"):
        run(engine, "UpdateOne", collection="c", query={})
    with pytest.raises(BadRequestError, match="^'limit' must be a non-negative integer$"):
        run(engine, "Delete", collection="c", query={}, limit=-1)
    assert engine.count("c") == 1
    assert run(engine, "Delete", collection="c", query={}, limit=0) == {"deleted": 0}


# --- key columns and the table layout ------------------------------------------------


def _table_columns(engine: Engine, collection: str) -> list[str]:
    conn = engine._reader_conn()
    (tbl,) = conn.execute("SELECT tbl FROM oxi_collections WHERE name = ?", (collection,)).fetchone()
    return [row[1] for row in conn.execute(f"PRAGMA table_info({tbl})")]


def _query_plan(engine: Engine, collection: str, query: dict[str, Any]) -> str:
    from oxidb.engine.matcher import compile_query

    def plan(reader: Any) -> str:
        info = reader.collection(collection)
        compiled = reader.plan_for(info, compile_query(query))
        rows = reader.conn.execute(
            f"EXPLAIN QUERY PLAN SELECT doc FROM {info.tbl} WHERE {compiled.where}", compiled.params
        )
        return " | ".join(row[-1] for row in rows)

    return engine.read(plan)


def test_index_key_columns_follow_the_indexes(engine: Engine) -> None:
    run(engine, "CreateIndex", collection="c", field="a")
    run(engine, "CreateCompositeIndex", collection="c", fields=["b", "a.x"])
    run(engine, "InsertMany", collection="c", documents=[{"a": i % 3, "b": str(i), "x": {"y": i}} for i in range(30)])
    assert _table_columns(engine, "c") == ["_id", "_version", "doc", "doc_size", "k1_0", "k2_0", "k2_1"]
    assert "USING INDEX" in _query_plan(engine, "c", {"a": 1})
    run(engine, "DropIndex", collection="c", index="a")
    assert _table_columns(engine, "c") == ["_id", "_version", "doc", "doc_size", "k2_0", "k2_1"]
    assert len(engine.find("c", {"a": 1})) == 10
    run(engine, "CreateUniqueIndex", collection="c", field="b")
    run(engine, "Compact", collection="c")
    assert _table_columns(engine, "c") == ["_id", "_version", "doc", "doc_size", "k2_0", "k2_1", "k3_0"]
    assert "USING INDEX" in _query_plan(engine, "c", {"b": "7"})
    with pytest.raises(UniqueViolationError):
        insert(engine, "c", {"b": "7"})
    run(engine, "Update", collection="c", query={"b": "7"}, update={"$set": {"b": "seven"}})
    assert [d["_id"] for d in engine.find("c", {"b": "seven"})] == [8]
    assert engine.find("c", {"b": "7"}) == []


def _to_layout_1(data_dir: str) -> None:
    """Rewrite a closed database the way layout 1 stored it: expression indexes."""
    from oxidb.engine import keys

    conn = store.connect(store.db_path(data_dir), writer=True, synchronous="OFF")
    conn.execute("BEGIN")
    for info in store.list_collections(conn):
        for index in store.list_index_defs(conn, info.name):
            if index.kind != store.INDEX_TEXT:
                store.drop_sql_index(conn, info.tbl, index)
                exprs = ", ".join(keys.key_sql(path) for path in index.fields)
                conn.execute(f"CREATE INDEX {index.sql_name(info.tbl)} ON {info.tbl}({exprs})")
    conn.execute("DELETE FROM oxi_meta WHERE key = 'layout'")
    conn.execute("COMMIT")
    conn.close()


def test_layout_1_databases_are_migrated_on_open(data_dir: str) -> None:
    docs = [{"n": i, "s": f"v{i % 4}", "o": {"k": -i}} for i in range(40)] + [{"other": 1}]
    queries: list[dict[str, Any]] = [{"n": {"$gte": 5, "$lt": 9}}, {"s": "v1", "o.k": {"$lt": -20}}, {"n": None}]
    with Engine(data_dir, synchronous="OFF") as engine:
        run(engine, "InsertMany", collection="c", documents=docs)
        run(engine, "CreateUniqueIndex", collection="c", field="n")
        run(engine, "CreateCompositeIndex", collection="c", fields=["s", "o.k"])
        run(engine, "CreateTextIndex", collection="c", fields=["s"])
        expected = [engine.find("c", q) for q in queries]
    _to_layout_1(data_dir)
    with Engine(data_dir, synchronous="OFF") as engine:
        assert _table_columns(engine, "c") == ["_id", "_version", "doc", "doc_size", "k1_0", "k2_0", "k2_1"]
        assert engine.read(lambda reader: store.get_meta(reader.conn, "layout")) == store.LAYOUT
        assert [engine.find("c", q) for q in queries] == expected
        assert "USING INDEX c1_i2" in _query_plan(engine, "c", {"s": "v1"})
        with pytest.raises(UniqueViolationError):
            insert(engine, "c", {"n": 3})
        assert len(engine.text_search("c", "v1", 100)) == 10


def test_key_columns_are_recomputed_when_the_key_format_changes(data_dir: str) -> None:
    with Engine(data_dir, synchronous="OFF") as engine:
        run(engine, "CreateIndex", collection="c", field="n")
        run(engine, "InsertMany", collection="c", documents=[{"n": i} for i in range(10)])
    conn = store.connect(store.db_path(data_dir), writer=True, synchronous="OFF")
    (tbl,) = conn.execute("SELECT tbl FROM oxi_collections").fetchone()
    conn.execute(f"UPDATE {tbl} SET k1_0 = X'FF'")
    conn.execute("UPDATE oxi_meta SET value = 'old' WHERE key = 'key_format'")
    conn.close()
    with Engine(data_dir, synchronous="OFF") as engine:
        assert [d["n"] for d in engine.find("c", {"n": {"$gt": 6}})] == [7, 8, 9]


def test_newer_layouts_are_refused(data_dir: str) -> None:
    with Engine(data_dir, synchronous="OFF"):
        pass
    conn = store.connect(store.db_path(data_dir), writer=True, synchronous="OFF")
    conn.execute("UPDATE oxi_meta SET value = 99 WHERE key = 'layout'")
    conn.close()
    with pytest.raises(OSError, match="layout 99"):
        Engine(data_dir, synchronous="OFF").open()
