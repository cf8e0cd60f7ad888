"""
Writes beyond v0.15 (issue 14): upserts and C{$setOnInsert}, array update
operators (C{$[]}, C{$[<id>]} with array filters, positional C{$}),
C{delete} with C{limit}, C{find_and_modify} and TTL indexes; through the
in-memory server on a real engine, plus their typed operations' log form.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import fail

from oxidb.config import Config
from oxidb.engine import procedures, transactions, ttl
from oxidb.engine.engine import Engine
from oxidb.engine.operations import VERSION_KEY, OperationCodec, Update, UpdateOne
from oxidb.engine.transactions import CommitTransaction, TxUpdate
from oxidb.engine.updates import compile_update
from oxidb.engine.values import format_rfc3339
from oxidb.errors import InvalidQueryError
from oxidb.server.ttl import TtlSweeper
from oxidb.testing import MemoryServer, OxiClientProtocol, result_of

NOW = 1_700_000_000


class Conn:
    """One in-memory client connection with request helpers."""

    def __init__(self, server: MemoryServer) -> None:
        self.client: OxiClientProtocol
        self.client, self.pump = server.connect()

    def reply(self, cmd: str, **request: Any) -> Any:
        d = self.client.request({"cmd": cmd, **request})
        self.pump.flush()
        return result_of(d)

    def ok(self, cmd: str, **request: Any) -> Any:
        reply = self.reply(cmd, **request)
        assert reply.get("ok") is True, reply
        return reply["data"]

    def error(self, cmd: str, **request: Any) -> str:
        reply = self.reply(cmd, **request)
        assert reply.get("ok") is False, reply
        return str(reply["error"])

    def docs(self, collection: str = "c", **query: Any) -> list[dict[str, Any]]:
        """The collection's documents without C{_version}."""
        found = self.ok("find", collection=collection, query=query)
        return [{k: v for k, v in doc.items() if k != "_version"} for doc in found]


@pytest.fixture
def server(tmp_path: Any) -> Iterator[MemoryServer]:
    data_dir = str(tmp_path / "data")
    engine = Engine(data_dir, synchronous="OFF")
    transactions.register_appliers(engine)
    procedures.register_appliers(engine)
    ttl.register_appliers(engine)
    with engine:
        server = MemoryServer(Config(data_dir=data_dir, idle_timeout=0), engine=engine)
        server.clock.advance(NOW)
        yield server


@pytest.fixture
def conn(server: MemoryServer) -> Conn:
    return Conn(server)


# --- upsert -----------------------------------------------------------------------------


def test_upsert_inserts_query_equalities_set_on_insert_and_update(conn: Conn) -> None:
    conn.ok("insert", collection="c", doc={"sku": "a"})
    reply = conn.ok(
        "update",
        collection="c",
        query={"sku": "b", "dims.h": 2, "color": {"$eq": "red"}, "qty": {"$gt": 5}, "$and": [{"tag": "x"}]},
        update={"$set": {"n": 1}, "$inc": {"seen": 1}, "$setOnInsert": {"created": True}},
        upsert=True,
    )
    assert reply == {"modified": 0, "upserted_id": 2}
    assert conn.docs(sku="b") == [
        {"sku": "b", "dims": {"h": 2}, "color": "red", "tag": "x", "n": 1, "seen": 1, "created": True, "_id": 2}
    ]


def test_upsert_that_matches_updates_and_ignores_set_on_insert(conn: Conn) -> None:
    conn.ok("insert_many", collection="c", docs=[{"k": 1}, {"k": 1}])
    reply = conn.ok(
        "update", collection="c", query={"k": 1}, update={"$set": {"n": 2}, "$setOnInsert": {"x": 1}}, upsert=True
    )
    assert reply == {"modified": 2}
    assert conn.docs() == [{"k": 1, "n": 2, "_id": 1}, {"k": 1, "n": 2, "_id": 2}]
    assert conn.ok("update_one", collection="c", query={"k": 1}, update={"$inc": {"n": 1}}, upsert=True) == {
        "modified": 1
    }


def test_update_one_upsert_and_ids_skip_reserved_fields(conn: Conn) -> None:
    reply = conn.ok(
        "update_one", collection="u", query={"_id": 99, "name": "n"}, update={"$set": {"v": 1}}, upsert=True
    )
    assert reply == {"modified": 0, "upserted_id": 1}
    assert conn.docs("u") == [{"name": "n", "v": 1, "_id": 1}]
    assert conn.ok("update", collection="u", query={"name": "m"}, update={"$set": {"v": 2}}, upsert=False) == {
        "modified": 0
    }
    assert conn.ok("count", collection="u") == {"count": 1}


def test_upsert_errors_leave_nothing(conn: Conn) -> None:
    conn.ok("create_unique_index", collection="c", field="email")
    conn.ok("insert", collection="c", doc={"email": "a@x"})
    assert conn.error(
        "update", collection="c", query={"name": "b"}, update={"$set": {"email": "a@x"}}, upsert=True
    ).startswith("unique constraint violated")
    assert "cannot modify reserved field" in conn.error(
        "update", collection="c", query={"k": 1}, update={"$setOnInsert": {"_id": 5}}, upsert=True
    )
    assert "unknown update operator" in conn.error(
        "update", collection="c", query={"k": 1}, update={"k": 2}, upsert=True
    )
    assert conn.ok("count", collection="c") == {"count": 1}


@pytest.mark.parametrize(
    ("request_fields", "text"),
    [
        ({"upsert": "yes"}, "'upsert' must be a boolean"),
        ({"upsert": 1}, "'upsert' must be a boolean"),
        ({"array_filters": {"x": 1}}, "'array_filters' must be an array of objects"),
        ({"array_filters": [1]}, "'array_filters' must be an array of objects"),
        ({"arrayFilters": "x"}, "'array_filters' must be an array of objects"),
        ({"query": None}, "missing 'query'"),
        ({"update": None}, "missing 'update'"),
    ],
)
def test_update_option_texts(conn: Conn, request_fields: dict[str, Any], text: str) -> None:
    request = {"collection": "c", "query": {}, "update": {"$set": {"a": 1}}, **request_fields}
    for cmd in ("update", "update_one"):
        assert conn.error(cmd, **request) == text


def test_upsert_inside_a_transaction(conn: Conn) -> None:
    conn.ok("insert", collection="c", doc={"k": 1})
    conn.ok("begin_tx")
    assert conn.ok("update", collection="c", query={"k": 1}, update={"$set": {"n": 1}}, upsert=True) == "buffered"
    reply = conn.ok("update_one", collection="c", query={"k": 2}, update={"$setOnInsert": {"new": True}}, upsert=True)
    assert reply == {"upserted_id": 2}
    assert conn.ok("find_one", collection="c", query={"k": 2})["new"] is True
    assert conn.ok("commit_tx") == "committed"
    assert conn.docs() == [{"k": 1, "n": 1, "_id": 1}, {"k": 2, "new": True, "_id": 2}]


def test_update_operations_log_form() -> None:
    codec = OperationCodec([Update, UpdateOne])
    plain = Update("c", {"a": 1}, {"$set": {"b": 1}})
    assert plain.to_json() == {"Update": {"collection": "c", "query": {"a": 1}, "update": {"$set": {"b": 1}}, "v": 1}}
    upsert = UpdateOne("c", {"a": 1}, {"$set": {"x.$[e]": 1}}, True, [{"e": 1}])
    body = upsert.to_json()["UpdateOne"]
    assert body[VERSION_KEY] == 2 and body["upsert"] is True and body["array_filters"] == [{"e": 1}]
    assert codec.decode(upsert.to_json()) == upsert
    assert codec.decode(plain.to_json()) == plain
    # A version-1 reader would refuse the options rather than drop them.
    old = OperationCodec()
    old.register(type("OldUpdateOne", (UpdateOne,), {"VERSION": 1}))
    with pytest.raises(Exception, match="unsupported operation version"):
        old.decode(upsert.to_json())


def test_commit_transaction_version_follows_update_options() -> None:
    plain = CommitTransaction((), (TxUpdate("c", ((1, 1),), {"$set": {"a": 1}}),))
    assert plain.to_json()["CommitTransaction"][VERSION_KEY] == 1
    filtered = CommitTransaction((), (TxUpdate("c", ((1, 2),), {"$set": {"a.$[x]": 1}}, [{"x": 1}], None),))
    assert filtered.to_json()["CommitTransaction"][VERSION_KEY] == 2
    codec = OperationCodec([CommitTransaction])
    assert codec.decode(filtered.to_json()) == filtered


# --- array update operators ----------------------------------------------------------


def apply(update: dict[str, Any], doc: dict[str, Any], array_filters: Any = None, query: Any = None) -> Any:
    from oxidb.engine.matcher import compile_query

    matcher = None if query is None else compile_query(query)
    return compile_update(update, array_filters).apply(doc, NOW, matcher)


def test_all_elements_and_filtered_elements() -> None:
    doc = {"a": [1, 5, 9], "items": [{"q": 1, "t": []}, {"q": 7, "t": [1]}]}
    assert apply({"$inc": {"a.$[]": 1}}, doc)["a"] == [2, 6, 10]
    assert apply({"$set": {"a.$[big]": 0}}, doc, [{"big": {"$gte": 5}}])["a"] == [1, 0, 0]
    assert apply({"$set": {"items.$[i].ok": True}}, doc, [{"i.q": {"$gt": 5}}])["items"] == [
        {"q": 1, "t": []},
        {"q": 7, "t": [1], "ok": True},
    ]
    assert apply({"$push": {"items.$[].t": 2}}, doc)["items"] == [{"q": 1, "t": [2]}, {"q": 7, "t": [1, 2]}]
    assert apply({"$unset": {"a.$[x]": ""}}, doc, [{"x": 5}])["a"] == [1, None, 9]
    nested = {"m": [[1, 2], [3]]}
    assert apply({"$mul": {"m.$[].$[]": 10}}, nested)["m"] == [[10, 20], [30]]
    assert doc["a"] == [1, 5, 9]  # never mutated


def test_positional_operator_uses_the_query_elem_match() -> None:
    doc = {"grades": [70, 85, 90], "items": [{"sku": "a", "n": 1}, {"sku": "b", "n": 1}]}
    assert apply({"$set": {"grades.$": 0}}, doc, query={"grades": {"$elemMatch": {"$gte": 80}}})["grades"] == [
        70,
        0,
        90,
    ]
    query = {"$and": [{"items": {"$elemMatch": {"sku": "b"}}}]}
    assert apply({"$inc": {"items.$.n": 5}}, doc, query=query)["items"][1] == {"sku": "b", "n": 6}
    with pytest.raises(InvalidQueryError, match="positional operator did not find the match"):
        apply({"$set": {"grades.$": 0}}, doc, query={"grades": {"$size": 3}})


@pytest.mark.parametrize(
    ("update", "array_filters", "text"),
    [
        ({"$set": {"a.$[x]": 1}}, None, "no array filter found for identifier 'x' in path 'a.$[x]'"),
        ({"$set": {"a.$[]": 1}}, [{"x": 1}], "the array filter for identifier 'x' was not used in the update"),
        ({"$set": {"a.$[x]": 1}}, [{"x": 1}, {"x": 2}], "array filter identifier 'x' is defined more than once"),
        ({"$set": {"a.$[x]": 1}}, [{"x": 1, "y": 1}], "an array filter must use a single top-level identifier"),
        ({"$set": {"a.$[X]": 1}}, [{"X": 1}], "array filter identifier 'X' must start with a lower-case letter"),
        ({"$set": {"a.$[x]": 1}}, [{}], "each array filter must be a non-empty object"),
        ({"$set": {"a.$[x]": 1}}, "x", "arrayFilters must be an array of objects"),
        ({"$set": {"a.$[x]": 1}}, [{"x": {"$bogus": 1}}], "unknown operator"),
    ],
)
def test_array_filter_errors(update: dict[str, Any], array_filters: Any, text: str) -> None:
    with pytest.raises(InvalidQueryError, match=text.replace("$", r"\$").replace("[", r"\[")):
        compile_update(update, array_filters)


def test_array_paths_need_arrays_and_rename_refuses_them() -> None:
    with pytest.raises(InvalidQueryError, match="the path 'a' must exist in the document"):
        apply({"$set": {"a.$[]": 1}}, {"a": 3})
    with pytest.raises(InvalidQueryError, match="the path 'a' must exist in the document"):
        apply({"$set": {"a.$[]": 1}}, {})
    with pytest.raises(InvalidQueryError, match="rename does not support array update operators"):
        apply({"$rename": {"a.$[]": "b"}}, {"a": [1]})
    with pytest.raises(InvalidQueryError, match="cannot modify reserved field"):
        apply({"$set": {"_id.$[]": 1}}, {"_id": [1]})


def test_array_filters_on_the_wire_and_in_a_transaction(conn: Conn) -> None:
    conn.ok("insert_many", collection="c", docs=[{"s": [1, 8, 9]}, {"s": [10]}])
    reply = conn.ok("update", collection="c", query={}, update={"$set": {"s.$[hi]": 0}}, arrayFilters=[{"hi": 9}])
    assert reply == {"modified": 2}
    assert [d["s"] for d in conn.docs()] == [[1, 8, 0], [10]]
    conn.ok("begin_tx")
    conn.ok("update", collection="c", query={}, update={"$inc": {"s.$[x]": 100}}, array_filters=[{"x": {"$gte": 8}}])
    conn.ok(
        "update_one",
        collection="c",
        query={"s": {"$elemMatch": {"$lt": 100}}},
        update={"$set": {"s.$": -1}},
    )
    assert conn.ok("commit_tx") == "committed"
    assert [d["s"] for d in conn.docs()] == [[-1, 108, 0], [110]]
    assert "no array filter found" in conn.error(
        "update", collection="c", query={}, update={"$set": {"s.$[y]": 1}}, array_filters=[]
    )


def test_delete_limit(conn: Conn) -> None:
    conn.ok("insert_many", collection="c", docs=[{"k": 1}] * 5)
    assert conn.ok("delete", collection="c", query={"k": 1}, limit=2) == {"deleted": 2}
    assert [d["_id"] for d in conn.docs()] == [3, 4, 5]
    assert conn.ok("delete", collection="c", query={"k": 1}, limit=0) == {"deleted": 0}
    assert conn.error("delete", collection="c", query={}, limit="2") == "'limit' must be a non-negative integer"
    assert conn.error("delete", collection="c", query={}, limit=2**64) == "'limit' must be a non-negative integer"
    assert conn.ok("delete", collection="c", query={}, limit=2**63 - 1) == {"deleted": 3}


# --- find_and_modify -------------------------------------------------------------------


def test_find_and_modify_returns_old_or_new_document(conn: Conn) -> None:
    conn.ok("insert_many", collection="c", docs=[{"k": 1, "n": 5}, {"k": 1, "n": 3}, {"k": 2, "n": 9}])
    old = conn.ok("find_and_modify", collection="c", query={"k": 1}, update={"$inc": {"n": 10}})
    assert old == {"k": 1, "n": 5, "_id": 1, "_version": 1}
    new = conn.ok("find_and_modify", collection="c", query={"k": 1}, update={"$inc": {"n": 1}}, sort={"n": 1}, new=True)
    assert new == {"k": 1, "n": 4, "_id": 2, "_version": 2}
    projected = conn.ok(
        "find_and_modify",
        collection="c",
        query={},
        update={"$set": {"top": True}},
        sort={"n": -1},
        fields={"n": 1, "_id": 0},
        new=True,
    )
    assert projected == {"n": 15}
    excluded = conn.ok("find_and_modify", collection="c", query={"k": 2}, update={"$set": {"x": 1}}, fields={"n": 0})
    assert excluded == {"k": 2, "_id": 3, "_version": 1}
    assert conn.ok("find_and_modify", collection="c", query={"k": 7}, update={"$set": {"x": 1}}) is None


def test_find_and_modify_remove_and_upsert(conn: Conn) -> None:
    conn.ok("insert_many", collection="q", docs=[{"job": "a", "p": 1}, {"job": "b", "p": 9}])
    taken = conn.ok("find_and_modify", collection="q", query={}, sort={"p": -1}, remove=True)
    assert taken["job"] == "b"
    assert [d["job"] for d in conn.docs("q")] == ["a"]
    assert conn.ok("find_and_modify", collection="q", query={"job": "z"}, remove=True) is None
    none = conn.ok("find_and_modify", collection="q", query={"job": "c"}, update={"$set": {"p": 2}}, upsert=True)
    assert none is None
    made = conn.ok(
        "find_and_modify",
        collection="q",
        query={"job": "d"},
        update={"$setOnInsert": {"p": 0}},
        upsert=True,
        new=True,
    )
    assert made == {"job": "d", "p": 0, "_id": 4, "_version": 1}
    assert [d["job"] for d in conn.docs("q")] == ["a", "c", "d"]
    positional = conn.ok(
        "find_and_modify",
        collection="q",
        query={"job": "a"},
        update={"$set": {"tags": ["x", "y"]}},
        new=True,
        fields={"tags": 1},
    )
    assert positional == {"_id": 1, "tags": ["x", "y"]}
    conn.ok(
        "find_and_modify",
        collection="q",
        query={"tags": {"$elemMatch": {"$eq": "y"}}},
        update={"$set": {"tags.$": "Y", "tags.$[t]": "X"}},
        array_filters=[{"t": "x"}],
    )
    assert conn.docs("q", job="a")[0]["tags"] == ["X", "Y"]


@pytest.mark.parametrize(
    ("request_fields", "text"),
    [
        ({"query": None}, "missing 'query'"),
        ({"update": None}, "missing 'update'"),
        ({"remove": True}, "find_and_modify takes 'update' or 'remove', not both"),
        ({"remove": "yes"}, "'remove' must be a boolean"),
        ({"new": 1}, "'new' must be a boolean"),
        ({"upsert": "no"}, "'upsert' must be a boolean"),
        ({"remove": True, "update": None, "upsert": True}, "'upsert' cannot be used with 'remove'"),
        ({"remove": True, "update": None, "new": True}, "'new' cannot be used with 'remove'"),
        ({"sort": [1]}, "'sort' must be an object"),
        ({"sort": {"a": 2}}, "invalid query: sort direction must be 1 (asc) or -1 (desc)"),
        ({"fields": "a"}, "'fields' must be an object"),
        ({"fields": {"a": 1, "b": 0}}, "invalid query: projection cannot mix inclusion and exclusion"),
        ({"fields": {"a": "x"}}, "invalid query: projection value for 'a' must be 0, 1, true or false"),
        ({"array_filters": [2]}, "'array_filters' must be an array of objects"),
        (
            {"update": {"$set": {"a.$[x]": 1}}},
            "invalid query: no array filter found for identifier 'x' in path 'a.$[x]'",
        ),
        ({"update": []}, "invalid query: update must be an object"),
        ({"collection": "_procedures"}, "invalid query: collection name is reserved for the server: _procedures"),
    ],
)
def test_find_and_modify_bad_input(conn: Conn, request_fields: dict[str, Any], text: str) -> None:
    conn.ok("insert", collection="c", doc={"a": 1})
    request = {"collection": "c", "query": {}, "update": {"$set": {"a": 2}}, **request_fields}
    assert conn.error("find_and_modify", **request) == text
    assert conn.docs() == [{"a": 1, "_id": 1}]


def test_find_and_modify_is_refused_in_a_transaction(conn: Conn) -> None:
    conn.ok("begin_tx")
    text = conn.error("find_and_modify", collection="c", query={}, update={"$set": {"a": 1}})
    assert text == "find_and_modify is not supported inside a transaction"
    assert conn.ok("rollback_tx") == "rolled back"


def test_find_and_modify_log_form() -> None:
    from oxidb.engine.operations import FindAndModify

    codec = OperationCodec([FindAndModify])
    op = FindAndModify("c", {"k": 1}, None, True, False, False, {"p": -1}, {"p": 1}, None)
    assert codec.decode(op.to_json()) == op
    with pytest.raises(Exception, match="missing 'update'"):
        codec.decode({"FindAndModify": {"collection": "c", "query": {}}})


# --- TTL indexes ------------------------------------------------------------------------


class SpyExecutor:
    """The server's executor, recording writes; reads fail while C{broken}."""

    def __init__(self, server: MemoryServer) -> None:
        self.inner = server.services.executor
        self.writes: list[Any] = []
        self.broken = False

    def read(self, fn: Any, *args: Any) -> Any:
        if self.broken:
            return fail(RuntimeError("disk on fire"))
        return self.inner.read(fn, *args)

    def write(self, op: Any) -> Any:
        self.writes.append(op)
        return self.inner.write(op)


def sweeper(server: MemoryServer, executor: Any = None, **kwargs: Any) -> TtlSweeper:
    executor = server.services.executor if executor is None else executor
    service = TtlSweeper(server.clock, executor, server.services.engine, interval=60, **kwargs)
    service.startService()
    return service


def test_ttl_index_is_listed_dropped_and_replaced(conn: Conn) -> None:
    conn.ok("create_index", collection="s", field="at")
    assert conn.ok("create_ttl_index", collection="s", field="at", expireAfterSeconds=30) == "ttl index created"
    assert conn.ok("create_ttl_index", collection="s", field="at", expireAfterSeconds=60) == "ttl index created"
    listed = conn.ok("list_indexes", collection="s")
    assert listed[-1] == {
        "name": "_ttl_at",
        "index_type": "ttl",
        "fields": ["at"],
        "unique": False,
        "expireAfterSeconds": 60,
    }
    assert [i["index_type"] for i in listed] == ["field", "ttl"]
    assert conn.ok("drop_index", collection="s", index="_ttl_at") == "index dropped"
    assert conn.error("drop_index", collection="s", index="_ttl_at") == "index not found: _ttl_at"
    assert [i["index_type"] for i in conn.ok("list_indexes", collection="s")] == ["field"]
    conn.ok("create_ttl_index", collection="s", field="at", expireAfterSeconds=1)
    conn.ok("drop_collection", collection="s")
    conn.ok("create_collection", collection="s")
    assert conn.ok("list_indexes", collection="s") == []


@pytest.mark.parametrize(
    ("request_fields", "text"),
    [
        ({"field": None}, "missing 'field'"),
        ({"field": ""}, "missing 'field'"),
        ({"field": 3}, "missing 'field'"),
        ({"expireAfterSeconds": None}, "'expireAfterSeconds' must be a non-negative integer (at most 2147483647)"),
        ({"expireAfterSeconds": -1}, "'expireAfterSeconds' must be a non-negative integer (at most 2147483647)"),
        ({"expireAfterSeconds": 1.5}, "'expireAfterSeconds' must be a non-negative integer (at most 2147483647)"),
        ({"expireAfterSeconds": "60"}, "'expireAfterSeconds' must be a non-negative integer (at most 2147483647)"),
        ({"expireAfterSeconds": 2**31}, "'expireAfterSeconds' must be a non-negative integer (at most 2147483647)"),
        ({"expireAfterSeconds": 2**70}, "'expireAfterSeconds' must be a non-negative integer (at most 2147483647)"),
        ({"field": "_id"}, "invalid query: a TTL index cannot be on the reserved field '_id'"),
        ({"field": "_version.x"}, "invalid query: a TTL index cannot be on the reserved field '_version.x'"),
        ({"collection": "_schedules"}, "invalid query: collection name is reserved for the server: _schedules"),
        ({"collection": None}, "missing 'collection'"),
    ],
)
def test_create_ttl_index_bad_input(conn: Conn, request_fields: dict[str, Any], text: str) -> None:
    request = {"collection": "s", "field": "at", "expireAfterSeconds": 60, **request_fields}
    assert conn.error("create_ttl_index", **request) == text
    assert conn.ok("list_collections") == []


def test_sweeper_deletes_expired_dates_only(server: MemoryServer, conn: Conn) -> None:
    conn.ok("create_ttl_index", collection="s", field="at", expireAfterSeconds=100)
    old, fresh = format_rfc3339(NOW - 150), format_rfc3339(NOW - 10)
    conn.ok(
        "insert_many",
        collection="s",
        docs=[
            {"n": 1, "at": old},
            {"n": 2, "at": fresh},
            {"n": 3, "at": NOW - 10_000},  # a number is not a date
            {"n": 4, "at": "yesterday"},
            {"n": 5},
            {"n": 6, "at": "2001-01-01T00:00:00Z"},
        ],
    )
    service = sweeper(server)
    server.clock.advance(59)
    assert service.passes == 0
    server.clock.advance(1)
    assert service.passes == 1 and service.deleted == 2
    assert [d["n"] for d in conn.docs("s")] == [2, 3, 4, 5]
    server.clock.advance(60)  # NOW+120: "fresh" is 130 s old
    assert [d["n"] for d in conn.docs("s")] == [3, 4, 5]
    conn.ok("insert", collection="s", doc={"n": 7, "at": format_rfc3339(NOW)})
    conn.ok("update", collection="s", query={"n": 7}, update={"$currentDate": {"at": True}})
    server.clock.advance(60)
    assert [d["n"] for d in conn.docs("s")] == [3, 4, 5, 7]
    service.stopService()


def test_sweeper_passes_are_bounded_batches(server: MemoryServer, conn: Conn) -> None:
    conn.ok("create_ttl_index", collection="s", field="at", expireAfterSeconds=0)
    conn.ok("create_ttl_index", collection="t", field="at", expireAfterSeconds=0)
    conn.ok("insert_many", collection="s", docs=[{"at": format_rfc3339(NOW)}] * 25)
    conn.ok("insert_many", collection="t", docs=[{"at": format_rfc3339(NOW)}] * 3)
    spy = SpyExecutor(server)
    service = sweeper(server, spy, batch_size=4, max_batches=3)
    server.clock.advance(60)
    assert [(op.collection, len(op.query["_id"]["$in"])) for op in spy.writes] == [
        ("s", 4),
        ("t", 3),
        ("s", 4),
        ("s", 4),
    ]
    assert conn.ok("count", collection="s") == {"count": 13}
    server.clock.advance(60)
    server.clock.advance(60)
    assert conn.ok("count", collection="s") == {"count": 0}
    assert service.deleted == 28


def test_sweeper_skips_when_not_leader_and_survives_failures(server: MemoryServer, conn: Conn) -> None:
    conn.ok("create_ttl_index", collection="s", field="at", expireAfterSeconds=0)
    conn.ok("insert", collection="s", doc={"at": format_rfc3339(NOW - 1)})
    leader = [False]
    spy = SpyExecutor(server)
    service = sweeper(server, spy, should_run=lambda: leader[0])
    server.clock.advance(60)
    assert service.passes == 0 and conn.ok("count", collection="s") == {"count": 1}
    leader[0] = True
    spy.broken = True
    server.clock.advance(60)
    assert service.passes == 1 and service.deleted == 0
    spy.broken = False
    server.clock.advance(60)
    assert service.deleted == 1 and conn.ok("count", collection="s") == {"count": 0}
    assert service.stopService().called


def test_ttl_operation_log_form() -> None:
    codec = OperationCodec(ttl.OPERATIONS)
    op = ttl.CreateTtlIndex("s", "at", 60)
    assert op.to_json() == {"CreateTtlIndex": {"collection": "s", "field": "at", "expire_after_seconds": 60, "v": 1}}
    assert codec.decode(op.to_json()) == op
    with pytest.raises(Exception, match="expireAfterSeconds"):
        codec.decode({"CreateTtlIndex": {"collection": "s", "field": "at", "expire_after_seconds": -5}})


def test_set_on_insert_is_not_expanded_unless_inserting() -> None:
    doc = {"k": 1}
    assert apply({"$setOnInsert": {"a.$[]": 1}, "$set": {"b": 2}}, doc) == {"k": 1, "b": 2}
    with pytest.raises(InvalidQueryError, match="cannot modify reserved field '_id'"):
        apply({"$setOnInsert": {"_id": 1}}, doc)
