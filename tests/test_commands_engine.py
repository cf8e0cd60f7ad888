"""
The engine's wire commands: request validation texts (server.md 3.2), reply
shapes (engine.md 0), registry rows, the transaction seam, and a few end to
end through the in-memory server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from twisted.internet.defer import maybeDeferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from oxidb.commands import CommandContext, IServices, aggregation, collections, crud, default_registry, indexes
from oxidb.engine.engine import Engine
from oxidb.engine.operations import Delete, DeleteOne, Insert, InsertMany, Operation, Update, UpdateOne
from oxidb.errors import BadRequestError, OxiError, UnavailableError
from oxidb.server.session import Session
from oxidb.testing import MemoryServer, SynchronousExecutor, result_of
from oxidb.wire.codec import RawJSON, WireFormat, decode_reply, encode_ok

ENGINE_COMMANDS = {
    "create_collection": True, "list_collections": False, "drop_collection": True, "compact": True,
    "insert": True, "insert_many": True, "find": False, "find_one": False, "update": True,
    "update_one": True, "delete": True, "delete_one": True, "count": False, "create_index": True,
    "create_unique_index": True, "create_composite_index": True, "create_text_index": True,
    "list_indexes": False, "drop_index": True, "text_search": False, "aggregate": False,
}


@implementer(IServices)
@attrs.define
class Services:
    engine: Any
    clock: Clock = attrs.Factory(Clock)
    executor: Any = None


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[Engine]:
    with Engine(str(tmp_path / "data"), synchronous="OFF") as engine:
        yield engine


@pytest.fixture
def ctx(engine: Engine) -> CommandContext:
    services = Services(engine)
    services.clock.advance(1_700_000_000)
    services.executor = SynchronousExecutor(services)
    return CommandContext(Session.anonymous_admin(), services)


def run_row(ctx: CommandContext, cmd: str, request: dict[str, Any]) -> Any:
    """The row's schema, then its handler, as the dispatcher runs them."""
    command = default_registry().get(cmd)
    assert command is not None, cmd
    command.schema.validate(request)
    return command.handler(ctx, request)


def call(ctx: CommandContext, cmd: str, **request: Any) -> Any:
    """The command's reply data as a JSON client receives it."""
    data = result_of(maybeDeferred(run_row, ctx, cmd, {"cmd": cmd, **request}))
    return decode_reply(encode_ok(WireFormat.JSON, data))["data"]


def error(ctx: CommandContext, cmd: str, **request: Any) -> str:
    with pytest.raises(OxiError) as raised:
        call(ctx, cmd, **request)
    return str(raised.value)


def test_registry_rows() -> None:
    registry = default_registry()
    for name, writes in ENGINE_COMMANDS.items():
        command = registry.get(name)
        assert command is not None, name
        assert command.writes is writes, name
        assert not command.pre_auth
    assert registry.get("list_collections").audit_collection is None  # type: ignore[union-attr]
    names = {c.name for module in (aggregation, collections, crud, indexes) for c in module.COMMANDS}
    assert names == set(ENGINE_COMMANDS)


def test_reply_shapes(ctx: CommandContext) -> None:
    assert call(ctx, "create_collection", collection="users") == "collection created"
    assert call(ctx, "insert", collection="users", doc={"name": "Ada", "age": 36}) == {"id": 1}
    assert call(ctx, "insert_many", collection="users", docs=[{"name": "Bob", "age": 25}, {"name": "Cy"}]) == [2, 3]
    assert call(ctx, "find", collection="users", query={"age": {"$gte": 30}}) == [
        {"name": "Ada", "age": 36, "_id": 1, "_version": 1}
    ]
    assert [d["_id"] for d in call(ctx, "find", collection="users", sort={"age": -1}, skip=1, limit=1)] == [2]
    assert call(ctx, "find_one", collection="users", query={"name": "nobody"}) is None
    assert call(ctx, "find_one", collection="users")["_id"] == 1
    assert call(ctx, "count", collection="users") == {"count": 3}
    assert call(ctx, "count", collection="users", query=None) == {"count": 3}
    assert call(ctx, "update", collection="users", query={}, update={"$inc": {"n": 1}}) == {"modified": 3}
    assert call(ctx, "update_one", collection="users", query={}, update={"$inc": {"n": 1}}) == {"modified": 1}
    assert call(ctx, "create_index", collection="users", field="age") == "index created"
    assert call(ctx, "create_unique_index", collection="users", field="name") == "unique index created"
    assert call(ctx, "create_composite_index", collection="users", fields=["name", "age"]) == {"index": "name_age"}
    assert call(ctx, "create_text_index", collection="users", fields=["name"]) == "text index created"
    assert [i["index_type"] for i in call(ctx, "list_indexes", collection="users")] == [
        "field",
        "unique",
        "composite",
        "text",
    ]
    hits = call(ctx, "text_search", collection="users", query="ada")
    assert [(h["_id"], type(h["_score"])) for h in hits] == [(1, float)]
    assert call(ctx, "drop_index", collection="users", index="name_age") == "index dropped"
    assert call(ctx, "aggregate", collection="users", pipeline=[{"$group": {"_id": None, "n": {"$sum": 1}}}]) == [
        {"_id": None, "n": 3}
    ]
    assert call(ctx, "delete_one", collection="users", query={}) == {"deleted": 1}
    assert call(ctx, "delete", collection="users", query={"age": 25}) == {"deleted": 1}
    assert call(ctx, "delete", collection="users", query={}, limit=0) == {"deleted": 0}
    assert set(call(ctx, "compact", collection="users")) == {"old_size", "new_size", "docs_kept"}
    assert call(ctx, "list_collections") == ["users"]
    assert call(ctx, "drop_collection", collection="users") == "collection dropped"
    assert call(ctx, "drop_collection", collection="users") == "collection dropped"


def test_writes_take_the_time_from_the_clock(ctx: CommandContext) -> None:
    call(ctx, "insert", collection="c", doc={})
    call(ctx, "update", collection="c", query={}, update={"$currentDate": {"at": True}})
    assert call(ctx, "find_one", collection="c")["at"] == "2023-11-14T22:13:20+00:00"


@pytest.mark.parametrize(
    "cmd, request_, text",
    [
        ("insert", {"doc": {}}, "missing 'collection'"),
        ("insert", {"collection": 5, "doc": {}}, "missing 'collection'"),
        ("insert", {"collection": "c"}, "missing 'doc'"),
        ("insert", {"collection": "c", "doc": None}, "missing 'doc'"),
        ("insert", {"collection": "c", "doc": [1]}, "document must be a JSON object"),
        ("insert_many", {"collection": "c"}, "missing or invalid 'docs' array"),
        ("insert_many", {"collection": "c", "docs": {"a": 1}}, "missing or invalid 'docs' array"),
        ("insert_many", {"collection": "c", "docs": [{}, 1]}, "document must be a JSON object"),
        ("find", {}, "missing 'collection'"),
        ("find", {"collection": "c", "query": "x"}, "invalid query: query must be a JSON object"),
        ("find", {"collection": "c", "sort": {"a": 0}}, "invalid query: sort direction must be 1 (asc) or -1 (desc)"),
        ("find_one", {"collection": "c", "query": {"a": {"$nope": 1}}}, "invalid query: unknown operator: $nope"),
        ("count", {"collection": "c", "query": {"$or": 1}}, "invalid query: $or must be an array"),
        ("update", {"collection": "c", "update": {"$set": {"a": 1}}}, "missing 'query'"),
        ("update", {"collection": "c", "query": {}}, "missing 'update'"),
        ("update", {"collection": "c", "query": {}, "update": []}, "invalid query: update must be an object"),
        (
            "update_one",
            {"collection": "c", "query": {}, "update": {}},
            "invalid query: update must contain at least one operator",
        ),
        ("delete", {"collection": "c"}, "missing 'query'"),
        ("delete", {"collection": "c", "query": {}, "limit": -1}, "'limit' must be a non-negative integer"),
        ("delete", {"collection": "c", "query": {}, "limit": 1.5}, "'limit' must be a non-negative integer"),
        ("delete_one", {"collection": "c", "query": None}, "missing 'query'"),
        ("create_collection", {"collection": ""}, "invalid query: invalid collection name: "),
        ("create_index", {"collection": "c"}, "missing 'field'"),
        ("create_unique_index", {"collection": "c", "field": 1}, "missing 'field'"),
        ("create_composite_index", {"collection": "c"}, "missing 'fields' array"),
        ("create_composite_index", {"collection": "c", "fields": "a"}, "missing 'fields' array"),
        ("create_text_index", {"collection": "c", "fields": ["a", None]}, "'fields' must be an array of strings"),
        ("drop_index", {"collection": "c"}, "missing 'index'"),
        ("drop_index", {"collection": "c", "index": "nope"}, "index not found: nope"),
        ("list_indexes", {}, "missing 'collection'"),
        ("text_search", {"collection": "c"}, "missing 'query' string"),
        ("text_search", {"collection": "c", "query": 5}, "missing 'query' string"),
        (
            "text_search",
            {"collection": "c", "query": "x"},
            "invalid query: no text index on this collection; create one with create_text_index",
        ),
        ("aggregate", {"collection": "c"}, "missing 'pipeline'"),
        ("aggregate", {"collection": "c", "pipeline": {}}, "invalid pipeline: pipeline must be an array"),
        ("compact", {}, "missing 'collection'"),
        ("drop_collection", {}, "missing 'collection'"),
    ],
)
def test_request_errors(ctx: CommandContext, cmd: str, request_: dict[str, Any], text: str) -> None:
    assert error(ctx, cmd, **request_) == text


def test_ignored_options(ctx: CommandContext) -> None:
    call(ctx, "insert_many", collection="c", docs=[{"n": i} for i in range(5)])
    everything = call(ctx, "find", collection="c")
    for bad in (-1, 1.5, "2", True, None):
        assert call(ctx, "find", collection="c", skip=bad, limit=bad, sort=bad) == everything
    assert call(ctx, "find", collection="c", limit=0) == []
    call(ctx, "create_text_index", collection="c", fields=["w"])
    call(ctx, "insert_many", collection="c", docs=[{"w": "word"}] * 12)
    assert len(call(ctx, "text_search", collection="c", query="word", limit="many")) == 10
    assert len(call(ctx, "text_search", collection="c", query="word", limit=11)) == 11


def test_no_engine(ctx: CommandContext) -> None:
    ctx.services.engine = None
    with pytest.raises(UnavailableError):
        call(ctx, "find", collection="c")


@attrs.define
class RecordingTx:
    calls: list[Any] = attrs.Factory(list)

    def buffer(self, ctx: CommandContext, op: Operation) -> str:
        self.calls.append(op)
        return "buffered"

    def find(self, ctx: CommandContext, collection: str, query: Any, sort: Any, skip: Any, limit: Any) -> list[Any]:
        self.calls.append(("find", collection, query, sort))
        return []

    def find_one(self, ctx: CommandContext, collection: str, query: Any) -> Any:
        self.calls.append(("find_one", collection, query))
        return succeed(None)

    def count(self, ctx: CommandContext, collection: str, query: Any) -> Any:
        self.calls.append(("count", collection, query))
        return succeed(0)


def test_transaction_seam(ctx: CommandContext, engine: Engine) -> None:
    tx = RecordingTx()
    ctx.session.tx = tx
    assert call(ctx, "insert", collection="c", doc={"a": 1}) == "buffered"
    assert call(ctx, "insert_many", collection="c", docs=[{}]) == "buffered"
    assert call(ctx, "update", collection="c", query={}, update={"$set": {"a": 2}}) == "buffered"
    assert call(ctx, "delete", collection="c", query={}) == "buffered"
    assert call(ctx, "find", collection="c", sort={"a": 1}) == []
    # Unlike v0.15, none of these bypasses the transaction.
    assert call(ctx, "update_one", collection="c", query={}, update={"$set": {"a": 2}}) == "buffered"
    assert call(ctx, "delete_one", collection="c", query={}) == "buffered"
    assert call(ctx, "find_one", collection="c") is None
    assert call(ctx, "count", collection="c") == {"count": 0}
    assert tx.calls == [
        Insert(collection="c", document={"a": 1}),
        InsertMany(collection="c", documents=[{}]),
        Update(collection="c", query={}, update={"$set": {"a": 2}}),
        Delete(collection="c", query={}),
        ("find", "c", {}, {"a": 1}),
        UpdateOne(collection="c", query={}, update={"$set": {"a": 2}}),
        DeleteOne(collection="c", query={}),
        ("find_one", "c", {}),
        ("count", "c", {}),
    ]
    assert engine.list_collections() == []
    # Validation happens before anything is buffered.
    with pytest.raises(BadRequestError):
        call(ctx, "insert", collection="c")
    assert len(tx.calls) == 9


# --- end to end through the protocol stack -------------------------------------------


def test_through_the_memory_server(engine: Engine) -> None:
    server = MemoryServer(engine=engine)
    client, pump = server.connect()
    replies = [
        client.request({"cmd": "insert", "collection": "users", "doc": {"name": "Ada"}}),
        client.request({"cmd": "insert_many", "collection": "users", "docs": [{"name": "Bob"}]}),
        client.request({"cmd": "find", "collection": "users", "query": {"name": {"$regex": "^b", "$options": "i"}}}),
        client.request({"cmd": "count", "collection": "users"}),
        client.request({"cmd": "insert", "collection": "users"}),
        client.request({"cmd": "find", "collection": "users", "query": {"x": {"$bogus": 1}}}),
    ]
    pump.flush()
    assert [result_of(d) for d in replies] == [
        {"ok": True, "data": {"id": 1}},
        {"ok": True, "data": [2]},
        {"ok": True, "data": [{"name": "Bob", "_id": 2, "_version": 1}]},
        {"ok": True, "data": {"count": 2}},
        {"ok": False, "error": "missing 'doc'"},
        {"ok": False, "error": "invalid query: unknown operator: $bogus"},
    ]


# --- raw document replies ----------------------------------------------------------------

AWKWARD_DOCS = [
    {
        "s": 'é\u2028"\\\n\x01😀',
        "floats": [1.5e300, -0.0, 0.1, 5e-324, 1e16],
        "ints": [2**64 - 1, -(2**63), 0],
        "nested": {"a": [1, {"b": None, "c": True}], "": {}},
        "_id": "client id is replaced",
    },
    {"_version": 7, "k": False, "empty": []},
]


def _handler_data(ctx: CommandContext, cmd: str, **request: Any) -> Any:
    return result_of(maybeDeferred(run_row, ctx, cmd, {"cmd": cmd, **request}))


def test_find_replies_embed_stored_texts(ctx: CommandContext, engine: Engine) -> None:
    """
    Outside a transaction find and find_one hand the stored texts to the
    encoder; every wire format gets the bytes the parsed documents give.
    """
    call(ctx, "insert_many", collection="c", docs=AWKWARD_DOCS)
    cases: list[tuple[str, dict[str, Any], Any]] = [
        ("find", {}, engine.find("c")),
        ("find", {"sort": {"k": -1}, "limit": 1}, engine.find("c", None, {"k": -1}, None, 1)),
        ("find", {"query": {"nested.a": {"$size": 2}}}, engine.find("c", {"nested.a": {"$size": 2}})),
        ("find", {"query": {"nope": 1}}, []),
        ("find", {"collection": "missing"}, []),
        ("find_one", {"query": {"k": False}}, engine.find_one("c", {"k": False})),
        ("find_one", {"query": {"k": True}}, None),
    ]
    for cmd, request, parsed in cases:
        data = _handler_data(ctx, cmd, **{"collection": "c", **request})
        if parsed is None:
            assert data is None
            continue
        assert type(data) is RawJSON
        for fmt in WireFormat:
            assert encode_ok(fmt, data) == encode_ok(fmt, parsed), (cmd, request, fmt)
            # Nested, as in a pipeline reply, next to an integer JSON's fast
            # encoder refuses.
            nested = [{"ok": True, "data": data}, 2**70]
            assert encode_ok(fmt, nested) == encode_ok(fmt, [{"ok": True, "data": parsed}, 2**70])


def test_raw_json_values() -> None:
    raw = RawJSON('{"a":[1,2.5,"x"]}')
    assert raw == RawJSON('{"a":[1,2.5,"x"]}') and raw != RawJSON("{}") and raw != '{"a":[1,2.5,"x"]}'
    assert len({raw, RawJSON('{"a":[1,2.5,"x"]}')}) == 1
    assert raw.value() == {"a": [1, 2.5, "x"]}
    for fmt in WireFormat:
        with pytest.raises(TypeError):
            encode_ok(fmt, [raw, object()])
