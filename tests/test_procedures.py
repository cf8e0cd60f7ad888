"""
Stored procedures (engine.md 9.1-9.5): definitions on the wire, the step
language, variables, conditions, the call's transaction, every error text,
and the execution bounds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from oxidb.config import Config
from oxidb.engine import procedures, transactions
from oxidb.engine.engine import Engine
from oxidb.engine.procedures import Finished, Reserve, compare, evaluate_condition, truthy
from oxidb.engine.transactions import Transaction
from oxidb.errors import ProcedureError, TransactionConflictError
from oxidb.testing import MemoryServer, result_of

NOW = 1_700_000_000.0


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[Engine]:
    engine = Engine(str(tmp_path / "data"), synchronous="OFF")
    transactions.register_appliers(engine)
    procedures.register_appliers(engine)
    with engine:
        yield engine


@pytest.fixture
def server(engine: Engine) -> MemoryServer:
    server = MemoryServer(Config(data_dir=engine.data_dir), engine=engine)
    server.clock.advance(NOW)
    return server


def reply(server: MemoryServer, cmd: str, **request: Any) -> Any:
    return server.request({"cmd": cmd, **request})


def ok(server: MemoryServer, cmd: str, **request: Any) -> Any:
    answer = reply(server, cmd, **request)
    assert answer.get("ok") is True, answer
    return answer["data"]


def error(server: MemoryServer, cmd: str, **request: Any) -> str:
    answer = reply(server, cmd, **request)
    assert answer.get("ok") is False, answer
    return str(answer["error"])


def define(server: MemoryServer, steps: list[Any], params: list[str] | None = None, name: str = "p") -> None:
    extra = {} if params is None else {"params": params}
    assert ok(server, "create_procedure", name=name, steps=steps, **extra) == "procedure created"


def run(server: MemoryServer, steps: list[Any], params: Any = None, declared: list[str] | None = None) -> Any:
    define(server, steps, declared)
    answer = reply(server, "call_procedure", name="p", **({} if params is None else {"params": params}))
    return answer["data"] if answer["ok"] else answer["error"]


# --- definitions ---------------------------------------------------------------------


def test_definition_commands(server: MemoryServer) -> None:
    define(server, [{"step": "return", "value": 1}], ["a"], name="zeta")
    define(server, [{"step": "return", "value": 2}], name="alpha")
    assert ok(server, "list_procedures") == ["alpha", "zeta"]
    assert ok(server, "get_procedure", name="zeta") == {
        "cmd": "create_procedure",
        "name": "zeta",
        "steps": [{"step": "return", "value": 1}],
        "params": ["a"],
        "_id": 1,
        "_version": 1,
    }
    # Create-or-replace.
    define(server, [{"step": "return", "value": 3}], name="zeta")
    assert ok(server, "list_procedures") == ["alpha", "zeta"]
    assert ok(server, "call_procedure", name="zeta") == 3
    assert ok(server, "delete_procedure", name="zeta") == "procedure deleted"
    assert ok(server, "list_procedures") == ["alpha"]
    for cmd in ("get_procedure", "delete_procedure", "call_procedure"):
        assert error(server, cmd, name="zeta") == "procedure not found: zeta"
        assert error(server, cmd) == "missing 'name'"
    engine = server.services.engine
    assert [i["index_type"] for i in engine.list_indexes("_procedures")] == ["unique"]


@pytest.mark.parametrize(
    "request_, text",
    [
        ({}, "missing 'name'"),
        ({"name": 5, "steps": [{}]}, "missing 'name'"),
        ({"name": "p"}, "procedure error: missing 'steps'"),
        ({"name": "p", "steps": {}}, "procedure error: 'steps' must be an array"),
        ({"name": "p", "steps": []}, "procedure error: 'steps' must not be empty"),
        ({"name": "p", "steps": [{}], "params": "a"}, "procedure error: 'params' must be an array"),
        ({"name": "p", "steps": [{}], "params": ["a", 1]}, "procedure error: params must be strings"),
    ],
)
def test_definition_errors(server: MemoryServer, request_: dict[str, Any], text: str) -> None:
    assert error(server, "create_procedure", **request_) == text
    assert ok(server, "list_procedures") == []


def test_procedures_cannot_be_written_through_insert(server: MemoryServer) -> None:
    # Upstream lets a plain insert into _procedures define a procedure; here
    # the collection is the server's own (docs/security.md).
    doc = {"name": "raw", "steps": [{"step": "return", "value": "hi"}]}
    reserved = "invalid query: collection name is reserved for the server: _procedures"
    assert error(server, "insert", collection="_procedures", doc=doc) == reserved
    assert error(server, "call_procedure", name="raw") == "procedure not found: raw"


def test_a_stored_definition_is_checked_when_called(server: MemoryServer) -> None:
    server.services.engine.apply(
        {"Insert": {"collection": "_procedures", "document": {"name": "broken", "steps": []}}}, 0.0
    )
    assert error(server, "call_procedure", name="broken") == "procedure error: 'steps' must not be empty"


# --- parameters and variables ---------------------------------------------------------------


def test_parameters(server: MemoryServer) -> None:
    steps = [{"step": "return", "value": {"a": "$param.a", "b": "$param.b", "c": "$param.c"}}]
    assert run(server, steps, {"a": 1, "c": 3}, ["a", "b"]) == {"a": 1, "b": None, "c": None}
    assert run(server, steps, [1, 2, 3], ["a", "b"]) == {"a": 1, "b": 2, "c": None}
    assert run(server, steps, [1], ["a", "b"]) == {"a": 1, "b": None, "c": None}
    assert run(server, steps, "x", ["a"]) == "procedure error: params must be an object or array"
    assert run(server, steps, 5, []) == {"a": None, "b": None, "c": None}
    assert run(server, steps, None, ["a"]) == {"a": None, "b": None, "c": None}


def test_variable_resolution(server: MemoryServer) -> None:
    steps = [
        {"step": "set", "name": "v", "value": {"list": [10, {"deep": "x"}], "n": 5}},
        {"step": "set", "name": "copy", "value": "$v"},
        {
            "step": "return",
            "value": {
                "nested": "$param.user.name",
                "index": "$v.list.1.deep",
                "missing": "$v.nope.deeper",
                "bad_index": "$v.list.9",
                "unknown": "$nothing",
                "whole": "$copy.n",
                "$keys_stay": ["$v.n", "plain", "$"],
            },
        },
    ]
    assert run(server, steps, {"user": {"name": "Ada"}}, ["user"]) == {
        "nested": "Ada",
        "index": "x",
        "missing": None,
        "bad_index": None,
        "unknown": None,
        "whole": 5,
        "$keys_stay": [5, "plain", None],
    }


def test_dollar_strings_in_an_aggregate_pipeline_are_variables(server: MemoryServer) -> None:
    ok(server, "insert_many", collection="sales", docs=[{"amount": 2}, {"amount": 3}])
    steps = [
        {
            "step": "aggregate",
            "collection": "sales",
            "pipeline": [{"$group": {"_id": None, "t": {"$sum": "$amount"}}}],
            "as": "r",
        },
        {"step": "set", "name": "amount", "value": 7},
        {
            "step": "aggregate",
            "collection": "sales",
            "pipeline": [{"$group": {"_id": None, "t": {"$sum": "$amount"}}}],
            "as": "s",
        },
        {"step": "return", "value": {"r": "$r", "s": "$s"}},
    ]
    # "$amount" is replaced before the pipeline runs (v0.15): null, then 7 per document.
    assert run(server, steps) == {"r": [{"_id": None, "t": 0}], "s": [{"_id": None, "t": 14}]}


# --- steps --------------------------------------------------------------------------------


def test_data_steps_and_their_results(server: MemoryServer) -> None:
    ok(server, "insert_many", collection="c", docs=[{"k": 1}, {"k": 2}])
    steps = [
        {"step": "find", "collection": "c", "query": {"k": {"$gte": 1}}, "as": "all"},
        {"step": "find_one", "collection": "c", "query": {"k": 2}, "as": "two"},
        {"step": "find_one", "collection": "c", "query": {"k": 9}, "as": "none"},
        {"step": "count", "collection": "c", "as": "n"},
        {"step": "insert", "collection": "c", "document": {"n": "$n"}, "as": "ins"},
        {"step": "update", "collection": "c", "query": {"k": 1}, "update": {"$set": {"k": 10}}, "as": "upd"},
        {"step": "delete", "collection": "c", "query": {"k": 2}, "as": "del"},
        # The call reads its own writes.
        {"step": "find", "collection": "c", "as": "after"},
        {"step": "aggregate", "collection": "c", "pipeline": [{"$count": "n"}], "as": "committed"},
        {"step": "return", "value": {
            "all": "$all", "two": "$two._id", "none": "$none", "n": "$n", "ins": "$ins", "upd": "$upd",
            "del": "$del", "after": "$after", "committed": "$committed",
        }},
    ]  # fmt: skip
    assert run(server, steps) == {
        "all": [{"k": 1, "_id": 1, "_version": 1}, {"k": 2, "_id": 2, "_version": 1}],
        "two": 2,
        "none": None,
        "n": 2,
        "ins": {"inserted": True, "id": 3},
        "upd": {"modified": True},
        "del": {"deleted": True},
        "after": [{"k": 10, "_id": 1, "_version": 2}, {"n": 2, "_id": 3, "_version": 1}],
        # aggregate runs on committed data, outside the call's transaction.
        "committed": [{"n": 2}],
    }
    assert ok(server, "find", collection="c") == [{"k": 10, "_id": 1, "_version": 2}, {"n": 2, "_id": 3, "_version": 1}]


def test_return_abort_and_falling_off_the_end(server: MemoryServer) -> None:
    assert run(server, [{"step": "set", "name": "x", "value": 1}]) == {"ok": True}
    assert run(server, [{"step": "return"}, {"step": "bogus"}]) == {"ok": True}
    assert run(server, [{"step": "return", "value": None}]) is None
    assert run(server, [{"step": "abort"}]) == "procedure error: procedure aborted"
    assert run(server, [{"step": "set", "name": "m", "value": "nope"}, {"step": "abort", "message": "$m"}]) == (
        "procedure error: nope"
    )
    assert run(server, [{"step": "abort", "message": {"code": 7}}]) == 'procedure error: {"code":7}'
    assert run(server, [{"step": "abort", "message": None}]) == "procedure error: null"


def test_abort_and_errors_roll_back(server: MemoryServer) -> None:
    insert = {"step": "insert", "collection": "c", "document": {"x": 1}}
    assert run(server, [insert, {"step": "abort", "message": "stop"}]) == "procedure error: stop"
    assert run(server, [insert, {"step": "find", "collection": "c", "query": {"x": {"$bad": 1}}}]) == (
        "invalid query: unknown operator: $bad"
    )
    assert run(
        server, [insert, {"step": "update", "collection": "c", "query": {}, "update": {"$inc": {"x": "a"}}}]
    ) == ("invalid query: $inc value for 'x' must be numeric")
    assert ok(server, "find", collection="c") == []


def test_transfer_procedure(server: MemoryServer) -> None:
    ok(server, "insert_many", collection="accounts", docs=[{"id": "A", "balance": 100}, {"id": "B", "balance": 50}])
    steps = [
        {"step": "find_one", "collection": "accounts", "query": {"id": "$param.from"}, "as": "sender"},
        {"step": "if", "condition": {"$expr": {"$lt": ["$sender.balance", "$param.amount"]}},
         "then": [{"step": "abort", "message": "insufficient funds"}]},
        # No arithmetic in v0.15 procedures: the caller passes the negative amount.
        {"step": "update", "collection": "accounts", "query": {"id": "$param.from"},
         "update": {"$inc": {"balance": "$param.negative"}}},
        {"step": "update", "collection": "accounts", "query": {"id": "$param.to"},
         "update": {"$inc": {"balance": "$param.amount"}}},
        {"step": "find", "collection": "accounts", "as": "now"},
        {"step": "return", "value": "$now"},
    ]  # fmt: skip
    define(server, steps, ["from", "to", "amount", "negative"])
    result = ok(server, "call_procedure", name="p", params={"from": "A", "to": "B", "amount": 30, "negative": -30})
    assert [d["balance"] for d in result] == [70, 80]
    assert [d["balance"] for d in ok(server, "find", collection="accounts")] == [70, 80]
    assert (
        error(server, "call_procedure", name="p", params=["A", "B", 500, -500]) == "procedure error: insufficient funds"
    )


def test_call_is_independent_of_the_connections_transaction(server: MemoryServer) -> None:
    define(server, [{"step": "insert", "collection": "c", "document": {"by": "procedure"}}])
    client, pump = server.connect()
    replies = [
        client.request({"cmd": "begin_tx"}),
        client.request({"cmd": "insert", "collection": "c", "doc": {"by": "tx"}}),
        client.request({"cmd": "call_procedure", "name": "p"}),
        client.request({"cmd": "rollback_tx"}),
    ]
    pump.flush()
    assert [result_of(d)["ok"] for d in replies] == [True] * 4
    assert [d["by"] for d in ok(server, "find", collection="c")] == ["procedure"]


def test_conflicting_commit_of_a_call(engine: Engine) -> None:
    engine.apply({"InsertMany": {"collection": "c", "documents": [{"n": 1}]}}, NOW)
    steps = [
        {"step": "find_one", "collection": "c", "as": "doc"},
        {"step": "insert", "collection": "log", "document": {"saw": "$doc.n"}},
        {"step": "update", "collection": "c", "query": {}, "update": {"$set": {"n": 2}}},
    ]
    engine.apply({"PutProcedure": {"document": {"name": "p", "steps": steps}}}, NOW)
    tx = Transaction(1)
    call = procedures.run(engine, tx, "p", {}, NOW)
    need = procedures.advance(call, None)
    assert need == Reserve("log", 1)
    # Someone else writes the document the call has read.
    engine.apply({"Update": {"collection": "c", "query": {}, "update": {"$set": {"n": 5}}}}, NOW)
    first_id = engine.apply(need.operation(), NOW)
    assert procedures.advance(call, first_id) == Finished({"ok": True})
    commit = tx.commit_operation()
    assert commit is not None
    with pytest.raises(
        TransactionConflictError, match="transaction conflict on 'c' doc 1: expected version 1, found 2"
    ):
        engine.apply(commit, NOW)
    assert engine.find("log") == []


# --- conditions ---------------------------------------------------------------------------


def test_truthiness_and_comparison() -> None:
    assert [truthy(v) for v in (None, False, 0, 0.0, "", [], {}, True, 1, "0", [0], {"a": 0})] == [
        False, False, False, False, False, False, True, True, True, True, True, True,
    ]  # fmt: skip
    assert compare(2, 10) == -1 and compare(2.5, 2) == 1 and compare(1, 1.0) == 0
    # Not both numbers: compared as text.
    assert compare("2", 10) == 1 and compare(None, "") == 0 and compare(True, "true") == 0
    assert compare([1, 2], "[1,2]") == 0 and compare({"a": "é"}, '{"a":"é"}') == 0


@pytest.mark.parametrize(
    "condition, expected",
    [
        ({"$expr": {"$eq": [1, 1]}}, True),
        ({"$expr": {"$ne": [1, 1]}}, False),
        ({"$expr": {"$gt": [3, 2]}}, True),
        ({"$expr": {"$gte": [2, 2]}}, True),
        ({"$expr": {"$lt": ["b", "a"]}}, False),
        ({"$expr": {"$lte": [None, ""]}}, True),
        ({"$expr": {"$and": [{"$eq": [1, 1]}, {"$gt": [1, 0]}]}}, True),
        ({"$expr": {"$and": [{"$eq": [1, 1]}, False]}}, False),
        ({"$expr": {"$or": [0, {"$eq": ["a", "a"]}]}}, True),
        ({"$expr": {"$or": []}}, False),
        ({"$expr": {"$not": {"$eq": [1, 2]}}}, True),
        ({"$expr": 0}, False),
        ({"$expr": "yes"}, True),
        # The REC: a bare single-operator object is evaluated (v0.15: always true).
        ({"$gt": [1, 2]}, False),
        ({"$not": True}, False),
        # Other objects and values by truthiness.
        ({"$frob": 1}, True),
        ({"a": 1, "$gt": [1, 2]}, True),
        ([], False),
        ("x", True),
    ],
)
def test_conditions(condition: Any, expected: bool) -> None:
    assert evaluate_condition(condition) is expected


@pytest.mark.parametrize(
    "condition, text",
    [
        ({"$expr": {"$eq": [1, 1], "$ne": [1, 2]}}, "$expr must have exactly one operator"),
        ({"$expr": {}}, "$expr must have exactly one operator"),
        ({"$expr": {"$frob": [1]}}, "unknown condition operator: $frob"),
        ({"$expr": {"$eq": [1]}}, "$eq requires exactly 2 arguments"),
        ({"$expr": {"$lt": 5}}, "$lt requires exactly 2 arguments"),
        ({"$expr": {"$and": {"$eq": [1, 1]}}}, "$and requires an array"),
        ({"$expr": {"$not": {"$gt": [1, 2, 3]}}}, "$gt requires exactly 2 arguments"),
    ],
)
def test_condition_errors(condition: Any, text: str) -> None:
    with pytest.raises(ProcedureError) as raised:
        evaluate_condition(condition)
    assert str(raised.value) == f"procedure error: {text}"


def test_if_branches(server: MemoryServer) -> None:
    steps = [
        {"step": "if", "condition": {"$expr": {"$gt": ["$param.n", 10]}},
         "then": [{"step": "set", "name": "size", "value": "big"}],
         "else": [{"step": "if", "condition": "$param.n", "then": [{"step": "return", "value": "small"}]},
                  {"step": "return", "value": "zero"}]},
        {"step": "if", "condition": True, "then": "not a list"},
        {"step": "return", "value": "$size"},
    ]  # fmt: skip
    define(server, steps, ["n"])
    assert [ok(server, "call_procedure", name="p", params=[n]) for n in (20, 3, 0)] == ["big", "small", "zero"]


# --- step errors and bounds ---------------------------------------------------------------


@pytest.mark.parametrize(
    "step, text",
    [
        ({"collection": "c"}, "step missing 'step' field"),
        ({"step": 5}, "step missing 'step' field"),
        ("find", "step missing 'step' field"),
        ({"step": "loop"}, "unknown step type: loop"),
        ({"step": "find"}, "step missing 'collection'"),
        ({"step": "count", "collection": 5}, "step missing 'collection'"),
        ({"step": "find_one", "collection": "$nope"}, "step missing 'collection'"),
        ({"step": "insert", "collection": "c"}, "insert step missing 'document'"),
        ({"step": "insert", "collection": "c", "doc": {}}, "insert step missing 'document'"),
        ({"step": "update", "collection": "c", "query": {}}, "update step missing 'update'"),
        ({"step": "delete"}, "step missing 'collection'"),
        ({"step": "aggregate", "collection": "c"}, "aggregate step missing 'pipeline'"),
        ({"step": "set", "value": 1}, "set step missing 'name'"),
        ({"step": "set", "name": "x"}, "set step missing 'value'"),
        ({"step": "if", "then": []}, "if step missing 'condition'"),
    ],
)
def test_step_errors(server: MemoryServer, step: Any, text: str) -> None:
    assert run(server, [{"step": "set", "name": "ok", "value": 1}, step]) == f"procedure error: {text}"


def test_engine_errors_inside_steps_keep_their_text(server: MemoryServer) -> None:
    assert run(server, [{"step": "insert", "collection": "c", "document": [1]}]) == "document must be a JSON object"
    assert run(server, [{"step": "find", "collection": "../etc"}]) == "invalid query: invalid collection name: ../etc"
    assert run(server, [{"step": "aggregate", "collection": "c", "pipeline": {}}]).startswith("invalid pipeline: ")


def test_step_limit(server: MemoryServer) -> None:
    steps = [{"step": "set", "name": "x", "value": i} for i in range(procedures.MAX_STEPS)]
    assert (
        run(server, [*steps, {"step": "return", "value": "$x"}])
        == f"procedure error: step limit exceeded ({procedures.MAX_STEPS} steps)"
    )
    assert run(server, [*steps[:-1], {"step": "return", "value": "$x"}]) == procedures.MAX_STEPS - 2


def test_nesting_limit(server: MemoryServer) -> None:
    def nested(levels: int) -> dict[str, Any]:
        step: dict[str, Any] = {"step": "return", "value": levels}
        for _ in range(levels):
            step = {"step": "if", "condition": True, "then": [step]}
        return step

    assert run(server, [nested(procedures.MAX_NESTING)]) == procedures.MAX_NESTING
    assert run(server, [nested(procedures.MAX_NESTING + 1)]) == (
        f"procedure error: steps nested deeper than {procedures.MAX_NESTING}"
    )


def test_value_depth_limit(server: MemoryServer) -> None:
    steps = [{"step": "set", "name": "v", "value": ["$v"]} for _ in range(procedures.MAX_VALUE_DEPTH + 1)]
    assert run(server, steps) == f"procedure error: value nested deeper than {procedures.MAX_VALUE_DEPTH}"


def test_work_limit_stops_values_that_double(engine: Engine) -> None:
    steps = [{"step": "set", "name": "v", "value": ["$v", "$v"]} for _ in range(40)]
    engine.apply({"PutProcedure": {"document": {"name": "grow", "steps": steps}}}, NOW)
    call = procedures.run(engine, Transaction(1), "grow", {}, NOW, max_work=100_000)
    with pytest.raises(ProcedureError, match=r"^procedure error: work limit exceeded \(100000 units\)$"):
        procedures.advance(call, None)


def test_work_limit_counts_documents_read(engine: Engine) -> None:
    engine.apply({"InsertMany": {"collection": "c", "documents": [{}] * 30}}, NOW)
    steps = [{"step": "find", "collection": "c"}] * 5
    engine.apply({"PutProcedure": {"document": {"name": "scan", "steps": steps}}}, NOW)
    assert procedures.advance(procedures.run(engine, Transaction(1), "scan", {}, NOW, max_work=150), None) == Finished(
        {"ok": True}
    )
    with pytest.raises(ProcedureError, match="work limit exceeded"):
        procedures.advance(procedures.run(engine, Transaction(2), "scan", {}, NOW, max_work=149), None)


def test_procedure_commits_are_counted(server: MemoryServer) -> None:
    define(server, [{"step": "insert", "collection": "c", "document": {}}])
    ok(server, "call_procedure", name="p")
    assert server.services.metrics.registry.get_sample_value("oxidb_tx_commits_total") == 1
