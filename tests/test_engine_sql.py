"""
The SQL building blocks: order-preserving keys, path expressions, and the
planner really using the expression indexes.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.engine import keys, paths, sqlite, store, values
from oxidb.engine.engine import Engine
from oxidb.engine.matcher import compile_query, parse_sort
from oxidb.engine.sqlquery import compile_plan, order_by


def _json_values(integers: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.one_of(
            st.none(),
            st.booleans(),
            integers,
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=5),
            st.sampled_from(["2024-01-15", "2024-01-15T00:00:00Z", "2024-01-15T01:00:00+01:00", "1999-12-31 23:59:59"]),
        ),
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
        max_leaves=5,
    )


json_values = _json_values(st.integers())
#: What a stored document can hold (orjson stores 64-bit integers).
stored_values = _json_values(st.integers(-(2**63), 2**64 - 1))

@settings(max_examples=400, deadline=None)
@given(json_values, json_values)
def test_key_order_is_sort_key_order(a: Any, b: Any) -> None:
    ka, kb = values.sort_key(a), values.sort_key(b)
    ea, eb = keys.encode_key(a), keys.encode_key(b)
    assert (ka < kb) == (ea < eb)
    assert (ka == kb) == (ea == eb)


@settings(max_examples=400, deadline=None)
@given(stored_values)
def test_fast_value_keys_are_the_keys(value: Any) -> None:
    assert keys.key_of_value(value) == keys.encode_key(value)


def test_key_order_edge_cases() -> None:
    ordered = [
        None, False, True, -(10**400), -(2**63), -1.5, -1, -0.0, 0, 1, 2**53, 2**53 + 1, 2**53 + 3,
        2**64, 1e300, 10**400, "1969-12-31T23:59:59.999Z", "2024-01-15", "2024-01-15T00:00:00.001Z",
        "", "2024-02-30", "Z", "[1,2]", "a", "é", "\U0001f600",
    ]
    encoded = [keys.encode_key(v) for v in ordered]
    for (va, ea), (vb, eb) in pairwise(zip(ordered, encoded, strict=True)):
        assert values.compare(va, vb) <= 0
        assert (ea < eb) == (values.compare(va, vb) < 0), (va, vb)
    assert keys.encode_key(1) == keys.encode_key(1.0) == keys.encode_key(True is False or 1)
    assert keys.encode_key("2024-01-15") == keys.encode_key("2024-01-15 00:00:00")
    assert keys.encode_key({"a": 1, "b": 2}) == keys.encode_key({"b": 2, "a": 1})
    assert keys.encode_key(float("nan")) == keys.NULL_KEY == keys.encode_key(None)


field_names = st.text(
    alphabet=st.sampled_from(list("ab.0 \"\\'[]$*é\x01\x7f\u2028")), max_size=4
).filter(lambda name: "." not in name)


@pytest.fixture(scope="module")
def conn() -> Iterator[sqlite.Connection]:
    connection = sqlite.open_connection(":memory:")
    keys.register_functions(connection)
    yield connection
    connection.close()


@settings(max_examples=300, deadline=None)
@given(st.lists(field_names, min_size=1, max_size=3), stored_values, st.booleans())
def test_key_and_presence_sql_read_paths_like_get_path(
    conn: sqlite.Connection, steps: list[str], value: Any, wrap_in_array: bool
) -> None:
    doc: Any = value
    for step in reversed(steps):
        doc = {step: [doc] if wrap_in_array and step == steps[-1] else doc}
    text = orjson.dumps(doc).decode()
    for path in (".".join(steps), ".".join(steps[:-1] + ["0"]), steps[0]):
        found, got = paths.get_path(doc, path)
        key, present = conn.execute(
            f"SELECT {keys.key_sql(path)}, {keys.present_sql(path)} FROM (SELECT ? AS doc)", (text,)
        ).fetchone()
        assert bool(present) == found, path
        assert key == (keys.encode_key(got) if found else keys.NULL_KEY), path
        # Key columns are computed in Python from the document itself.
        assert keys.key_at(doc, tuple(path.split("."))) == key, path
        assert keys.keys_at(doc, [tuple(path.split(".")), (steps[0],)])[0] == key, path
        found, got = paths.get_path_sort(doc, path)
        (sort_key,) = conn.execute(f"SELECT {keys.sort_key_sql(path)} FROM (SELECT ? AS doc)", (text,)).fetchone()
        assert sort_key == (keys.encode_key(got) if found else keys.NULL_KEY), path


def test_json_path_quotes_every_step_and_refuses_escaped_keys() -> None:
    assert keys.json_path("a.b") == '$."a"."b"'
    assert keys.json_path("tags.0") == '$."tags"."0"'
    assert keys.json_path("x y.[k]") == '$."x y"."[k]"'
    assert keys.json_path('q"q') is None
    assert keys.json_path("back\\slash") is None
    assert keys.json_path("ctl\x01") is None
    assert keys.key_sql('q"q').startswith("oxi_key_path(json(doc), X'")


def test_sort_paths_with_digits_read_arrays(conn: sqlite.Connection) -> None:
    doc = orjson.dumps({"s": [5, 7], "o": {"1": "x"}}).decode()
    for path, expected in (("s.1", 7), ("o.1", "x"), ("s.2", None)):
        (got,) = conn.execute(f"SELECT {keys.sort_key_sql(path)} FROM (SELECT ? AS doc)", (doc,)).fetchone()
        assert got == keys.encode_key(expected)
    assert keys.sort_key_sql("abc") == keys.key_sql("abc")


# --- the planner uses the indexes ------------------------------------------------


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, str]]:
    with Engine(str(tmp_path_factory.mktemp("plans")), synchronous="OFF") as engine:
        docs = [{"age": i % 50, "city": f"c{i % 7}", "nested": {"k": i}, "tag": [i % 3]} for i in range(2000)]
        engine.apply({"InsertMany": {"collection": "people", "documents": docs}}, 0.0)
        for field in ("age", "nested.k"):
            engine.apply({"CreateIndex": {"collection": "people", "field": field}}, 0.0)
        engine.apply({"CreateCompositeIndex": {"collection": "people", "fields": ["city", "age"]}}, 0.0)
        (tbl,) = engine._reader_conn().execute("SELECT tbl FROM oxi_collections WHERE name = 'people'").fetchone()
        yield engine, tbl


def _columns(engine: Engine) -> dict[str, str]:
    return store.column_map(store.list_index_defs(engine._reader_conn(), "people"))


def _plan(engine: Engine, tbl: str, query: dict[str, Any], sort: Any = None) -> str:
    plan = compile_plan(compile_query(query), _columns(engine))
    assert plan.exact
    sql = f"SELECT doc FROM {tbl} WHERE {plan.where}"
    if sort is not None:
        sql += " " + order_by(parse_sort(sort), columns=plan.columns)
    rows = engine._reader_conn().execute("EXPLAIN QUERY PLAN " + sql, plan.params).fetchall()
    return " | ".join(row[-1] for row in rows)


@pytest.mark.parametrize(
    "query, sort",
    [
        ({"age": 7}, None),
        ({"age": {"$gt": 10, "$lte": 12}}, None),
        ({"age": {"$in": [1, 2, 3]}}, None),
        ({"nested.k": {"$lt": 3}}, None),
        ({"age": None}, None),
        ({"city": "c3", "age": 4}, None),
        ({"city": "c3"}, {"age": 1}),
    ],
)
def test_indexed_queries_search_the_index(indexed: tuple[Engine, str], query: dict[str, Any], sort: Any) -> None:
    engine, tbl = indexed
    plan = _plan(engine, tbl, query, sort)
    assert "USING INDEX" in plan and "SCAN" not in plan.split("USING")[0], plan


def test_sort_with_limit_walks_the_index(indexed: tuple[Engine, str]) -> None:
    engine, tbl = indexed
    plan = _plan(engine, tbl, {"age": {"$exists": True}}, {"age": 1})
    assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, plan
    assert engine.find("people", {}, {"age": 1}, None, 3) == engine.find("people", {"age": 0})[:3]


def test_id_queries_use_the_primary_key(indexed: tuple[Engine, str]) -> None:
    engine, tbl = indexed
    assert "INTEGER PRIMARY KEY" in _plan(engine, tbl, {"_id": {"$gte": 5, "$lt": 9}})
    assert [d["_id"] for d in engine.find("people", {"_id": {"$gte": 5, "$lt": 9}})] == [5, 6, 7, 8]
    assert engine.find("people", {"_id": 5.0})[0]["_id"] == 5
    assert engine.find("people", {"_id": "5"}) == []


def test_unsorted_reads_aggregate_inside_sqlite(indexed: tuple[Engine, str]) -> None:
    """
    Unsorted finds fetch every match with one aggregate query over the same
    condition (still searching the index), and fall back to fetching row by
    row when the concatenation would be longer than SQLite's string limit.
    """
    engine, tbl = indexed
    plan = compile_plan(compile_query({"age": {"$gt": 10, "$lte": 12}}), _columns(engine))
    sql = f"SELECT group_concat(_id), group_concat(doc, char(31)) FROM (SELECT _id, doc FROM {tbl} WHERE {plan.where})"
    rows = engine._reader_conn().execute("EXPLAIN QUERY PLAN " + sql, plan.params).fetchall()
    assert "USING INDEX" in " | ".join(row[-1] for row in rows)
    queries: list[Any] = [{"age": {"$gt": 10, "$lte": 12}}, {"age": {"$gt": 48}, "tag": {"$size": 1}}, {}]
    expected = [engine.find("people", q) for q in queries]
    assert [d["_id"] for d in expected[0]] == sorted(d["_id"] for d in expected[0])
    assert [len(e) for e in expected] == [80, 40, 2000]
    conn = engine._reader_conn()
    conn.limit(sqlite.LIMIT_LENGTH, 5000)
    try:
        for query, docs in zip(queries, expected, strict=True):
            assert engine.find("people", query) == docs
            assert engine.find_raw("people", query) == orjson.dumps(docs).decode()
    finally:
        conn.limit(sqlite.LIMIT_LENGTH, 1_000_000_000)


def test_sibling_bounds_make_presence_tests_redundant(tmp_path: Any) -> None:
    """
    A C{$gt}, or a C{$gte}/C{$eq} of a non-null value, already excludes the
    null key that missing paths share: its siblings on the same path skip
    the presence test (which parses the document), with the same answers.
    """
    from oxidb.engine.matcher import apply_find

    def where(query: dict[str, Any]) -> str:
        return compile_plan(compile_query(query)).where

    assert "IS NOT NULL" not in where({"a": {"$gte": 1, "$lt": 3}})
    assert "IS NOT NULL" not in where({"a": {"$gt": None, "$ne": 3}})
    assert "IS NOT NULL" in where({"a": {"$gte": None, "$lt": 3}})
    assert "IS NOT NULL" in where({"a": {"$lt": 3}, "b": {"$gt": 1}})
    assert "IS NOT NULL" in where({"a": {"$gt": 1}, "$or": [{"a": {"$lt": 3}}]})
    assert "IS NOT NULL" in where({"a": {"$gt": 1, "$not": {"$lt": 3}}})
    docs = [{}, {"a": None}, {"a": 1}, {"a": 2.5}, {"a": 3}, {"a": "x"}, {"a": False}, {"b": 2}]
    queries: list[dict[str, Any]] = [
        {"a": {"$gte": 1, "$lt": 3}},
        {"a": {"$gt": None, "$lte": 3}},
        {"a": {"$gt": False, "$ne": 3}},
        {"a": 2.5, "b": {"$lt": 5}},
        {"a": {"$gte": None, "$lt": 3}},
        {"a": {"$gt": 1, "$not": {"$lt": 3}}},
    ]
    with Engine(str(tmp_path / "data"), synchronous="OFF") as engine:
        engine.apply({"InsertMany": {"collection": "c", "documents": docs}}, 0.0)
        stored = engine.find("c")
        for query in queries:
            assert engine.find("c", query) == apply_find(stored, query), query
        engine.apply({"CreateIndex": {"collection": "c", "field": "a"}}, 0.0)
        for query in queries:
            assert engine.find("c", query) == apply_find(stored, query), query


def test_unindexed_equality_compares_stored_texts(tmp_path: Any) -> None:
    """
    Equality on a path without an index compares JSON texts where every
    equal value's text can be listed, with the reference's answers.
    """
    from oxidb.engine.matcher import apply_find

    def where(query: dict[str, Any]) -> str:
        return compile_plan(compile_query(query)).where

    assert "IN (" in where({"x": 5}) and "oxi_key" not in where({"x": 5})
    assert "IN (" in where({"x": "plain"}) and "IN (" in where({"x": True})
    for query in ({"x": "2024-01-01"}, {"x": "[1]"}, {"x": [1]}, {"x": None}, {'q"q': 1}):
        assert "IN (" not in where(query), query
    assert "IN (" not in compile_plan(compile_query({"x": 5}), {"x": "k1_0"}).where
    docs: list[Any] = [
        {"x": 5}, {"x": 5.0}, {"x": 0}, {"x": -0.0}, {"x": 0.0}, {"x": "5"}, {"x": True}, {"x": 1},
        {"x": "2024-01-01"}, {"x": "2024-01-01T00:00:00Z"}, {"x": "[1]"}, {"x": [1]}, {"x": 10**16},
        {"x": 1e16}, {"x": 2**53 + 1}, {"x": 'q"\\\n\u2028é'}, {"x": None}, {}, {"x": {"y": 5}},
    ]
    operands: list[Any] = [
        5, 5.0, 0, -0.0, "5", True, 1, "2024-01-01", "[1]", 10**16, 1e16, 2**53 + 1, float(2**53 + 1),
        'q"\\\n\u2028é', 2**70, False, 7,
    ]
    with Engine(str(tmp_path / "data"), synchronous="OFF") as engine:
        engine.apply({"InsertMany": {"collection": "c", "documents": docs}}, 0.0)
        stored = engine.find("c")
        for operand in operands:
            queries: list[dict[str, Any]] = [{"x": operand}, {"x": {"$not": {"$eq": operand}}}]
            for query in queries:
                assert engine.find("c", query) == apply_find(stored, query), query


def _steps_of_find(engine: Engine, collection: str, sort: Any, limit: int) -> tuple[str, int, list[Any]]:
    """
    The plan of the statement C{find} runs for a sort and limit, the SQLite
    steps it takes (counted by a progress handler called every step), and
    its result.
    """
    conn = engine._reader_conn()
    statements: list[tuple[str, Any]] = []

    def trace(cursor: Any, sql: str, bindings: Any) -> bool:
        statements.append((sql, bindings))
        return True

    conn.exec_trace = trace
    try:
        found = engine.find(collection, {}, sort, None, limit)
    finally:
        conn.exec_trace = None
    ((sql, params),) = [(s, b) for s, b in statements if "ORDER BY" in s and "LIMIT" in s]
    plan = " | ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())
    steps = 0

    def step() -> bool:
        nonlocal steps
        steps += 1
        return False

    conn.set_progress_handler(step, 1)
    try:
        conn.execute(sql, params).fetchall()
    finally:
        conn.set_progress_handler(None, 0)
    return plan, steps, found


def test_sort_limit_on_an_indexed_field_reads_only_the_limit(tmp_path: Any) -> None:
    """
    C{sort} + C{limit 10} on an indexed field, either direction: the index
    is walked, nothing is sorted but the ties of the last key (C{_id}
    order), and the work does not grow with the collection.
    """
    with Engine(str(tmp_path / "data"), synchronous="OFF") as engine:
        steps = {}
        for size in (500, 4000):
            name = f"s{size}"
            engine.apply({"CreateIndex": {"collection": name, "field": "score"}}, 0.0)
            docs = [{"score": (i * 7919) % size / size, "pad": "x" * 50} for i in range(size)]
            engine.apply({"InsertMany": {"collection": name, "documents": docs}}, 0.0)
            for direction in (1, -1):
                plan, count, found = _steps_of_find(engine, name, {"score": direction}, 10)
                assert "USING INDEX" in plan and "TEMP B-TREE FOR ORDER BY" not in plan, plan
                expected = sorted(docs, key=lambda d: d["score"], reverse=direction == -1)[:10]
                assert [d["score"] for d in found] == [d["score"] for d in expected]
                steps[size, direction] = count
        for direction in (1, -1):
            assert steps[4000, direction] < 2 * steps[500, direction], steps
