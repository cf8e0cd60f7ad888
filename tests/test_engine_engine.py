"""
The engine's machinery: the writer thread and its group commit, registered
appliers, the Raft apply index, concurrent readers, shutdown and
durability across a SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any, ClassVar

import apsw
import attrs
import pytest

from oxidb.engine.engine import Engine
from oxidb.engine.operations import Operation
from oxidb.engine.reads import Reader, plan_query
from oxidb.engine.writes import WriteTxn
from oxidb.errors import BadRequestError, InvalidQueryError, StorageIOError, UnavailableError

WAIT = 30.0  # generous deadline for events between threads


@pytest.fixture
def data_dir(tmp_path: Any) -> str:
    return str(tmp_path / "data")


@attrs.frozen
class GateOp(Operation):
    KIND: ClassVar[str] = "Gate"

    insert: bool = False


@attrs.frozen
class Nested(Operation):
    KIND: ClassVar[str] = "Nested"


@attrs.frozen
class Transfer(Operation):
    KIND: ClassVar[str] = "Transfer"

    payer: str
    payee: str
    amount: int


@attrs.frozen
class Duplicate(Operation):
    KIND: ClassVar[str] = "Insert"


class Gate:
    """An applier of L{GateOp} that blocks the writer until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, txn: WriteTxn, op: GateOp, now: float) -> str:
        if op.insert:
            txn.insert("c", {"uncommitted": True})
        self.entered.set()
        assert self.release.wait(WAIT)
        return "opened"


@pytest.fixture
def gated(data_dir: str) -> Iterator[tuple[Engine, Gate, list[int]]]:
    batches: list[int] = []
    gate = Gate()
    engine = Engine(data_dir, synchronous="NORMAL", max_batch=10, on_commit=batches.append)
    engine.register_operation(GateOp, gate)
    with engine:
        yield engine, gate, batches
        gate.release.set()


def test_group_commit_batches_queued_writes(gated: tuple[Engine, Gate, list[int]]) -> None:
    engine, gate, batches = gated
    blocker = engine.submit({"Gate": {}}, 0.0)
    assert gate.entered.wait(WAIT)
    futures = [engine.submit({"Insert": {"collection": "c", "document": {"n": i}}}, 0.0) for i in range(25)]
    assert not any(f.done() for f in futures)  # nothing is acknowledged before its commit
    assert engine.commits == 0
    gate.release.set()
    assert blocker.result(WAIT) == "opened"
    assert [f.result(WAIT) for f in futures] == [{"id": i + 1} for i in range(25)]
    # One commit for the gate, then the queue drained in bounded batches.
    assert batches == [1, 10, 10, 5]
    assert engine.commits == 4


def test_writes_are_invisible_until_committed(gated: tuple[Engine, Gate, list[int]]) -> None:
    engine, gate, _ = gated
    engine.apply({"Insert": {"collection": "c", "document": {"n": 0}}}, 0.0)
    blocker = engine.submit({"Gate": {"insert": True}}, 0.0)
    assert gate.entered.wait(WAIT)
    # The writer sits inside an open transaction holding a new document;
    # readers on other threads carry on and do not see it.
    seen: list[Any] = []
    reader = threading.Thread(target=lambda: seen.append(engine.find("c")))
    reader.start()
    reader.join(WAIT)
    assert seen == [[{"n": 0, "_id": 1, "_version": 1}]]
    gate.release.set()
    blocker.result(WAIT)
    assert engine.count("c") == 2


def test_a_slow_scan_blocks_neither_readers_nor_the_writer(data_dir: str) -> None:
    with Engine(data_dir, synchronous="NORMAL") as engine:
        engine.apply({"InsertMany": {"collection": "c", "documents": [{"n": i} for i in range(1000)]}}, 0.0)
        halfway = threading.Event()
        resume = threading.Event()
        scanned: list[int] = []

        def slow_scan(reader: Reader) -> None:
            info = reader.collection("c")
            assert info is not None
            # A sorted scan streams rows from a live SQLite cursor.
            for i, (doc_id, _, _) in enumerate(reader.rows(info, plan_query({}), (("n", 1),))):
                scanned.append(doc_id)
                if i == 500:
                    halfway.set()
                    assert resume.wait(WAIT)

        scanner = threading.Thread(target=engine.read, args=(slow_scan,))
        scanner.start()
        assert halfway.wait(WAIT)
        # While the scan holds its snapshot: the writer commits ...
        assert engine.apply({"Insert": {"collection": "c", "document": {"n": 5000}}}, 0.0) == {"id": 1001}
        engine.apply({"Delete": {"collection": "c", "query": {"n": {"$lt": 10}}}}, 0.0)
        # ... and another reader sees the new state at once.
        counts: list[int] = []
        other = threading.Thread(target=lambda: counts.append(engine.count("c")))
        other.start()
        other.join(WAIT)
        resume.set()
        scanner.join(WAIT)
        assert counts == [991]
        # The scan saw one consistent snapshot: the 1000 original documents.
        assert scanned == list(range(1, 1001))


def test_register_operation(data_dir: str) -> None:
    def transfer(txn: WriteTxn, op: Transfer, now: float) -> dict[str, int]:
        with txn.savepoint():
            moved = txn.update("acct", {"name": op.payer}, {"$inc": {"balance": -op.amount}})
            txn.update("acct", {"name": op.payee}, {"$inc": {"balance": op.amount}})
            if txn.find_one("acct", {"name": op.payer, "balance": {"$lt": 0}}) is not None:
                raise InvalidQueryError("insufficient funds")
        return {"moved": moved, "version": txn.version_of("acct", 1)}

    with Engine(data_dir) as engine:
        with pytest.raises(BadRequestError, match="unknown operation: Transfer"):
            engine.apply(Transfer("a", "b", 7), 0.0)
        engine.register_operation(Transfer, transfer)
        with pytest.raises(ValueError):
            engine.register_operation(Transfer, transfer)
        with pytest.raises(ValueError):
            engine.register_operation(Duplicate, transfer)
        engine.apply(
            {
                "InsertMany": {
                    "collection": "acct",
                    "documents": [{"name": "a", "balance": 10}, {"name": "b", "balance": 0}],
                }
            },
            0.0,
        )
        assert engine.apply(Transfer("a", "b", 7), 0.0) == {"moved": 1, "version": 2}
        with pytest.raises(InvalidQueryError, match="insufficient funds"):
            engine.apply({"Transfer": {"payer": "a", "payee": "b", "amount": 7}}, 0.0)
        assert [d["balance"] for d in engine.find("acct")] == [3, 7]


def test_malformed_operations(data_dir: str) -> None:
    with Engine(data_dir) as engine:
        malformed: list[Any] = [{}, {"Insert": {}, "Delete": {}}, "Insert", {"Insert": [1]}]
        for op in malformed:
            with pytest.raises(BadRequestError, match="malformed operation"):
                engine.apply(op, 0.0)
        with pytest.raises(BadRequestError, match="unknown operation: Frobnicate"):
            engine.apply({"Frobnicate": {}}, 0.0)


def test_raft_index_is_stored_with_the_data(data_dir: str) -> None:
    with Engine(data_dir) as engine:
        assert engine.last_applied() == 0
        assert engine.apply({"Insert": {"collection": "c", "document": {}}}, 0.0, raft_index=5) == {"id": 1}
        with pytest.raises(InvalidQueryError):  # a failing entry is applied too
            engine.apply({"Insert": {"collection": "", "document": {}}}, 0.0, raft_index=6)
        assert engine.last_applied() == 6
        engine.apply({"Insert": {"collection": "c", "document": {}}}, 0.0)  # no index: unchanged
        assert engine.last_applied() == 6
    with Engine(data_dir) as engine:
        assert engine.last_applied() == 6
        # Replaying entries that were already applied changes nothing.
        assert engine.apply({"Insert": {"collection": "c", "document": {}}}, 0.0, raft_index=5) is None
        assert engine.count("c") == 2
        assert engine.apply({"Insert": {"collection": "c", "document": {}}}, 0.0, raft_index=7) == {"id": 3}
        assert engine.last_applied() == 7


@attrs.frozen
class Boom(Operation):
    """Fails its whole transaction when C{armed}, as a full disk would."""

    KIND: ClassVar[str] = "Boom"


def test_a_run_of_writes_completes_once_with_every_outcome(gated: tuple[Engine, Gate, list[int]]) -> None:
    engine, gate, batches = gated
    blocker = engine.submit({"Gate": {}}, 0.0)
    assert gate.entered.wait(WAIT)
    items: list[tuple[Operation, float, int | None]] = [
        (engine.operation_of({"Insert": {"collection": "c" if i != 7 else "", "document": {"n": i}}}), 0.0, i + 1)
        for i in range(25)
    ]
    run = engine.submit_many(items)
    single = engine.submit({"Insert": {"collection": "c", "document": {"n": 99}}}, 0.0)
    gate.release.set()
    assert blocker.result(WAIT) == "opened"
    outcomes = run.result(WAIT)
    # One outcome per write, in order; the failing one rolled back alone.
    assert [ok for ok, _ in outcomes] == [i != 7 for i in range(25)]
    assert isinstance(outcomes[7][1], InvalidQueryError)
    assert [value for ok, value in outcomes if ok] == [{"id": n} for n in range(1, 25)]
    assert single.result(WAIT) == {"id": 25}
    with pytest.raises(ValueError):
        engine.submit_many([])
    # The run spans transactions of max_batch (10); the write queued after
    # it shares the last one.
    assert batches == [1, 10, 10, 6]
    assert engine.last_applied() == 25


def test_a_run_cut_by_a_failed_transaction_is_neither_repeated_nor_skipped(data_dir: str) -> None:
    armed = threading.Event()

    def boom(txn: WriteTxn, op: Boom, now: float) -> None:
        if armed.is_set():
            raise apsw.IOError("disk I/O error (test)")

    def items() -> list[tuple[Operation, float, int | None]]:
        run: list[tuple[Operation, float, int | None]] = [
            (engine.operation_of({"Insert": {"collection": "c", "document": {"n": i}}}), 0.0, i + 1)
            for i in range(25)
        ]
        run[15] = (Boom(), 0.0, 16)
        return run

    with Engine(data_dir, synchronous="NORMAL", max_batch=10) as engine:
        engine.register_operation(Boom, boom)
        armed.set()
        failed = engine.submit_many(items())
        assert isinstance(failed.exception(WAIT), StorageIOError)
        # The first transaction (entries 1-10) committed; the second rolled
        # back whole, with its last_applied row.
        assert engine.last_applied() == 10
        assert engine.count("c") == 10
    armed.clear()
    with Engine(data_dir, synchronous="NORMAL", max_batch=10) as engine:
        engine.register_operation(Boom, boom)
        # Raft hands the same entries again after a restart: the committed
        # ones are skipped, the rest applied once.
        outcomes = engine.submit_many(items()).result(WAIT)
        assert outcomes[:10] == [(True, None)] * 10
        assert [value for _, value in outcomes[10:]] == [{"id": n} for n in range(11, 16)] + [None] + [
            {"id": n} for n in range(16, 25)
        ]
        assert engine.last_applied() == 25
        assert sorted(d["n"] for d in engine.find("c")) == [i for i in range(25) if i != 15]


def test_stopping_finishes_a_run_longer_than_a_batch(gated: tuple[Engine, Gate, list[int]]) -> None:
    engine, gate, batches = gated
    blocker = engine.submit({"Gate": {}}, 0.0)
    assert gate.entered.wait(WAIT)
    run = engine.submit_many(
        [(engine.operation_of({"Insert": {"collection": "c", "document": {"n": i}}}), 0.0, None) for i in range(25)]
    )
    closing = threading.Thread(target=engine.close)
    closing.start()
    gate.release.set()
    closing.join(WAIT)
    assert blocker.result(0) == "opened"
    assert len(run.result(0)) == 25
    assert batches == [1, 10, 10, 5]


def test_a_call_runs_on_the_writer_between_the_writes_queued_around_it(
    gated: tuple[Engine, Gate, list[int]],
) -> None:
    engine, gate, batches = gated
    blocker = engine.submit({"Gate": {}}, 0.0)
    assert gate.entered.wait(WAIT)
    before = [engine.submit({"Insert": {"collection": "c", "document": {"n": n}}}, 0.0) for n in range(3)]
    seen: list[tuple[bool, int]] = []

    def call(tag: str) -> str:
        seen.append((engine._writer.on_writer_thread(), engine.count("c")))  # type: ignore[union-attr]
        return tag

    def failing() -> None:
        raise OSError("fsync failed (test)")

    called = engine.submit_call(call, "persisted")
    broken = engine.submit_call(failing)
    after = engine.submit({"Insert": {"collection": "c", "document": {"n": 3}}}, 0.0)
    gate.release.set()
    assert blocker.result(WAIT) == "opened"
    assert called.result(WAIT) == "persisted"
    assert isinstance(broken.exception(WAIT), OSError)
    assert [f.result(WAIT) for f in before] == [{"id": n} for n in range(1, 4)]
    assert after.result(WAIT) == {"id": 4}
    # On the writer thread, after the writes before it committed and before
    # the one after it; no write queued after a call joins the batch before it.
    assert seen == [(True, 3)]
    assert batches == [1, 3, 1]
    engine.close()
    assert isinstance(engine.submit_call(call, "late").exception(0), UnavailableError)


def test_closed_engine(data_dir: str) -> None:
    engine = Engine(data_dir)
    with pytest.raises(UnavailableError):
        engine.find("c")
    engine.open()
    futures = [engine.submit({"Insert": {"collection": "c", "document": {"n": i}}}, 0.0) for i in range(50)]
    engine.close()
    assert all(f.result(0) for f in futures)  # close applies what was queued
    failed: Future[Any] = engine.submit({"Insert": {"collection": "c", "document": {}}}, 0.0)
    assert isinstance(failed.exception(0), UnavailableError)
    with pytest.raises(UnavailableError):
        engine.count("c")
    with pytest.raises(UnavailableError):
        engine.last_applied()
    engine.close()
    with Engine(data_dir) as again:
        assert again.count("c") == 50


def test_apply_on_the_writer_thread_is_refused(data_dir: str) -> None:
    with Engine(data_dir) as engine:
        engine.register_operation(
            Nested, lambda txn, op, now: engine.apply({"Insert": {"collection": "c", "document": {}}}, now)
        )
        with pytest.raises(RuntimeError, match="writer thread"):
            engine.apply({"Nested": {}}, 0.0)


def test_backup_is_a_consistent_copy(data_dir: str, tmp_path: Any) -> None:
    with Engine(data_dir) as engine:
        engine.apply({"CreateIndex": {"collection": "c", "field": "n"}}, 0.0)
        engine.apply({"InsertMany": {"collection": "c", "documents": [{"n": i} for i in range(10)]}}, 0.0, raft_index=3)
        copy_dir = tmp_path / "copy"
        copy_dir.mkdir()
        engine.backup(str(copy_dir / "oxidb.sqlite3"))
    with Engine(str(copy_dir)) as copy:
        assert copy.count("c", {"n": {"$gte": 5}}) == 5
        assert copy.last_applied() == 3
        assert copy.list_indexes("c")[0]["name"] == "n"


def test_invalid_synchronous_mode(data_dir: str) -> None:
    with pytest.raises(ValueError):
        Engine(data_dir, synchronous="SOMETIMES")


# --- durability -------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys, threading
    from oxidb.engine.engine import Engine

    engine = Engine(sys.argv[1], synchronous="FULL")
    engine.open()
    lock = threading.Lock()

    def writer(worker):
        batch = 0
        while True:
            batch += 1
            docs = [{"worker": worker, "batch": batch, "i": i} for i in range(10)]
            ids = engine.apply({"InsertMany": {"collection": "c", "documents": docs}}, 0.0)
            with lock:
                print(worker, batch, ids[0], ids[-1], flush=True)

    for worker in range(4):
        threading.Thread(target=writer, args=(worker,), daemon=True).start()
    threading.Event().wait()
    """
)


@pytest.mark.slow
def test_acknowledged_writes_survive_sigkill(data_dir: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, data_dir], stdout=subprocess.PIPE, text=True, env=env
    )
    acked: list[tuple[int, int, int, int]] = []
    deadline = time.monotonic() + 60
    try:
        assert child.stdout is not None
        while len(acked) < 60:
            assert time.monotonic() < deadline, "child too slow"
            line = child.stdout.readline()
            assert line, "child died"
            acked.append(tuple(int(x) for x in line.split()))  # type: ignore[arg-type]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with Engine(data_dir) as engine:
        docs = engine.find("c")
    by_batch: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for doc in docs:
        by_batch.setdefault((doc["worker"], doc["batch"]), []).append(doc)
    # Every acknowledged batch is there, with the ids it was acknowledged with.
    for worker, batch, first, last in acked:
        assert [d["_id"] for d in by_batch[(worker, batch)]] == list(range(first, last + 1))
    # No batch is partial: insert_many is all-or-nothing across the crash.
    assert all(len(batch_docs) == 10 for batch_docs in by_batch.values())
    assert [d["_id"] for d in docs] == list(range(1, len(docs) + 1))


def test_a_failing_commit_observer_does_not_stop_the_writer(data_dir: str) -> None:
    def observer(batch: int) -> None:
        raise RuntimeError("metrics broke")

    with Engine(data_dir, on_commit=observer) as engine:
        assert engine.apply({"Insert": {"collection": "c", "document": {}}}, 0.0) == {"id": 1}
        assert engine.apply({"Insert": {"collection": "c", "document": {}}}, 0.0) == {"id": 2}


def test_readers_follow_index_changes(data_dir: str) -> None:
    """
    A reader thread remembers each collection's key columns; creating,
    dropping and compacting indexes (all schema changes) are noticed.
    """
    with Engine(data_dir, synchronous="OFF") as engine:
        engine.apply({"InsertMany": {"collection": "c", "documents": [{"a": i % 5, "b": i} for i in range(50)]}}, 0.0)
        expected = [d["_id"] for d in engine.find("c", {"a": 3})]
        assert len(expected) == 10

        def where(reader: Reader) -> str:
            info = reader.collection("c")
            assert info is not None
            return reader.plan_for(info, plan_query({"a": 3}).matcher).where

        assert "k" not in engine.read(where)
        steps: list[dict[str, Any]] = [
            {"CreateIndex": {"collection": "c", "field": "b"}},
            {"CreateIndex": {"collection": "c", "field": "a"}},
            {"Compact": {"collection": "c"}},
            {"DropIndex": {"collection": "c", "index": "b"}},
            {"DropIndex": {"collection": "c", "index": "a"}},
            {"CreateCompositeIndex": {"collection": "c", "fields": ["a", "b"]}},
        ]
        shown = []
        for step in steps:
            engine.apply(step, 0.0)
            assert [d["_id"] for d in engine.find("c", {"a": 3})] == expected
            shown.append(engine.read(where).split(" ")[0])
        assert shown == ["ifnull((doc", "k2_0", "k2_0", "k2_0", "ifnull((doc", "k3_0"]


def test_restore_documents_replicates_ids_versions_and_the_counter(tmp_path: Any) -> None:
    """The operation survives its log form, and two replicas applying it hold the same state."""
    from oxidb.engine.operations import RestoreDocuments

    op = RestoreDocuments("c", [{"_id": 3, "_version": 7, "a": 1}, {"_id": 9, "_version": 1, "t": "x"}], last_id=12)
    results = []
    for replica in ("one", "two"):
        with Engine(str(tmp_path / replica), synchronous="OFF") as engine:
            decoded = engine.codec.decode(op.to_json())
            assert decoded == op
            assert engine.apply(decoded, 0.0) == {"restored": 2, "last_id": 12}
            results.append((engine.find("c"), engine.apply({"Insert": {"collection": "c", "document": {}}}, 0.0)))
    assert results[0] == results[1]
    docs, inserted = results[0]
    assert docs == [{"a": 1, "_id": 3, "_version": 7}, {"t": "x", "_id": 9, "_version": 1}]
    assert inserted == {"id": 13}
    for bad in ({"collection": "c", "documents": "x"}, {"collection": "c", "documents": [], "last_id": -1}):
        with pytest.raises(BadRequestError):
            RestoreDocuments(**bad)  # type: ignore[arg-type]
