"""
Tests for the reference query matcher and find (engine.md 2.2-2.6, 14).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.engine.matcher import (
    OPERATORS,
    And,
    ElemMatch,
    FieldOp,
    Matcher,
    Or,
    Regex,
    apply_find,
    compile_query,
    compile_sort,
    parse_sort,
)
from oxidb.errors import InvalidQueryError, TooLargeError


def matches(query: dict[str, Any], doc: dict[str, Any]) -> bool:
    return compile_query(query).matches(doc)


# (query, document, expected)
CASES: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    # empty query, implicit AND
    ({}, {}, True),
    ({}, {"a": 1}, True),
    ({"a": 1, "b": 2}, {"a": 1, "b": 2}, True),
    ({"a": 1, "b": 2}, {"a": 1, "b": 3}, False),
    # equality: numbers, dates, null, missing
    ({"a": 1}, {"a": 1.0}, True),
    ({"a": 1.0}, {"a": 1}, True),
    ({"a": 1}, {"a": True}, False),
    ({"a": True}, {"a": 1}, False),
    ({"a": "1"}, {"a": 1}, False),
    ({"_id": 3}, {"_id": 3}, True),
    ({"_id": "3"}, {"_id": 3}, False),
    ({"d": "2024-01-15"}, {"d": "2024-01-15T00:00:00Z"}, True),
    ({"d": "2024-01-15 00:00:00"}, {"d": "2024-01-15"}, True),
    ({"d": "2024-01-15T01:00:00+01:00"}, {"d": "2024-01-15"}, True),
    ({"x": None}, {"x": None}, True),
    ({"x": None}, {}, False),
    ({"x": {"$eq": None}}, {}, False),
    # arrays and objects: whole-value JSON-text equality, no element matching
    ({"tags": "red"}, {"tags": ["red", "blue"]}, False),
    ({"tags": ["red", "blue"]}, {"tags": ["red", "blue"]}, True),
    ({"tags": ["blue", "red"]}, {"tags": ["red", "blue"]}, False),
    ({"tags": "[1,2]"}, {"tags": [1, 2]}, True),
    ({"o": {"a": 1, "b": 2}}, {"o": {"b": 2, "a": 1}}, True),
    ({"o": {"a": 1}}, {"o": {"a": 1, "b": 2}}, False),
    ({"o": {}}, {"o": {}}, True),
    ({"o": {"$eq": {"$gt": 1}}}, {"o": {"$gt": 1}}, True),
    ({"items": {"k": 1}}, {"items": [{"k": 1}]}, False),
    # dotted paths: objects only
    ({"a.b": 1}, {"a": {"b": 1}}, True),
    ({"a.b": 1}, {"a": [{"b": 1}]}, False),
    ({"tags.0": "x"}, {"tags": ["x"]}, False),
    ({"a.b": {"$exists": False}}, {"a": 5}, True),
    ({"a.b.c": None}, {"a": {"b": {"c": None}}}, True),
    # $ne and missing fields (v0.15: missing fails $ne)
    ({"x": {"$ne": 5}}, {"x": 4}, True),
    ({"x": {"$ne": 5}}, {"x": 5.0}, False),
    ({"x": {"$ne": 5}}, {"x": None}, True),
    ({"x": {"$ne": 5}}, {}, False),
    ({"x": {"$ne": None}}, {}, False),
    ({"x": {"$ne": None}}, {"x": None}, False),
    # ranges, across types
    ({"age": {"$gt": 5}}, {"age": 6}, True),
    ({"age": {"$gt": 5}}, {"age": 5}, False),
    ({"age": {"$gte": 5}}, {"age": 5.0}, True),
    ({"age": {"$gt": 5}}, {"age": "young"}, True),
    ({"age": {"$gt": 5}}, {"age": "2024-01-01"}, True),
    ({"age": {"$gt": 5}}, {"age": [1]}, True),
    ({"age": {"$gt": 5}}, {"age": True}, False),
    ({"age": {"$gt": 5}}, {}, False),
    ({"x": {"$lt": 5}}, {"x": None}, True),
    ({"x": {"$lt": 5}}, {"x": False}, True),
    ({"x": {"$lt": 5}}, {"x": True}, True),
    ({"x": {"$lte": 5}}, {"x": 5}, True),
    ({"x": {"$lt": 5}}, {}, False),
    ({"age": {"$gte": 18, "$lt": 65}}, {"age": 30}, True),
    ({"age": {"$gte": 18, "$lt": 65}}, {"age": 65}, False),
    ({"age": {"$gt": 10, "$lt": 5}}, {"age": 7}, False),
    ({"age": {"$gt": 10, "$gte": 5}}, {"age": 7}, False),
    ({"d": {"$gte": "2024-01-01"}}, {"d": "zebra"}, True),
    ({"d": {"$gte": "2024-01-01"}}, {"d": "2023-12-31"}, False),
    ({"d": {"$gte": "2024-01-01"}}, {"d": "2024-01-01T00:00:00Z"}, True),
    ({"d": {"$lt": "2024-01-01"}}, {"d": 99999}, True),
    ({"s": {"$gt": "Z"}}, {"s": [1, 2]}, True),
    ({"s": {"$lt": "a"}}, {"s": [1, 2]}, True),
    ({"s": {"$gt": "a"}}, {"s": "b"}, True),
    ({"s": {"$gt": "a"}}, {"s": "B"}, False),
    # $in
    ({"x": {"$in": [1, 2]}}, {"x": 2.0}, True),
    ({"x": {"$in": [1, 2]}}, {"x": 3}, False),
    ({"x": {"$in": []}}, {"x": 1}, False),
    ({"x": {"$in": [None]}}, {"x": None}, True),
    ({"x": {"$in": [None]}}, {}, False),
    ({"x": {"$in": ["2024-01-15"]}}, {"x": "2024-01-15 00:00:00"}, True),
    ({"x": {"$in": [[1, 2]]}}, {"x": [1, 2]}, True),
    ({"x": {"$in": [1]}}, {"x": [1]}, False),
    # $exists
    ({"x": {"$exists": True}}, {"x": None}, True),
    ({"x": {"$exists": True}}, {}, False),
    ({"x": {"$exists": False}}, {}, True),
    ({"x": {"$exists": False}}, {"x": 0}, False),
    ({"x": {"$exists": True}}, {"x": [1]}, True),
    # $regex
    ({"n": {"$regex": "li"}}, {"n": "Alice"}, True),
    ({"n": {"$regex": "^ali"}}, {"n": "Alice"}, False),
    ({"n": {"$regex": "^ali", "$options": "i"}}, {"n": "Alice"}, True),
    ({"n": {"$regex": "^ali", "$options": "mxi"}}, {"n": "Alice"}, True),
    ({"n": {"$regex": "^ali", "$options": "m"}}, {"n": "Alice"}, False),
    ({"n": {"$options": "i", "$regex": "^ALI"}}, {"n": "alice"}, True),
    ({"n": {"$regex": "^ali", "$options": 5}}, {"n": "Alice"}, False),
    ({"n": {"$regex": "1"}}, {"n": 1}, False),
    ({"n": {"$regex": "1"}}, {"n": ["1"]}, False),
    ({"n": {"$regex": "."}}, {"n": None}, False),
    ({"n": {"$regex": "."}}, {}, False),
    ({"n": {"$regex": "^2024"}}, {"n": "2024-01-15"}, True),
    ({"n": {"$options": "i"}}, {}, True),
    ({"n": {"$options": "i"}}, {"n": 5}, True),
    # $and / $or
    ({"$and": []}, {"a": 1}, True),
    ({"$or": []}, {"a": 1}, False),
    ({"$or": [{"a": 1}, {"b": 2}]}, {"b": 2}, True),
    ({"$or": [{"a": 1}, {"b": 2}]}, {"b": 3}, False),
    ({"$and": [{"a": 1}, {"b": 2}]}, {"a": 1, "b": 2}, True),
    ({"$and": [{"a": 1}, {"b": 2}]}, {"a": 1}, False),
    ({"$or": [{"a": {"$gt": 1}}], "b": 1}, {"a": 2, "b": 1}, True),
    ({"$and": [{"$or": [{"a": 1}, {"a": 2}]}, {"b": {"$exists": False}}]}, {"a": 2}, True),
    ({"$or": [{}]}, {"z": 1}, True),
    # unknown top-level $ keys are field names (v0.15)
    ({"$nor": [{"a": 1}]}, {"a": 2}, False),
    ({"$where": "1"}, {"a": 2}, False),
    ({"$nor": 1}, {"$nor": 1}, True),
    # extensions: $nin
    ({"x": {"$nin": [1, 2]}}, {"x": 3}, True),
    ({"x": {"$nin": [1, 2]}}, {"x": 1.0}, False),
    ({"x": {"$nin": [1, 2]}}, {}, True),
    ({"x": {"$nin": [None]}}, {}, False),
    ({"x": {"$nin": [None]}}, {"x": None}, False),
    ({"x": {"$nin": []}}, {}, True),
    # $not
    ({"x": {"$not": {"$gt": 5}}}, {"x": 3}, True),
    ({"x": {"$not": {"$gt": 5}}}, {"x": 7}, False),
    ({"x": {"$not": {"$gt": 5}}}, {}, True),
    ({"x": {"$not": {"$gt": 1, "$lt": 5}}}, {"x": 7}, True),
    ({"x": {"$not": {"$gt": 1, "$lt": 5}}}, {"x": 3}, False),
    ({"x": {"$not": {"$regex": "^a", "$options": "i"}}}, {"x": "Abc"}, False),
    ({"x": {"$not": {"$regex": "^a", "$options": "i"}}}, {"x": "bcd"}, True),
    # $all
    ({"t": {"$all": ["a", "b"]}}, {"t": ["b", "c", "a"]}, True),
    ({"t": {"$all": ["a", "b"]}}, {"t": ["a", "c"]}, False),
    ({"t": {"$all": [1]}}, {"t": [1.0, 2]}, True),
    ({"t": {"$all": []}}, {"t": ["a"]}, False),
    ({"t": {"$all": ["a"]}}, {"t": "a"}, True),
    ({"t": {"$all": ["a", "b"]}}, {"t": "a"}, False),
    ({"t": {"$all": [["a", "b"]]}}, {"t": ["a", "b"]}, True),
    ({"t": {"$all": ["a"]}}, {}, False),
    # $elemMatch
    ({"s": {"$elemMatch": {"$gte": 80, "$lt": 85}}}, {"s": [70, 82, 90]}, True),
    ({"s": {"$elemMatch": {"$gte": 80, "$lt": 85}}}, {"s": [70, 90]}, False),
    ({"s": {"$elemMatch": {"$gte": 80}}}, {"s": 82}, False),
    ({"s": {"$elemMatch": {"$gte": 80}}}, {}, False),
    ({"i": {"$elemMatch": {"k": 1, "v": {"$gt": 2}}}}, {"i": [{"k": 1, "v": 1}, {"k": 1, "v": 3}]}, True),
    ({"i": {"$elemMatch": {"k": 1, "v": {"$gt": 2}}}}, {"i": [{"k": 1, "v": 1}, {"k": 2, "v": 3}]}, False),
    ({"i": {"$elemMatch": {"$or": [{"k": 5}, {"v": 5}]}}}, {"i": [1, {"v": 5}]}, True),
    ({"i": {"$elemMatch": {}}}, {"i": [1, 2]}, False),
    ({"i": {"$elemMatch": {}}}, {"i": [1, {}]}, True),
    # $size
    ({"t": {"$size": 2}}, {"t": [1, 2]}, True),
    ({"t": {"$size": 2}}, {"t": [1]}, False),
    ({"t": {"$size": 0}}, {"t": []}, True),
    ({"t": {"$size": 1}}, {"t": "a"}, False),
    ({"t": {"$size": 0}}, {}, False),
    # $type
    ({"v": {"$type": "string"}}, {"v": "x"}, True),
    ({"v": {"$type": "string"}}, {"v": "2024-01-15"}, True),
    ({"v": {"$type": "date"}}, {"v": "2024-01-15"}, True),
    ({"v": {"$type": "date"}}, {"v": "x"}, False),
    ({"v": {"$type": "number"}}, {"v": 1.5}, True),
    ({"v": {"$type": "number"}}, {"v": True}, False),
    ({"v": {"$type": "int"}}, {"v": 1}, True),
    ({"v": {"$type": "int"}}, {"v": 1.0}, False),
    ({"v": {"$type": "double"}}, {"v": 1.0}, True),
    ({"v": {"$type": "bool"}}, {"v": False}, True),
    ({"v": {"$type": "null"}}, {"v": None}, True),
    ({"v": {"$type": "null"}}, {}, False),
    ({"v": {"$type": "array"}}, {"v": []}, True),
    ({"v": {"$type": "object"}}, {"v": {}}, True),
    ({"v": {"$type": ["string", "null"]}}, {"v": None}, True),
    ({"v": {"$type": ["string", "null"]}}, {"v": 1}, False),
]


@pytest.mark.parametrize("query, doc, expected", CASES)
def test_match_table(query: dict[str, Any], doc: dict[str, Any], expected: bool) -> None:
    assert matches(query, doc) is expected


@pytest.mark.parametrize(
    "query, message",
    [
        ([], "invalid query: query must be a JSON object"),
        ("x", "invalid query: query must be a JSON object"),
        (None, "invalid query: query must be a JSON object"),
        ({"$and": {}}, "invalid query: $and must be an array"),
        ({"$or": "x"}, "invalid query: $or must be an array"),
        ({"$and": [5]}, "invalid query: query must be a JSON object"),
        ({"$or": [{"a": {"$bogus": 1}}]}, "invalid query: unknown operator: $bogus"),
        ({"a": {"$foo": 1}}, "invalid query: unknown operator: $foo"),
        ({"a": {"$gt": 1, "b": 2}}, "invalid query: unknown operator: b"),
        ({"a": {"$mod": [2, 0]}}, "invalid query: unknown operator: $mod"),
        ({"a": {"$text": "x"}}, "invalid query: unknown operator: $text"),
        ({"a": {"$near": [0, 0]}}, "invalid query: unknown operator: $near"),
        ({"a": {"$in": 5}}, "invalid query: $in must be an array"),
        ({"a": {"$in": {"x": 1}}}, "invalid query: $in must be an array"),
        ({"a": {"$exists": 1}}, "invalid query: $exists must be a boolean"),
        ({"a": {"$exists": "true"}}, "invalid query: $exists must be a boolean"),
        ({"a": {"$regex": 5}}, "invalid query: $regex must be a string"),
        ({"a": {"$regex": "(", "$options": "i"}}, "invalid query: invalid regex: "),
        ({"a": {"$regex": "(?=x)"}}, "invalid query: invalid regex: look-around is not supported"),
        ({"a": {"$regex": "(a)\\1"}}, "invalid query: invalid regex: back-references are not supported"),
        ({"a": {"$regex": "a" * 5000}}, "invalid query: invalid regex: pattern longer than 4096"),
        ({"a": {"$nin": 5}}, "invalid query: $nin must be an array"),
        ({"a": {"$all": 5}}, "invalid query: $all must be an array"),
        ({"a": {"$not": 5}}, "invalid query: $not must be an object"),
        ({"a": {"$not": {}}}, "invalid query: $not must contain at least one operator"),
        ({"a": {"$not": {"$options": "i"}}}, "invalid query: $not must contain at least one operator"),
        ({"a": {"$not": {"x": 1}}}, "invalid query: unknown operator: x"),
        ({"a": {"$elemMatch": 5}}, "invalid query: $elemMatch must be an object"),
        ({"a": {"$elemMatch": {"$gt": 1, "b": 1}}}, "invalid query: unknown operator: b"),
        ({"a": {"$elemMatch": {"b": {"$zz": 1}}}}, "invalid query: unknown operator: $zz"),
        ({"a": {"$size": -1}}, "invalid query: $size must be a non-negative integer"),
        ({"a": {"$size": 1.0}}, "invalid query: $size must be a non-negative integer"),
        ({"a": {"$size": True}}, "invalid query: $size must be a non-negative integer"),
        ({"a": {"$type": 2}}, "invalid query: $type must be a string or an array of strings"),
        ({"a": {"$type": []}}, "invalid query: $type must be a string or an array of strings"),
        ({"a": {"$type": "decimal"}}, "invalid query: $type: unknown type 'decimal'"),
    ],
)
def test_query_errors(query: Any, message: str) -> None:
    with pytest.raises(InvalidQueryError) as info:
        compile_query(query)
    assert str(info.value).startswith(message)


def test_first_error_in_key_order_wins() -> None:
    with pytest.raises(InvalidQueryError, match="unknown operator: \\$foo"):
        compile_query({"a": {"$foo": 1, "$in": 5}})
    with pytest.raises(InvalidQueryError, match="\\$in must be an array"):
        compile_query({"a": {"$in": 5, "$foo": 1}})


def test_errors_are_eager_even_in_unreached_branches() -> None:
    with pytest.raises(InvalidQueryError):
        compile_query({"$or": [{}, {"a": {"$regex": "["}}]})


def test_query_depth_is_bounded() -> None:
    query: dict[str, Any] = {"a": 1}
    for _ in range(60):
        query = {"$and": [query]}
    with pytest.raises(TooLargeError):
        compile_query(query)


def test_tree_shape() -> None:
    matcher = compile_query(
        {
            "a": 1,
            "b": {"$gte": 2, "$lt": 9},
            "$or": [{"c": {"$in": [1, 2]}}, {"d": {"$regex": "x", "$options": "i"}}],
            "e": {"$not": {"$size": 2}},
            "f": {"$elemMatch": {"$gt": 1}},
            "g": {"$elemMatch": {"k": 1}},
        }
    )
    root = matcher.root
    assert isinstance(root, And)
    a, b_gte, b_lt, either, e, f, g = root.children
    assert isinstance(a, FieldOp) and (a.path, a.op, a.operand) == ("a", "$eq", 1)
    assert isinstance(b_gte, FieldOp) and (b_gte.op, b_gte.operand) == ("$gte", 2)
    assert isinstance(b_lt, FieldOp) and (b_lt.op, b_lt.operand) == ("$lt", 9)
    assert isinstance(either, Or)
    first, second = either.children
    assert isinstance(first, And) and isinstance(second, And)
    c = first.children[0]
    assert isinstance(c, FieldOp) and (c.op, c.operand) == ("$in", (1, 2))
    d = second.children[0]
    assert isinstance(d, FieldOp) and isinstance(d.operand, Regex)
    assert d.operand.pattern == "x" and d.operand.ignore_case
    assert isinstance(e, FieldOp) and e.op == "$not"
    assert [(op.path, op.op, op.operand) for op in e.operand] == [("e", "$size", 2)]
    assert isinstance(f, FieldOp) and isinstance(f.operand, ElemMatch)
    assert f.operand.query is None and f.operand.ops is not None
    assert isinstance(g, FieldOp) and g.operand.ops is None and isinstance(g.operand.query, And)
    assert a.test(True, 1.0) and not a.test(False, None)
    assert compile_query({}).matches_all and not matcher.matches_all
    assert OPERATORS >= {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$exists", "$regex"}


def test_options_only_field_adds_no_condition() -> None:
    assert compile_query({"a": {"$options": "i"}}).root == And(())


def test_matcher_is_reusable_and_equal_by_value() -> None:
    assert compile_query({"a": {"$gt": 1}}) == compile_query({"a": {"$gt": 1}})
    assert isinstance(compile_query({}), Matcher)


# --- sort / skip / limit ------------------------------------------------------------------


@pytest.mark.parametrize("sort", [None, {}, [], "a", 1])
def test_sort_ignored(sort: Any) -> None:
    assert parse_sort(sort) is None
    assert compile_sort(sort) is None


@pytest.mark.parametrize("direction", [0, 2, -2, 1.0, -1.0, True, "1", "asc", None])
def test_sort_direction_errors(direction: Any) -> None:
    with pytest.raises(InvalidQueryError) as info:
        parse_sort({"a": direction})
    assert str(info.value) == "invalid query: sort direction must be 1 (asc) or -1 (desc)"


def _ids(docs: list[dict[str, Any]]) -> list[Any]:
    return [doc["_id"] for doc in docs]


MIXED: list[dict[str, Any]] = [
    {"_id": 1, "v": "b"},
    {"_id": 2, "v": 10},
    {"_id": 3},
    {"_id": 4, "v": None},
    {"_id": 5, "v": True},
    {"_id": 6, "v": "2024-01-15"},
    {"_id": 7, "v": 2.5},
    {"_id": 8, "v": "a"},
    {"_id": 9, "v": [1]},
    {"_id": 10, "v": "2023-06-01T00:00:00Z"},
    {"_id": 11, "v": 10.0},
]


def test_sort_type_order_and_ties() -> None:
    # missing and null tie, broken by _id; 10 and 10.0 tie likewise
    assert _ids(apply_find(MIXED, {}, {"v": 1})) == [3, 4, 5, 7, 2, 11, 10, 6, 9, 8, 1]
    assert _ids(apply_find(MIXED, {}, {"v": -1})) == [1, 8, 9, 6, 10, 2, 11, 7, 5, 3, 4]


def test_multi_key_sort_in_given_order() -> None:
    docs = [
        {"_id": 1, "a": 1, "b": 2},
        {"_id": 2, "a": 2, "b": 1},
        {"_id": 3, "a": 1, "b": 3},
        {"_id": 4, "a": 2, "b": 1},
    ]
    assert _ids(apply_find(docs, {}, {"a": 1, "b": -1})) == [3, 1, 2, 4]
    assert _ids(apply_find(docs, {}, {"b": 1, "a": -1})) == [2, 4, 1, 3]


def test_find_sort_indexes_arrays() -> None:
    docs = [
        {"_id": 1, "s": [5, 1]},
        {"_id": 2, "s": [3]},
        {"_id": 3, "s": []},
        {"_id": 4, "s": {"0": 4}},
    ]
    assert _ids(apply_find(docs, {}, {"s.0": 1})) == [3, 2, 4, 1]


def test_unsorted_results_in_id_order() -> None:
    docs = [{"_id": 3, "a": 1}, {"_id": 1, "a": 1}, {"_id": 2, "a": 2}]
    assert _ids(apply_find(docs, {"a": 1})) == [1, 3]
    assert _ids(apply_find(docs)) == [1, 2, 3]


@pytest.mark.parametrize(
    "skip, limit, expected",
    [
        (None, None, [1, 2, 3, 4, 5]),
        (1, 2, [2, 3]),
        (0, 0, []),
        (10, None, []),
        (None, 10, [1, 2, 3, 4, 5]),
        (-1, -1, [1, 2, 3, 4, 5]),
        (1.0, 2.0, [1, 2, 3, 4, 5]),
        ("1", "2", [1, 2, 3, 4, 5]),
        (True, True, [1, 2, 3, 4, 5]),
        (3, None, [4, 5]),
    ],
)
def test_skip_limit(skip: Any, limit: Any, expected: list[int]) -> None:
    docs = [{"_id": i} for i in range(1, 6)]
    assert _ids(apply_find(docs, None, None, skip, limit)) == expected


def test_sort_then_skip_then_limit() -> None:
    docs = [{"_id": i, "v": -i} for i in range(1, 6)]
    assert _ids(apply_find(docs, {"v": {"$lt": 0}}, {"v": 1}, 1, 2)) == [4, 3]


def test_apply_find_accepts_compiled_matcher() -> None:
    docs = [{"_id": 1, "a": 1}, {"_id": 2, "a": 2}]
    assert _ids(apply_find(docs, compile_query({"a": 2}))) == [2]


def test_apply_find_validates() -> None:
    empty: list[dict[str, Any]] = []
    with pytest.raises(InvalidQueryError):
        apply_find(empty, {"a": {"$bad": 1}})
    with pytest.raises(InvalidQueryError):
        apply_find(empty, {}, {"a": 0})


# --- properties -------------------------------------------------------------------------

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([1.0, 2.5, -0.5]),
    st.sampled_from(["a", "b", "2024-01-15", "2024-01-15T00:00:00Z", "2023-01-01"]),
    st.lists(st.integers(0, 2), max_size=2),
    st.dictionaries(st.sampled_from(["k", "j"]), st.integers(0, 2), max_size=2),
)
_docs = st.dictionaries(st.sampled_from(["x", "y"]), _values, max_size=2)


@given(_docs, _values, st.lists(_values, max_size=3))
@settings(max_examples=300, deadline=None)
def test_operator_identities(doc: dict[str, Any], operand: Any, items: list[Any]) -> None:
    present = "x" in doc

    def m(cond: Any) -> bool:
        return matches({"x": cond}, doc)

    eq = m({"$eq": operand})
    assert m(operand) == eq
    assert m({"$ne": operand}) == (present and not eq)
    assert m({"$gte": operand}) == (m({"$gt": operand}) or eq)
    assert m({"$lte": operand}) == (m({"$lt": operand}) or eq)
    if present:
        assert m({"$lt": operand}) != m({"$gte": operand})
    assert m({"$in": [operand]}) == eq
    assert m({"$in": items}) == any(m({"$eq": item}) for item in items)
    if present:
        assert m({"$nin": items}) == (not m({"$in": items}))
    assert m({"$not": {"$gt": operand}}) == (not m({"$gt": operand}))
    assert m({"$exists": True}) == present
    assert matches({"$or": [{"x": operand}, {"y": operand}]}, doc) == (
        eq or matches({"y": {"$eq": operand}}, doc)
    )


_sortable_docs = st.lists(
    st.dictionaries(st.sampled_from(["x", "y"]), _values, max_size=2), max_size=8
).map(lambda docs: [{"_id": 8 - i, **doc} for i, doc in enumerate(docs)])
_sorts = st.dictionaries(
    st.sampled_from(["x", "y", "x.0", "x.k", "_id"]), st.sampled_from([1, -1]), min_size=1, max_size=3
)


@given(_sortable_docs, _sorts)
@settings(max_examples=200, deadline=None)
def test_sort_key_function_agrees_with_find(docs: list[dict[str, Any]], sort: dict[str, int]) -> None:
    key = compile_sort(sort)
    assert key is not None
    assert _ids(sorted(docs, key=key)) == _ids(apply_find(docs, {}, sort))
