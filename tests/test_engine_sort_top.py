"""
Descending sorts with a limit on an indexed path, read without a sort
(L{oxidb.engine.sqlquery.top_rows_statement}): the same documents in the
same order as the unindexed path and the reference, whatever the ties, the
nulls, missing paths and mixed types at the limit's boundary.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oxidb.engine import sqlquery
from oxidb.engine.engine import Engine
from oxidb.engine.matcher import apply_find, parse_sort
from oxidb.engine.reads import Reader, ScanStatement

#: Few distinct keys, so that most rows tie: every rank of the value order,
#: 1 and 1.0 (equal keys), a missing path (a key equal to null's).
MISSING = object()
KEY_VALUES = [MISSING, None, False, True, 0, 1, 1.0, 2, -3.5, "", "a", "b", [1], [], {"x": 1}, {}, "2024-01-15"]

keyed = st.sampled_from(KEY_VALUES)
documents = st.builds(
    lambda value, pad: {"pad": pad} if value is MISSING else {"s": value, "pad": pad}, keyed, st.integers(0, 3)
)

QUERIES: list[dict[str, Any]] = [
    {},
    {"s": {"$gte": 1}},
    {"s": {"$ne": None}},
    {"s": None},
    {"s": {"$exists": True}},
    {"s": {"$lt": "b"}},
    {"$or": [{"s": {"$lte": 0}}, {"s": {"$in": ["a", [1]]}}]},
    # Filters on another path keep the sorted statement.
    {"pad": {"$gte": 2}},
]

_names = itertools.count()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with Engine(str(tmp_path_factory.mktemp("top")), synchronous="OFF") as engine:
        yield engine


def _load(engine: Engine, docs: list[dict[str, Any]], index: bool) -> str:
    name = f"t{next(_names)}"
    if index:
        engine.apply({"CreateIndex": {"collection": name, "field": "s"}}, 0.0)
    if docs:
        engine.apply({"InsertMany": {"collection": name, "documents": docs}}, 0.0)
    else:
        engine.apply({"EnsureCollection": {"name": name}}, 0.0)
    return name


def _statement(engine: Engine, name: str, query: Any, sort: Any, skip: Any, limit: Any) -> ScanStatement:
    def statement(reader: Reader) -> ScanStatement:
        info = reader.collection(name)
        assert info is not None
        plan = reader.plan_for(info, reader.check_query(query))
        return reader.scan_statement(info, plan, parse_sort(sort), skip, limit)

    return engine.read(statement)


@settings(
    max_examples=int(os.environ.get("OXIDB_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(docs=st.lists(documents, max_size=30), data=st.data())
def test_sort_limit_matches_the_unindexed_path(engine: Engine, docs: list[dict[str, Any]], data: st.DataObject) -> None:
    indexed, plain = _load(engine, docs, True), _load(engine, docs, False)
    stored = engine.find(plain)
    for _ in range(6):
        query = data.draw(st.sampled_from(QUERIES))
        sort = {"s": data.draw(st.sampled_from([-1, 1]))}
        skip = data.draw(st.none() | st.integers(0, 8))
        limit = data.draw(st.integers(1, 12))
        expected = apply_find(stored, query, sort, skip, limit)
        assert engine.find(plain, query, sort, skip, limit) == expected
        assert engine.find(indexed, query, sort, skip, limit) == expected, (query, sort, skip, limit)
        assert engine.find_raw(indexed, query, sort, skip, limit) == engine.find_raw(plain, query, sort, skip, limit)


def test_descending_limit_reads_without_a_sort(engine: Engine) -> None:
    """The statement, its plan (no temporary B-tree), and the boundary's ties in ascending _id."""
    # 300 rows: keys 0..2 (100 ties each), then 50 missing and 50 null.
    docs: list[dict[str, Any]] = [{"s": i % 3} for i in range(300)] + [{}] * 50 + [{"s": None}] * 50
    name = _load(engine, docs, True)
    statement = _statement(engine, name, {}, {"s": -1}, 95, 10)
    assert statement.fallback is not None and statement.window_in_sql
    conn = engine._reader_conn()
    plan = " | ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + statement.sql, statement.params))
    assert "TEMP B-TREE" not in plan, plan
    # Ranks 96..105: the last five of key 2 (ids 3, 6, ..., 300), then the
    # first five of key 1 (ids 2, 5, ...), each key's ties in ascending _id.
    found = [doc["_id"] for doc in engine.find(name, {}, {"s": -1}, 95, 10)]
    assert found == [288, 291, 294, 297, 300, 2, 5, 8, 11, 14]
    # The boundary in the null keys: missing and null tie, by ascending _id.
    tail = [doc["_id"] for doc in engine.find(name, {}, {"s": -1}, 340, 20)]
    assert tail == list(range(341, 361))
    # Fewer rows than skip + limit: the sorted statement answers.
    assert [doc["_id"] for doc in engine.find(name, {"s": 2}, {"s": -1}, 95, 10)] == list(range(288, 301, 3))


def test_other_shapes_keep_the_sorted_statement(engine: Engine) -> None:
    name = _load(engine, [{"s": i % 4, "t": i} for i in range(20)], True)
    for query, sort, skip, limit in [
        ({}, {"s": 1}, None, 5),  # ascending: the index is already in order
        ({}, {"s": -1}, None, None),  # no limit
        ({}, {"s": -1, "t": 1}, None, 5),  # two keys
        ({}, {"t": -1}, None, 5),  # not indexed
        ({"t": 3}, {"s": -1}, None, 5),  # another path's condition
        ({"s": {"$type": "int"}}, {"s": -1}, None, 5),  # not exact
        ({}, {"s": -1}, 990, 11),  # beyond TOP_ROWS_MAX
    ]:
        assert _statement(engine, name, query, sort, skip, limit).fallback is None, (query, sort, skip, limit)


def test_long_answers_are_read_with_the_sorted_statement(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past TOP_ROWS_CHARS of held text, the streaming sorted statement answers, the same."""
    docs = [{"s": i % 4, "pad": "x" * 40} for i in range(40)]
    indexed, plain = _load(engine, docs, True), _load(engine, docs, False)
    expected = engine.find(plain, {}, {"s": -1}, 3, 10)
    conn = engine._reader_conn()
    ran: list[str] = []

    def trace(cursor: Any, sql: str, bindings: Any) -> bool:
        ran.append(sql)
        return True

    for chars, statements in ((sqlquery.TOP_ROWS_CHARS, 1), (200, 2)):
        monkeypatch.setattr(sqlquery, "TOP_ROWS_CHARS", chars)
        ran.clear()
        conn.exec_trace = trace
        try:
            assert engine.find(indexed, {}, {"s": -1}, 3, 10) == expected
        finally:
            conn.exec_trace = None
        assert len([sql for sql in ran if " FROM c" in sql and "ORDER BY" in sql]) == statements, ran
