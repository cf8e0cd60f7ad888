"""
The database commands and request scoping (server.md 3.4, 3.7) through the
in-memory server: C{use_db}, request-level C{db}, C{create_database},
C{drop_database}, C{list_databases}, transactions bound to one database,
and bad input for each.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.test import iosim

from oxidb.audit.events import AuditEvent, Auditor
from oxidb.audit.gelf import audit_event_fields
from oxidb.config import Config
from oxidb.engine import transactions
from oxidb.engine.engine import Engine
from oxidb.metrics import ServerMetrics, StorageSample
from oxidb.metrics._server import MAX_DATABASE_LABELS, OTHER_DATABASES
from oxidb.testing import MemoryServer, result_of
from oxidb.testing.memory import OxiClientProtocol


@attrs.define
class Conn:
    client: OxiClientProtocol
    pump: iosim.IOPump

    def __call__(self, cmd: str, **fields: Any) -> Any:
        d = self.client.request({"cmd": cmd, **fields})
        self.pump.flush()
        return result_of(d)

    def ok(self, cmd: str, **fields: Any) -> Any:
        reply = self(cmd, **fields)
        assert reply["ok"] is True, reply
        return reply["data"]

    def err(self, cmd: str, **fields: Any) -> str:
        reply = self(cmd, **fields)
        assert reply["ok"] is False, reply
        error: str = reply["error"]
        return error


@pytest.fixture
def server(tmp_path: Any) -> Iterator[MemoryServer]:
    engine = Engine(str(tmp_path / "data"), synchronous="OFF")
    transactions.register_appliers(engine)
    with engine:
        yield MemoryServer(Config(data_dir=engine.data_dir), engine=engine)


@pytest.fixture
def conn(server: MemoryServer) -> Conn:
    return Conn(*server.connect())


def test_default_database(conn: Conn) -> None:
    assert conn.ok("list_databases") == ["oxidb"]
    assert conn.ok("use_db", name="oxidb") == "switched to database 'oxidb'"


def test_create_use_and_isolate(server: MemoryServer, conn: Conn) -> None:
    assert conn.ok("create_database", name="crm") == "database 'crm' created"
    assert conn.ok("list_databases") == ["oxidb", "crm"]
    conn.ok("insert", collection="users", doc={"where": "oxidb"})
    assert conn.ok("use_db", name="crm") == "switched to database 'crm'"
    conn.ok("insert", collection="users", doc={"where": "crm"})
    conn.ok("create_index", collection="users", field="where")
    assert conn.ok("find", collection="users") == [{"_id": 1, "_version": 1, "where": "crm"}]
    assert conn.ok("list_collections") == ["users"]
    assert [i["name"] for i in conn.ok("list_indexes", collection="users")] == ["where"]
    # Request-level db overrides the session's for one request.
    assert conn.ok("find", collection="users", db="oxidb")[0]["where"] == "oxidb"
    assert conn.ok("list_indexes", collection="users", db="oxidb") == []
    assert conn.ok("count", collection="users")["count"] == 1
    # Another connection starts in oxidb.
    other = Conn(*server.connect())
    assert other.ok("find", collection="users")[0]["where"] == "oxidb"
    assert other.ok("find", collection="users", db="crm")[0]["where"] == "crm"


def test_every_read_shape_is_scoped(conn: Conn) -> None:
    conn.ok("create_database", name="crm")
    conn.ok("insert", collection="o", doc={"u": 1, "w": "oxidb"})
    conn.ok("insert", collection="o", doc={"u": 1, "w": "crm"}, db="crm")
    conn.ok("insert", collection="u", doc={"u": 1}, db="crm")
    lookup = {"$lookup": {"from": "o", "localField": "u", "foreignField": "u", "as": "j"}}
    out = conn.ok("aggregate", collection="u", pipeline=[lookup], db="crm")
    assert [j["w"] for j in out[0]["j"]] == ["crm"]
    out = conn.ok("aggregate_docs", pipeline=[lookup], docs=[{"u": 1}], db="crm")
    assert [j["w"] for j in out[0]["j"]] == ["crm"]
    plan = conn.ok("explain", inner={"cmd": "find", "collection": "o", "query": {"w": "crm"}}, db="crm")
    assert plan
    conn.ok("create_text_index", collection="o", fields=["w"], db="crm")
    assert [d["w"] for d in conn.ok("text_search", collection="o", query="crm", db="crm")] == ["crm"]
    assert conn.ok("find_one", collection="o", db="crm")["w"] == "crm"
    assert conn.ok("update", collection="o", query={}, update={"$set": {"x": 1}}, db="crm") == {"modified": 1}
    assert conn.ok("find_one", collection="o")["w"] == "oxidb"
    assert "x" not in conn.ok("find_one", collection="o")


def test_unknown_database(conn: Conn) -> None:
    assert conn.err("use_db", name="nope") == "database not found: nope"
    assert conn.err("find", collection="users", db="nope") == "database not found: nope"
    assert conn.err("insert", collection="users", doc={}, db="nope") == "database not found: nope"
    assert conn.err("list_collections", db="nope") == "database not found: nope"
    assert conn.err("create_collection", collection="c", db="nope") == "database not found: nope"
    assert conn.err("drop_database", name="nope") == "database not found: nope"
    assert conn.ok("list_collections") == []


def test_drop_database(server: MemoryServer, conn: Conn) -> None:
    conn.ok("create_database", name="crm")
    conn.ok("use_db", name="crm")
    conn.ok("insert", collection="users", doc={"a": 1})
    other = Conn(*server.connect())
    assert other.ok("drop_database", name="crm") == "database 'crm' dropped"
    assert other.ok("list_databases") == ["oxidb"]
    # The session still points at it: data commands now say so.
    assert conn.err("find", collection="users") == "database not found: crm"
    assert conn.err("drop_database", name="oxidb") == "cannot drop the default database 'oxidb'"
    assert conn.err("create_database", name="oxidb") == "database already exists: oxidb"


def test_transactions_bind_to_one_database(conn: Conn) -> None:
    conn.ok("create_database", name="crm")
    conn.ok("use_db", name="crm")
    conn.ok("begin_tx")
    conn.ok("insert", collection="users", doc={"a": 1})
    bound = "active transaction is bound to database 'crm'; commit or roll it back before using 'oxidb'"
    assert conn.err("find", collection="users", db="oxidb") == bound
    assert conn.err("use_db", name="oxidb") == bound
    assert conn.err("insert", collection="users", doc={}, db="oxidb") == bound
    assert conn.ok("use_db", name="crm") == "switched to database 'crm'"
    assert conn.ok("commit_tx") == "committed"
    assert conn.ok("count", collection="users")["count"] == 1
    assert conn.ok("count", collection="users", db="oxidb")["count"] == 0
    # Begun with a request-level db, bound to it.
    conn.ok("begin_tx", db="oxidb")
    assert conn.err("find", collection="users").endswith("before using 'crm'")
    conn.ok("insert", collection="users", doc={"b": 2}, db="oxidb")
    conn.ok("commit_tx")
    assert conn.ok("count", collection="users", db="oxidb")["count"] == 1


def test_bad_input(conn: Conn) -> None:
    for cmd in ("create_database", "drop_database", "use_db"):
        assert conn.err(cmd) == f"unknown command: {cmd}"
        assert conn.err(cmd, name=5) == f"unknown command: {cmd}"
        assert conn.err(cmd, name=None) == f"unknown command: {cmd}"
        assert conn.err(cmd, name="bad name") == "invalid database name: bad name"
        assert conn.err(cmd, name="") == "invalid database name: "
        huge = conn.err(cmd, name="x" * 100_000)
        assert huge.startswith("invalid database name: xxx") and len(huge) < 120
        assert conn.err(cmd, name="a/b") == "invalid database name: a/b"
    assert conn.err("find", collection="users", db=5) == "invalid database name: 5"
    assert conn.err("find", collection="users", db=["x"]) == "invalid database name: ['x']"
    assert conn.err("find", collection="users", db="x" * 65).startswith("invalid database name: ")
    assert conn.err("list_collections", db="../x") == "invalid database name: ../x"
    assert conn.ok("list_databases", db="ignored anyway") == ["oxidb"]


def test_slash_in_a_client_collection_name(conn: Conn) -> None:
    conn.ok("create_database", name="crm")
    conn.ok("insert", collection="users", doc={"secret": 1}, db="crm")
    text = "invalid query: invalid collection name: crm/users"
    assert conn.err("find", collection="crm/users") == text
    assert conn.err("insert", collection="crm/users", doc={}) == text
    assert conn.err("create_collection", collection="a/b") == "invalid query: invalid collection name: a/b"
    assert conn.err("explain", inner={"cmd": "find", "collection": "crm/users"}) == text
    lookup = {"$lookup": {"from": "crm/users", "localField": "a", "foreignField": "a", "as": "j"}}
    conn.ok("insert", collection="x", doc={"a": 1})
    assert "invalid collection name" in conn.err("aggregate", collection="x", pipeline=[lookup])
    assert conn.ok("list_collections") == ["x"]


# --- metrics and audit ----------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


def test_audit_lines_carry_the_database(server: MemoryServer) -> None:
    sink = Sink()
    server.rebuild(audit=Auditor(server.clock, [sink]))
    conn = Conn(*server.connect())
    conn.ok("create_database", name="crm")
    conn.ok("insert", collection="users", doc={}, db="crm")
    conn.ok("use_db", name="crm")
    conn.ok("find", collection="users")
    conn.err("find", collection="users", db="nope")
    conn.err("find", collection="users", db="bad name")
    conn.ok("ping")
    by_cmd = [(e.cmd, e.collection, e.database) for e in sink.events]
    assert by_cmd == [
        ("create_database", None, None),
        ("insert", "users", "crm"),
        ("use_db", None, None),
        ("find", "users", "crm"),
        ("find", "users", "nope"),
        ("find", "users", None),
        ("ping", None, None),
    ]
    line = json.loads(sink.events[1].to_json_line())
    assert list(line) == ["ts", "user", "role", "cmd", "collection", "db", "target", "result", "detail", "peer"]
    assert line["db"] == "crm" and line["collection"] == "users"
    assert "db" not in json.loads(sink.events[-1].to_json_line())
    assert audit_event_fields(sink.events[1], "h")["_database"] == "crm"


def test_metrics_per_database_are_bounded() -> None:
    metrics = ServerMetrics(Clock(), ["find"], names=True)
    metrics.command_finished("find", "ok", 0.001, "crm")
    metrics.command_finished("find", "ok", 0.001, "crm")
    metrics.command_finished("find", "error", 0.001, "nope")  # never a label: it may not exist
    for n in range(MAX_DATABASE_LABELS + 5):
        metrics.command_finished("find", "ok", 0.001, f"db{n}")
    text = generate_latest(metrics.registry).decode()
    per_db = {
        s.labels["database"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "oxidb_database_commands_total"
    }
    assert per_db["crm"] == 2 and "nope" not in per_db
    assert len(per_db) == MAX_DATABASE_LABELS + 1 and per_db[OTHER_DATABASES] == 6
    metrics.storage_measured(StorageSample({"users": 3, "crm/users": 4, "crm/deals": 1}, None))
    text = generate_latest(metrics.registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("oxidb_documents", (("collection", "users"),))] == 3
    assert not any(name == "oxidb_documents" and "crm" in str(labels) for name, labels in samples)
    assert samples[("oxidb_database_documents", (("database", "crm"),))] == 5
    assert samples[("oxidb_database_collections", (("database", "crm"),))] == 2
    assert samples[("oxidb_database_documents", (("database", "oxidb"),))] == 3
    assert samples[("oxidb_documents_total", ())] == 8
    # Data names off: no database label values at all.
    quiet = ServerMetrics(Clock(), ["find"])
    quiet.command_finished("find", "ok", 0.001, "crm")
    quiet.storage_measured(StorageSample({"crm/users": 4}, None))
    assert b"crm" not in generate_latest(quiet.registry)


def test_scoped_is_worked_out_when_a_row_is_built() -> None:
    """A row's C{scoped} and its schema's collection fields are fixed at build time, by the documented rule."""
    from oxidb.commands import Command, build_registry
    from oxidb.commands._schema import Field, JsonType, collection_field, fields

    for command in build_registry(auth=True, cluster=True):
        expected = command.database if command.database is not None else any(f.collection for f in command.schema)
        assert command.scoped is expected, command.name
        assert command.schema.collections == tuple(f.name for f in command.schema if f.collection)
    both = fields(collection_field(), Field("n", JsonType.INTEGER), collection_field("from"))
    row = Command("x", lambda ctx, request: None, schema=both)
    assert row.scoped and row.schema.collections == ("collection", "from")
    assert not attrs.evolve(row, database=False).scoped
    assert Command("y", lambda ctx, request: None, database=True).scoped
    assert not Command("z", lambda ctx, request: None).scoped
