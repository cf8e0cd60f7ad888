"""
Resource governance of engine reads (issue 11, docs/security.md "Limits"):
time limits, RE2 regexes, the aggregation budget, search caps, query shape,
64-bit numbers and the reply cap. One test per attack class at least; all
deterministic (a fake clock, small limits), none timed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

from oxidb.engine import aggregate as aggregate_module
from oxidb.engine import blobs, grouphash
from oxidb.engine.engine import Engine
from oxidb.engine.governor import DEFAULT_LIMITS, Budget, Deadline, InlineDeadline, QueryLimits, time_limit_ms
from oxidb.engine.matcher import compile_query
from oxidb.errors import (
    AggregationLimitError,
    BadRequestError,
    InvalidPipelineError,
    InvalidQueryError,
    ReplyTooLargeError,
    TimeLimitError,
    TooLargeError,
)
from oxidb.limits import Limits
from oxidb.testing import MemoryServer, result_of


class FakeClock:
    """A monotonic clock that advances one millisecond each time it is read."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += 0.001
        return self.now


def limits(**changes: Any) -> QueryLimits:
    return attrs.evolve(DEFAULT_LIMITS, **changes)


@pytest.fixture
def make_engine(tmp_path: Any) -> Iterator[Callable[..., Engine]]:
    engines: list[Engine] = []

    def make(**kwargs: Any) -> Engine:
        engine = Engine(str(tmp_path / f"data{len(engines)}"), synchronous="OFF", **kwargs)
        engine.open()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def insert(engine: Engine, collection: str, docs: list[dict[str, Any]]) -> None:
    engine.apply({"InsertMany": {"collection": collection, "documents": docs}}, 0.0)


# --- configuration -----------------------------------------------------------------------


def test_engine_takes_the_servers_limits(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(limits=Limits.with_values(max_time_ms=1234, sort_max_keys=2))
    assert engine.limits.max_time_ms == 1234
    assert engine.limits.sort_max_keys == 2
    assert make_engine().limits == DEFAULT_LIMITS
    assert QueryLimits.from_limits(Limits()) == DEFAULT_LIMITS


# --- time limits -----------------------------------------------------------------------------


def test_requested_time_limit_may_only_lower_the_default() -> None:
    assert time_limit_ms(None, 30_000) == 30_000
    assert time_limit_ms(0, 30_000) == 30_000
    assert time_limit_ms(50, 30_000) == 50
    assert time_limit_ms(10**9, 30_000) == 30_000
    for bad in (-1, 1.5, "10", True, 2**63):
        with pytest.raises(BadRequestError, match="'max_time_ms' must be a non-negative integer"):
            time_limit_ms(bad, 30_000)


def test_deadline_with_a_fake_clock() -> None:
    clock = FakeClock()
    deadline = Deadline(5, clock)
    for _ in range(4):
        deadline.check()
        assert not deadline.expired
    with pytest.raises(TimeLimitError, match="^operation exceeded time limit of 5 ms$"):
        deadline.check()
    assert deadline.expired and deadline.progress() == 1
    assert not deadline.overran


class ManualClock:
    """A clock that reads C{now} (tests set it), counting its reads."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def test_inline_deadline_budget_is_cpu_time() -> None:
    wall, cpu = ManualClock(), ManualClock()
    deadline = InlineDeadline(1000, wall, 2, cpu)
    # Wall time short of the budget: the CPU clock is not read.
    wall.now = 0.0019
    deadline.check()
    assert deadline.progress() == 0 and cpu.reads == 1
    # Wall time past it with little work done: the read goes on, and the
    # CPU clock is next read when the rest of the budget could be spent.
    wall.now, cpu.now = 0.5, 0.0005
    deadline.check()
    assert cpu.reads == 2 and not deadline.expired
    wall.now = 0.5014
    deadline.check()
    assert cpu.reads == 2
    wall.now, cpu.now = 0.5015, 0.0019
    assert deadline.progress() == 0
    # The work done reaches the budget: an overrun, not the read's own limit.
    wall.now, cpu.now = 0.6, 0.002
    with pytest.raises(TimeLimitError, match="^operation exceeded time limit of 1000 ms$"):
        deadline.check()
    assert deadline.expired and deadline.overran


def test_inline_deadline_keeps_the_wall_clock_limit() -> None:
    wall, cpu = ManualClock(), ManualClock()
    deadline = InlineDeadline(5, wall, 2, cpu)
    wall.now = 0.004
    deadline.check()
    wall.now = 0.005
    assert deadline.progress() == 1
    assert deadline.expired and not deadline.overran
    with pytest.raises(TimeLimitError, match="of 5 ms$"):
        deadline.check()
    # A limit below the budget is reached first, on the wall clock alone.
    wall.now, cpu.reads = 0.0, 0
    short = InlineDeadline(1, wall, 2, cpu)
    wall.now = 0.001
    with pytest.raises(TimeLimitError):
        short.check()
    assert not short.overran and cpu.reads == 1


@pytest.fixture
def slow_engine(make_engine: Callable[..., Engine]) -> tuple[Engine, FakeClock]:
    """1000 documents, a 50 ms limit, and a clock that ticks a ms per read."""
    clock = FakeClock()
    engine = make_engine(limits=limits(max_time_ms=50), clock=clock, progress_steps=100)
    insert(engine, "c", [{"k": i, "s": f"abc {i}", "t": f"hello world {i}"} for i in range(1000)])
    engine.apply({"CreateTextIndex": {"collection": "c", "fields": ["t"]}}, 0.0)
    return engine, clock


@pytest.mark.parametrize(
    "name, read",
    [
        # SQL only: the progress handler interrupts the statement.
        ("sql count", lambda e: e.count("c", {"k": {"$gte": 0}})),
        ("sql sorted find", lambda e: e.find_raw("c", {"k": {"$gte": 0}}, {"s": -1}, None, 5)),
        # Python loops: residual filter, aggregation stages, text search.
        ("residual filter", lambda e: e.find("c", {"s": {"$regex": "b"}})),
        ("aggregation", lambda e: e.aggregate("c", [{"$group": {"_id": "$k", "n": {"$sum": 1}}}])),
        ("aggregation unwind", lambda e: e.aggregate("c", [{"$project": {"k": 1}}, {"$unwind": "$k"}])),
        ("text search", lambda e: e.text_search("c", "hello world 17", 1000)),
    ],
)
def test_reads_stop_at_the_time_limit(
    slow_engine: tuple[Engine, FakeClock], name: str, read: Callable[[Engine], Any]
) -> None:
    engine, clock = slow_engine
    clock.reads = 0
    with pytest.raises(TimeLimitError) as raised:
        read(engine)
    assert str(raised.value) == "operation exceeded time limit of 50 ms"
    # The work stopped at the limit (51 reads of a clock ticking 1 ms), not
    # at the end of the 1000 documents.
    assert clock.reads <= 52
    # The worker's connection is free again: the next read works.
    assert engine.find_one("c", {"_id": 7}) is not None


@pytest.mark.parametrize(
    "pipeline, hashed_by",
    [
        # The C hash aggregate over one cursor (a $match first) and over the
        # blobs SQLite packs (no $match, the key indexed).
        ([{"$match": {"k": {"$gte": 0}}}, {"$group": {"_id": "$s", "n": {"$sum": 1}}}], "hash_rows"),
        ([{"$group": {"_id": "$s", "n": {"$sum": 1}}}], "hash_blobs"),
    ],
)
def test_hashed_group_stops_at_the_time_limit(
    make_engine: Callable[..., Engine],
    monkeypatch: pytest.MonkeyPatch,
    pipeline: list[dict[str, Any]],
    hashed_by: str,
) -> None:
    # A limit the statements before the hash (counts, the numeric-key check:
    # about 50 reads of the clock) leave room in, and the hash's scan (over
    # a thousand reads) does not.
    clock = FakeClock()
    engine = make_engine(limits=limits(max_time_ms=200), clock=clock, progress_steps=100)
    insert(engine, "c", [{"k": i, "s": f"abc {i}"} for i in range(1000)])
    engine.apply({"CreateIndex": {"collection": "c", "field": "s"}}, 0.0)
    entered: list[int] = []
    built = getattr(grouphash, hashed_by)
    if built is not None:

        def recording(*args: Any) -> Any:
            entered.append(clock.reads)
            return built(*args)

        monkeypatch.setattr(grouphash, hashed_by, recording)
    clock.reads = 0
    with pytest.raises(TimeLimitError, match="of 200 ms$"):
        engine.aggregate("c", pipeline)
    assert clock.reads <= 202
    if built is not None:
        # The limit struck inside the hash aggregate's scan.
        assert len(entered) == 1 and entered[0] < 200
    assert engine.find_one("c", {"_id": 7}) is not None


def test_sorting_checks_the_deadline() -> None:
    clock = FakeClock()
    budget = Budget(2**40, 2**40, Deadline(10, clock))
    docs = [{"k": i} for i in range(100)]
    with pytest.raises(TimeLimitError, match="of 10 ms"):
        aggregate_module._sort_stream(docs, [1] * 100, (("k", -1),), budget)
    assert clock.reads <= 12


def test_request_lowers_the_time_limit(slow_engine: tuple[Engine, FakeClock]) -> None:
    engine, clock = slow_engine
    clock.reads = 0
    with pytest.raises(TimeLimitError, match="of 5 ms"):
        engine.find("c", {"s": {"$regex": "b"}}, max_time_ms=5)
    assert clock.reads <= 7
    with pytest.raises(BadRequestError):
        engine.count("c", {}, "soon")


def test_cheap_reads_finish_within_the_limit(slow_engine: tuple[Engine, FakeClock]) -> None:
    engine, _ = slow_engine
    assert engine.count("c", {"_id": {"$lte": 10}}) == 10
    assert len(engine.find("c", {"_id": {"$lt": 10}}, {"k": -1})) == 9
    assert engine.find("c", {"_id": 4}, max_time_ms=1_000_000)[0]["k"] == 3


# --- regular expressions ------------------------------------------------------------------------


def test_catastrophic_regex_runs_in_linear_time(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    insert(engine, "c", [{"s": "a" * 5000}, {"s": "a" * 26 + "Q"}])
    # Exponential on a backtracking engine; RE2 answers at once.
    found = engine.find("c", {"s": {"$regex": "(a|a)*Q"}})
    assert [doc["_id"] for doc in found] == [2]
    assert engine.count("c", {"s": {"$regex": "^(a+)+$"}}) == 1


@pytest.mark.parametrize(
    "pattern, problem",
    [
        ("(a)\\1", "back-references are not supported"),
        ("(?=a)", "look-around is not supported"),
        ("(?!a)", "look-around is not supported"),
        ("(?<=a)b", "look-around is not supported"),
        ("(?<!a)b", "look-around is not supported"),
        ("(?>a)", "atomic groups are not supported"),
        ("a*+", "possessive repetition is not supported"),
        ("(", "missing ): ("),
    ],
)
def test_regex_constructs_re2_cannot_run_are_clear_errors(pattern: str, problem: str) -> None:
    with pytest.raises(InvalidQueryError) as raised:
        compile_query({"s": {"$regex": pattern}})
    assert str(raised.value) == f"invalid query: invalid regex: {problem}"


def test_regex_options_and_length_limit() -> None:
    assert compile_query({"s": {"$regex": "^ÄB", "$options": "i"}}).matches({"s": "äbc"})
    assert not compile_query({"s": {"$regex": "^ÄB"}}).matches({"s": "äbc"})
    # Only "i" counts (engine.md 2.3): "s" does not let "." match a newline.
    assert not compile_query({"s": {"$regex": "a.b", "$options": "s"}}).matches({"s": "a\nb"})
    compile_query({"s": {"$regex": "x" * 10}}, limits(max_regex_length=10))
    with pytest.raises(InvalidQueryError, match="pattern longer than 10 characters"):
        compile_query({"s": {"$regex": "x" * 11}}, limits(max_regex_length=10))


def test_no_client_pattern_reaches_pythons_re() -> None:
    import oxidb.engine.matcher as matcher

    assert not hasattr(matcher, "re")


# --- aggregation budget ------------------------------------------------------------------------


EXPLOSION = [
    {"$lookup": {"from": "c", "localField": "k", "foreignField": "k", "as": "x"}},
    {"$unwind": "$x"},
    {"$lookup": {"from": "c", "localField": "k", "foreignField": "k", "as": "y"}},
    {"$unwind": "$y"},
]


def test_lookup_unwind_explosion_meets_the_budget(make_engine: Callable[..., Engine]) -> None:
    # The attack: 225 bytes of pipeline over 150 documents made 3.4M.
    engine = make_engine()
    insert(engine, "c", [{"k": 1, "n": i} for i in range(150)])
    with pytest.raises(AggregationLimitError) as raised:
        engine.aggregate("c", EXPLOSION)
    assert str(raised.value).startswith("aggregation stage $lookup exceeded the memory limit of 104857600 bytes")


def test_document_budget_stops_unwind_before_it_builds(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(limits=limits(agg_max_docs=1000))
    insert(engine, "c", [{"a": list(range(600))}, {"a": list(range(600))}])
    assert len(engine.aggregate("c", [{"$limit": 1}, {"$unwind": "$a"}])) == 600
    with pytest.raises(AggregationLimitError) as raised:
        engine.aggregate("c", [{"$unwind": "$a"}])
    assert str(raised.value) == (
        "aggregation stage $unwind exceeded the document limit of 1000 documents;"
        " filter or limit earlier in the pipeline"
    )


@pytest.mark.parametrize(
    "budget, pipeline, stage",
    [
        (60_000, [{"$group": {"_id": None, "a": {"$push": "$s"}, "b": {"$push": "$s"}}}], "$group"),
        (60_000, [{"$addFields": {"t": "$s"}}], "$addFields"),
        (60_000, [{"$project": {"s": 1, "t": "$s"}}], "$project"),
        (60_000, [{"$lookup": {"from": "c", "localField": "k", "foreignField": "k", "as": "x"}}], "$lookup"),
        (30_000, [{"$match": {"s": {"$regex": "x"}}}], "$match"),
        (30_000, [{"$count": "n"}], "input"),
    ],
)
def test_memory_budget_per_stage(
    make_engine: Callable[..., Engine], budget: int, pipeline: list[Any], stage: str
) -> None:
    engine = make_engine(limits=limits(agg_max_bytes=budget))
    insert(engine, "c", [{"k": 1, "s": "x" * 1000} for _ in range(40)])  # about 45 KB counted
    with pytest.raises(AggregationLimitError) as raised:
        engine.aggregate("c", pipeline)
    assert str(raised.value).startswith(f"aggregation stage {stage} exceeded the memory limit of {budget} bytes")


def test_budget_counts_bytes_and_documents() -> None:
    budget = Budget(1000, 3)
    budget.start("$unwind")
    budget.add(2, 700)
    with pytest.raises(AggregationLimitError, match="memory limit of 1000 bytes"):
        budget.add(1, 100)  # 800 + 3 * 100 overhead
    budget.start("$unwind")
    with pytest.raises(AggregationLimitError, match="document limit of 3 documents"):
        budget.add(4, 0)


def test_reference_run_keeps_its_results() -> None:
    docs = [{"_id": 1, "a": [1, 2]}, {"_id": 2, "a": []}]
    pipeline = aggregate_module.compile_pipeline([{"$unwind": "$a"}, {"$group": {"_id": None, "n": {"$push": "$a"}}}])
    assert pipeline.run(docs, lambda c, q: []) == [{"_id": None, "n": [1, 2]}]


# --- search ------------------------------------------------------------------------------------


def test_text_search_collapses_duplicate_terms(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    insert(engine, "c", [{"t": "hello world"}, {"t": "hello there again"}, {"t": "other"}])
    engine.apply({"CreateTextIndex": {"collection": "c", "fields": ["t"]}}, 0.0)
    once = engine.text_search("c", "hello")
    many = engine.text_search("c", "hello " * 2000)
    assert [d["_id"] for d in many] == [d["_id"] for d in once]
    for single, repeated in zip(once, many, strict=True):
        assert repeated["_score"] == pytest.approx(2000 * single["_score"])


def test_search_caps_query_length_and_terms(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(limits=limits(search_max_query_length=100, search_max_terms=3))
    insert(engine, "c", [{"t": "hello"}])
    engine.apply({"CreateTextIndex": {"collection": "c", "fields": ["t"]}}, 0.0)
    # The attack: "hello " x 18,000 held every worker for seconds.
    with pytest.raises(InvalidQueryError, match="search query longer than 100 characters"):
        engine.text_search("c", "hello " * 18_000)
    with pytest.raises(InvalidQueryError, match="more than 3 distinct terms"):
        engine.text_search("c", "one two three four")
    assert len(engine.text_search("c", "hello hello hello hello one two")) == 1
    with pytest.raises(InvalidQueryError, match="search query longer than 100 characters"):
        engine.read(blobs.search, "hello " * 100)
    with pytest.raises(InvalidQueryError, match="more than 3 distinct terms"):
        engine.read(blobs.search, "one two three four")


# --- query shape ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, message",
    [
        ({"a": {"$in": list(range(11))}}, "$in has more than 10 elements"),
        ({"a": {"$nin": list(range(11))}}, "$nin has more than 10 elements"),
        ({"a": {"$all": list(range(11))}}, "$all has more than 10 elements"),
        ({"$or": [{"a": i} for i in range(11)]}, "$or has more than 10 elements"),
        ({"$and": [{"a": i} for i in range(11)]}, "$and has more than 10 elements"),
        ({"a": {"$elemMatch": {"$in": list(range(11))}}}, "$in has more than 10 elements"),
    ],
)
def test_query_arrays_are_bounded(query: dict[str, Any], message: str) -> None:
    small = limits(query_max_array=10)
    with pytest.raises(InvalidQueryError) as raised:
        compile_query(query, small)
    assert str(raised.value) == f"invalid query: {message}"


def test_query_and_pipeline_depth_sort_keys_stages_fields(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(
        limits=limits(query_max_depth=4, sort_max_keys=2, pipeline_max_stages=3, pipeline_max_fields=2)
    )
    deep: dict[str, Any] = {"a": 1}
    for _ in range(4):
        deep = {"$or": [deep]}
    with pytest.raises(TooLargeError, match="query exceeds the maximum nesting depth of 4"):
        engine.find("c", deep)
    with pytest.raises(InvalidQueryError, match="sort has more than 2 keys"):
        engine.find("c", {}, {"a": 1, "b": 1, "c": 1})
    assert engine.find("c", {}, {"a": 1, "b": -1}) == []
    with pytest.raises(InvalidPipelineError, match="\\$sort has more than 2 keys"):
        engine.aggregate("c", [{"$sort": {"a": 1, "b": 1, "c": 1}}])
    with pytest.raises(InvalidPipelineError, match="pipeline has more than 3 stages"):
        engine.aggregate("c", [{"$match": {}}] * 4)
    for stage in ("$project", "$addFields"):
        with pytest.raises(InvalidPipelineError, match=f"\\{stage} has more than 2 fields"):
            engine.aggregate("c", [{stage: {"a": 1, "b": 1, "c": 1}}])
    with pytest.raises(InvalidPipelineError, match="\\$group has more than 2 fields"):
        engine.aggregate("c", [{"$group": {"_id": None, "a": {"$sum": 1}, "b": {"$sum": 1}}}])
    with pytest.raises(TooLargeError, match="pipeline exceeds the maximum nesting depth of 4"):
        engine.aggregate("c", [{"$match": {"$or": [{"a": {"b": 1}}]}}])


def test_default_sort_key_limit_is_mongodbs() -> None:
    with pytest.raises(InvalidQueryError, match="sort has more than 32 keys"):
        from oxidb.engine.matcher import parse_sort

        parse_sort({f"f{i}": 1 for i in range(33)})


# --- 64-bit numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("big", [2**63, 2**64, 10**30])
def test_skip_and_limit_beyond_int64_are_clear_errors(make_engine: Callable[..., Engine], big: int) -> None:
    engine = make_engine()
    insert(engine, "c", [{"a": i} for i in range(3)])
    for sort in (None, {"a": 1}):
        with pytest.raises(InvalidQueryError, match="^invalid query: skip must be at most 9223372036854775807$"):
            engine.find_raw("c", {}, sort, big, None)
        with pytest.raises(InvalidQueryError, match="^invalid query: limit must be at most 9223372036854775807$"):
            engine.find("c", {}, sort, None, big)
    for stage in ("$skip", "$limit"):
        with pytest.raises(
            InvalidPipelineError, match=f"^invalid pipeline: \\{stage} must be at most 9223372036854775807$"
        ):
            engine.aggregate("c", [{stage: big}])


def test_largest_int64_skip_and_limit_work(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    insert(engine, "c", [{"a": i} for i in range(3)])
    top = 2**63 - 1
    assert len(engine.find("c", {}, {"a": 1}, None, top)) == 3
    assert engine.find("c", {}, {"a": 1}, top, top) == []
    # Two $skip stages add up past 64 bits; the SQL prefix clamps them.
    assert engine.aggregate("c", [{"$skip": top}, {"$skip": top}, {"$limit": top}]) == []
    assert len(engine.aggregate("c", [{"$limit": top}, {"$limit": top}])) == 3
    # Negative values stay ignored, as engine.md 2.5 says.
    assert len(engine.find("c", {}, None, -1, -5)) == 3


def test_limits_through_the_wire(make_engine: Callable[..., Engine]) -> None:
    server = MemoryServer(engine=make_engine())
    client, pump = server.connect()
    replies = [
        client.request({"cmd": "insert", "collection": "c", "doc": {"s": "a" * 26}}),
        client.request({"cmd": "find", "collection": "c", "limit": 2**63}),
        client.request({"cmd": "find", "collection": "c", "skip": 2**64, "sort": {"s": 1}}),
        client.request({"cmd": "aggregate", "collection": "c", "pipeline": [{"$limit": 2**63}]}),
        client.request({"cmd": "aggregate", "collection": "c", "pipeline": [{"$skip": 2**70}]}),
        client.request({"cmd": "find", "collection": "c", "query": {"s": {"$regex": "(a|a)*Q"}}}),
        client.request({"cmd": "find", "collection": "c", "query": {"s": {"$regex": "(a)\\1"}}}),
        client.request({"cmd": "find", "collection": "c", "max_time_ms": -1}),
        client.request({"cmd": "count", "collection": "c", "maxTimeMS": "x"}),
        client.request({"cmd": "count", "collection": "c", "maxTimeMS": 60_000}),
        client.request({"cmd": "aggregate", "collection": "c", "pipeline": [], "max_time_ms": 1.5}),
    ]
    pump.flush()
    assert [result_of(d) for d in replies] == [
        {"ok": True, "data": {"id": 1}},
        {"ok": False, "error": "invalid query: limit must be at most 9223372036854775807"},
        {"ok": False, "error": "invalid query: skip must be at most 9223372036854775807"},
        {"ok": False, "error": "invalid pipeline: $limit must be at most 9223372036854775807"},
        {"ok": False, "error": "invalid pipeline: $skip must be at most 9223372036854775807"},
        {"ok": True, "data": []},
        {"ok": False, "error": "invalid query: invalid regex: back-references are not supported"},
        {"ok": False, "error": "'max_time_ms' must be a non-negative integer"},
        {"ok": False, "error": "'max_time_ms' must be a non-negative integer"},
        {"ok": True, "data": {"count": 1}},
        {"ok": False, "error": "'max_time_ms' must be a non-negative integer"},
    ]


# --- reply size ----------------------------------------------------------------------------------


def test_results_past_the_reply_limit_stop_early(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(limits=limits(max_reply_bytes=10_000))
    insert(engine, "c", [{"n": i, "s": "x" * 1000} for i in range(30)])
    engine.apply({"CreateTextIndex": {"collection": "c", "fields": ["s"]}}, 0.0)
    message = "result exceeds the 16 MiB reply limit; use limit and skip to page"
    for read in (
        lambda: engine.find_raw("c"),
        lambda: engine.find_raw("c", {"n": {"$gte": 0}}, {"n": -1}),
        lambda: engine.find("c", {"s": {"$regex": "x"}}),
        lambda: engine.text_search("c", "x" * 1000, 100),
    ):
        with pytest.raises(ReplyTooLargeError) as raised:
            read()
        assert str(raised.value) == message
    assert len(engine.find("c", {}, {"n": 1}, 5, 5)) == 5
    with pytest.raises(ReplyTooLargeError, match="use \\$skip and \\$limit to page"):
        engine.aggregate("c", [{"$project": {"s": 1}}])
    assert len(engine.aggregate("c", [{"$project": {"s": 1}}, {"$limit": 5}])) == 5
    # Counting is not a reply of documents.
    assert engine.count("c", {"s": {"$regex": "x"}}) == 30


def test_a_find_past_16_mib_stops_while_reading(make_engine: Callable[..., Engine]) -> None:
    # Past SQLite's one-step fetch limit too: read row by row and stopped.
    engine = make_engine()
    insert(engine, "big", [{"b": "x" * 1_000_000} for _ in range(20)])
    with pytest.raises(ReplyTooLargeError):
        engine.find_raw("big")
    with pytest.raises(ReplyTooLargeError):
        engine.find("big", {"b": {"$regex": "^x"}})
    assert engine.find_raw("big", {}, None, None, 10).count('"b"') == 10


def test_blob_listing_and_search_stop_at_the_reply_limit(make_engine: Callable[..., Engine]) -> None:
    import base64

    engine = make_engine(limits=limits(max_reply_bytes=2_000))
    blobs.register_appliers(engine)
    engine.apply({"CreateBucket": {"bucket": "b"}}, 0.0)
    data = base64.b64encode(b"hello blob").decode()
    for n in range(40):
        engine.apply(blobs.put_operation("b", f"key-{n:03}", data, "text/plain", {}), 0.0)
    with pytest.raises(ReplyTooLargeError):
        engine.read(blobs.list_objects, "b")
    assert len(engine.read(blobs.list_objects, "b", None, 5)) == 5
    with pytest.raises(ReplyTooLargeError):
        engine.read(blobs.search, "hello", None, 1000)
    assert len(engine.read(blobs.search, "hello", None, 5)) == 5
