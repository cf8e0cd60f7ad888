"""
C{$group} computed in SQL (L{oxidb.engine.aggregate.GroupPushdown}) against
the Python path: random documents with every kind of value the pushdown must
tell apart (null and missing, integers and floats of equal value, C{-0.0},
integers past 2**53 and 2**63, dates, booleans, arrays and objects), random
keys and accumulators, with and without a leading C{$match} and indexes
(an indexed key is grouped by its key column). Results are compared as JSON
text, so that C{1} and C{1.0} differ.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oxidb.engine import grouphash, reads, sqlite, sqlquery
from oxidb.engine.aggregate import GroupPushdown, compile_pipeline
from oxidb.engine.engine import Engine
from oxidb.engine.governor import DEFAULT_LIMITS, DOC_OVERHEAD
from oxidb.errors import AggregationLimitError
from tests.extensions import built_extension

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-4, 4),
    st.sampled_from([2**53, 2**53 + 1, -(2**63), 2**63 - 1, 2**64 - 1, 10**15]),
    st.sampled_from([0.0, -0.0, 1.0, 2.0, 2.5, -1.5, 0.1, 1e300, 4.0e15]),
    st.floats(allow_nan=False, allow_infinity=False, width=64).filter(lambda f: abs(f) < 1e20),
    st.sampled_from(["a", "b", "B", "", "2024-01-15", "2024-01-15T00:00:00Z", "1"]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=2),
    st.dictionaries(st.sampled_from(["b", "c"]), scalars, max_size=2),
)
FIELDS = ["k", "n", "x", "o"]
documents = st.fixed_dictionaries(
    {},
    optional={
        "k": values,
        "n": values,
        "x": st.one_of(st.integers(-(2**40), 2**40), st.sampled_from([1.0, 3.0, -2.0, 0.5])),
        "o": st.dictionaries(st.sampled_from(["b", "c"]), values, max_size=2),
    },
)
paths = st.sampled_from(["$k", "$n", "$x", "$o", "$o.b", "$o.c.b", "$missing", "$k.b"])


@st.composite
def groups(draw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"_id": draw(st.one_of(st.none(), paths, st.just("$$ROOT"), st.just({"a": "$k"})))}
    for n in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["$sum", "$avg", "$min", "$max", "$count", "$first"]))
        if op == "$count":
            operand: Any = {}
        elif op in ("$sum", "$avg"):
            operand = draw(st.one_of(paths, st.integers(-3, 3), st.just(2**40), st.just(1.5)))
        else:
            operand = draw(paths)
        spec[f"f{n}"] = {op: operand}
    return spec


matches = st.one_of(
    st.none(),
    st.builds(lambda v: {"$match": {"k": v}}, scalars),
    st.builds(lambda v: {"$match": {"x": {"$gte": v}}}, st.integers(-5, 5)),
    st.just({"$match": {"k": {"$regex": "a"}}}),
)
later = st.one_of(st.none(), st.just({"$sort": {"_id": 1}}), st.just({"$limit": 2}))

PROPERTY = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

_names = itertools.count()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with Engine(str(tmp_path_factory.mktemp("group")), synchronous="OFF") as engine:
        yield engine


def _outcome(fn: Any) -> Any:
    try:
        return orjson.dumps(fn())
    except Exception as e:  # the same error either way
        return (type(e).__name__, str(e))


def _assert_pushdown_matches(engine: Engine, name: str, docs: list[dict[str, Any]], stages: list[Any]) -> None:
    """C{docs} into C{name}; the stages (None: left out) give the same outcome in the engine as in the Python path."""
    engine.apply({"InsertMany": {"collection": name, "documents": docs}}, 0.0)
    pipeline = [stage for stage in stages if stage is not None]
    stored = engine.find(name)

    def python_path() -> Any:
        return compile_pipeline(pipeline).run(stored, lambda coll, query: [])

    assert _outcome(lambda: engine.aggregate(name, pipeline)) == _outcome(python_path), pipeline


@PROPERTY
@given(
    docs=st.lists(documents, max_size=12),
    match=matches,
    group=groups(),
    after=later,
    indexed=st.booleans(),
)
def test_group_pushdown_equals_python_path(
    engine: Engine, docs: list[dict[str, Any]], match: Any, group: dict[str, Any], after: Any, indexed: bool
) -> None:
    name = f"g{next(_names)}"
    if indexed:
        for field in ("k", "x", "o.b"):
            engine.apply({"CreateIndex": {"collection": name, "field": field}}, 0.0)
    _assert_pushdown_matches(engine, name, docs, [match, {"$group": group}, after])


@st.composite
def column_groups(draw: Any) -> dict[str, Any]:
    """A L{groups} spec whose key is an indexed path (grouped by its key column)."""
    spec = draw(groups())
    spec["_id"] = draw(st.sampled_from(["$k", "$x", "$o.b"]))
    return spec


#: How a C{$group} keyed by a key column is aggregated: the hash aggregate
#: (L{grouphash.hash_rows} and L{grouphash.hash_blobs} in C, or their Python
#: references), or SQLite's C{GROUP BY} (the path without the C extension).
KEY_COLUMN_PATHS = ["hash", "sql", "hash-python"]


_BUILT = (grouphash.hash_rows, grouphash.hash_blobs)


def _hash_of(path: str) -> tuple[grouphash.HashRows | None, grouphash.HashBlobs | None]:
    """L{grouphash.hash_rows} and L{grouphash.hash_blobs} of a path of L{KEY_COLUMN_PATHS} (C must be built)."""
    if path == "hash":
        module = built_extension("oxidb.engine._grouphash")
        return module.hash_rows, module.hash_blobs  # type: ignore[no-any-return]
    if path == "sql":
        return None, None
    return grouphash.hash_rows_python, grouphash.hash_blobs_python


@contextlib.contextmanager
def key_column_path(path: str) -> Iterator[None]:
    """Aggregate by C{path} (one of L{KEY_COLUMN_PATHS}) inside the block."""
    grouphash.hash_rows, grouphash.hash_blobs = _hash_of(path)
    try:
        yield
    finally:
        grouphash.hash_rows, grouphash.hash_blobs = _BUILT


def _key_column_matches(
    engine: Engine, path: str, docs: list[dict[str, Any]], match: Any, group: dict[str, Any], after: Any
) -> None:
    name = f"g{next(_names)}"
    for field in ("k", "x", "o.b"):
        engine.apply({"CreateIndex": {"collection": name, "field": field}}, 0.0)
    with key_column_path(path):
        _assert_pushdown_matches(engine, name, docs, [match, {"$group": group}, after])


# One test per path: pytest-twisted runs a parametrized Hypothesis test's second case on the wrong greenlet.
@settings(PROPERTY, max_examples=60)
@given(docs=st.lists(documents, max_size=12), match=matches, group=column_groups(), after=later)
def test_group_by_key_column_equals_python_path(
    engine: Engine, docs: list[dict[str, Any]], match: Any, group: dict[str, Any], after: Any
) -> None:
    """The hash aggregate (in C when built)."""
    _key_column_matches(engine, "hash", docs, match, group, after)


@settings(PROPERTY, max_examples=60)
@given(docs=st.lists(documents, max_size=12), match=matches, group=column_groups(), after=later)
def test_group_by_key_column_in_sql_equals_python_path(
    engine: Engine, docs: list[dict[str, Any]], match: Any, group: dict[str, Any], after: Any
) -> None:
    """SQLite's C{GROUP BY} over the key column (without the C extension)."""
    _key_column_matches(engine, "sql", docs, match, group, after)


@settings(PROPERTY, max_examples=20)
@given(docs=st.lists(documents, max_size=12), match=matches, group=column_groups(), after=later)
def test_group_by_key_column_hash_python_equals_python_path(
    engine: Engine, docs: list[dict[str, Any]], match: Any, group: dict[str, Any], after: Any
) -> None:
    """The hash aggregate's Python reference (tests/test_engine_grouphash.py holds the C one to it)."""
    _key_column_matches(engine, "hash-python", docs, match, group, after)


def _statements(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []
    real = sqlquery.group_statement

    def spy(*args: Any, **kwargs: Any) -> str:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(sqlquery, "group_statement", spy)
    return made


def test_plain_groups_run_in_sql(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = [{"city": f"c{i % 3}", "age": i, "score": i / 4} for i in range(30)] + [{"age": 1}, {"city": None}]
    engine.apply({"InsertMany": {"collection": "people", "documents": docs}}, 0.0)
    made = _statements(engine, monkeypatch)
    pipeline = [
        {"$match": {"age": {"$gte": 0}}},
        {"$group": {"_id": "$city", "n": {"$sum": 1}, "avg": {"$avg": "$age"}, "hi": {"$max": "$age"}}},
    ]
    assert engine.aggregate("people", pipeline) == [
        {"_id": "c0", "n": 10, "avg": 13.5, "hi": 27},
        {"_id": "c1", "n": 10, "avg": 14.5, "hi": 28},
        {"_id": "c2", "n": 10, "avg": 15.5, "hi": 29},
        {"_id": None, "n": 1, "avg": 1, "hi": 1},
    ]
    assert len(made) == 1 and "GROUP BY" in made[0]
    # A fractional float sum is order-dependent: the Python path answers.
    by_score = [{"$group": {"_id": None, "s": {"$sum": "$score"}}}]
    assert engine.aggregate("people", by_score) == [{"_id": None, "s": sum(i / 4 for i in range(30))}]
    assert len(made) == 2


@pytest.mark.parametrize(
    "docs, group",
    [
        # -0.0 and 0.0 are one group, shown as the first seen.
        ([{"k": -0.0}, {"k": 0.0}], {"_id": "$k"}),
        # 1 and 1.0 are one minimum; the first seen wins.
        ([{"k": 1.0}, {"k": 1}], {"_id": None, "m": {"$min": "$k"}}),
        ([{"k": 1}, {"k": 1.0}], {"_id": None, "m": {"$max": "$k"}}),
        # Dates group by instant.
        ([{"k": "2024-01-15"}, {"k": "2024-01-15T00:00:00Z"}], {"_id": "$k"}),
        # Past 2**53 the float sum depends on the order.
        ([{"k": 2**53}, {"k": 1}, {"k": 1}], {"_id": None, "s": {"$sum": "$k"}}),
        ([{"k": 2**63 - 1}, {"k": 2**64 - 1}], {"_id": "$k", "a": {"$avg": "$k"}}),
        ([{"k": [1, 2]}, {"k": {"b": 1}}, {"k": "[1,2]"}], {"_id": "$k"}),
        ([{"k": True}, {"k": 1}, {"k": "x"}], {"_id": None, "m": {"$min": "$k"}}),
    ],
)
def test_cases_left_to_python(engine: Engine, docs: list[dict[str, Any]], group: dict[str, Any]) -> None:
    name = f"g{next(_names)}"
    engine.apply({"InsertMany": {"collection": name, "documents": docs}}, 0.0)
    pipeline = [{"$group": group}]
    expected = compile_pipeline(pipeline).run(engine.find(name), lambda coll, query: [])
    assert orjson.dumps(engine.aggregate(name, pipeline)) == orjson.dumps(expected)


def test_shapes_not_pushed_down() -> None:
    assert GroupPushdown.of("$a", {"p": {"$push": "$a"}}) is None
    assert GroupPushdown.of({"x": "$a"}, {}) is None
    assert GroupPushdown.of("$a b", {}) is None
    assert GroupPushdown.of("$a", {"s": {"$sum": 1.5}}) is None
    assert GroupPushdown.of("$a", {"s": {"$sum": True}}) is None
    assert GroupPushdown.of("$a", {"m": {"$min": 3}}) is None
    assert GroupPushdown.of(None, {"s": {"$sum": "$a.b"}, "c": {"$count": {}}}) == GroupPushdown(
        None, (("s", "$sum", ("a", "b")), ("c", "$count", None))
    )
    pipeline = compile_pipeline([{"$sort": {"a": 1}}, {"$group": {"_id": "$a"}}])
    assert pipeline.pushed_group is None
    pipeline = compile_pipeline([{"$match": {"a": 1}}, {"$match": {"b": 1}}, {"$group": {"_id": "$a"}}])
    assert pipeline.pushed_group == GroupPushdown(("a",), ())


def test_budget_errors_are_the_python_paths(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    limits = attrs.evolve(DEFAULT_LIMITS, agg_max_docs=10)
    with Engine(str(tmp_path / "data"), synchronous="OFF", limits=limits) as engine:
        engine.apply({"InsertMany": {"collection": "c", "documents": [{"k": i % 2} for i in range(11)]}}, 0.0)
        grouped = [{"$group": {"_id": "$k", "n": {"$count": {}}}}]
        with pytest.raises(AggregationLimitError) as raised:
            engine.aggregate("c", grouped)
        assert "stage input exceeded the document limit of 10 documents" in str(raised.value)
        assert engine.aggregate("c", [{"$match": {"k": 1}}, *grouped]) == [{"_id": 1, "n": 5}]
    assert reads.Reader._group_in_sql.__doc__


def _pushed(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each aggregation's C{$group} was answered by SQL."""
    answered: list[bool] = []
    real = reads.Reader._group_in_sql

    def spy(self: reads.Reader, *args: Any) -> Any:
        out = real(self, *args)
        answered.append(out is not None)
        return out

    monkeypatch.setattr(reads.Reader, "_group_in_sql", spy)
    return answered


def _scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []
    real = sqlquery.group_scan_statement

    def spy(*args: Any, **kwargs: Any) -> tuple[str, Any]:
        out = real(*args, **kwargs)
        made.append(out[0])
        return out

    monkeypatch.setattr(sqlquery, "group_scan_statement", spy)
    return made


@pytest.mark.parametrize("path", KEY_COLUMN_PATHS)
def test_indexed_key_groups_by_its_key_column(engine: Engine, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"g{next(_names)}"
    engine.apply({"CreateIndex": {"collection": name, "field": "k"}}, 0.0)
    docs = [
        {"k": "2024-01-15T00:00:00Z", "x": 1},
        {"k": "b", "x": 2},
        {"k": "2024-01-15", "x": 3},
        {"x": 4},
        {"k": None, "x": 5},
        {"k": 2, "x": 6},
        {"k": 2, "x": 7},
        {"k": True, "x": 8},
    ]
    engine.apply({"InsertMany": {"collection": name, "documents": docs}}, 0.0)
    hash_rows, hash_blobs = _hash_of(path)
    monkeypatch.setattr(grouphash, "hash_rows", hash_rows)
    monkeypatch.setattr(grouphash, "hash_blobs", hash_blobs)
    made = _statements(engine, monkeypatch)
    scans = _scans(monkeypatch)
    pushed = _pushed(monkeypatch)
    pipeline = [{"$group": {"_id": "$k", "s": {"$sum": "$x"}, "n": {"$count": {}}}}]
    # Dates group by instant and show the first one seen; null and missing are one group.
    assert engine.aggregate(name, pipeline) == [
        {"_id": "2024-01-15T00:00:00Z", "s": 4, "n": 2},
        {"_id": "b", "s": 2, "n": 1},
        {"_id": None, "s": 9, "n": 2},
        {"_id": 2, "s": 13, "n": 2},
        {"_id": True, "s": 8, "n": 1},
    ]
    # A numeric key (2) is left to SQL's GROUP BY, which tells integers from floats.
    assert pushed == [True] and "GROUP BY k" in made[0] and "json_type(doc, '$.k') AS t" not in made[0]
    assert scans == []
    engine.apply({"Delete": {"collection": name, "query": {"k": {"$in": [2, True]}}}}, 0.0)
    made.clear()
    assert engine.aggregate(name, pipeline) == [
        {"_id": "2024-01-15T00:00:00Z", "s": 4, "n": 2},
        {"_id": "b", "s": 2, "n": 1},
        {"_id": None, "s": 9, "n": 2},
    ]
    if path == "sql":
        assert pushed == [True, True] and "GROUP BY k" in made[0] and scans == []
    else:
        # One scan reading the key column (not the key's JSON) and the summed path's text, no sort.
        assert pushed == [True, True] and made == [] and len(scans) == 1
        assert "doc -> '$.k'" not in scans[0] and "doc -> '$.x'" in scans[0] and "GROUP BY" not in scans[0]
    # An integer and a float of equal value share a key but not a group: Python answers.
    engine.apply({"InsertMany": {"collection": name, "documents": [{"k": 2, "x": 6}, {"k": 2.0, "x": 9}]}}, 0.0)
    expected = compile_pipeline(pipeline).run(engine.find(name), lambda coll, query: [])
    assert orjson.dumps(engine.aggregate(name, pipeline)) == orjson.dumps(expected)
    assert pushed == [True, True, False]


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=16,
)


@pytest.fixture(scope="module")
def memory() -> Iterator[sqlite.Connection]:
    conn = sqlite.open_connection(":memory:")
    yield conn
    conn.close()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(st.text(max_size=4), json_values, max_size=6))
def test_jsonb_bounds_the_text(memory: sqlite.Connection, doc: dict[str, Any]) -> None:
    """The budget's bound (L{sqlquery.JSONB_TEXT_RATIO}) holds for any document."""
    text = orjson.dumps(doc)
    stored, rendered = memory.execute(
        "SELECT octet_length(jsonb(?1)), octet_length(json(jsonb(?1)))", (text.decode(),)
    ).fetchone()
    assert rendered == len(text)
    assert len(text) <= sqlquery.JSONB_TEXT_RATIO * stored


@pytest.mark.parametrize("spare", [0, -1])
@pytest.mark.parametrize("match", [[], [{"$match": {"k": {"$gte": 0}}}]])
def test_byte_budget_decided_as_the_python_path(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, spare: int, match: list[Any]
) -> None:
    """
    Texts far longer than their JSONB: the bound does not settle it, the
    measured texts do (in the statement without a C{$match}, after it with
    one).
    """
    docs = [{"k": i % 2, "f": [False] * 40} for i in range(20)]
    with Engine(str(tmp_path / "measure"), synchronous="OFF") as engine:
        engine.apply({"InsertMany": {"collection": "c", "documents": docs}}, 0.0)
        texts = sum(len(orjson.dumps(doc)) for doc in engine.find("c"))
    limits = attrs.evolve(DEFAULT_LIMITS, agg_max_bytes=texts + 20 * DOC_OVERHEAD + spare)
    with Engine(str(tmp_path / "data"), synchronous="OFF", limits=limits) as engine:
        engine.apply({"InsertMany": {"collection": "c", "documents": docs}}, 0.0)
        pushed = _pushed(monkeypatch)
        made = _statements(engine, monkeypatch)
        grouped = [*match, {"$group": {"_id": "$k", "n": {"$count": {}}}}]
        if spare == 0:
            assert engine.aggregate("c", grouped) == [{"_id": 0, "n": 10}, {"_id": 1, "n": 10}]
            assert pushed == [True]
        else:
            with pytest.raises(AggregationLimitError) as raised:
                engine.aggregate("c", grouped)
            assert "exceeded the memory limit" in str(raised.value)
            assert pushed == [False]
        # Without a condition a quick pass over the JSONB sizes tells the statement to measure the texts.
        assert ("octet_length(json(doc))" in made[0]) == (not match)


@pytest.mark.parametrize("path", ["hash", "hash-python"])
def test_indexed_paths_read_in_blobs(engine: Engine, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Without a C{$match}, a key and summed paths that all have key columns
    are read packed in blobs (L{grouphash.hash_blobs}), a few thousand
    C{_id}s each: keys of any length (their lengths take 1 to 3 bytes) and
    any bytes; a sum past a double leaves the data to Python.
    """
    name = f"g{next(_names)}"
    for field in ("k", "x"):
        engine.apply({"CreateIndex": {"collection": name, "field": field}}, 0.0)
    keys = ["a", "\x1e", "b" * 200, "c" * 3000, None, True, False, "2024-01-15"]
    docs = [{"k": keys[i % len(keys)], "x": [1, 2.0, -3, None, "s", 1e15][i % 6]} for i in range(40)]
    docs.append({"x": 4})
    engine.apply({"InsertMany": {"collection": name, "documents": docs}}, 0.0)
    monkeypatch.setattr(reads, "BLOB_IDS", 16)
    hash_rows, hash_blobs = _hash_of(path)
    monkeypatch.setattr(grouphash, "hash_rows", hash_rows)
    monkeypatch.setattr(grouphash, "hash_blobs", hash_blobs)
    blobs = []
    real = sqlquery.group_blob_statement

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        blobs.append(out)
        return out

    monkeypatch.setattr(sqlquery, "group_blob_statement", spy)
    pushed = _pushed(monkeypatch)
    pipeline = [{"$group": {"_id": "$k", "s": {"$sum": "$x"}, "a": {"$avg": "$x"}, "n": {"$sum": 1}}}]
    stored = engine.find(name)
    expected = compile_pipeline(pipeline).run(stored, lambda coll, query: [])
    assert orjson.dumps(engine.aggregate(name, pipeline)) == orjson.dumps(expected)
    assert pushed == [True] and blobs and blobs[-1] is not None
    engine.apply({"Insert": {"collection": name, "document": {"k": "a", "x": 2**53 + 1}}}, 0.0)
    expected = compile_pipeline(pipeline).run(engine.find(name), lambda coll, query: [])
    assert orjson.dumps(engine.aggregate(name, pipeline)) == orjson.dumps(expected)
    assert pushed == [True, False] and len(blobs) == 2
    # A numeric key: SQL's GROUP BY answers (it tells an integer from a float).
    engine.apply({"Delete": {"collection": name, "query": {"x": 2**53 + 1}}}, 0.0)
    engine.apply({"Insert": {"collection": name, "document": {"k": 7, "x": 1}}}, 0.0)
    expected = compile_pipeline(pipeline).run(engine.find(name), lambda coll, query: [])
    assert orjson.dumps(engine.aggregate(name, pipeline)) == orjson.dumps(expected)
    assert pushed == [True, False, True] and len(blobs) == 2
