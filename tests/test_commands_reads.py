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
from oxidb.engine.operations import InsertMany
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


def call(ctx: CommandContext, cmd: str, **request: Any) -> Any:
    handler = default_registry().get(cmd).handler  # type: ignore[union-attr]
    data = result_of(maybeDeferred(handler, ctx, {"cmd": cmd, **request}))
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
