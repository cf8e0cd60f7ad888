"""
The read commands of issue 14: C{aggregate_docs} (and C{explain}), through
their registry handlers over a real engine on a synchronous executor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from zope.interface import implementer

from oxidb.auth.rbac import Role
from oxidb.commands import CommandContext, IServices, default_registry
from oxidb.engine.engine import Engine
from oxidb.engine.operations import CreateIndex, InsertMany
from oxidb.errors import OxiError
from oxidb.limits import Limits
from oxidb.server.session import Session
from oxidb.testing import SynchronousExecutor, result_of
from oxidb.wire.codec import WireFormat, decode_reply, encode_ok


@implementer(IServices)
@attrs.define
class Services:
    engine: Any
    clock: Clock = attrs.Factory(Clock)
    executor: Any = None


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[Engine]:
    with Engine(str(tmp_path / "data"), synchronous="OFF", limits=Limits.with_values(agg_max_docs=50)) as engine:
        engine.apply(InsertMany("c", [{"k": i % 3, "v": i} for i in range(10)]), 0.0)
        yield engine


@pytest.fixture
def ctx(engine: Engine) -> CommandContext:
    services = Services(engine)
    services.executor = SynchronousExecutor(services)
    return CommandContext(Session.anonymous_admin(), services)


def run_row(ctx: CommandContext, cmd: str, request: dict[str, Any]) -> Any:
    """The row's schema, then its handler, as the dispatcher runs them."""
    command = default_registry().get(cmd)
    assert command is not None, cmd
    command.schema.validate(request)
    return command.handler(ctx, request)


def call(ctx: CommandContext, cmd: str, **request: Any) -> Any:
    data = result_of(maybeDeferred(run_row, ctx, cmd, {"cmd": cmd, **request}))
    return decode_reply(encode_ok(WireFormat.JSON, data))["data"]


def error(ctx: CommandContext, cmd: str, **request: Any) -> str:
    with pytest.raises(OxiError) as raised:
        call(ctx, cmd, **request)
    return str(raised.value)


# --- aggregate_docs -------------------------------------------------------------------------


def test_aggregate_docs_row() -> None:
    row = default_registry().get("aggregate_docs")
    assert row is not None and row.role is Role.READ and not row.writes


def test_aggregate_docs_runs_over_the_given_documents(ctx: CommandContext) -> None:
    docs = [{"shard": 1, "n": 4}, {"shard": 2, "n": 6}, {"shard": 1, "n": 1}]
    pipeline = [
        {"$match": {"n": {"$gt": 1}}},
        {"$group": {"_id": "$shard", "n": {"$sum": "$n"}}},
        {"$sort": {"_id": 1}},
        {"$set": {"big": {"$gte": ["$n", 5]}}},
    ]
    assert call(ctx, "aggregate_docs", pipeline=pipeline, docs=docs) == [
        {"_id": 1, "n": 4, "big": False},
        {"_id": 2, "n": 6, "big": True},
    ]
    assert call(ctx, "aggregate_docs", pipeline=[], docs=[]) == []
    assert call(ctx, "aggregate_docs", pipeline=[{"$count": "n"}], docs=[]) == [{"n": 0}]


def test_aggregate_docs_lookup_reads_collections(ctx: CommandContext) -> None:
    pipeline = [
        {"$lookup": {"from": "c", "localField": "k", "foreignField": "k", "as": "m"}},
        {"$project": {"_id": 0, "k": 1, "n": {"$size": "$m"}}},
    ]
    assert call(ctx, "aggregate_docs", pipeline=pipeline, docs=[{"k": 0}, {"k": 2}, {"k": 5}]) == [
        {"k": 0, "n": 4},
        {"k": 2, "n": 3},
        {"k": 5, "n": 0},
    ]


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"docs": []}, "missing 'pipeline'"),
        ({"pipeline": [], "docs": None}, "missing or invalid 'docs' array"),
        ({"pipeline": []}, "missing or invalid 'docs' array"),
        ({"pipeline": [], "docs": {"a": 1}}, "missing or invalid 'docs' array"),
        ({"pipeline": {}, "docs": []}, "invalid pipeline: pipeline must be an array"),
        ({"pipeline": [{"$nope": 1}], "docs": []}, "invalid pipeline: unknown stage: $nope"),
        ({"pipeline": [], "docs": [1]}, "document must be a JSON object"),
        ({"pipeline": [], "docs": [{}] * 51}, "aggregation stage input exceeded the document limit of 50 documents"),
        ({"pipeline": [], "docs": [], "max_time_ms": "x"}, "'max_time_ms' must be a non-negative integer"),
    ],
)
def test_aggregate_docs_bad_input(ctx: CommandContext, request_: dict[str, Any], message: str) -> None:
    assert error(ctx, "aggregate_docs", **request_).startswith(message)


# --- explain ------------------------------------------------------------------------------------

PLAN_KEYS = {
    "command", "collection", "collection_exists", "index", "indexes", "sql", "sqlite_plan",
    "pushed", "residual", "stages", "estimated_rows", "actual_rows",
}  # fmt: skip


def explain(ctx: CommandContext, **inner: Any) -> Any:
    plan = call(ctx, "explain", inner=inner)
    assert set(plan) == PLAN_KEYS  # the documented shape (docs/queries.md, "explain")
    return plan


def test_explain_row() -> None:
    row = default_registry().get("explain")
    assert row is not None and row.role is Role.READ and not row.writes


def test_explain_find_with_an_index(ctx: CommandContext, engine: Engine) -> None:
    engine.apply(CreateIndex("c", "k"), 0.0)
    plan = explain(ctx, cmd="find", collection="c", query={"k": 1}, sort={"v": -1}, limit=2)
    assert plan["command"] == "find" and plan["collection"] == "c" and plan["collection_exists"]
    assert plan["index"] == "k" and plan["indexes"] == ["k"]
    assert any("USING INDEX" in line for line in plan["sqlite_plan"])
    sql = plan["sql"]
    assert sql["statement"].startswith("SELECT _id, _version, json(doc) AS doc FROM ")
    assert " WHERE " + sql["where"] in sql["statement"] and sql["statement"].endswith("LIMIT ? OFFSET ?")
    assert sql["params"][-2:] == [2, 0] and sql["params"][0].startswith("X'")
    assert plan["pushed"] == {"filter": "all", "sort": True, "skip_limit": True}
    assert plan["residual"] is None and plan["stages"] is None
    # k == 1 for v in 1, 4, 7: SQL selects 3, the limit returns 2.
    assert (plan["estimated_rows"], plan["actual_rows"]) == (3, 2)
    assert call(ctx, "find", collection="c", query={"k": 1}, sort={"v": -1}, limit=2) == [
        {"_id": 8, "_version": 1, "k": 1, "v": 7},
        {"_id": 5, "_version": 1, "k": 1, "v": 4},
    ]


def test_explain_residual_filter(ctx: CommandContext, engine: Engine) -> None:
    engine.apply(CreateIndex("c", "k"), 0.0)
    plan = explain(ctx, cmd="find", collection="c", query={"k": 1, "v": {"$type": "int"}})
    assert plan["index"] == "k"
    assert plan["pushed"] == {"filter": "partial", "sort": False, "skip_limit": False}
    assert plan["residual"] == {"k": 1, "v": {"$type": "int"}}
    assert (plan["estimated_rows"], plan["actual_rows"]) == (3, 3)
    # With a residual filter, skip and limit run in Python after it.
    plan = explain(ctx, cmd="find", collection="c", query={"k": {"$gte": 1}, "v": {"$type": "int"}}, skip=1)
    assert plan["pushed"] == {"filter": "partial", "sort": False, "skip_limit": False}
    assert not plan["sql"]["statement"].endswith("OFFSET ?")
    assert (plan["estimated_rows"], plan["actual_rows"]) == (6, 5)
    plan = explain(ctx, cmd="count", collection="c", query={"v": {"$type": "int"}})
    assert plan["index"] is None and plan["sql"]["where"] == "1"
    assert plan["pushed"]["filter"] == "none" and plan["residual"] == {"v": {"$type": "int"}}
    assert (plan["estimated_rows"], plan["actual_rows"]) == (10, 10)


def test_explain_count_and_find_one(ctx: CommandContext) -> None:
    plan = explain(ctx, cmd="count", collection="c", query={"_id": {"$gt": 7}})
    assert plan["sql"]["statement"].startswith("SELECT count(*) FROM ") and plan["index"] == "_id"
    assert (plan["estimated_rows"], plan["actual_rows"]) == (3, 3)
    plan = explain(ctx, cmd="find_one", collection="c", query={"v": 3})
    assert plan["index"] is None and plan["pushed"] == {"filter": "all", "sort": False, "skip_limit": True}
    assert (plan["estimated_rows"], plan["actual_rows"]) == (1, 1)


def test_explain_aggregate(ctx: CommandContext, engine: Engine) -> None:
    engine.apply(CreateIndex("c", "v"), 0.0)
    pipeline = [
        {"$match": {"v": {"$lt": 6}}},
        {"$sort": {"v": -1}},
        {"$limit": 4},
        {"$group": {"_id": "$k", "n": {"$sum": 1}}},
        {"$set": {"x": 1}},
    ]
    plan = explain(ctx, cmd="aggregate", collection="c", pipeline=pipeline)
    assert plan["stages"] == {"pushed": ["$match", "$sort", "$limit"], "python": ["$group", "$set"]}
    assert plan["index"] == "v" and plan["pushed"] == {"filter": "all", "sort": True, "skip_limit": True}
    assert (plan["estimated_rows"], plan["actual_rows"]) == (6, 3)
    assert len(call(ctx, "aggregate", collection="c", pipeline=pipeline)) == 3
    plan = explain(ctx, cmd="aggregate", collection="c", pipeline=[{"$count": "n"}])
    assert plan["stages"] == {"pushed": [], "python": ["$count"]} and plan["actual_rows"] == 1


def test_explain_missing_collection_creates_nothing(ctx: CommandContext) -> None:
    plan = explain(ctx, cmd="find", collection="nope")
    assert plan["collection_exists"] is False and plan["sql"] is None
    assert (plan["estimated_rows"], plan["actual_rows"]) == (0, 0)
    assert "nope" not in call(ctx, "list_collections")


@pytest.mark.parametrize(
    "request_, message",
    [
        ({}, "missing 'inner'"),
        ({"inner": "find"}, "missing 'inner'"),
        ({"inner": {"collection": "c"}}, "explain supports find/count/aggregate, got: null"),
        ({"inner": {"cmd": "insert", "collection": "c"}}, "explain supports find/count/aggregate, got: insert"),
        ({"inner": {"cmd": "explain", "inner": {}}}, "explain supports find/count/aggregate, got: explain"),
        ({"inner": {"cmd": ["find"]}}, 'explain supports find/count/aggregate, got: ["find"]'),
        ({"inner": {"cmd": "find"}}, "missing 'collection'"),
        ({"inner": {"cmd": "aggregate", "collection": "c"}}, "missing 'pipeline'"),
        (
            {"inner": {"cmd": "aggregate", "collection": "c", "pipeline": [{"$x": 1}]}},
            "invalid pipeline: unknown stage: $x",
        ),
        ({"inner": {"cmd": "find", "collection": "c", "query": 5}}, "invalid query: "),
        ({"inner": {"cmd": "find", "collection": "c", "sort": {"v": 2}}}, "invalid query: sort direction"),
        ({"inner": {"cmd": "find", "collection": "c", "limit": 2**64}}, "invalid query: "),
        (
            {"inner": {"cmd": "find", "collection": "c", "max_time_ms": -1}},
            "'max_time_ms' must be a non-negative integer",
        ),
        ({"inner": {"cmd": "find", "collection": "_users"}}, "invalid query: collection name is reserved"),
    ],
)
def test_explain_bad_input(ctx: CommandContext, request_: dict[str, Any], message: str) -> None:
    assert error(ctx, "explain", **request_).startswith(message)
