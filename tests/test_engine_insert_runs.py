"""
Consecutive inserts into one collection applied together by the writer
(L{oxidb.engine.writer.Writer}'s runs, L{oxidb.engine.writes.WriteTxn.insert_each}):
the outcomes, documents, id counter, changes and C{last_applied} are exactly
those of the same operations applied one by one, also when the run applier
fails and the writer falls back, and across a kill -9 between the
transactions of one run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import apsw
import pytest
from zope.interface import implementer

from oxidb.engine.changes import IChangeListener, OperationChanges
from oxidb.engine.engine import Engine
from oxidb.engine.operations import Operation
from oxidb.engine.writes import WriteTxn
from oxidb.errors import StorageIOError

WAIT = 30.0


@implementer(IChangeListener)
class Changes:
    """Every committed operation's changes, as comparable tuples."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int, list[Any]]] = []

    def opened(self, last_token: int) -> None:
        pass

    def committed(self, operations: list[OperationChanges]) -> None:
        self.seen.extend((c.first, c.last, c.count, list(c.runs)) for c in operations)


def _payloads(seed: int, count: int) -> list[dict[str, Any]]:
    """A mix dominated by inserts into "c", with every way one insert can fail."""
    rng = random.Random(seed)
    payloads: list[dict[str, Any]] = [{"CreateUniqueIndex": {"collection": "c", "field": "u"}}]
    for i in range(count):
        roll = rng.random()
        if roll < 0.6:
            doc: Any = {"i": i, "u": rng.randrange(40)} if rng.random() < 0.7 else {"i": i}
            if rng.random() < 0.1:
                doc["u"] = float(doc.get("u", 1))  # 1 and 1.0 are one unique key
            payloads.append({"Insert": {"collection": "c", "document": doc}})
        elif roll < 0.72:
            payloads.append({"Insert": {"collection": "d", "document": {"i": i}}})
        elif roll < 0.77:
            payloads.append({"Insert": {"collection": "c", "document": rng.choice([[1, 2], 5, "text", None])}})
        elif roll < 0.8:
            payloads.append({"Insert": {"collection": "c", "document": {"deep": _nested(200)}}})
        elif roll < 0.83:
            payloads.append({"Insert": {"collection": rng.choice(["", "nodb/x"]), "document": {"i": i}}})
        elif roll < 0.86:
            payloads.append({"Insert": {"collection": f"new{i}", "document": {"i": i}}})
        elif roll < 0.9:
            payloads.append({"Delete": {"collection": "c", "query": {"u": rng.randrange(40)}}})
        elif roll < 0.93:
            payloads.append({"CreateIndex": {"collection": "c", "field": "i"}})
        else:
            payloads.append({"InsertMany": {"collection": "c", "documents": [{"i": i, "m": 1}, {"i": i, "m": 2}]}})
    return payloads


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def _comparable(outcome: tuple[bool, Any]) -> tuple[bool, Any]:
    ok, value = outcome
    return (ok, value) if ok else (ok, (type(value), str(value)))


def _state(engine: Engine) -> dict[str, Any]:
    names = engine.list_collections()
    return {
        "collections": names,
        "docs": {name: engine.find(name) for name in names},
        "next_id": {name: engine.apply({"Insert": {"collection": name, "document": {}}}, 0.0) for name in names},
        "last_applied": engine.last_applied(),
    }


def _items(engine: Engine, payloads: list[dict[str, Any]], first: int = 1) -> list[tuple[Operation, float, int | None]]:
    return [(engine.operation_of(p), 0.0, index) for index, p in enumerate(payloads, first)]


def _one_by_one(data_dir: str, payloads: list[dict[str, Any]]) -> tuple[list[tuple[bool, Any]], Changes, Engine]:
    changes = Changes()
    engine = Engine(data_dir, synchronous="OFF")
    engine.listen(changes)
    engine.open()
    outcomes = []
    for op, now, index in _items(engine, payloads):
        # Each in a transaction of its own: no run to apply together.
        outcomes.append(_comparable(engine.submit_many([(op, now, index)]).result(WAIT)[0]))
    return outcomes, changes, engine


@pytest.mark.parametrize("seed", range(4))
def test_a_run_of_inserts_applies_as_one_by_one(tmp_path: Any, seed: int) -> None:
    payloads = _payloads(seed, 120)
    expected, expected_changes, oracle = _one_by_one(str(tmp_path / "oracle"), payloads)
    changes = Changes()
    commits: list[int] = []
    with oracle, Engine(str(tmp_path / "run"), synchronous="OFF", max_batch=50, on_commit=commits.append) as engine:
        engine.listen(changes)
        outcomes = engine.submit_many(_items(engine, payloads)).result(WAIT)
        assert [_comparable(o) for o in outcomes] == expected
        assert commits == [50, 50, 21]
        assert changes.seen == expected_changes.seen
        assert _state(engine) == _state(oracle)


def test_a_failing_run_applier_falls_back_to_one_by_one(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    payloads = _payloads(7, 60)
    expected, _, oracle = _one_by_one(str(tmp_path / "oracle"), payloads)
    original = WriteTxn.insert_each
    calls: list[int] = []

    def failing(self: WriteTxn, info: Any, documents: Any, each: Callable[[int], None]) -> Any:
        calls.append(len(documents))
        original(self, info, documents, each)  # wrote its rows and recorded its changes, then:
        raise apsw.ConstraintError("a constraint the run did not foresee (test)")

    monkeypatch.setattr(WriteTxn, "insert_each", failing)
    changes = Changes()
    with oracle, Engine(str(tmp_path / "run"), synchronous="OFF") as engine:
        engine.listen(changes)
        outcomes = engine.submit_many(_items(engine, payloads)).result(WAIT)
        assert calls, "no run was tried"
        assert [_comparable(o) for o in outcomes] == expected
        monkeypatch.setattr(WriteTxn, "insert_each", original)
        assert _state(engine) == _state(oracle)


def test_a_fatal_error_in_a_run_fails_its_transaction(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: WriteTxn, info: Any, documents: Any, each: Callable[[int], None]) -> Any:
        raise apsw.IOError("disk I/O error (test)")

    with Engine(str(tmp_path / "data"), synchronous="OFF") as engine:
        engine.apply({"Insert": {"collection": "c", "document": {"n": 0}}}, 0.0, 1)
        monkeypatch.setattr(WriteTxn, "insert_each", broken)
        items = _items(engine, [{"Insert": {"collection": "c", "document": {"n": n}}} for n in range(1, 4)], 2)
        failed = engine.submit_many(items)
        assert isinstance(failed.exception(WAIT), StorageIOError)
        assert engine.last_applied() == 1
        monkeypatch.undo()
        assert [ok for ok, _ in engine.submit_many(items).result(WAIT)] == [True] * 3
        assert [d["n"] for d in engine.find("c")] == [0, 1, 2, 3]


def test_text_and_vector_indexed_collections_insert_one_by_one(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    payloads: list[dict[str, Any]] = [
        {"CreateTextIndex": {"collection": "t", "fields": ["s"]}},
        {"CreateVectorIndex": {"collection": "v", "field": "e", "dimension": 2, "metric": "cosine"}},
    ]
    for i in range(6):
        payloads.append({"Insert": {"collection": "t", "document": {"s": f"word{i} common"}}})
    for i in range(6):
        payloads.append({"Insert": {"collection": "v", "document": {"e": [1.0, float(i)] if i != 3 else "bad"}}})
    expected, _, oracle = _one_by_one(str(tmp_path / "oracle"), payloads)
    tried: list[int] = []
    apply_run = Engine._apply_run

    def counting(self: Engine, ops: list[Any], each: Any) -> Any:
        tried.append(len(ops))
        return apply_run(self, ops, each)

    monkeypatch.setattr(Engine, "_apply_run", counting)
    with oracle, Engine(str(tmp_path / "run"), synchronous="OFF") as engine:
        outcomes = engine.submit_many(_items(engine, payloads)).result(WAIT)
        assert [_comparable(o) for o in outcomes] == expected
        assert _state(engine) == _state(oracle)
        assert engine.text_search("t", "common", 10) == oracle.text_search("t", "common", 10)
    # Each collection's run is offered once; declined, it goes one by one to
    # its end (not offered again from each later insert).
    assert tried == [6, 6]


# --- kill -9 between the transactions of one run ------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    from oxidb.engine.engine import Engine

    def killed(count):
        os.kill(os.getpid(), signal.SIGKILL)

    engine = Engine(sys.argv[1], synchronous="FULL", max_batch=10, on_commit=killed)
    engine.open()
    payloads = json.loads(sys.argv[2])
    items = [(engine.operation_of(p), 0.0, i) for i, p in enumerate(payloads, 1)]
    engine.submit_many(items).result(30)
    """
)


def test_a_kill_between_transactions_of_a_run_replays_exactly_the_rest(tmp_path: Any) -> None:
    payloads: list[dict[str, Any]] = [
        {"Insert": {"collection": "c", "document": {"i": i, "u": i % 7}}} for i in range(25)
    ]
    payloads[0] = {"CreateUniqueIndex": {"collection": "c", "field": "u"}}
    payloads[12] = {"Insert": {"collection": "c", "document": 12}}
    expected, _, oracle = _one_by_one(str(tmp_path / "oracle"), payloads)
    data_dir = str(tmp_path / "data")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, data_dir, json.dumps(payloads)], env=env, timeout=60, check=False
    )
    assert child.returncode == -signal.SIGKILL
    with oracle, Engine(data_dir, synchronous="OFF", max_batch=10) as engine:
        # The first transaction of the run (entries 1-10) is durable, with its last_applied.
        assert engine.last_applied() == 10
        assert [d["i"] for d in engine.find("c")] == list(range(1, 8))
        # Raft hands the whole run again: the first ten are no-ops, the rest applied once.
        outcomes = engine.submit_many(_items(engine, payloads)).result(WAIT)
        assert outcomes[:10] == [(True, None)] * 10
        assert [_comparable(o) for o in outcomes[10:]] == expected[10:]
        assert _state(engine) == _state(oracle)
