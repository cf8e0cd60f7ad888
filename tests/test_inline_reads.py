"""
Small reads on the reactor thread (one-hop reads): the engine's C{*_inline}
reads answer exactly as the pool's do when the read is small, decline
(L{NotInline}) when it is not or when it overruns the inline budget (and
then leave that shape to the pool for a while), and the standalone executor
falls back to the pool; a cluster-like executor never runs reads inline.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from oxidb.commands._context import CommandContext, IExecutor
from oxidb.engine import engine as engine_module
from oxidb.engine import reads as reads_module
from oxidb.engine.engine import Engine
from oxidb.engine.governor import NotInline
from oxidb.errors import BadRequestError, OxiError, TimeLimitError
from oxidb.server.executor import LocalExecutor
from oxidb.testing import fake_services, result_of


class StepClock:
    """
    A monotonic clock that advances C{step} seconds each time it is read,
    of which C{cpu_step} were the reading thread's work: L{cpu} is that
    thread's CPU clock.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.step = 0.0
        self.cpu_now = 0.0
        self.cpu_step = 0.0

    def __call__(self) -> float:
        self.now += self.step
        self.cpu_now += self.cpu_step
        return self.now

    def cpu(self) -> float:
        return self.cpu_now


@pytest.fixture
def clocked(tmp_path: Any) -> Iterator[tuple[Engine, StepClock]]:
    clock = StepClock()
    data = str(tmp_path / "data")
    with Engine(data, synchronous="OFF", clock=clock, cpu_clock=clock.cpu, progress_steps=100) as engine:
        engine.apply({"InsertMany": {"collection": "c", "documents": [{"k": i % 50, "n": i} for i in range(500)]}}, 0)
        engine.apply({"CreateIndex": {"collection": "c", "field": "k"}}, 0.0)
        yield engine, clock


@pytest.mark.parametrize(
    "query, sort, skip, limit",
    [
        ({"_id": 7}, None, None, None),
        ({"_id": 7000}, None, None, None),
        ({"k": 3}, None, None, None),
        ({"k": 3}, None, 2, 5),
        ({"k": 3}, None, None, 100),
        ({"k": "x"}, None, None, 1),
        ({}, {"k": 1}, None, 10),
        (None, {"k": -1}, 3, 10),
        ({}, {"_id": -1}, None, 100),
        ({"k": 3}, {"_id": -1}, 2, 5),
        ({"_id": 9}, {"k": 1}, 0, 1),
        ({"k": {"$gte": 3, "$lt": 5}}, None, None, None),
        ({"k": {"$gt": 47}}, None, 3, 100),
        ({"_id": {"$lt": 50}}, None, None, None),
    ],
)
def test_small_reads_answer_as_the_pool_does(
    clocked: tuple[Engine, StepClock], query: Any, sort: Any, skip: Any, limit: Any
) -> None:
    engine, _ = clocked
    assert engine.find_raw_inline("c", query, sort, skip, limit) == engine.find_raw("c", query, sort, skip, limit)
    if sort is None and "$" not in str(query):
        assert engine.find_one_raw_inline("c", query) == engine.find_one_raw("c", query)


@pytest.mark.parametrize(
    "collection, query, sort, limit",
    [
        ("c", {"n": 3}, None, 1),  # not indexed
        ("c", {"k": {"$in": [3]}}, None, 1),  # an operator other than a comparison
        ("c", {"k": {"$gte": 3}}, None, None),  # a range of more than 100 documents
        ("c", {"_id": {"$gt": 10}}, None, None),
        ("c", {"n": {"$gte": 3, "$lt": 5}}, None, None),  # a range on a path without an index
        ("c", {"k": {"$gte": 3, "$lt": [5]}}, None, None),  # an array operand
        ("c", {"k": {"$gte": 3, "$lt": 5}}, None, 101),  # past the small limit
        ("c", {"k": 3, "n": 1}, None, 1),  # two fields
        ("c", {"k": [3]}, None, 1),  # an array operand
        ("c", {"k": 3}, {"n": 1}, 1),  # a sort on a path without an index
        ("c", {}, {"k": 1}, None),  # a sort without a limit
        ("c", {}, {"k": 1}, 101),  # past the small limit
        ("c", {}, {"k": 1, "_id": 1}, 10),  # a sort on two paths
        ("c", {"n": 3}, {"k": 1}, 10),  # a query on a path without an index
        ("c", {"k": {"$gt": 3}}, {"k": 1}, 10),  # an operator
        ("nope", {}, {"_id": 1}, 10),
        ("c", {"k": 3}, None, 101),  # past the small limit
        ("c", {"k": 3}, None, "x"),
        ("nope", {"_id": 1}, None, None),  # no such collection (reads may create it)
        ("", {"_id": 1}, None, None),  # a bad name: the pool reports it
        ("c", None, None, 1),
    ],
)
def test_other_reads_are_declined(
    clocked: tuple[Engine, StepClock], collection: str, query: Any, sort: Any, limit: Any
) -> None:
    engine, _ = clocked
    with pytest.raises(NotInline) as raised:
        engine.find_raw_inline(collection, query, sort, None, limit)
    assert not raised.value.overran
    if sort is None and limit in (None, 1):
        with pytest.raises(NotInline):
            engine.find_one_raw_inline(collection, query)


@pytest.mark.parametrize(
    "query, sort, max_time_ms",
    [({"k": 1}, None, -1), ({}, {"k": "up"}, None), ({}, {"k": 1}, "soon")],
)
def test_a_bad_request_fails_inline_as_on_the_pool(
    clocked: tuple[Engine, StepClock], query: Any, sort: Any, max_time_ms: Any
) -> None:
    engine, _ = clocked
    limit = None if sort is None else 10
    with pytest.raises(OxiError) as pooled:
        engine.find_raw("c", query, sort, None, limit, max_time_ms)
    with pytest.raises(OxiError) as inline:
        engine.find_raw_inline("c", query, sort, None, limit, max_time_ms)
    assert type(inline.value) is type(pooled.value) and str(inline.value) == str(pooled.value)


def test_an_overrunning_sorted_read_skips_its_sort_shape_only(clocked: tuple[Engine, StepClock]) -> None:
    engine, clock = clocked
    clock.step = clock.cpu_step = 0.001
    with pytest.raises(NotInline) as raised:
        engine.find_raw_inline("c", {}, {"k": -1}, None, 10)
    assert raised.value.overran
    clock.step = clock.cpu_step = 0.0
    with pytest.raises(NotInline) as raised:
        engine.find_raw_inline("c", {}, {"k": -1}, None, 10)
    assert not raised.value.overran
    # An equality on the same field is another shape.
    assert engine.find_raw_inline("c", {"k": 3}) == engine.find_raw("c", {"k": 3})


def test_overrunning_the_budget_declines_then_skips_the_shape(clocked: tuple[Engine, StepClock]) -> None:
    engine, clock = clocked
    # Each clock read: a millisecond of work, past the 2 ms budget soon.
    clock.step = clock.cpu_step = 0.001
    with pytest.raises(NotInline) as raised:
        engine.find_raw_inline("c", {"k": 3})
    assert raised.value.overran
    # The server's limit (30 s) still lets the pool's read finish.
    assert len(engine.find_raw("c", {"k": 3})) > 2
    clock.step = clock.cpu_step = 0.0
    for _ in range(engine_module.INLINE_SKIPS):
        with pytest.raises(NotInline) as raised:
            engine.find_raw_inline("c", {"k": 3})
        assert not raised.value.overran
    # Another field of the collection was never skipped; then this one is tried again.
    assert engine.find_raw_inline("c", {"_id": 1}) == engine.find_raw("c", {"_id": 1})
    assert engine.find_raw_inline("c", {"k": 3}) == engine.find_raw("c", {"k": 3})


@pytest.mark.parametrize(
    "query, sort, limit",
    [({"k": 3}, None, None), ({"k": {"$gte": 3, "$lt": 5}}, None, None), ({}, {"k": -1}, 10)],
)
def test_a_descheduled_read_finishes_inline(
    clocked: tuple[Engine, StepClock], query: Any, sort: Any, limit: Any
) -> None:
    """
    Wall time passing while the thread does no work (a loaded machine,
    the GIL held elsewhere) does not spend the inline budget: the read is
    not run twice, and its shape is not sent to the pool.
    """
    engine, clock = clocked
    expected = engine.find_raw("c", query, sort, None, limit)
    clock.step = 0.001  # a millisecond of wall time per clock read, no CPU time
    assert engine.find_raw_inline("c", query, sort, None, limit) == expected
    assert clock.now > 0.002
    assert engine.find_raw_inline("c", query, sort, None, limit) == expected


def test_the_request_time_limit_stays_wall_time_inline(clocked: tuple[Engine, StepClock]) -> None:
    """Past its own C{max_time_ms} of wall time, an inline read fails as the pool's does."""
    engine, clock = clocked
    clock.step = 0.001
    with pytest.raises(TimeLimitError):
        engine.find_raw("c", {}, {"k": -1}, None, 10, 3)
    with pytest.raises(TimeLimitError):
        engine.find_raw_inline("c", {}, {"k": -1}, None, 10, 3)
    # Not an overrun: the shape is still tried inline.
    clock.step = 0.0
    assert engine.find_raw_inline("c", {}, {"k": -1}, None, 10) == engine.find_raw("c", {}, {"k": -1}, None, 10)


class FakePool:
    def __init__(self) -> None:
        self.jobs: list[tuple[Any, tuple[Any, ...]]] = []

    def defer(self, fn: Any, *args: Any) -> Deferred[Any]:
        self.jobs.append((fn, args))
        return succeed(fn(*args))


class Engines:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine


def test_local_executor_runs_small_reads_inline_and_others_on_the_pool(clocked: tuple[Engine, StepClock]) -> None:
    engine, _ = clocked
    pool = FakePool()
    executor = LocalExecutor(None, pool, Engines(engine))
    small = executor.read_inline(engine.find_raw_inline, engine.find_raw, "c", {"_id": 2})
    assert result_of(small) == engine.find_raw("c", {"_id": 2}) and pool.jobs == []
    large = executor.read_inline(engine.find_raw_inline, engine.find_raw, "c", {"n": 2})
    assert result_of(large) == engine.find_raw("c", {"n": 2})
    assert pool.jobs == [(engine.find_raw, ("c", {"n": 2}))]
    bad = executor.read_inline(engine.find_raw_inline, engine.find_raw, "c", {"k": 1}, None, None, None, -1)
    failures: list[Any] = []
    bad.addErrback(failures.append)
    assert isinstance(failures[0].value, BadRequestError) and len(pool.jobs) == 1


@implementer(IExecutor)
class PoolOnly:
    """An executor without inline reads (as a cluster's)."""

    def __init__(self) -> None:
        self.reads: list[Any] = []

    def read(self, fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.reads.append(fn)
        return succeed(fn(*args))

    def write(self, op: Any) -> Deferred[Any]:
        raise NotImplementedError


def test_context_uses_the_pool_when_the_executor_has_no_inline_reads(clocked: tuple[Engine, StepClock]) -> None:
    engine, _ = clocked
    executor = PoolOnly()
    ctx = CommandContext(None, fake_services(executor=executor, engine=engine))  # type: ignore[arg-type]
    d = ctx.read_inline(engine.find_raw_inline, engine.find_raw, "c", {"_id": 3})
    assert result_of(d) == engine.find_raw("c", {"_id": 3}) and executor.reads == [engine.find_raw]


def test_small_reads_of_another_database_run_inline(clocked: tuple[Engine, StepClock]) -> None:
    """A collection of a database other than the default (stored as C{db/c}) is read inline too."""
    engine, _ = clocked
    engine.apply({"CreateDatabase": {"name": "crm"}}, 0.0)
    engine.apply({"InsertMany": {"collection": "crm/c", "documents": [{"k": i % 5} for i in range(20)]}}, 0.0)
    engine.apply({"CreateIndex": {"collection": "crm/c", "field": "k"}}, 0.0)
    for query, sort, limit in [({"k": 2}, None, None), ({"k": {"$lt": 2}}, None, None), ({}, {"k": -1}, 3)]:
        expected = engine.find_raw("crm/c", query, sort, None, limit)
        assert engine.find_raw_inline("crm/c", query, sort, None, limit) == expected
    with pytest.raises(NotInline):
        engine.find_raw_inline("crm/nope", {"_id": 1})


def test_small_read_plans_are_kept_per_query(clocked: tuple[Engine, StepClock]) -> None:
    """
    A repeated small read runs the plan its first run compiled; queries
    that compare equal in Python but not in a query (1, 1.0, true, 0.0,
    -0.0) keep plans of their own, and the answers match the pool's.
    """
    engine, _ = clocked
    values: list[Any] = [1, 1.0, True, 0.0, -0.0, "1", None, False, 0]
    engine.apply({"InsertMany": {"collection": "t", "documents": [{"v": v} for v in values]}}, 0.0)
    engine.apply({"CreateIndex": {"collection": "t", "field": "v"}}, 0.0)
    for _ in range(2):
        for value in values:
            for query in ({"v": value}, {"_id": value}):
                assert engine.find_raw_inline("t", query) == engine.find_raw("t", query)
                assert engine.find_one_raw_inline("t", query) == engine.find_one_raw("t", query)
            sort = ({}, {"v": -1}, None, 3)
            assert engine.find_raw_inline("t", *sort) == engine.find_raw("t", *sort)
    plans = engine._local.columns["t"][3]
    assert len(plans) == len(values) * 2 + 1
    first = plans[("v", int, 1)]
    engine.find_raw_inline("t", {"v": 1})
    assert plans[("v", int, 1)] is first


def test_small_read_plans_follow_index_changes(clocked: tuple[Engine, StepClock]) -> None:
    engine, _ = clocked
    with pytest.raises(NotInline):
        engine.find_raw_inline("c", {"n": 7})
    engine.apply({"CreateIndex": {"collection": "c", "field": "n"}}, 0.0)
    assert engine.find_raw_inline("c", {"n": 7}) == engine.find_raw("c", {"n": 7}) != "[]"
    engine.apply({"DropIndex": {"collection": "c", "index": "n"}}, 0.0)
    with pytest.raises(NotInline):
        engine.find_raw_inline("c", {"n": 7})
    # The collection dropped and made again (a new table): its own plans.
    assert engine.find_raw_inline("c", {"k": 7}) != "[]"
    engine.apply({"DropCollection": {"name": "c"}}, 0.0)
    engine.apply({"InsertMany": {"collection": "c", "documents": [{"k": 7, "x": 1}]}}, 0.0)
    engine.apply({"CreateIndex": {"collection": "c", "field": "k"}}, 0.0)
    assert engine.find_raw_inline("c", {"k": 7}) == engine.find_raw("c", {"k": 7})
    assert '"x":1' in engine.find_raw_inline("c", {"k": 7})


def test_small_read_plans_are_bounded(clocked: tuple[Engine, StepClock]) -> None:
    engine, _ = clocked
    long_text = "x" * (reads_module.SMALL_PLAN_TEXT + 1)
    assert engine.find_raw_inline("c", {"k": long_text}) == "[]"
    plans = engine._local.columns["c"][3]
    assert plans == {}
    for k in range(reads_module.SMALL_PLANS + 10):
        assert engine.find_raw_inline("c", {"k": k}) == engine.find_raw("c", {"k": k})
        assert len(plans) <= reads_module.SMALL_PLANS
