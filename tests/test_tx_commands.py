"""
Transactions on the wire (server.md 3.3/3.5, engine.md 6) through the
in-memory server on a real engine: reply shapes, texts, OCC conflicts,
reads of the transaction's own writes, rollback on disconnect and idle
timeout, metrics.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from oxidb import errors
from oxidb.config import Config
from oxidb.engine import procedures, transactions
from oxidb.engine.engine import Engine
from oxidb.testing import MemoryServer, OxiClientProtocol, result_of


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


@pytest.fixture
def server(tmp_path: Any) -> Iterator[MemoryServer]:
    data_dir = str(tmp_path / "data")
    engine = Engine(data_dir, synchronous="OFF")
    transactions.register_appliers(engine)
    procedures.register_appliers(engine)
    with engine:
        server = MemoryServer(Config(data_dir=data_dir, idle_timeout=30), engine=engine)
        server.clock.advance(1_700_000_000)
        yield server


@pytest.fixture
def conn(server: MemoryServer) -> Conn:
    return Conn(server)


def counter(server: MemoryServer, name: str) -> float:
    value = server.services.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


# --- texts and shapes ------------------------------------------------------------------


def test_begin_commit_rollback_texts(conn: Conn) -> None:
    first = conn.ok("begin_tx")["tx_id"]
    assert isinstance(first, int)
    assert conn.error("begin_tx") == "transaction already active"
    assert conn.ok("commit_tx") == "committed"
    assert conn.error("commit_tx") == "no active transaction"
    assert conn.error("rollback_tx") == "no active transaction"
    second = conn.ok("begin_tx")["tx_id"]
    assert second > first
    assert conn.ok("rollback_tx") == "rolled back"
    assert conn.error("rollback_tx") == "no active transaction"


def test_tx_ids_are_process_wide(server: MemoryServer) -> None:
    a, b = Conn(server), Conn(server)
    ids = [a.ok("begin_tx")["tx_id"], b.ok("begin_tx")["tx_id"]]
    assert ids[1] == ids[0] + 1


def test_reply_shapes_inside_a_transaction(conn: Conn) -> None:
    conn.ok("insert", collection="c", doc={"n": 1})
    conn.ok("begin_tx")
    assert conn.ok("insert", collection="c", doc={"n": 2}) == {"id": 2}
    assert conn.ok("insert_many", collection="c", docs=[{"n": 3}, {"n": 4}]) == [3, 4]
    assert conn.ok("insert_many", collection="c", docs=[]) == []
    assert conn.ok("update", collection="c", query={"n": 1}, update={"$set": {"a": 1}}) == "buffered"
    assert conn.ok("update_one", collection="c", query={}, update={"$set": {"b": 1}}) == "buffered"
    assert conn.ok("delete", collection="c", query={"n": 4}) == "buffered"
    assert conn.ok("delete_one", collection="c", query={"n": 3}) == "buffered"
    assert conn.ok("count", collection="c") == {"count": 2}
    assert conn.ok("find_one", collection="c", query={"n": 2}) == {"n": 2, "_id": 2, "_version": 1}
    assert conn.ok("commit_tx") == "committed"
    assert conn.ok("find", collection="c") == [
        {"n": 1, "_id": 1, "_version": 3, "a": 1, "b": 1},
        {"n": 2, "_id": 2, "_version": 1},
    ]


def test_writes_stay_invisible_to_others_until_commit(server: MemoryServer) -> None:
    writer, reader = Conn(server), Conn(server)
    writer.ok("begin_tx")
    writer.ok("insert", collection="c", doc={"x": 1})
    assert reader.ok("find", collection="c") == []
    assert writer.ok("find", collection="c") == [{"x": 1, "_id": 1, "_version": 1}]
    writer.ok("commit_tx")
    assert reader.ok("find", collection="c") == [{"x": 1, "_id": 1, "_version": 1}]


def test_find_in_a_transaction_sorts_skips_and_limits(conn: Conn) -> None:
    conn.ok("insert_many", collection="c", docs=[{"n": 3}, {"n": 1}])
    conn.ok("begin_tx")
    conn.ok("insert", collection="c", doc={"n": 2})
    assert [d["n"] for d in conn.ok("find", collection="c", sort={"n": 1})] == [1, 2, 3]
    assert [d["n"] for d in conn.ok("find", collection="c", sort={"n": -1}, skip=1, limit=1)] == [2]
    assert (
        conn.error("find", collection="c", sort={"n": 2})
        == "invalid query: sort direction must be 1 (asc) or -1 (desc)"
    )


def test_update_one_in_a_transaction_updates_one_document(conn: Conn) -> None:
    conn.ok("insert_many", collection="c", docs=[{"k": 1}, {"k": 1}])
    conn.ok("begin_tx")
    conn.ok("update_one", collection="c", query={"k": 1}, update={"$inc": {"hits": 1}})
    conn.ok("commit_tx")
    assert [d.get("hits") for d in conn.ok("find", collection="c")] == [1, None]


def test_delete_limit_in_a_transaction(conn: Conn) -> None:
    conn.ok("insert_many", collection="c", docs=[{"k": 1}] * 4)
    conn.ok("begin_tx")
    assert conn.ok("delete", collection="c", query={"k": 1}, limit=3) == "buffered"
    assert conn.error("delete", collection="c", query={}, limit=-1) == "'limit' must be a non-negative integer"
    conn.ok("commit_tx")
    assert [d["_id"] for d in conn.ok("find", collection="c")] == [4]


def test_errors_while_buffering_keep_the_transaction(conn: Conn) -> None:
    conn.ok("insert", collection="c", doc={"n": "text"})
    conn.ok("begin_tx")
    assert conn.error("insert", collection="c", doc=[1]) == "document must be a JSON object"
    assert conn.error("insert_many", collection="c", docs=[{}, 5]) == "document must be a JSON object"
    assert conn.error("insert", collection="c") == "missing 'doc'"
    assert conn.error("update", collection="c", query={}, update={"$inc": {"n": 1}}) == (
        "invalid query: $inc cannot be applied to non-numeric field 'n'"
    )
    assert (
        conn.error("update", collection="c", query={}, update={"$frob": {}})
        == "invalid query: unknown update operator: $frob"
    )
    assert conn.error("delete", collection="c", query={"n": {"$frob": 1}}) == "invalid query: unknown operator: $frob"
    assert conn.error("insert", collection="../x", doc={}) == "invalid query: invalid collection name: ../x"
    assert conn.ok("insert", collection="c", doc={"n": 2}) == {"id": 2}
    assert conn.ok("commit_tx") == "committed"
    assert conn.ok("count", collection="c") == {"count": 2}


# --- conflicts -----------------------------------------------------------------------------


def test_conflict_text_and_the_transaction_is_over(server: MemoryServer) -> None:
    a, b = Conn(server), Conn(server)
    a.ok("insert", collection="acc", doc={"balance": 10})
    a.ok("begin_tx")
    assert a.ok("find_one", collection="acc", query={})["balance"] == 10
    b.ok("update", collection="acc", query={}, update={"$inc": {"balance": 5}})
    a.ok("update", collection="acc", query={}, update={"$set": {"balance": 0}})
    assert a.error("commit_tx") == "transaction conflict on 'acc' doc 1: expected version 1, found 2"
    assert a.error("rollback_tx") == "no active transaction"
    assert a.ok("find_one", collection="acc", query={})["balance"] == 15
    assert counter(server, "oxidb_tx_conflicts_total") == 1
    assert counter(server, "oxidb_tx_commits_total") == 0


def test_two_transactions_updating_one_document(server: MemoryServer) -> None:
    a, b = Conn(server), Conn(server)
    a.ok("insert", collection="c", doc={"n": 0})
    for conn in (a, b):
        conn.ok("begin_tx")
        conn.ok("update", collection="c", query={}, update={"$inc": {"n": 1}})
    assert a.ok("commit_tx") == "committed"
    assert "conflict" in b.error("commit_tx")
    assert a.ok("find_one", collection="c")["n"] == 1
    assert counter(server, "oxidb_tx_commits_total") == 1
    assert counter(server, "oxidb_tx_conflicts_total") == 1


def test_a_unique_violation_fails_the_commit_whole(conn: Conn) -> None:
    conn.ok("create_unique_index", collection="u", field="email")
    conn.ok("begin_tx")
    conn.ok("insert", collection="u", doc={"email": "a"})
    conn.ok("insert", collection="u", doc={"email": "b"})
    conn.ok("insert", collection="u", doc={"email": "a"})
    assert conn.error("commit_tx") == "unique constraint violated: field 'email' value already exists"
    assert conn.ok("find", collection="u") == []
    assert conn.error("rollback_tx") == "no active transaction"


def test_only_the_conflict_error_says_conflict() -> None:
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.OxiError) and cls is not errors.TransactionConflictError:
            assert "conflict" not in cls.template.lower(), cls
    assert "conflict" in str(errors.TransactionConflictError("c", 1, 1, 2))


# --- rollback and connection loss ----------------------------------------------------------


def test_rollback_discards_and_reserved_ids_are_not_reused(conn: Conn) -> None:
    conn.ok("begin_tx")
    assert conn.ok("insert", collection="c", doc={"n": 1}) == {"id": 1}
    conn.ok("update", collection="c", query={}, update={"$set": {"n": 2}})
    assert conn.ok("rollback_tx") == "rolled back"
    assert conn.ok("find", collection="c") == []
    assert conn.ok("insert", collection="c", doc={"n": 3}) == {"id": 2}


def test_disconnect_rolls_back(server: MemoryServer) -> None:
    first = Conn(server)
    first.ok("insert", collection="c", doc={"n": 1})
    first.ok("begin_tx")
    first.ok("update", collection="c", query={}, update={"$set": {"n": 99}})
    first.ok("insert", collection="c", doc={"n": 2})
    transport = first.client.transport
    assert transport is not None
    transport.loseConnection()
    first.pump.flush()
    other = Conn(server)
    assert other.ok("find", collection="c") == [{"n": 1, "_id": 1, "_version": 1}]
    # The document the lost transaction read can be written without conflict.
    other.ok("begin_tx")
    other.ok("update", collection="c", query={}, update={"$set": {"n": 5}})
    assert other.ok("commit_tx") == "committed"
    assert other.ok("insert", collection="c", doc={}) == {"id": 3}


def test_idle_timeout_rolls_back(server: MemoryServer) -> None:
    conn = Conn(server)
    conn.ok("begin_tx")
    conn.ok("insert", collection="c", doc={"n": 1})
    server.clock.advance(29)
    conn.pump.flush()
    assert conn.ok("find", collection="c") == [{"n": 1, "_id": 1, "_version": 1}]
    server.clock.advance(31)
    conn.pump.flush()
    assert conn.client.lost_d.called
    assert Conn(server).ok("find", collection="c") == []


def test_empty_transaction_commits(server: MemoryServer, conn: Conn) -> None:
    conn.ok("begin_tx")
    assert conn.ok("commit_tx") == "committed"
    assert counter(server, "oxidb_tx_commits_total") == 1


def test_a_read_only_transaction_validates_its_reads(server: MemoryServer) -> None:
    a, b = Conn(server), Conn(server)
    a.ok("insert", collection="c", doc={"n": 1})
    a.ok("begin_tx")
    a.ok("count", collection="c")
    b.ok("delete", collection="c", query={})
    assert a.error("commit_tx") == "transaction conflict on 'c' doc 1: expected version 1, found 0"
