"""
Change capture in the engine (oxidb.engine.changes): every committed
document change, from every kind of write, with tokens tied to the commit
sequence or the Raft index, persisted with the data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from zope.interface import implementer

from oxidb.engine import changes, procedures, transactions, ttl
from oxidb.engine.changes import Change, ChangeRecorder, IChangeListener, OperationChanges
from oxidb.engine.engine import Engine
from oxidb.engine.operations import (
    CreateIndex,
    CreateUniqueIndex,
    Delete,
    FindAndModify,
    Insert,
    InsertMany,
    Update,
    UpdateOne,
)
from oxidb.engine.transactions import Transaction
from oxidb.errors import UniqueViolationError

NOW = 1_700_000_000.0


@implementer(IChangeListener)
class Collect:
    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.opened_at: list[int] = []

    def opened(self, last_token: int) -> None:
        self.opened_at.append(last_token)

    def committed(self, batch: list[OperationChanges]) -> None:
        self.changes.extend(change for operation in batch for change in operation.changes())

    def take(self) -> list[tuple[str, str, int]]:
        got = [(c.operation, c.collection, c.doc_id) for c in self.changes]
        self.changes = []
        return got


def make_engine(path: Any) -> Engine:
    engine = Engine(str(path), synchronous="OFF")
    transactions.register_appliers(engine)
    procedures.register_appliers(engine)
    ttl.register_appliers(engine)
    return engine


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[Engine]:
    with make_engine(tmp_path / "data") as engine:
        yield engine


@pytest.fixture
def seen(engine: Engine) -> Collect:
    collect = Collect()
    assert engine.listen(collect) == 0
    return collect


def test_every_write_kind_is_recorded(engine: Engine, seen: Collect) -> None:
    engine.apply(Insert("c", {"a": 1}), NOW)
    engine.apply(InsertMany("c", [{"a": 2}, {"a": 3}]), NOW)
    engine.apply(Update("c", {"a": {"$gte": 2}}, {"$set": {"b": 1}}), NOW)
    engine.apply(UpdateOne("c", {"a": 9}, {"$set": {"b": 2}}, upsert=True), NOW)
    engine.apply(Delete("c", {"a": 1}), NOW)
    engine.apply(FindAndModify("c", {"a": 2}, remove=True), NOW)
    engine.apply(FindAndModify("c", {"a": 3}, {"$inc": {"a": 1}}), NOW)
    assert seen.take() == [
        ("insert", "c", 1),
        ("insert", "c", 2),
        ("insert", "c", 3),
        ("update", "c", 2),
        ("update", "c", 3),
        ("insert", "c", 4),
        ("delete", "c", 1),
        ("delete", "c", 2),
        ("update", "c", 3),
    ]


def test_event_shape_and_tokens(engine: Engine, seen: Collect) -> None:
    engine.apply(InsertMany("c", [{"a": 1}, {"a": 2}]), NOW)
    engine.apply(Update("c", {}, {"$set": {"b": 1}}), NOW)
    first, second, third, fourth = seen.changes
    # Standalone: one sequence number per committed operation, positions inside it.
    assert [c.token for c in seen.changes] == [
        changes.token_of(1, 0),
        changes.token_of(1, 1),
        changes.token_of(2, 0),
        changes.token_of(2, 1),
    ]
    assert first.event_data() == {
        "token": 1 << 20,
        "operation": "insert",
        "collection": "c",
        "doc_id": 1,
        "document": {"a": 1, "_id": 1, "_version": 1},
    }
    assert third.event_data() == {"token": 2 << 20, "operation": "update", "collection": "c", "doc_id": 1}
    assert first.size == len('{"a":1,"_id":1,"_version":1}')
    assert engine.last_change_token() == fourth.token


def test_failed_operations_and_non_document_writes_record_nothing(engine: Engine, seen: Collect) -> None:
    engine.apply(CreateUniqueIndex("c", "u"), NOW)
    engine.apply(CreateIndex("c", "v"), NOW)
    engine.apply(Insert("c", {"u": 1}), NOW)
    seen.take()
    token = engine.last_change_token()
    with pytest.raises(UniqueViolationError):
        engine.apply(InsertMany("c", [{"u": 2}, {"u": 1}]), NOW)
    with pytest.raises(UniqueViolationError):
        engine.apply(Insert("c", {"u": 1}), NOW)
    engine.apply(Update("c", {"u": 99}, {"$set": {"x": 1}}), NOW)  # matches nothing
    assert seen.take() == []
    assert engine.last_change_token() == token


def test_transaction_commit_carries_its_tx_id(engine: Engine, seen: Collect) -> None:
    engine.apply(InsertMany("c", [{"n": 1}, {"n": 2}]), NOW)
    seen.take()
    tx = Transaction(41)
    engine.read(tx.stage_update, "c", {"n": 1}, {"$set": {"x": 1}}, NOW)
    engine.read(tx.stage_delete, "c", {"n": 2}, None)
    first = engine.apply(transactions.reserve_operation("c", 1), NOW)
    tx.stage_insert("c", first, [{"n": 3}])
    op = tx.commit_operation()
    assert op is not None
    # The tx_id travels in the log entry, so every replica's events carry it.
    assert engine.codec.decode(op.to_json()) == op
    engine.apply(op, NOW)
    assert [(c.operation, c.doc_id, c.tx_id) for c in seen.changes] == [
        ("update", 1, 41),
        ("delete", 2, 41),
        ("insert", 3, 41),
    ]
    # Entries written before the field existed still decode (no tx_id).
    body = op.to_json()
    del body["CommitTransaction"]["tx_id"]
    assert engine.codec.decode(body).tx_id is None  # type: ignore[attr-defined]


def test_a_conflicting_transaction_records_nothing(engine: Engine, seen: Collect) -> None:
    engine.apply(Insert("c", {"n": 1}), NOW)
    tx = Transaction(3)
    engine.read(tx.stage_update, "c", {"n": 1}, {"$set": {"x": 1}}, NOW)
    engine.apply(Update("c", {"n": 1}, {"$set": {"y": 1}}), NOW)
    seen.take()
    op = tx.commit_operation()
    assert op is not None
    with pytest.raises(Exception, match="conflict"):
        engine.apply(op, NOW)
    assert seen.take() == []


def test_raft_index_is_the_sequence_and_replays_record_nothing(engine: Engine, seen: Collect) -> None:
    engine.apply(Insert("c", {"a": 1}), NOW, raft_index=7)
    engine.apply(InsertMany("c", [{"a": 2}, {"a": 3}]), NOW, raft_index=9)
    assert [c.token for c in seen.changes] == [7 << 20, 9 << 20, (9 << 20) | 1]
    seen.take()
    # An entry applied before (a restart replaying the log) is skipped: no event.
    engine.apply(Insert("c", {"a": 4}), NOW, raft_index=9)
    assert seen.take() == []


def test_the_last_token_survives_a_restart(tmp_path: Any) -> None:
    collect = Collect()
    engine = make_engine(tmp_path / "d")
    engine.listen(collect)
    with engine:
        engine.apply(InsertMany("c", [{"a": 1}, {"a": 2}]), NOW)
        engine.apply(Delete("c", {}), NOW)  # the fast path deletes by statement
        last = engine.last_change_token()
    assert [(c.operation, c.doc_id) for c in collect.changes][-2:] == [("delete", 1), ("delete", 2)]
    assert last == (2 << 20) | 1
    with engine:
        assert engine.last_change_token() == last
        engine.apply(Insert("c", {"a": 3}), NOW)
        assert engine.last_change_token() == 3 << 20
    # The listener is told the token each time the database opens.
    assert collect.opened_at == [0, last]


def test_ttl_deletes_and_procedure_steps_are_changes(engine: Engine, seen: Collect) -> None:
    engine.apply(InsertMany("c", [{"at": "2000-01-01T00:00:00Z"}, {"at": "2999-01-01T00:00:00Z"}]), NOW)
    seen.take()
    engine.apply(ttl.sweep_operation("c", ttl.expiry_query("at", NOW)), NOW)
    assert seen.take() == [("delete", "c", 1)]


def test_savepoint_rollback_forgets_its_changes(engine: Engine) -> None:
    recorder = ChangeRecorder(limit=3)
    recorder.begin()
    recorder.record("insert", "c", 1)
    mark = recorder.mark()
    recorder.record_many("delete", "c", [2, 3, 4, 5])
    assert recorder.mark() == (3, 2)
    recorder.rollback_to(mark)
    assert recorder.mark() == (1, 0)
    recorder.record_many("update", "c", [6, 7, 8, 9])
    done = recorder.finish(5)
    assert done is not None
    # Past the limit, changes are counted on the last recorded one.
    assert [(c.doc_id, c.lost) for c in done.changes()] == [(1, 0), (6, 0), (7, 2)]
    assert recorder.empty


def test_a_failing_listener_does_not_stop_the_writer(engine: Engine) -> None:
    @implementer(IChangeListener)
    class Broken:
        def opened(self, last_token: int) -> None:
            pass

        def committed(self, batch: list[OperationChanges]) -> None:
            raise RuntimeError("boom")

    engine.listen(Broken())
    assert engine.apply(Insert("c", {"a": 1}), NOW) == {"id": 1}
    assert engine.apply(Insert("c", {"a": 2}), NOW) == {"id": 2}


def test_a_huge_delete_records_the_lowest_ids_and_counts_the_rest(tmp_path: Any) -> None:
    with make_engine(tmp_path / "d") as engine:
        engine.apply(InsertMany("c", [{"n": n} for n in range(10)]), NOW)
        collect = Collect()
        engine.listen(collect)
        engine._recorder._limit = 4  # type: ignore[attr-defined]
        assert engine.apply(Delete("c", {}), NOW) == {"deleted": 10}
        assert [(c.doc_id, c.lost) for c in collect.changes] == [(1, 0), (2, 0), (3, 0), (4, 6)]


def test_the_recorder_keeps_one_run_per_call_and_texts_for_inserts() -> None:
    recorder = ChangeRecorder(limit=5)
    recorder.begin()
    recorder.record_inserts("c", [(1, 1, {}, '{"_id":1}'), (2, 1, {}, '{"_id":2}')])
    mark = recorder.mark()
    recorder.record_many("delete", "d", [7])
    recorder.rollback_to(mark)
    recorder.record_many("update", "d", [3])
    recorder.record_inserts("c", [(4, 1, {}, '{"_id":4}'), (5, 1, {}, '{"_id":5}'), (6, 1, {}, '{"_id":6}')])
    done = recorder.finish(9)
    assert done is not None
    assert (done.first, done.last, done.count, done.lost, done.size) == (9 << 20, (9 << 20) + 4, 5, 1, 36)
    assert [run[:3] for run in done.runs] == [("insert", "c", 0), ("update", "d", 2), ("insert", "c", 3)]
    assert done.collection is None
    got = done.changes()
    assert [(c.operation, c.doc_id, c.text, c.lost) for c in got] == [
        ("insert", 1, '{"_id":1}', 0),
        ("insert", 2, '{"_id":2}', 0),
        ("update", 3, None, 0),
        ("insert", 4, '{"_id":4}', 0),
        ("insert", 5, '{"_id":5}', 1),
    ]
    assert got[0].document == {"_id": 1} and got[2].document is None
