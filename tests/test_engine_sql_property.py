"""
The compiled SQL path against the pure reference (L{apply_find}): random
documents, queries, sorts, skips and limits, with and without each kind of
index, must give identical answers (same documents, same order).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oxidb.engine.engine import Engine
from oxidb.engine.matcher import apply_find, compile_query
from oxidb.engine.sqlquery import compile_plan
from oxidb.errors import InvalidQueryError

# Field names: plain, with a space, needing JSON escapes (only reachable
# through the Python path functions), numeric (object keys that a sort path
# could also read as an array index).
KEYS = ["a", "b", "c", "x y", 'q"q', "0", "1"]
PATHS = ["a", "b", "c", "a.b", "a.c", "b.a", "a.0", "x y", 'q"q', "q\"q.a", "_id", "0", "c.1"]

DATES = [
    "2024-01-15",
    "2024-01-15T00:00:00Z",
    "2024-01-15 00:00:00",
    "2024-01-15T02:00:00+02:00",
    "2024-01-15T10:30:00.5",
    "2024-02-30",
    "2023-12-31T23:59:59.999Z",
    "2024-1-5",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.sampled_from([2**53, 2**53 + 1, -(2**63), 2**63 - 1, 2**64 - 1]),
    st.floats(allow_nan=False, allow_infinity=False, width=64).filter(lambda f: abs(f) < 1e20),
    st.sampled_from([0.0, -0.0, 1.0, 2.5, -1.5]),
    st.text(alphabet="abAB é", max_size=3),
    st.sampled_from(DATES),
    st.sampled_from(['[1,2]', '{"b":1}', "Z", "a"]),
)

values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    ),
    max_leaves=6,
)

documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)

paths = st.sampled_from(PATHS)


def _field_conditions(draw: Any) -> Any:
    op = draw(
        st.sampled_from(
            ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$regex", "$not",
             "$size", "$type", "$all", "bare"]
        )
    )
    if op == "bare":
        return draw(values)
    if op in ("$in", "$nin", "$all"):
        return {op: draw(st.lists(values, max_size=4))}
    if op == "$exists":
        return {op: draw(st.booleans())}
    if op == "$regex":
        return {op: draw(st.sampled_from(["a", "^b", "A", "20", "é$"])), "$options": draw(st.sampled_from(["", "i"]))}
    if op == "$not":
        return {
            op: {
                draw(st.sampled_from(["$gt", "$eq", "$in", "$exists"])): draw(
                    st.sampled_from([1, None, "a", [1, None], True])
                )
            }
        }
    if op == "$size":
        return {op: draw(st.integers(0, 3))}
    if op == "$type":
        return {op: draw(st.sampled_from(["null", "number", "string", "array", "object", "date"]))}
    condition = {op: draw(values)}
    if draw(st.booleans()):
        other = draw(st.sampled_from(["$gt", "$gte", "$lt", "$lte", "$ne"]))
        condition[other] = draw(values)
    return condition


@st.composite
def queries(draw: Any, depth: int = 0) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["field", "field", "field", "$and", "$or"] if depth < 2 else ["field"]))
        if kind == "field":
            query[draw(paths)] = _field_conditions(draw)
        else:
            query[kind] = draw(st.lists(queries(depth + 1), max_size=3))
    return query


sorts = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(PATHS + ["a.1", "c.0"]), st.sampled_from([1, -1]), min_size=1, max_size=3),
)
skips_limits = st.one_of(st.none(), st.integers(0, 6), st.sampled_from([-1, 1.5, "2", True]))

INDEX_SETUPS: dict[str, list[dict[str, dict[str, Any]]]] = {
    "none": [],
    "field": [{"CreateIndex": {"field": p}} for p in ["a", "b", "a.b", 'q"q', "c"]],
    # Unique indexes on fields the generated documents never hold twice.
    "unique": [{"CreateUniqueIndex": {"field": "_id"}}, {"CreateUniqueIndex": {"field": "_version.x"}}],
    "composite": [
        {"CreateCompositeIndex": {"fields": ["a", "b"]}},
        {"CreateCompositeIndex": {"fields": ["b", "a.b", "c"]}},
    ],
    "text": [{"CreateTextIndex": {"fields": ["a", "b"]}}],
}

_names = itertools.count()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with Engine(str(tmp_path_factory.mktemp("prop")), synchronous="OFF") as engine:
        yield engine


def _load(engine: Engine, setup: str, docs: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    name = f"p{next(_names)}"
    for op in INDEX_SETUPS[setup]:
        ((kind, body),) = op.items()
        engine.apply({kind: {**body, "collection": name}}, 0.0)
    if docs:
        engine.apply({"InsertMany": {"collection": name, "documents": docs}}, 0.0)
    else:
        engine.apply({"EnsureCollection": {"name": name}}, 0.0)
    return name, engine.find(name)


def _reference(stored: list[dict[str, Any]], query: Any, sort: Any, skip: Any, limit: Any) -> Any:
    try:
        return apply_find(stored, query, sort, skip, limit)
    except InvalidQueryError as e:
        return ("error", str(e))


def _engine_find(engine: Engine, name: str, query: Any, sort: Any, skip: Any, limit: Any) -> Any:
    try:
        return engine.find(name, query, sort, skip, limit)
    except InvalidQueryError as e:
        return ("error", str(e))


PROPERTY = settings(
    # OXIDB_PROPERTY_EXAMPLES raises the count for a thorough run.
    max_examples=int(os.environ.get("OXIDB_PROPERTY_EXAMPLES", "70")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


def _check_find(engine: Engine, setup: str, docs: list[dict[str, Any]], data: st.DataObject) -> None:
    name, stored = _load(engine, setup, docs)
    assert [doc["_id"] for doc in stored] == list(range(1, len(docs) + 1))
    for _ in range(4):
        query = data.draw(queries())
        sort = data.draw(sorts)
        skip = data.draw(skips_limits)
        limit = data.draw(skips_limits)
        expected = _reference(stored, query, sort, skip, limit)
        assert _engine_find(engine, name, query, sort, skip, limit) == expected, (query, sort, skip, limit)
        if isinstance(expected, list):
            # The raw reads are byte for byte the encoding of the parsed ones.
            assert engine.find_raw(name, query, sort, skip, limit) == orjson.dumps(expected).decode()
            everything = apply_find(stored, query)
            assert engine.count(name, query) == len(everything)
            assert engine.find_one(name, query) == (everything[0] if everything else None)
            assert engine.find_one_raw(name, query) == (orjson.dumps(everything[0]).decode() if everything else None)


# One test per index setup (pytest-twisted cannot wrap a parametrized
# Hypothesis test).


@PROPERTY
@given(docs=st.lists(documents, max_size=12), data=st.data())
def test_find_matches_reference_without_indexes(
    engine: Engine, docs: list[dict[str, Any]], data: st.DataObject
) -> None:
    _check_find(engine, "none", docs, data)


@PROPERTY
@given(docs=st.lists(documents, max_size=12), data=st.data())
def test_find_matches_reference_with_field_indexes(
    engine: Engine, docs: list[dict[str, Any]], data: st.DataObject
) -> None:
    _check_find(engine, "field", docs, data)


@PROPERTY
@given(docs=st.lists(documents, max_size=12), data=st.data())
def test_find_matches_reference_with_unique_indexes(
    engine: Engine, docs: list[dict[str, Any]], data: st.DataObject
) -> None:
    _check_find(engine, "unique", docs, data)


@PROPERTY
@given(docs=st.lists(documents, max_size=12), data=st.data())
def test_find_matches_reference_with_composite_indexes(
    engine: Engine, docs: list[dict[str, Any]], data: st.DataObject
) -> None:
    _check_find(engine, "composite", docs, data)


@PROPERTY
@given(docs=st.lists(documents, max_size=12), data=st.data())
def test_find_matches_reference_with_text_index(
    engine: Engine, docs: list[dict[str, Any]], data: st.DataObject
) -> None:
    _check_find(engine, "text", docs, data)


def _check_delete(engine: Engine, setup: str, docs: list[dict[str, Any]], query: Any, limit: Any) -> None:
    name, stored = _load(engine, setup, docs)
    op = {"Delete": {"collection": name, "query": query, "limit": limit}}
    try:
        doomed = apply_find(stored, query, None, None, limit)
    except InvalidQueryError as e:
        with pytest.raises(InvalidQueryError) as raised:
            engine.apply(op, 0.0)
        assert str(raised.value) == str(e)
        return
    assert engine.apply(op, 0.0) == {"deleted": len(doomed)}
    gone = {doc["_id"] for doc in doomed}
    assert engine.find(name) == [doc for doc in stored if doc["_id"] not in gone]


@PROPERTY
@given(docs=st.lists(documents, max_size=10), query=queries(), limit=st.one_of(st.none(), st.integers(0, 3)))
def test_delete_matches_reference(engine: Engine, docs: list[dict[str, Any]], query: Any, limit: Any) -> None:
    _check_delete(engine, "none", docs, query, limit)


@PROPERTY
@given(docs=st.lists(documents, max_size=10), query=queries(), limit=st.one_of(st.none(), st.integers(0, 3)))
def test_delete_matches_reference_with_indexes(
    engine: Engine, docs: list[dict[str, Any]], query: Any, limit: Any
) -> None:
    _check_delete(engine, "field", docs, query, limit)


@PROPERTY
@given(docs=st.lists(documents, max_size=10), query=queries())
def test_update_touches_reference_matches(engine: Engine, docs: list[dict[str, Any]], query: Any) -> None:
    name, stored = _load(engine, "field", docs)
    try:
        matched = apply_find(stored, query)
    except InvalidQueryError:
        return
    result = engine.apply({"Update": {"collection": name, "query": query, "update": {"$set": {"touched": True}}}}, 0.0)
    assert result == {"modified": len(matched)}
    ids = {doc["_id"] for doc in matched}
    after = engine.find(name)
    assert [doc["_id"] for doc in after if doc.get("touched") is True] == sorted(ids)
    assert all(doc["_version"] == (2 if doc["_id"] in ids else 1) for doc in after)


def test_simple_operators_compile_exactly() -> None:
    """The property tests above really exercise SQL, not the residual matcher."""
    exact = [
        {"a": 1},
        {"a": None},
        {"a.b": {"$gt": "2024-01-01", "$lte": [1]}},
        {"$or": [{"a": {"$in": [1, None, "x"]}}, {"b": {"$exists": False}}]},
        {"a": {"$nin": [None]}, "b": {"$ne": None}, "c": {"$lt": True}},
        {"a": {"$not": {"$gte": 3}}},
        {'q"q': {"$eq": {"b": 1, "a": 2}}},
        {"_id": {"$gt": 2.5}},
    ]
    for query in exact:
        assert compile_plan(compile_query(query)).exact, query
    inexact = [{"a": {"$regex": "x"}}, {"$or": [{"a": 1}, {"b": {"$size": 1}}]}, {"a": {"$in": list(range(501))}}]
    for query in inexact:
        plan = compile_plan(compile_query(query))
        assert not plan.exact, query
    assert compile_plan(compile_query({"a": 1, "b": {"$regex": "x"}})).where != "1"
