"""
The server's own collections (names starting with C{_}: C{_procedures},
C{_schedules}) are out of reach of every generic command, and reads never
create anything (so the Read role cannot create state).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from oxidb.auth.rbac import Role
from oxidb.commands import all_commands
from oxidb.config import Config
from oxidb.engine import blobs, procedures, transactions
from oxidb.engine.engine import Engine
from oxidb.testing import MemoryServer

NOW = 1_700_000_000.0


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[Engine]:
    engine = Engine(str(tmp_path / "data"), synchronous="OFF")
    transactions.register_appliers(engine)
    procedures.register_appliers(engine)
    blobs.register_appliers(engine)
    with engine:
        yield engine


@pytest.fixture
def server(engine: Engine) -> MemoryServer:
    server = MemoryServer(Config(data_dir=engine.data_dir), engine=engine)
    server.clock.advance(NOW)
    return server


def reserved(name: str) -> dict[str, Any]:
    return {"ok": False, "error": f"invalid query: collection name is reserved for the server: {name}"}


def ok(server: MemoryServer, request: dict[str, Any]) -> Any:
    answer = server.request(request)
    assert answer.get("ok") is True, answer
    return answer["data"]


def define_procedure(server: MemoryServer) -> None:
    ok(server, {"cmd": "create_procedure", "name": "p", "steps": [{"step": "return", "value": 1}]})
    ok(server, {"cmd": "create_schedule", "name": "s", "procedure": "p", "every": "1h"})


GENERIC = [
    {"cmd": "insert", "doc": {"name": "evil", "steps": [{"step": "return", "value": 2}]}},
    {"cmd": "insert_many", "docs": [{"name": "evil"}]},
    {"cmd": "find"},
    {"cmd": "find_one"},
    {"cmd": "count"},
    {"cmd": "update", "query": {}, "update": {"$set": {"steps": []}}},
    {"cmd": "update_one", "query": {}, "update": {"$set": {"enabled": False}}},
    {"cmd": "delete", "query": {}},
    {"cmd": "delete_one", "query": {}},
    {"cmd": "aggregate", "pipeline": []},
    {"cmd": "create_index", "field": "x"},
    {"cmd": "create_unique_index", "field": "x"},
    {"cmd": "create_composite_index", "fields": ["x", "y"]},
    {"cmd": "create_text_index", "fields": ["x"]},
    {"cmd": "list_indexes"},
    {"cmd": "drop_index", "index": "name"},
    {"cmd": "text_search", "query": "x"},
    {"cmd": "create_collection"},
    {"cmd": "drop_collection"},
    {"cmd": "compact"},
]


def test_generic_commands_cannot_name_internal_collections(server: MemoryServer, engine: Engine) -> None:
    define_procedure(server)
    before = {c: engine.find(c) for c in ("_procedures", "_schedules")}
    for name in ("_procedures", "_schedules", "_future_internal"):
        for request in GENERIC:
            assert server.request({**request, "collection": name}) == reserved(name), request
    assert {c: engine.find(c) for c in ("_procedures", "_schedules")} == before
    assert "_future_internal" not in engine.list_collections()


def test_list_collections_hides_internal_collections(server: MemoryServer, engine: Engine) -> None:
    define_procedure(server)
    ok(server, {"cmd": "insert", "collection": "users", "doc": {"a": 1}})
    assert {"_procedures", "_schedules", "users"} <= set(engine.list_collections())
    assert ok(server, {"cmd": "list_collections"}) == ["users"]


def test_lookup_cannot_read_internal_collections(server: MemoryServer) -> None:
    define_procedure(server)
    ok(server, {"cmd": "insert", "collection": "c", "doc": {"name": "p"}})
    pipeline = [{"$lookup": {"from": "_procedures", "localField": "name", "foreignField": "name", "as": "p"}}]
    assert server.request({"cmd": "aggregate", "collection": "c", "pipeline": pipeline}) == reserved("_procedures")


def test_transactions_cannot_touch_internal_collections(server: MemoryServer, engine: Engine) -> None:
    define_procedure(server)
    client, pump = server.connect()
    answers = [
        client.request({"cmd": "begin_tx"}),
        client.request({"cmd": "insert", "collection": "_procedures", "doc": {"name": "evil", "steps": [{}]}}),
        client.request({"cmd": "find", "collection": "_schedules"}),
        client.request({"cmd": "commit_tx"}),
    ]
    pump.flush()
    results = [d.result for d in answers]
    assert results[0]["ok"] is True and results[3]["ok"] is True
    assert results[1:3] == [reserved("_procedures"), reserved("_schedules")]
    assert [p["name"] for p in engine.find("_procedures")] == ["p"]


def test_procedure_steps_cannot_touch_internal_collections(server: MemoryServer, engine: Engine) -> None:
    steps = [{"step": "insert", "collection": "$param.target", "document": {"name": "evil", "steps": [{}]}}]
    ok(server, {"cmd": "create_procedure", "name": "w", "params": ["target"], "steps": steps})
    answer = server.request({"cmd": "call_procedure", "name": "w", "params": {"target": "_procedures"}})
    assert answer["ok"] is False and "reserved for the server: _procedures" in answer["error"]
    assert [p["name"] for p in engine.find("_procedures")] == ["w"]
    assert ok(server, {"cmd": "call_procedure", "name": "w", "params": {"target": "plain"}}) == {"ok": True}


def test_own_commands_still_work(server: MemoryServer) -> None:
    define_procedure(server)
    assert ok(server, {"cmd": "list_procedures"}) == ["p"]
    assert [s["name"] for s in ok(server, {"cmd": "list_schedules"})] == ["s"]
    assert ok(server, {"cmd": "disable_schedule", "name": "s"})
    assert ok(server, {"cmd": "delete_schedule", "name": "s"})
    assert ok(server, {"cmd": "delete_procedure", "name": "p"})


# --- reads create nothing ------------------------------------------------------------


READS = [
    {"cmd": "find", "collection": "ghost"},
    {"cmd": "find_one", "collection": "ghost"},
    {"cmd": "count", "collection": "ghost", "query": {"a": 1}},
    {"cmd": "aggregate", "collection": "ghost", "pipeline": [{"$count": "n"}]},
    {"cmd": "aggregate", "collection": "c", "pipeline": [
        {"$lookup": {"from": "ghost", "localField": "a", "foreignField": "a", "as": "g"}}]},
    {"cmd": "list_indexes", "collection": "ghost"},
    {"cmd": "text_search", "collection": "ghost", "query": "x"},
    {"cmd": "list_procedures"},
    {"cmd": "list_schedules"},
    {"cmd": "get_procedure", "name": "x"},
    {"cmd": "get_schedule", "name": "x"},
    {"cmd": "list_buckets"},
    {"cmd": "list_objects", "bucket": "ghost"},
    {"cmd": "get_object", "bucket": "ghost", "key": "k"},
    {"cmd": "search", "query": "x"},
]  # fmt: skip


def test_reads_of_missing_collections_create_nothing(server: MemoryServer, engine: Engine) -> None:
    ok(server, {"cmd": "insert", "collection": "c", "doc": {"a": 1}})
    commits = engine.commits
    for request in READS:
        server.request(request)
    assert engine.list_collections() == ["c"]
    assert ok(server, {"cmd": "list_buckets"}) == []
    assert engine.commits == commits


def test_the_server_never_auto_creates_on_read(tmp_path: Any) -> None:
    standalone = MemoryServer(Config(data_dir=str(tmp_path / "alone")))
    clustered = MemoryServer(
        Config.from_sources(
            {
                "OXIDB_NODE_ID": "1",
                "OXIDB_CLUSTER_KEY": "a test cluster key of 32+ characters",
                "OXIDB_DATA": str(tmp_path / "node"),
            }
        )
    )
    assert standalone.service.engine.auto_create_on_read is False
    assert clustered.service.engine.auto_create_on_read is False


def test_read_role_commands_never_write() -> None:
    registry = all_commands()
    read_commands = [name for name, role in registry.access.roles.items() if role is Role.READ]
    assert "find" in read_commands and "list_schedules" in read_commands
    writers = [name for name in read_commands if registry.get(name).writes]  # type: ignore[union-attr]
    assert writers == []
