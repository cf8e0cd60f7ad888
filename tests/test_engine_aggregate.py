"""
Tests for aggregation pipelines (engine.md 5, 14).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.engine.aggregate import (
    ACCUMULATORS,
    STAGES,
    Prefix,
    compile_expression,
    compile_pipeline,
    group_identity,
)
from oxidb.engine.matcher import apply_find, compile_query
from oxidb.engine.values import deep_copy, json_equal
from oxidb.errors import InvalidPipelineError, InvalidQueryError, TooLargeError

Doc = dict[str, Any]


def no_lookup(collection: str, query: Doc) -> list[Doc]:
    raise AssertionError("unexpected lookup")


def run(pipeline: list[Any], docs: list[Doc]) -> list[Doc]:
    before = deep_copy(docs)
    result = compile_pipeline(pipeline).run(docs, no_lookup)
    assert json_equal(docs, before), "a stage mutated its input"
    return result


def same(actual: list[Doc], expected: list[Doc]) -> bool:
    return len(actual) == len(expected) and all(json_equal(a, e) for a, e in zip(actual, expected, strict=True))


ORDERS: list[Doc] = [
    {"_id": 1, "cust": "a", "amount": 10, "qty": 2, "tags": ["x", "y"], "addr": {"city": "P"}},
    {"_id": 2, "cust": "b", "amount": 5.5, "qty": 1, "tags": [], "addr": {"city": None}},
    {"_id": 3, "cust": "a", "amount": 4, "tags": ["z"], "addr": 7},
    {"_id": 4, "amount": "n/a", "qty": 3},
    {"_id": 5, "cust": None, "amount": 0.5, "qty": 1, "tags": None},
]


# --- expressions -------------------------------------------------------------------------

DOC = {"a": 6, "b": 2, "f": 1.5, "s": "x", "n": None, "t": True, "o": {"p": 4}}


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("$a", 6),
        ("$o.p", 4),
        ("$missing", None),
        ("$o.p.q", None),
        ("a", "a"),
        (5, 5),
        (None, None),
        ([1, "$a"], [1, "$a"]),
        ({"x": "$a"}, {"x": "$a"}),
        ({"$add": [1, 2], "$multiply": [2]}, {"$add": [1, 2], "$multiply": [2]}),
        ({"$literal": "$a"}, {"$literal": "$a"}),
        ({"$add": ["$a", "$b", 1]}, 9),
        ({"$add": []}, 0),
        ({"$add": ["$f", 0.5]}, 2),
        ({"$add": ["$f", 0.25]}, 1.75),
        ({"$add": ["$a", "$missing"]}, None),
        ({"$add": ["$a", "$n"]}, None),
        ({"$add": ["$a", "$t"]}, None),
        ({"$add": ["$a", "$s"]}, None),
        ({"$multiply": ["$a", "$b"]}, 12),
        ({"$multiply": []}, 1),
        ({"$multiply": ["$f", 2]}, 3),
        ({"$subtract": ["$a", "$b"]}, 4),
        ({"$subtract": ["$b", "$f"]}, 0.5),
        ({"$divide": ["$a", "$b"]}, 3),
        ({"$divide": ["$b", 4]}, 0.5),
        ({"$divide": ["$a", 0]}, None),
        ({"$divide": ["$a", 0.0]}, None),
        ({"$divide": ["$missing", 2]}, None),
        ({"$add": [{"$multiply": ["$a", 2]}, {"$subtract": [10, "$b"]}]}, 20),
        ({"$multiply": [1e308, 10]}, None),
    ],
)
def test_expressions(expression: Any, expected: Any) -> None:
    assert json_equal(compile_expression(expression)(DOC), expected)


@pytest.mark.parametrize(
    "expression, message",
    [
        ({"$add": 5}, "invalid pipeline: $add requires an array"),
        ({"$multiply": "x"}, "invalid pipeline: $multiply requires an array"),
        ({"$subtract": [1]}, "invalid pipeline: $subtract requires exactly 2 arguments"),
        ({"$subtract": 1}, "invalid pipeline: $subtract requires an array"),
        ({"$divide": [1, 2, 3]}, "invalid pipeline: $divide requires exactly 2 arguments"),
        ({"$add": [{"$divide": [1]}]}, "invalid pipeline: $divide requires exactly 2 arguments"),
    ],
)
def test_expression_errors(expression: Any, message: str) -> None:
    with pytest.raises(InvalidPipelineError) as info:
        compile_expression(expression)
    assert str(info.value) == message


# --- stages ---------------------------------------------------------------------------------


def test_match_uses_query_semantics() -> None:
    result = run([{"$match": {"amount": {"$gt": 4}}}], ORDERS)
    # cross-type range: the string "n/a" ranks above numbers
    assert [d["_id"] for d in result] == [1, 2, 4]


def test_group_sum_count_and_key_forms() -> None:
    result = run(
        [
            {
                "$group": {
                    "_id": "$cust",
                    "n": {"$sum": 1},
                    "total": {"$sum": "$amount"},
                    "c": {"$count": {}},
                }
            }
        ],
        ORDERS,
    )
    # missing and null share one group; "n/a" is not summed; first-appearance order
    assert same(
        result,
        [
            {"_id": "a", "n": 2, "total": 14, "c": 2},
            {"_id": "b", "n": 1, "total": 5.5, "c": 1},
            {"_id": None, "n": 2, "total": 0.5, "c": 2},
        ],
    )


@pytest.mark.parametrize(
    "accumulator, expected",
    [
        ({"$sum": "$v"}, 3.5),
        ({"$sum": "$none"}, 0),
        ({"$sum": 2}, 10),
        ({"$avg": "$v"}, 1.75),
        ({"$avg": "$none"}, None),
        ({"$min": "$v"}, 1),
        ({"$max": "$v"}, "zzz"),
        ({"$first": "$v"}, 1),
        ({"$last": "$v"}, None),
        ({"$push": "$v"}, [1, "2024-01-01", 2.5, "zzz", None]),
        ({"$count": "ignored"}, 5),
        ({"$push": {"$multiply": ["$v", 2]}}, [2, None, 5, None, None]),
    ],
)
def test_accumulators(accumulator: Doc, expected: Any) -> None:
    docs: list[Doc] = [
        {"_id": 1, "v": 1},
        {"_id": 2, "v": "2024-01-01"},
        {"_id": 3, "v": 2.5},
        {"_id": 4, "v": "zzz"},
        {"_id": 5},
    ]
    result = run([{"$group": {"_id": None, "r": accumulator}}], docs)
    assert same(result, [{"_id": None, "r": expected}])


def test_sum_and_avg_normalise_integral_results() -> None:
    docs: list[Doc] = [{"_id": 1, "v": 1.5}, {"_id": 2, "v": 0.5}, {"_id": 3, "v": True}]
    result = run([{"$group": {"_id": 0, "s": {"$sum": "$v"}, "a": {"$avg": "$v"}}}], docs)
    assert same(result, [{"_id": 0, "s": 2, "a": 1}])


def test_min_max_skip_null_and_keep_original_spelling() -> None:
    docs: list[Doc] = [
        {"_id": 1, "d": None},
        {"_id": 2, "d": "2024-01-15T00:00:00Z"},
        {"_id": 3, "d": "2024-01-15"},
        {"_id": 4, "d": "2023-01-01 10:00:00"},
        {"_id": 5, "d": False},
    ]
    result = run([{"$group": {"_id": 1, "lo": {"$min": "$d"}, "hi": {"$max": "$d"}}}], docs)
    assert same(result, [{"_id": 1, "lo": False, "hi": "2024-01-15T00:00:00Z"}])
    result = run([{"$group": {"_id": 1, "lo": {"$min": "$x"}, "hi": {"$max": "$x"}}}], docs)
    assert same(result, [{"_id": 1, "lo": None, "hi": None}])


def test_group_identity_rules() -> None:
    docs: list[Doc] = [
        {"_id": 1, "k": 1},
        {"_id": 2, "k": 1.0},
        {"_id": 3, "k": "2024-01-15"},
        {"_id": 4, "k": "2024-01-15T00:00:00Z"},
        {"_id": 5, "k": [1, 2]},
        {"_id": 6, "k": "[1,2]"},
        {"_id": 7, "k": {"a": 1, "b": 2}},
        {"_id": 8, "k": {"b": 2, "a": 1}},
        {"_id": 9, "k": 1},
        {"_id": 10, "k": True},
    ]
    result = run([{"$group": {"_id": "$k", "ids": {"$push": "$_id"}}}], docs)
    assert same(
        result,
        [
            {"_id": 1, "ids": [1, 9]},
            {"_id": 1.0, "ids": [2]},
            {"_id": "2024-01-15", "ids": [3, 4]},
            {"_id": [1, 2], "ids": [5, 6]},
            {"_id": {"a": 1, "b": 2}, "ids": [7, 8]},
            {"_id": True, "ids": [10]},
        ],
    )
    assert group_identity(1) != group_identity(1.0)
    assert group_identity(2.0) == group_identity(2.0)


def test_group_compound_and_expression_keys() -> None:
    result = run(
        [{"$group": {"_id": {"c": "$cust", "q": "$qty"}, "n": {"$sum": 1}}}],
        ORDERS[:3],
    )
    assert same(
        result,
        [
            {"_id": {"c": "a", "q": 2}, "n": 1},
            {"_id": {"c": "b", "q": 1}, "n": 1},
            {"_id": {"c": "a", "q": None}, "n": 1},
        ],
    )
    result = run([{"$group": {"_id": {"$multiply": ["$qty", 0]}, "n": {"$sum": 1}}}], ORDERS)
    assert same(result, [{"_id": 0, "n": 4}, {"_id": None, "n": 1}])
    result = run([{"$group": {"_id": "literal", "n": {"$sum": 1}}}], ORDERS)
    assert same(result, [{"_id": "literal", "n": 5}])
    result = run([{"$group": {"_id": {"$foo": 1}, "n": {"$sum": 1}}}], ORDERS)
    assert same(result, [{"_id": {"$foo": 1}, "n": 5}])


def test_group_and_count_on_empty_input() -> None:
    assert run([{"$group": {"_id": None, "n": {"$sum": 1}}}], []) == []
    assert run([{"$count": "total"}], []) == [{"total": 0}]
    assert run([{"$match": {"nope": 1}}, {"$count": "n"}], ORDERS) == [{"n": 0}]
    assert run([{"$count": "n"}], ORDERS) == [{"n": 5}]


def test_sort_skip_limit() -> None:
    result = run([{"$sort": {"qty": -1, "_id": 1}}, {"$skip": 1}, {"$limit": 2}], ORDERS)
    assert [d["_id"] for d in result] == [1, 2]
    # stable, missing sorts as null
    assert [d["_id"] for d in run([{"$sort": {"qty": 1}}], ORDERS)] == [3, 2, 5, 1, 4]
    # objects-only paths: "tags.0" never indexes the array
    assert [d["_id"] for d in run([{"$sort": {"tags.0": -1}}], ORDERS)] == [1, 2, 3, 4, 5]
    assert run([{"$limit": 0}], ORDERS) == []
    assert run([{"$skip": 0}], ORDERS) == ORDERS
    assert run([{"$sort": {}}], ORDERS) == ORDERS


@pytest.mark.parametrize(
    "projection, expected",
    [
        ({"cust": 1}, [{"_id": 1, "cust": "a"}, {"_id": 4}, {"_id": 5, "cust": None}]),
        ({"cust": True, "_id": 0}, [{"cust": "a"}, {}, {"cust": None}]),
        ({"_id": 1}, None),
        ({"_id": 0}, [{k: v for k, v in d.items() if k != "_id"} for d in [ORDERS[0], ORDERS[3], ORDERS[4]]]),
        (
            {"tags": 0, "addr": False},
            [
                {"_id": 1, "cust": "a", "amount": 10, "qty": 2},
                {"_id": 4, "amount": "n/a", "qty": 3},
                {"_id": 5, "cust": None, "amount": 0.5, "qty": 1},
            ],
        ),
        ({"addr.city": 1}, [{"_id": 1, "addr.city": "P"}, {"_id": 4}, {"_id": 5}]),
        ({"addr.city": 0}, None),
        (
            {"x": "$amount", "qty": 1},
            [{"_id": 1, "x": 10, "qty": 2}, {"_id": 4, "x": "n/a", "qty": 3}, {"_id": 5, "x": 0.5, "qty": 1}],
        ),
        ({"x": "$nope"}, [{"_id": 1, "x": None}, {"_id": 4, "x": None}, {"_id": 5, "x": None}]),
        ({"two": 2, "text": "text", "f": 1.0}, [{"_id": i, "two": 2, "text": "text", "f": 1.0} for i in (1, 4, 5)]),
        ({"_id": "$cust", "qty": 1}, [{"_id": "a", "qty": 2}, {"_id": None, "qty": 3}, {"_id": None, "qty": 1}]),
        ({"qty": 1, "amount": 0}, [{"_id": 1, "qty": 2}, {"_id": 4, "qty": 3}, {"_id": 5, "qty": 1}]),
        ({"t": {"$multiply": ["$qty", "$amount"]}, "_id": False}, [{"t": 20}, {"t": None}, {"t": 0.5}]),
        ({}, None),
    ],
)
def test_project(projection: Doc, expected: list[Doc] | None) -> None:
    docs = [ORDERS[0], ORDERS[3], ORDERS[4]]
    result = run([{"$project": projection}], docs)
    assert same(result, docs if expected is None else expected), result


def test_project_exclusion_removes_literal_flat_keys() -> None:
    docs: list[Doc] = [{"_id": 1, "a": {"b": 1}}]
    result = run([{"$project": {"a.b": 1}}, {"$project": {"a.b": 0}}], docs)
    assert result == [{"_id": 1}]


def test_unwind() -> None:
    docs: list[Doc] = [
        {"_id": 1, "t": ["a", "b"]},
        {"_id": 2, "t": []},
        {"_id": 3},
        {"_id": 4, "t": None},
        {"_id": 5, "t": "s"},
        {"_id": 6, "n": {"t": [1, 2]}},
    ]
    plain = run([{"$unwind": "$t"}], docs)
    assert same(plain, [{"_id": 1, "t": "a"}, {"_id": 1, "t": "b"}, {"_id": 5, "t": "s"}])
    kept = run([{"$unwind": {"path": "$t", "preserveNullAndEmptyArrays": True}}], docs)
    assert same(kept, [{"_id": 1, "t": "a"}, {"_id": 1, "t": "b"}] + docs[1:])
    same_as_plain = run([{"$unwind": {"path": "$t", "preserveNullAndEmptyArrays": 1}}], docs)
    assert same(same_as_plain, plain)
    nested = run([{"$unwind": "$n.t"}], docs)
    assert same(nested, [{"_id": 6, "n": {"t": 1}}, {"_id": 6, "n": {"t": 2}}])


def test_add_fields() -> None:
    docs: list[Doc] = [{"_id": 1, "a": 2, "o": 5}, {"_id": 2}]
    result = run(
        [{"$addFields": {"b": {"$multiply": ["$a", 3]}, "c": {"$add": ["$b", 1]}, "o.x": "$a", "n.m": "lit"}}],
        docs,
    )
    assert same(
        result,
        [
            {"_id": 1, "a": 2, "o": {"x": 2}, "b": 6, "c": 7, "n": {"m": "lit"}},
            {"_id": 2, "b": None, "c": None, "o": {"x": None}, "n": {"m": "lit"}},
        ],
    )


def test_lookup() -> None:
    customers: list[Doc] = [
        {"_id": 1, "cid": "a", "name": "Ann"},
        {"_id": 2, "cid": "b", "name": "Bob"},
        {"_id": 3, "cid": None, "name": "Nil"},
        {"_id": 4, "name": "Missing"},
    ]
    calls: list[tuple[str, Doc]] = []

    def lookup(collection: str, query: Doc) -> list[Doc]:
        calls.append((collection, query))
        assert collection == "customers"
        return apply_find(customers, query)

    pipeline = compile_pipeline(
        [{"$lookup": {"from": "customers", "localField": "cust", "foreignField": "cid", "as": "c.info"}}]
    )
    result = pipeline.run(ORDERS, lookup)
    names = [[c["name"] for c in doc["c"]["info"]] for doc in result]
    # a missing or null local value matches only explicit nulls
    assert names == [["Ann"], ["Bob"], ["Ann"], ["Nil"], ["Nil"]]
    # identical local values share one lookup per run
    assert len(calls) == 3
    # an operator object as local value is a query
    docs: list[Doc] = [{"_id": 1, "cust": {"$in": ["a", "b"]}}, {"_id": 2, "cust": "zz"}]
    spec = {"$lookup": {"from": "customers", "localField": "cust", "foreignField": "cid", "as": "m"}}
    result = compile_pipeline([spec]).run(docs, lookup)
    assert [len(d["m"]) for d in result] == [2, 0]
    with pytest.raises(InvalidQueryError):
        compile_pipeline([spec]).run([{"_id": 1, "cust": {"$bad": 1}}], lookup)


@pytest.mark.parametrize(
    "pipeline, error",
    [
        ({}, "invalid pipeline: pipeline must be an array"),
        (None, "invalid pipeline: pipeline must be an array"),
        ([5], "invalid pipeline: each pipeline stage must be an object"),
        ([{}], "invalid pipeline: each pipeline stage must have exactly one key"),
        ([{"$match": {}, "$limit": 1}], "invalid pipeline: each pipeline stage must have exactly one key"),
        ([{"$out": "x"}], "invalid pipeline: unknown stage: $out"),
        ([{"$match": {}}, {"$bogus": 1}], "invalid pipeline: unknown stage: $bogus"),
        ([{"$match": 5}], "invalid query: query must be a JSON object"),
        ([{"$match": {"a": {"$foo": 1}}}], "invalid query: unknown operator: $foo"),
        ([{"$group": {"n": {"$sum": 1}}}], "invalid pipeline: $group requires '_id' field"),
        ([{"$group": 5}], "invalid pipeline: $group must be an object"),
        ([{"$group": {"_id": None, "n": 1}}], "invalid pipeline: accumulator must be an object"),
        ([{"$group": {"_id": None, "n": {}}}], "invalid pipeline: accumulator must have exactly one operator"),
        (
            [{"$group": {"_id": None, "n": {"$sum": 1, "$avg": 1}}}],
            "invalid pipeline: accumulator must have exactly one operator",
        ),
        ([{"$group": {"_id": None, "n": {"$stdDev": 1}}}], "invalid pipeline: unknown accumulator: $stdDev"),
        ([{"$group": {"_id": {"$add": 1}}}], "invalid pipeline: $add requires an array"),
        (
            [{"$group": {"_id": None, "n": {"$sum": {"$divide": [1]}}}}],
            "invalid pipeline: $divide requires exactly 2 arguments",
        ),
        ([{"$sort": [1]}], "invalid pipeline: $sort must be an object"),
        ([{"$sort": {"a": 0}}], "invalid pipeline: sort direction must be 1 or -1"),
        ([{"$sort": {"a": 1.0}}], "invalid pipeline: sort direction must be 1 or -1"),
        ([{"$skip": -1}], "invalid pipeline: $skip must be a non-negative integer"),
        ([{"$skip": 1.0}], "invalid pipeline: $skip must be a non-negative integer"),
        ([{"$skip": "1"}], "invalid pipeline: $skip must be a non-negative integer"),
        ([{"$limit": -1}], "invalid pipeline: $limit must be a positive integer"),
        ([{"$limit": True}], "invalid pipeline: $limit must be a positive integer"),
        ([{"$project": 1}], "invalid pipeline: $project must be an object"),
        ([{"$project": {"a": {"$add": 3}}}], "invalid pipeline: $add requires an array"),
        ([{"$count": 1}], "invalid pipeline: $count must be a string"),
        ([{"$unwind": "t"}], "invalid pipeline: $unwind must be a string or object"),
        ([{"$unwind": 5}], "invalid pipeline: $unwind must be a string or object"),
        ([{"$unwind": {"path": "t"}}], "invalid pipeline: $unwind path must start with $"),
        ([{"$unwind": {}}], "invalid pipeline: $unwind requires 'path' string"),
        ([{"$unwind": {"path": 1}}], "invalid pipeline: $unwind requires 'path' string"),
        ([{"$addFields": []}], "invalid pipeline: $addFields must be an object"),
        ([{"$addFields": {"a": {"$subtract": [1]}}}], "invalid pipeline: $subtract requires exactly 2 arguments"),
        (
            [{"$lookup": {"localField": "a", "foreignField": "b", "as": "c"}}],
            "invalid pipeline: $lookup requires 'from' string",
        ),
        (
            [{"$lookup": {"from": "x", "foreignField": "b", "as": "c"}}],
            "invalid pipeline: $lookup requires 'localField' string",
        ),
        (
            [{"$lookup": {"from": "x", "localField": "a", "as": "c"}}],
            "invalid pipeline: $lookup requires 'foreignField' string",
        ),
        (
            [{"$lookup": {"from": "x", "localField": "a", "foreignField": "b", "as": 1}}],
            "invalid pipeline: $lookup requires 'as' string",
        ),
        ([{"$lookup": "x"}], "invalid pipeline: $lookup requires 'from' string"),
    ],
)
def test_pipeline_errors(pipeline: Any, error: str) -> None:
    with pytest.raises((InvalidPipelineError, InvalidQueryError)) as info:
        compile_pipeline(pipeline)
    assert str(info.value) == error


def test_errors_are_raised_before_any_document_is_read() -> None:
    with pytest.raises(InvalidPipelineError):
        compile_pipeline([{"$match": {}}, {"$group": {"_id": None, "n": {"$nope": 1}}}])


def test_pipeline_depth_is_bounded() -> None:
    value: Any = 1
    for _ in range(120):
        value = [value]
    with pytest.raises(TooLargeError):
        compile_pipeline([{"$addFields": {"a": value}}])


def test_stage_and_accumulator_lists() -> None:
    assert STAGES == {
        "$match", "$group", "$sort", "$skip", "$limit", "$project",
        "$count", "$unwind", "$addFields", "$lookup",
    }  # fmt: skip
    assert ACCUMULATORS == {"$sum", "$avg", "$min", "$max", "$count", "$first", "$last", "$push"}


# --- pushdown prefix ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pipeline, expected",
    [
        ([], Prefix(None, None, 0, None, 0)),
        ([{"$group": {"_id": None}}], Prefix(None, None, 0, None, 0)),
        ([{"$match": {"a": 1}}], Prefix({"a": 1}, None, 0, None, 1)),
        (
            [{"$match": {"a": 1}}, {"$match": {"b": 2}}, {"$count": "n"}],
            Prefix({"$and": [{"a": 1}, {"b": 2}]}, None, 0, None, 2),
        ),
        (
            [{"$match": {"a": 1}}, {"$sort": {"b": -1}}, {"$skip": 2}, {"$limit": 5}, {"$skip": 1}],
            Prefix({"a": 1}, (("b", -1),), 3, 4, 5),
        ),
        ([{"$limit": 5}, {"$skip": 7}], Prefix(None, None, 7, 0, 2)),
        ([{"$limit": 5}, {"$limit": 3}, {"$match": {"a": 1}}], Prefix(None, None, 0, 3, 2)),
        ([{"$sort": {"a": 1}}, {"$sort": {"b": 1}}], Prefix(None, (("a", 1),), 0, None, 1)),
        ([{"$skip": 1}, {"$sort": {"b": 1}}], Prefix(None, None, 1, None, 1)),
        ([{"$sort": {"a": 1}}, {"$match": {"b": 1}}], Prefix(None, (("a", 1),), 0, None, 1)),
    ],
)
def test_prefix(pipeline: list[Any], expected: Prefix) -> None:
    compiled = compile_pipeline(pipeline)
    assert compiled.prefix == expected
    assert compiled.leading_match == expected.query
    matcher = compiled.prefix.matcher
    if expected.query is None:
        assert matcher is None
    else:
        assert matcher is not None
        assert matcher.matches({"a": 1, "b": 2}) == compile_query(expected.query).matches({"a": 1, "b": 2})


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([1.0, 2.5]),
    st.sampled_from(["a", "b", "2024-01-15", "2024-01-15T00:00:00Z"]),
    st.lists(st.integers(0, 2), max_size=2),
    st.fixed_dictionaries({"k": st.integers(0, 2)}),
)
_docs = st.lists(
    st.dictionaries(st.sampled_from(["x", "y"]), _values, max_size=2), max_size=8
).map(lambda docs: [{"_id": i + 1, **doc} for i, doc in enumerate(docs)])
_conditions = st.one_of(
    _values,
    st.builds(lambda op, v: {op: v}, st.sampled_from(["$gt", "$lte", "$ne", "$eq"]), _values),
    st.builds(lambda items: {"$in": items}, st.lists(_values, max_size=3)),
    st.builds(lambda flag: {"$exists": flag}, st.booleans()),
)
_queries = st.dictionaries(st.sampled_from(["x", "y"]), _conditions, max_size=2)
_prefix_stages = st.lists(
    st.one_of(
        st.builds(lambda q: {"$match": q}, _queries),
        st.builds(
            lambda f, d: {"$sort": {f: d}}, st.sampled_from(["x", "y", "x.k", "_id"]), st.sampled_from([1, -1])
        ),
        st.builds(lambda n: {"$skip": n}, st.integers(0, 4)),
        st.builds(lambda n: {"$limit": n}, st.integers(0, 6)),
    ),
    max_size=4,
)


@given(_docs, _queries)
@settings(max_examples=200, deadline=None)
def test_match_stage_equals_matcher(docs: list[Doc], query: Doc) -> None:
    matcher = compile_query(query)
    expected = [doc for doc in docs if matcher.matches(doc)]
    assert run([{"$match": query}], docs) == expected
    assert run([{"$match": query}, {"$count": "n"}], docs) == [{"n": len(expected)}]


@given(_docs, _prefix_stages, st.booleans())
@settings(max_examples=200, deadline=None)
def test_prefix_pushdown_is_equivalent(docs: list[Doc], stages: list[Doc], tail: bool) -> None:
    pipeline = stages + ([{"$group": {"_id": "$x", "ids": {"$push": "$_id"}}}] if tail else [])
    compiled = compile_pipeline(pipeline)
    full = compiled.run(docs, no_lookup)
    prefix = compiled.prefix
    pushed = compiled.run(prefix.apply(docs), no_lookup, skip_stages=prefix.stages)
    assert same(pushed, full)
