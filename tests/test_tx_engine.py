"""
Engine-level transactions (oxidb.engine.transactions): the private view,
the read set, pinned buffered writes, and the CommitTransaction and
ReserveIds appliers on a real engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oxidb.engine import store, transactions
from oxidb.engine.engine import Engine
from oxidb.engine.operations import Operation
from oxidb.engine.transactions import Transaction
from oxidb.errors import (
    BadRequestError,
    DocumentNotObjectError,
    InvalidQueryError,
    TransactionConflictError,
    UniqueViolationError,
)

NOW = 1_700_000_000.0


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[Engine]:
    engine = Engine(str(tmp_path / "data"), synchronous="OFF")
    transactions.register_appliers(engine)
    with engine:
        yield engine


def apply(engine: Engine, op: Operation | dict[str, Any]) -> Any:
    return engine.apply(op, NOW)


def seed(engine: Engine, collection: str, docs: list[dict[str, Any]]) -> list[int]:
    return list(apply(engine, {"InsertMany": {"collection": collection, "documents": docs}}))


def stage_insert(engine: Engine, tx: Transaction, collection: str, docs: list[Any]) -> list[int]:
    first = apply(engine, transactions.reserve_operation(collection, len(docs)))
    return tx.stage_insert(collection, first, docs)


def commit(engine: Engine, tx: Transaction) -> Any:
    op = tx.commit_operation()
    assert op is not None
    return apply(engine, op)


def strip(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in doc.items() if k != "_version"} for doc in docs]


# --- the view -------------------------------------------------------------------


def test_reads_see_the_transactions_own_writes(engine: Engine) -> None:
    seed(engine, "c", [{"n": 1}, {"n": 2}, {"n": 3}])
    tx = Transaction(1)
    assert stage_insert(engine, tx, "c", [{"n": 4}]) == [4]
    assert engine.read(tx.stage_update, "c", {"n": {"$gte": 2}}, {"$inc": {"n": 10}}, NOW) == 3
    assert engine.read(tx.stage_delete, "c", {"n": 13}) == 1
    view = engine.read(tx.find, "c", {})
    assert [(d["_id"], d["n"], d["_version"]) for d in view] == [(1, 1, 1), (2, 12, 2), (4, 14, 2)]
    assert engine.read(tx.count, "c", {"n": {"$gt": 5}}) == 2
    assert engine.read(tx.find_one, "c", {"n": {"$gt": 5}}) == {"n": 12, "_id": 2, "_version": 2}
    assert engine.read(tx.find_one, "c", {"n": 13}) is None
    # Sort, skip and limit apply to the view.
    assert [d["n"] for d in engine.read(tx.find, "c", {}, {"n": -1}, 1, 1)] == [12]
    # Nothing is visible outside the transaction.
    assert [d["n"] for d in engine.find("c")] == [1, 2, 3]


def test_update_one_touches_one_document(engine: Engine) -> None:
    seed(engine, "c", [{"k": 1}, {"k": 1}, {"k": 1}])
    tx = Transaction(1)
    assert engine.read(tx.stage_update, "c", {"k": 1}, {"$set": {"hit": True}}, NOW, 1) == 1
    assert engine.read(tx.stage_delete, "c", {"k": 1}, 1) == 1
    assert commit(engine, tx) == "committed"
    assert strip(engine.find("c")) == [{"k": 1, "_id": 2}, {"k": 1, "_id": 3}]
    assert engine.find_one("c", {"_id": 2}) == {"k": 1, "_id": 2, "_version": 1}


def test_buffered_operations_apply_in_order_at_commit(engine: Engine) -> None:
    seed(engine, "c", [{"n": 1}])
    tx = Transaction(1)
    engine.read(tx.stage_update, "c", {}, {"$inc": {"n": 1}}, NOW)
    engine.read(tx.stage_update, "c", {}, {"$inc": {"n": 1}}, NOW)
    stage_insert(engine, tx, "c", [{"n": 100}])
    engine.read(tx.stage_update, "c", {"n": {"$gte": 3}}, {"$mul": {"n": 2}}, NOW)
    assert [d["n"] for d in engine.read(tx.find, "c")] == [6, 200]
    commit(engine, tx)
    # Both increments survive (v0.15 would keep only the last), and the
    # update sees the insert buffered before it.
    assert [(d["n"], d["_version"]) for d in engine.find("c")] == [(6, 4), (200, 2)]


def test_buffered_writes_are_pinned_to_the_documents_seen(engine: Engine) -> None:
    seed(engine, "c", [{"status": "open"}])
    tx = Transaction(1)
    assert engine.read(tx.stage_update, "c", {"status": "open"}, {"$set": {"status": "done"}}, NOW) == 1
    # A document that starts matching after buffering is not touched.
    seed(engine, "c", [{"status": "open"}])
    commit(engine, tx)
    assert [d["status"] for d in engine.find("c")] == ["done", "open"]


def test_invalid_update_buffers_nothing(engine: Engine) -> None:
    seed(engine, "c", [{"n": "text"}])
    tx = Transaction(1)
    with pytest.raises(InvalidQueryError, match=r"\$inc cannot be applied"):
        engine.read(tx.stage_update, "c", {}, {"$inc": {"n": 1}}, NOW)
    with pytest.raises(InvalidQueryError, match="unknown update operator"):
        engine.read(tx.stage_update, "c", {}, {"$bogus": {"n": 1}}, NOW)
    with pytest.raises(InvalidQueryError, match="unknown operator"):
        engine.read(tx.stage_delete, "c", {"n": {"$bogus": 1}})
    with pytest.raises(DocumentNotObjectError):
        tx.stage_insert("c", 5, [{"ok": 1}, [1, 2]])
    assert tx.ops == [] and tx.read_set == {} and tx.overlay == {}
    assert tx.commit_operation() is None


# --- the read set and OCC -----------------------------------------------------------


def test_read_set_holds_the_first_version_seen(engine: Engine) -> None:
    seed(engine, "c", [{"n": 1}, {"n": 2}])
    tx = Transaction(1)
    engine.read(tx.find, "c", {"n": 1})
    apply(engine, {"Update": {"collection": "c", "query": {}, "update": {"$inc": {"n": 10}}}})
    engine.read(tx.find, "c", {})
    assert tx.read_set == {("c", 1): 1, ("c", 2): 2}
    with pytest.raises(TransactionConflictError) as raised:
        commit(engine, tx)
    assert str(raised.value) == "transaction conflict on 'c' doc 1: expected version 1, found 2"


def test_plain_writes_and_deletes_conflict(engine: Engine) -> None:
    seed(engine, "c", [{"n": 1}])
    tx = Transaction(1)
    engine.read(tx.stage_update, "c", {}, {"$inc": {"n": 1}}, NOW)
    apply(engine, {"Delete": {"collection": "c", "query": {}}})
    with pytest.raises(TransactionConflictError, match="expected version 1, found 0"):
        commit(engine, tx)


def test_blind_inserts_never_conflict(engine: Engine) -> None:
    seed(engine, "c", [{"n": 1}])
    tx = Transaction(1)
    stage_insert(engine, tx, "c", [{"n": 2}])
    apply(engine, {"Update": {"collection": "c", "query": {}, "update": {"$inc": {"n": 1}}}})
    assert commit(engine, tx) == "committed"
    assert engine.count("c") == 2


def test_a_failed_commit_leaves_nothing(engine: Engine) -> None:
    seed(engine, "a", [{"n": 1}])
    seed(engine, "b", [{"n": 1}])
    tx = Transaction(1)
    stage_insert(engine, tx, "a", [{"n": 2}])
    engine.read(tx.stage_update, "a", {"n": 1}, {"$set": {"n": 10}}, NOW)
    engine.read(tx.find, "b", {})
    apply(engine, {"Update": {"collection": "b", "query": {}, "update": {"$set": {"x": 1}}}})
    with pytest.raises(TransactionConflictError, match="'b' doc 1"):
        commit(engine, tx)
    assert strip(engine.find("a")) == [{"n": 1, "_id": 1}]
    # The reserved id is not handed out again.
    assert seed(engine, "a", [{"n": 3}]) == [3]


def test_uniqueness_is_checked_across_the_transaction(engine: Engine) -> None:
    apply(engine, {"CreateUniqueIndex": {"collection": "u", "field": "email"}})
    seed(engine, "u", [{"email": "a"}])
    tx = Transaction(1)
    stage_insert(engine, tx, "u", [{"email": "b"}])
    stage_insert(engine, tx, "u", [{"email": "b"}])
    with pytest.raises(UniqueViolationError):
        commit(engine, tx)
    tx = Transaction(2)
    engine.read(tx.stage_update, "u", {"email": "a"}, {"$set": {"email": "z"}}, NOW)
    stage_insert(engine, tx, "u", [{"email": "a"}])
    assert commit(engine, tx) == "committed"
    assert sorted(d["email"] for d in engine.find("u")) == ["a", "z"]


def test_reserved_ids_taken_after_a_recreate_conflict(engine: Engine) -> None:
    seed(engine, "c", [{"n": 1}, {"n": 2}])
    tx = Transaction(1)
    assert stage_insert(engine, tx, "c", [{"n": 3}]) == [3]
    apply(engine, {"DropCollection": {"name": "c"}})
    seed(engine, "c", [{"n": 1}, {"n": 2}, {"n": 3}])
    with pytest.raises(TransactionConflictError, match="'c' doc 3: expected version 0, found 1"):
        commit(engine, tx)
    # Without a clash the reserved id is used and the high-water mark follows it.
    tx = Transaction(2)
    assert stage_insert(engine, tx, "d", [{"n": 1}]) == [1]
    apply(engine, {"DropCollection": {"name": "d"}})
    commit(engine, tx)
    assert seed(engine, "d", [{"n": 2}]) == [2]


def test_a_recreated_collection_is_not_the_one_read(engine: Engine) -> None:
    """Ids and versions restart at 1 in a re-created collection: same numbers, other documents."""
    seed(engine, "c", [{"n": 1}])
    tx = Transaction(1)
    assert engine.read(tx.stage_update, "c", {"n": 1}, {"$inc": {"n": 1}}, NOW) == 1
    apply(engine, {"DropCollection": {"name": "c"}})
    seed(engine, "c", [{"n": 100}])  # _id 1, _version 1 again
    with pytest.raises(TransactionConflictError, match="'c' doc 1: expected version 1, found 0"):
        commit(engine, tx)
    assert strip(engine.find("c")) == [{"n": 100, "_id": 1}]
    # A read-only transaction is checked the same way.
    tx = Transaction(2)
    engine.read(tx.find, "c", {})
    apply(engine, {"DropCollection": {"name": "c"}})
    seed(engine, "c", [{"n": 100}])
    with pytest.raises(TransactionConflictError):
        commit(engine, tx)


def test_compact_is_not_a_conflict(engine: Engine) -> None:
    seed(engine, "c", [{"n": 1}, {"n": 2}])
    tx = Transaction(1)
    engine.read(tx.stage_update, "c", {"n": 1}, {"$set": {"x": 1}}, NOW)
    apply(engine, {"Compact": {"collection": "c"}})
    assert commit(engine, tx) == "committed"
    assert strip(engine.find("c", {"x": 1})) == [{"n": 1, "x": 1, "_id": 1}]


def test_commits_without_incarnations_still_apply(engine: Engine) -> None:
    """Raft log entries written before incarnations were recorded."""
    seed(engine, "c", [{"n": 1}])
    body = {
        "read_set": [["c", 1, 1]],
        "write_ops": [{"op": "update", "collection": "c", "ids": [[1, 1]], "update": {"$set": {"n": 5}}}],
    }
    assert apply(engine, {"CommitTransaction": body}) == "committed"
    assert strip(engine.find("c")) == [{"n": 5, "_id": 1}]


def test_reserve_ids(engine: Engine) -> None:
    assert apply(engine, transactions.reserve_operation("r", 3)) == 1
    assert apply(engine, transactions.reserve_operation("r", 1)) == 4
    assert seed(engine, "r", [{}]) == [5]
    with pytest.raises(InvalidQueryError, match="invalid collection name"):
        apply(engine, transactions.reserve_operation("../x", 1))
    bodies: list[Any] = [{"collection": "r", "count": 0}, {"collection": "r"}, {"collection": "r", "count": True}, []]
    for body in bodies:
        with pytest.raises(BadRequestError, match="malformed operation"):
            apply(engine, {"ReserveIds": body})


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"read_set": [], "write_ops": {}},
        {"read_set": {}, "write_ops": []},
        {"read_set": [["c", 1]], "write_ops": []},
        {"read_set": [["c", "1", 1]], "write_ops": []},
        {"read_set": [[1, 1, 1]], "write_ops": []},
        {"read_set": [], "write_ops": [{"op": "drop", "collection": "c"}]},
        {"read_set": [], "write_ops": [{"op": "insert", "collection": "c", "first_id": 0, "documents": [{}]}]},
        {"read_set": [], "write_ops": [{"op": "insert", "collection": "c", "first_id": 1, "documents": []}]},
        {"read_set": [], "write_ops": [{"op": "update", "collection": "c", "ids": [[2, 1]], "update": {}}]},
        {"read_set": [], "write_ops": [{"op": "delete", "collection": "c", "ids": [3]}]},
        {"read_set": [], "write_ops": [{"op": "delete", "ids": [[1, 1]]}]},
        {"read_set": [], "write_ops": ["insert"]},
        {"read_set": [], "write_ops": [], "collections": []},
    ],
)
def test_malformed_commit_operations(engine: Engine, body: Any) -> None:
    with pytest.raises(BadRequestError, match="malformed operation"):
        apply(engine, {"CommitTransaction": body})


def test_commit_operation_shape(engine: Engine) -> None:
    seed(engine, "c", [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}])
    tx = Transaction(7)
    assert tx.commit_operation() is None
    engine.read(tx.stage_update, "c", {"n": {"$ne": 3}}, {"$set": {"x": 1}}, NOW)
    stage_insert(engine, tx, "c", [{"n": 5}, {"n": 6}])
    incarnation = engine.read(lambda reader: store.incarnation(reader.conn, "c"))
    assert isinstance(incarnation, str) and incarnation
    op = tx.commit_operation()
    assert op is not None and op.to_json() == {
        "CommitTransaction": {
            "read_set": [["c", 1, 1], ["c", 2, 1], ["c", 4, 1]],
            "collections": {"c": incarnation},
            "write_ops": [
                {"op": "update", "collection": "c", "ids": [[1, 2], [4, 4]], "update": {"$set": {"x": 1}}},
                {"op": "insert", "collection": "c", "first_id": 5, "documents": [{"n": 5}, {"n": 6}]},
            ],
            "tx_id": 7,
            "v": 1,
        }
    }
    # A read-only transaction still validates what it read.
    reader = Transaction(8)
    engine.read(reader.find, "c", {"n": 3})
    op = reader.commit_operation()
    assert op is not None and op.to_json() == {
        "CommitTransaction": {
            "read_set": [["c", 3, 1]],
            "collections": {"c": incarnation},
            "write_ops": [],
            "tx_id": 8,
            "v": 1,
        }
    }


# --- the view against direct application ----------------------------------------------

_queries = st.sampled_from([{}, {"k": 0}, {"k": 1}, {"n": {"$gt": 2}}, {"k": {"$ne": 1}}])
_ops = st.one_of(
    st.tuples(
        st.just("insert"), st.lists(st.fixed_dictionaries({"k": st.integers(0, 2), "n": st.integers(0, 5)}), max_size=3)
    ),
    st.tuples(
        st.just("update"), _queries, st.sampled_from([{"$inc": {"n": 1}}, {"$set": {"k": 2}}, {"$unset": {"n": ""}}])
    ),
    st.tuples(st.just("update_one"), _queries, st.just({"$inc": {"n": 10}})),
    st.tuples(st.just("delete"), _queries, st.sampled_from([None, 1, 2])),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    initial=st.lists(st.fixed_dictionaries({"k": st.integers(0, 2), "n": st.integers(0, 5)}), max_size=5),
    ops=st.lists(_ops, max_size=6),
)
def test_view_and_commit_match_direct_application(tmp_path_factory: Any, initial: list[Any], ops: list[Any]) -> None:
    """
    Without concurrent writers, a transaction's view after each operation, and
    the committed result, equal what the same operations give applied one by
    one outside a transaction.
    """
    base = tmp_path_factory.mktemp("prop")
    tx_engine = Engine(str(base / "tx"), synchronous="OFF")
    transactions.register_appliers(tx_engine)
    with tx_engine, Engine(str(base / "direct"), synchronous="OFF") as direct:
        if initial:
            seed(tx_engine, "c", initial)
            seed(direct, "c", initial)
        tx = Transaction(1)
        for op in ops:
            if op[0] == "insert":
                if op[1]:
                    stage_insert(tx_engine, tx, "c", op[1])
                    apply(direct, {"InsertMany": {"collection": "c", "documents": op[1]}})
            elif op[0] in ("update", "update_one"):
                one = op[0] == "update_one"
                tx_engine.read(tx.stage_update, "c", op[1], op[2], NOW, 1 if one else None)
                apply(direct, {"UpdateOne" if one else "Update": {"collection": "c", "query": op[1], "update": op[2]}})
            else:
                tx_engine.read(tx.stage_delete, "c", op[1], op[2])
                body = {"collection": "c", "query": op[1]} | ({} if op[2] is None else {"limit": op[2]})
                apply(direct, {"Delete": body})
            assert tx_engine.read(tx.find, "c") == direct.find("c")
        if tx.commit_operation() is not None:
            commit(tx_engine, tx)
        assert tx_engine.find("c") == direct.find("c")
