"""
Databases in the engine (L{oxidb.engine.databases}): namespaces of
collections inside the one SQLite file, created and dropped by typed
operations, and a data directory written before they existed opening with
every collection in the default database.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oxidb.engine import databases, store
from oxidb.engine.engine import Engine
from oxidb.engine.operations import (
    BUILTIN,
    CreateCollection,
    CreateDatabase,
    CreateIndex,
    CreateTextIndex,
    CreateVectorIndex,
    DropCollection,
    DropDatabase,
    Insert,
    OperationCodec,
)
from oxidb.engine.reads import Reader
from oxidb.engine.ttl import CreateTtlIndex
from oxidb.errors import (
    BadRequestError,
    CollectionExistsError,
    DatabaseExistsError,
    DatabaseNotFoundError,
    DefaultDatabaseError,
    InvalidDatabaseNameError,
    InvalidQueryError,
)

FIXTURE = Path(__file__).parent / "fixtures" / "store_v3"
NOW = 1_700_000_000.0


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[Engine]:
    e = Engine(str(tmp_path / "data"))
    e.register_operation(CreateTtlIndex)
    e.open()
    yield e
    e.close()


def test_default_database_always_listed(engine: Engine) -> None:
    assert engine.list_databases() == ["oxidb"]
    assert engine.database_collections("oxidb") == []


def test_create_and_list(engine: Engine) -> None:
    assert engine.apply(CreateDatabase("crm"), NOW) == "database 'crm' created"
    engine.apply(CreateDatabase("analytics"), NOW)
    assert engine.list_databases() == ["oxidb", "analytics", "crm"]
    with pytest.raises(DatabaseExistsError, match="^database already exists: crm$"):
        engine.apply(CreateDatabase("crm"), NOW)
    with pytest.raises(DatabaseExistsError):
        engine.apply(CreateDatabase("oxidb"), NOW)
    assert engine.apply(CreateDatabase("crm", if_not_exists=True), NOW) == "database 'crm' created"


def test_collections_are_per_database(engine: Engine) -> None:
    engine.apply(CreateDatabase("crm"), NOW)
    engine.apply(Insert("users", {"n": "default"}), NOW)
    engine.apply(Insert("crm/users", {"n": "crm"}), NOW)
    engine.apply(Insert("crm/deals", {"n": 1}), NOW)
    assert engine.find("users", {}) == [{"_id": 1, "_version": 1, "n": "default"}]
    assert engine.find("crm/users", {}) == [{"_id": 1, "_version": 1, "n": "crm"}]
    assert engine.database_collections("oxidb") == ["users"]
    assert engine.database_collections("crm") == ["deals", "users"]
    with pytest.raises(CollectionExistsError, match="^collection already exists: users$"):
        engine.apply(CreateCollection("crm/users"), NOW)


def test_unknown_database(engine: Engine) -> None:
    with pytest.raises(DatabaseNotFoundError, match="^database not found: nope$"):
        engine.apply(Insert("nope/users", {"a": 1}), NOW)
    with pytest.raises(DatabaseNotFoundError):
        engine.find("nope/users", {})
    with pytest.raises(DatabaseNotFoundError):
        engine.apply(CreateCollection("nope/users"), NOW)
    with pytest.raises(DatabaseNotFoundError):
        engine.apply(DropCollection("nope/users"), NOW)
    with pytest.raises(DatabaseNotFoundError):
        engine.database_collections("nope")
    with pytest.raises(DatabaseNotFoundError, match="^database not found: nope$"):
        engine.apply(DropDatabase("nope"), NOW)
    assert engine.apply(DropDatabase("nope", if_exists=True), NOW) == "database 'nope' dropped"
    # Nothing was created on the way.
    assert engine.list_collections() == []


def test_drop_removes_everything_of_the_database(engine: Engine) -> None:
    engine.apply(CreateDatabase("crm"), NOW)
    engine.apply(Insert("crm/users", {"name": "ada", "age": 3, "bio": "brown fox", "v": [1.0, 0.0]}), NOW)
    engine.apply(CreateIndex("crm/users", "age"), NOW)
    engine.apply(CreateTextIndex("crm/users", ["bio"]), NOW)
    engine.apply(CreateVectorIndex("crm/users", "v", 2), NOW)
    engine.apply(CreateTtlIndex("crm/events", "at", 60), NOW)
    engine.apply(Insert("users", {"name": "kept"}), NOW)
    engine.apply(CreateIndex("users", "age"), NOW)

    def tables(reader: Reader) -> set[str]:
        return {row[0] for row in reader.conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}

    before = engine.read(tables)
    assert engine.apply(DropDatabase("crm"), NOW) == "database 'crm' dropped"
    after = engine.read(tables)
    users = engine.read(lambda r: store.get_collection(r.conn, "users"))
    # Only the default database's collection table and the catalog remain.
    assert {t for t in after if not t.startswith("oxi_") and not t.startswith("sqlite_")} == {users.tbl}
    assert len(before) > len(after)
    assert engine.list_databases() == ["oxidb"]
    assert engine.list_collections() == ["users"]
    assert engine.read(lambda r: r.conn.execute("SELECT count(*) FROM oxi_indexes").fetchone()[0]) == 1
    assert engine.read(lambda r: r.conn.execute("SELECT count(*) FROM oxi_vector_specs").fetchone()[0]) == 0
    assert engine.list_indexes("users")[0]["name"] == "age"
    # A re-created database starts empty.
    engine.apply(CreateDatabase("crm"), NOW)
    assert engine.database_collections("crm") == []
    assert engine.find("crm/users", {}) == []


def test_default_database_cannot_be_dropped(engine: Engine) -> None:
    with pytest.raises(DefaultDatabaseError, match="^cannot drop the default database 'oxidb'$"):
        engine.apply(DropDatabase("oxidb"), NOW)


@pytest.mark.parametrize("name", ["", "a/b", "_x", "-x", "a b", "a.b", "é", "x" * 65, "a\x00"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidDatabaseNameError):
        CreateDatabase(name)
    with pytest.raises(InvalidDatabaseNameError):
        DropDatabase(name)


def test_invalid_name_texts() -> None:
    with pytest.raises(InvalidDatabaseNameError, match=r"^invalid database name: a b$"):
        databases.validate_name("a b")
    with pytest.raises(InvalidDatabaseNameError) as info:
        databases.validate_name("y" * 100_000)
    assert len(info.value.message) < 120
    with pytest.raises(InvalidDatabaseNameError, match="^invalid database name: 5$"):
        databases.validate_name(5)
    assert databases.validate_name("A-1_z") == "A-1_z"
    assert databases.validate_name("x" * 64) == "x" * 64


def test_qualified_names() -> None:
    assert databases.qualify("oxidb", "users") == "users"
    assert databases.qualify("crm", "users") == "crm/users"
    assert databases.split("crm/users") == ("crm", "users")
    assert databases.split("users") == ("oxidb", "users")
    with pytest.raises(InvalidQueryError):
        store.validate_collection_name("crm/users")
    assert store.validate_qualified_name("crm/users") == "crm/users"
    with pytest.raises(InvalidQueryError):
        store.validate_qualified_name("bad name!/users")
    with pytest.raises(InvalidQueryError):
        store.validate_qualified_name("crm/a/b")


def test_operations_round_trip_their_log_form() -> None:
    codec = OperationCodec(BUILTIN)
    op = CreateDatabase("crm", if_not_exists=True)
    assert op.to_json() == {"CreateDatabase": {"name": "crm", "if_not_exists": True, "v": 1}}
    assert codec.decode(op.to_json()) == op
    assert codec.decode({"DropDatabase": {"name": "crm"}}) == DropDatabase("crm")
    with pytest.raises(BadRequestError):
        codec.decode({"DropDatabase": {"name": "crm", "if_exists": "yes"}})
    with pytest.raises(InvalidDatabaseNameError):
        codec.decode({"CreateDatabase": {"name": 7}})


def test_lookup_stays_in_the_pipelines_database(engine: Engine) -> None:
    engine.apply(CreateDatabase("crm"), NOW)
    engine.apply(Insert("orders", {"u": 1, "where": "default"}), NOW)
    engine.apply(Insert("crm/orders", {"u": 1, "where": "crm"}), NOW)
    engine.apply(Insert("crm/users", {"u": 1}), NOW)
    pipeline = [{"$lookup": {"from": "orders", "localField": "u", "foreignField": "u", "as": "o"}}]
    out = engine.aggregate("crm/users", pipeline)
    assert [o["where"] for o in out[0]["o"]] == ["crm"]
    # A client cannot reach another database through a qualified `from`.
    engine.apply(Insert("users", {"u": 1}), NOW)
    with pytest.raises(InvalidQueryError):
        engine.aggregate(
            "users", [{"$lookup": {"from": "crm/orders", "localField": "u", "foreignField": "u", "as": "o"}}]
        )


def _maker() -> Any:
    spec = importlib.util.spec_from_file_location("make_store_v3", FIXTURE.parent / "make_store_v3.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_directory_from_before_databases(tmp_path: Any) -> None:
    """Every collection of a data directory written by 8973d6c is in `oxidb`, unchanged."""
    data = tmp_path / "old"
    os.makedirs(data)
    with gzip.open(FIXTURE / "oxidb.sqlite3.gz", "rb") as f, open(data / "oxidb.sqlite3", "wb") as out:
        out.write(f.read())
    with open(FIXTURE / "expected.json") as f:
        expected = json.load(f)
    engine = Engine(str(data))
    engine.register_operation(CreateTtlIndex)
    engine.open()
    try:
        assert json.loads(json.dumps(_maker().answers(engine))) == expected
        assert engine.list_databases() == ["oxidb"]
        assert engine.database_collections("oxidb") == expected["collections"]
        # The old file takes new databases, whose collections are separate.
        engine.apply(CreateDatabase("crm"), NOW)
        engine.apply(Insert("crm/people", {"name": "new"}), NOW)
        assert engine.database_collections("crm") == ["people"]
        assert len(engine.find("people", {})) == 3
        engine.apply(DropDatabase("crm"), NOW)
        assert json.loads(json.dumps(_maker().answers(engine))) == expected
    finally:
        engine.close()
