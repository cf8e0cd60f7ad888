"""
Tests for aggregation expressions (oxidb.engine.expressions): each row's
expected value is what MongoDB gives for the same expression over L{DOC},
except where engine.md 5.2 keeps a v0.15 rule (noted in the row).
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from oxidb.engine.expressions import MISSING, compare_values, compile_expression, compile_raw, truthy
from oxidb.engine.governor import DEFAULT_LIMITS
from oxidb.engine.values import json_equal
from oxidb.errors import AggregationLimitError, InvalidPipelineError, TooLargeError

DOC: dict[str, Any] = {
    "a": 7,
    "b": -2,
    "f": 2.5,
    "s": "  Hello World ",
    "u": "héllo",
    "n": None,
    "t": True,
    "z": 0,
    "arr": [10, 20, 30],
    "e": [],
    "o": {"p": "x"},
}


@pytest.mark.parametrize(
    "expression, expected",
    [
        # field paths and literals
        ("$o.p", "x"),
        ("$$ROOT.o.p", "x"),
        ("$$CURRENT.a", 7),
        ({"$literal": {"$add": [1]}}, {"$add": [1]}),
        ({"$literal": "$a"}, "$a"),
        ({"$literal": [1, "$a"]}, [1, "$a"]),
        ([1, "$a"], [1, "$a"]),  # v0.15: arrays are literals outside nested mode
        # arithmetic
        ({"$mod": ["$a", 3]}, 1),
        ({"$mod": [-7, 3]}, -1),
        ({"$mod": [7, -3]}, 1),
        ({"$mod": [7.5, 2]}, 1.5),
        ({"$mod": ["$n", 2]}, None),
        ({"$mod": ["$nope", 2]}, None),
        ({"$abs": "$b"}, 2),
        ({"$abs": [-2.5]}, 2.5),
        ({"$abs": "$n"}, None),
        ({"$ceil": "$f"}, 3),
        ({"$ceil": -2.5}, -2),
        ({"$floor": "$f"}, 2),
        ({"$floor": -2.5}, -3),
        ({"$floor": 4}, 4),
        ({"$ceil": 1e300}, 1e300),  # a double stays a double past 64 bits
        ({"$round": "$f"}, 2),  # half to even
        ({"$round": [3.5]}, 4),
        ({"$round": [1.2345, 2]}, 1.23),
        ({"$round": [1234, -2]}, 1200),
        ({"$round": [1250, -2]}, 1200),
        ({"$round": ["$nope", 1]}, None),
        ({"$add": ["$a", "$s"]}, None),  # v0.15: non-numbers give null (MongoDB errors)
        ({"$divide": ["$a", 0]}, None),  # v0.15: null (MongoDB errors)
        # comparison
        ({"$eq": ["$a", 7.0]}, True),
        ({"$eq": ["$nope", None]}, False),
        ({"$eq": ["$nope", "$other"]}, True),
        ({"$ne": ["$a", 7]}, False),
        ({"$gt": ["$a", 5]}, True),
        ({"$gt": ["$s", 5]}, True),  # strings rank above numbers
        ({"$gte": ["$a", 7]}, True),
        ({"$lt": ["$nope", None]}, True),  # missing sorts before null
        ({"$lt": ["$n", False]}, True),
        ({"$lte": [8, "$a"]}, False),
        ({"$cmp": ["$a", 8]}, -1),
        ({"$cmp": ["b", "a"]}, 1),
        ({"$cmp": [[1, 2], [1, 2]]}, 0),
        # boolean
        ({"$and": [1, "x", "$t"]}, True),
        ({"$and": ["$a", "$z"]}, False),
        ({"$and": []}, True),
        ({"$or": ["$n", "$nope", "$e"]}, True),  # [] is true
        ({"$or": ["$n", 0]}, False),
        ({"$or": []}, False),
        ({"$not": ["$z"]}, True),
        ({"$not": ""}, False),
        # conditionals
        ({"$cond": [{"$gt": ["$a", 5]}, "big", "small"]}, "big"),
        ({"$cond": {"if": "$nope", "then": 1, "else": {"$add": ["$a", 1]}}}, 8),
        ({"$ifNull": ["$nope", "$n", "dflt"]}, "dflt"),
        ({"$ifNull": ["$z", 1]}, 0),
        ({"$ifNull": ["$n", "$nope"]}, None),
        # strings
        ({"$concat": ["$o.p", "-", "y"]}, "x-y"),
        ({"$concat": ["a", "$n"]}, None),
        ({"$concat": []}, ""),
        ({"$toLower": "$s"}, "  hello world "),
        ({"$toUpper": "$u"}, "HÉLLO"),
        ({"$toUpper": "$nope"}, ""),
        ({"$toLower": 12}, "12"),
        ({"$substrCP": ["$u", 1, 3]}, "éll"),
        ({"$substrCP": ["$u", 3, 100]}, "lo"),
        ({"$substrCP": ["$n", 0, 1]}, ""),
        ({"$strLenCP": "$u"}, 5),
        ({"$split": ["a,b,,c", ","]}, ["a", "b", "", "c"]),
        ({"$split": ["$n", ","]}, None),
        ({"$trim": {"input": "$s"}}, "Hello World"),
        ({"$trim": {"input": "xxaxx", "chars": "x"}}, "a"),
        ({"$trim": {"input": "$nope"}}, None),
        # arrays
        ({"$size": "$arr"}, 3),
        ({"$size": [[]]}, 0),
        ({"$arrayElemAt": ["$arr", 1]}, 20),
        ({"$arrayElemAt": ["$arr", -1]}, 30),
        ({"$arrayElemAt": ["$arr", 3]}, None),  # missing, written as null
        ({"$arrayElemAt": ["$nope", 0]}, None),
        ({"$in": ["$a", [1, 7.0]]}, True),
        ({"$in": [20, "$arr"]}, True),
        ({"$in": ["$nope", [None]]}, False),
        # types
        ({"$type": "$a"}, "int"),
        ({"$type": 2**40}, "long"),
        ({"$type": "$f"}, "double"),
        ({"$type": "$s"}, "string"),
        ({"$type": "$t"}, "bool"),
        ({"$type": "$n"}, "null"),
        ({"$type": "$nope"}, "missing"),
        ({"$type": "$arr"}, "array"),
        ({"$type": "$o"}, "object"),
        ({"$type": {"$arrayElemAt": ["$arr", 9]}}, "missing"),
        # nesting
        ({"$cond": [{"$and": [{"$gte": ["$a", 0]}, {"$in": [{"$mod": ["$a", 2]}, [1]]}]}, "odd", "even"]}, "odd"),
    ],
)
def test_expression(expression: Any, expected: Any) -> None:
    assert json_equal(compile_expression(expression)(DOC), expected)


def test_missing_stays_missing_inside() -> None:
    assert compile_raw("$nope")(DOC) is MISSING
    assert compile_raw({"$arrayElemAt": ["$arr", 5]})(DOC) is MISSING
    assert compile_expression("$nope")(DOC) is None


def test_nested_mode_evaluates_arrays_and_objects() -> None:
    expression = compile_expression({"x": "$a", "y": {"z": ["$o.p", "$nope"]}, "gone": "$nope"}, nested=True)
    # MongoDB drops a missing field of an expression object and writes null in an array.
    assert expression(DOC) == {"x": 7, "y": {"z": ["x", None]}}
    assert compile_expression({"x": "$a"})(DOC) == {"x": "$a"}


@pytest.mark.parametrize(
    "expression, message",
    [
        ({"$bogus": 1}, "unknown expression operator: $bogus"),
        ({"$abs": [1, 2]}, "$abs requires exactly 1 argument, got 2"),
        ({"$cond": [1, 2]}, "$cond requires exactly 3 arguments, got 2"),
        ({"$cond": {"if": 1, "then": 2}}, "missing 'else' parameter to $cond"),
        ({"$cond": {"if": 1, "then": 2, "else": 3, "x": 4}}, "unrecognized parameter to $cond: x"),
        ({"$ifNull": ["$a"]}, "$ifNull requires at least 2 arguments, got 1"),
        ({"$round": [1, 2, 3]}, "$round requires 1 to 2 arguments, got 3"),
        ({"$trim": "x"}, "$trim requires an object as an argument"),
        ({"$trim": {"chars": "x"}}, "missing 'input' parameter to $trim"),
        ({"$add": 1}, "$add requires an array"),
        ({"$and": [{"$nope": 1}]}, "unknown expression operator: $nope"),
        ("$$NOW", "use of undefined variable: NOW"),
        ({"$in": [1] * 10_001}, "$in has more than 10000 arguments"),
    ],
)
def test_compile_errors(expression: Any, message: str) -> None:
    with pytest.raises(InvalidPipelineError) as info:
        compile_expression(expression)
    assert str(info.value) == "invalid pipeline: " + message


def test_nested_object_rejects_operator_keys() -> None:
    with pytest.raises(InvalidPipelineError, match="may not start with"):
        compile_expression({"a": 1, "$b": 2}, nested=True)


@pytest.mark.parametrize(
    "expression, message",
    [
        ({"$abs": "$s"}, "$abs only supports numeric types, not string"),
        ({"$mod": ["$a", 0]}, "can't $mod by zero"),
        ({"$mod": ["$a", "$t"]}, "$mod only supports numeric types, not bool"),
        ({"$round": ["$f", 1.5]}, "$round requires 'place' to be an integer between -20 and 100"),
        ({"$round": ["$f", 101]}, "$round requires 'place' to be an integer between -20 and 100"),
        ({"$concat": ["a", "$a"]}, "$concat only supports strings, not int"),
        ({"$toUpper": "$t"}, "$toUpper can't convert from type bool to string"),
        (
            {"$substrCP": ["$s", -1, 2]},
            "$substrCP requires the starting index to be a non-negative integer, found: int",
        ),
        ({"$substrCP": ["$s", 0, "2"]}, "$substrCP requires the length to be a non-negative integer, found: string"),
        ({"$strLenCP": "$nope"}, "$strLenCP requires a string argument, found: missing"),
        ({"$split": ["$s", ""]}, "$split requires a non-empty separator"),
        (
            {"$split": ["$a", ","]},
            "$split requires an expression that evaluates to a string as a first argument, found: int",
        ),
        ({"$trim": {"input": "$a"}}, "$trim requires its input to be a string, got int"),
        ({"$size": "$nope"}, "The argument to $size must be an array. Type of the argument was: missing"),
        ({"$arrayElemAt": ["$a", 0]}, "$arrayElemAt's first argument must be an array, but is int"),
        ({"$arrayElemAt": ["$arr", 0.5]}, "$arrayElemAt's second argument must be an integer, but is double"),
        ({"$in": [1, "$a"]}, "$in requires an array as a second argument, found: int"),
    ],
)
def test_runtime_type_errors(expression: Any, message: str) -> None:
    compiled = compile_expression(expression)
    with pytest.raises(InvalidPipelineError) as info:
        compiled(DOC)
    assert str(info.value) == "invalid pipeline: " + message


def test_depth_is_bounded() -> None:
    deep: Any = "$a"
    for _ in range(DEFAULT_LIMITS.query_max_depth + 1):
        deep = {"$abs": deep}
    with pytest.raises(TooLargeError, match="expression exceeds the maximum nesting depth of 100"):
        compile_expression(deep)


def test_concat_growth_is_bounded() -> None:
    limits = attrs.evolve(DEFAULT_LIMITS, agg_max_bytes=1024)
    doubling: Any = "$s"
    for _ in range(12):
        doubling = {"$concat": [doubling, doubling]}
    compiled = compile_expression(doubling, limits)
    with pytest.raises(AggregationLimitError, match=r"\$concat exceeded the memory limit of 1024 bytes"):
        compiled(DOC)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)


@given(json_scalars, json_scalars)
def test_cmp_is_antisymmetric_and_agrees_with_eq(a: Any, b: Any) -> None:
    doc = {"a": a, "b": b}
    cmp = compile_expression({"$cmp": ["$a", "$b"]})(doc)
    assert cmp == -compile_expression({"$cmp": ["$b", "$a"]})(doc)
    assert compile_expression({"$eq": ["$a", "$b"]})(doc) is (cmp == 0)
    assert compile_expression({"$lt": ["$a", "$b"]})(doc) is (cmp < 0)
    assert compare_values(MISSING, a) == -1


@given(json_scalars)
def test_cond_follows_truthiness(value: Any) -> None:
    expression = compile_expression({"$cond": [{"$literal": value}, "yes", "no"]})
    assert expression({}) == ("yes" if truthy(value) else "no")
    assert compile_expression({"$not": {"$literal": value}})({}) is not truthy(value)
