"""
Tests for the update operators (engine.md 3, 14).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.engine.updates import UPDATE_OPERATORS, bump_version, compile_update
from oxidb.engine.values import MAX_DEPTH, deep_copy, json_equal
from oxidb.errors import InvalidQueryError, TooLargeError

NOW = 1700000000.123456
NOW_TEXT = "2023-11-14T22:13:20.123456+00:00"


def apply(update: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    return compile_update(update).apply(doc, NOW)


# (update, document, expected result)
CASES: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    # $set
    ({"$set": {"a": 1}}, {}, {"a": 1}),
    ({"$set": {"a": {"b": [1]}}}, {"a": 0}, {"a": {"b": [1]}}),
    ({"$set": {"a.b.c": 1}}, {}, {"a": {"b": {"c": 1}}}),
    ({"$set": {"a.b": 1}}, {"a": 5}, {"a": {"b": 1}}),
    ({"$set": {"a.b": 1}}, {"a": None}, {"a": {"b": 1}}),
    ({"$set": {"tags.0": "x"}}, {"tags": ["r", "g"]}, {"tags": {"0": "x"}}),
    ({"$set": {"a": 1, "a.b": 2}}, {}, {"a": {"b": 2}}),
    ({"$set": {"x": None}}, {"x": 1}, {"x": None}),
    # $unset
    ({"$unset": {"a": ""}}, {"a": 1, "b": 2}, {"b": 2}),
    ({"$unset": {"a.b": 1}}, {"a": {"b": 1, "c": 2}}, {"a": {"c": 2}}),
    ({"$unset": {"zz": 1}}, {"a": 1}, {"a": 1}),
    ({"$unset": {"a.b": 1}}, {"a": 5}, {"a": 5}),
    ({"$unset": {"t.0": 1}}, {"t": [1]}, {"t": [1]}),
    # $inc
    ({"$inc": {"n": 1}}, {"n": 1}, {"n": 2}),
    ({"$inc": {"n": 0.5}}, {"n": 1.5}, {"n": 2}),
    ({"$inc": {"n": 0.25}}, {"n": 1}, {"n": 1.25}),
    ({"$inc": {"n": -3}}, {"n": 1}, {"n": -2}),
    ({"$inc": {"n": 5}}, {}, {"n": 5}),
    ({"$inc": {"n": 1.0}}, {}, {"n": 1.0}),
    ({"$inc": {"n": 5}}, {"n": None}, {"n": 5}),
    ({"$inc": {"a.b": 2}}, {"a": 7}, {"a": {"b": 2}}),
    ({"$inc": {"n": 1}}, {"n": 2**53}, {"n": 2**53}),
    ({"$inc": {"n": 1e308}}, {"n": 1e308}, {"n": None}),
    # $mul
    ({"$mul": {"n": 3}}, {"n": 2}, {"n": 6}),
    ({"$mul": {"n": 0.5}}, {"n": 3}, {"n": 1.5}),
    ({"$mul": {"n": 2.5}}, {"n": 2}, {"n": 5}),
    ({"$mul": {"n": 5}}, {}, {"n": 0}),
    ({"$mul": {"n": 5.5}}, {"n": None}, {"n": 0}),
    ({"$mul": {"n": 1e308}}, {"n": 1e308}, {"n": None}),
    # $min / $max
    ({"$min": {"n": 3}}, {"n": 5}, {"n": 3}),
    ({"$min": {"n": 7}}, {"n": 5}, {"n": 5}),
    ({"$min": {"n": 5.0}}, {"n": 5}, {"n": 5}),
    ({"$min": {"n": 1}}, {}, {"n": 1}),
    ({"$min": {"n": 1}}, {"n": None}, {"n": 1}),
    ({"$min": {"n": "x"}}, {"n": 5}, {"n": 5}),
    ({"$min": {"n": False}}, {"n": 5}, {"n": False}),
    ({"$min": {"d": "2024-01-01"}}, {"d": "2024-06-01T00:00:00Z"}, {"d": "2024-01-01"}),
    ({"$min": {"d": "2024-01-01T00:00:00Z"}}, {"d": "2024-01-01"}, {"d": "2024-01-01"}),
    ({"$max": {"n": 7}}, {"n": 5}, {"n": 7}),
    ({"$max": {"n": 3}}, {"n": 5}, {"n": 5}),
    ({"$max": {"n": "x"}}, {"n": 5}, {"n": "x"}),
    ({"$max": {"n": 1}}, {}, {"n": 1}),
    ({"$max": {"d": "2025-01-01"}}, {"d": "2024-06-01"}, {"d": "2025-01-01"}),
    ({"$max": {"d": "zzz"}}, {"d": "2024-06-01"}, {"d": "zzz"}),
    # $rename
    ({"$rename": {"a": "b"}}, {"a": 1, "b": 2}, {"b": 1}),
    ({"$rename": {"a": "x.y"}}, {"a": 1}, {"x": {"y": 1}}),
    ({"$rename": {"a.b": "c"}}, {"a": {"b": 1}}, {"a": {}, "c": 1}),
    ({"$rename": {"a": "a.b"}}, {"a": 1}, {"a": {"b": 1}}),
    ({"$rename": {"zz": "b"}}, {"b": 2}, {"b": 2}),
    ({"$rename": {"a": "b"}}, {"a": None, "b": 2}, {"a": None, "b": 2}),
    # $currentDate
    ({"$currentDate": {"at": True}}, {}, {"at": NOW_TEXT}),
    ({"$currentDate": {"m.at": {"$type": "date"}}}, {"m": 1}, {"m": {"at": NOW_TEXT}}),
    # $push
    ({"$push": {"t": "c"}}, {"t": ["a"]}, {"t": ["a", "c"]}),
    ({"$push": {"t": "c"}}, {}, {"t": ["c"]}),
    ({"$push": {"t": "c"}}, {"t": None}, {"t": ["c"]}),
    ({"$push": {"t": [1, 2]}}, {"t": []}, {"t": [[1, 2]]}),
    ({"$push": {"t": {"$each": [1, 2]}}}, {"t": []}, {"t": [{"$each": [1, 2]}]}),
    ({"$push": {"a.t": 1}}, {"a": 3}, {"a": {"t": [1]}}),
    # $pull: exact JSON equality
    ({"$pull": {"t": 2}}, {"t": [1, 2, 3, 2]}, {"t": [1, 3]}),
    ({"$pull": {"t": 1}}, {"t": [1, 1.0, True]}, {"t": [1.0, True]}),
    ({"$pull": {"t": 1.0}}, {"t": [1, 1.0]}, {"t": [1]}),
    ({"$pull": {"t": {"$gte": 3}}}, {"t": [1, 5, {"$gte": 3}]}, {"t": [1, 5]}),
    ({"$pull": {"t": {"a": 1, "b": 2}}}, {"t": [{"b": 2, "a": 1}, 3]}, {"t": [3]}),
    ({"$pull": {"t": "2024-01-15"}}, {"t": ["2024-01-15T00:00:00Z"]}, {"t": ["2024-01-15T00:00:00Z"]}),
    ({"$pull": {"t": 9}}, {"t": [1]}, {"t": [1]}),
    ({"$pull": {"t": 9}}, {}, {}),
    ({"$pull": {"t": 9}}, {"t": None}, {"t": None}),
    # $addToSet
    ({"$addToSet": {"t": "b"}}, {"t": ["a"]}, {"t": ["a", "b"]}),
    ({"$addToSet": {"t": "a"}}, {"t": ["a"]}, {"t": ["a"]}),
    ({"$addToSet": {"t": 1.0}}, {"t": [1]}, {"t": [1, 1.0]}),
    ({"$addToSet": {"t": True}}, {"t": [1]}, {"t": [1, True]}),
    ({"$addToSet": {"t": {"a": 1, "b": 2}}}, {"t": [{"b": 2, "a": 1}]}, {"t": [{"b": 2, "a": 1}]}),
    ({"$addToSet": {"t": "a"}}, {}, {"t": ["a"]}),
    ({"$addToSet": {"t": [1]}}, {"t": [[1]]}, {"t": [[1]]}),
    # $pop
    ({"$pop": {"t": 1}}, {"t": [1, 2, 3]}, {"t": [1, 2]}),
    ({"$pop": {"t": -1}}, {"t": [1, 2, 3]}, {"t": [2, 3]}),
    ({"$pop": {"t": 1}}, {"t": []}, {"t": []}),
    ({"$pop": {"t": 7}}, {"t": []}, {"t": []}),
    ({"$pop": {"t": 7}}, {}, {}),
    ({"$pop": {"t": "x"}}, {"t": None}, {"t": None}),
    # operators in key order, later steps see earlier results
    ({"$set": {"n": 1}, "$inc": {"n": 2}}, {}, {"n": 3}),
    ({"$inc": {"n": 2}, "$set": {"n": 1}}, {}, {"n": 1}),
    ({"$push": {"t": 1}, "$pop": {"t": -1}}, {"t": [0]}, {"t": [1]}),
    ({"$rename": {"a": "b"}, "$inc": {"b": 1}}, {"a": 1}, {"b": 2}),
    # engine fields stay as they are (the storage layer bumps _version)
    ({"$set": {"x": 1}}, {"_id": 4, "_version": 2}, {"_id": 4, "_version": 2, "x": 1}),
]


@pytest.mark.parametrize("update, doc, expected", CASES)
def test_update_table(update: dict[str, Any], doc: dict[str, Any], expected: dict[str, Any]) -> None:
    before = deep_copy(doc)
    result = apply(update, doc)
    assert json_equal(result, expected), result
    assert json_equal(doc, before)


@pytest.mark.parametrize(
    "update, doc, message",
    [
        ({"$inc": {"n": "1"}}, {"n": 1}, "$inc value for 'n' must be numeric"),
        ({"$inc": {"n": True}}, {}, "$inc value for 'n' must be numeric"),
        ({"$inc": {"n": None}}, {}, "$inc value for 'n' must be numeric"),
        ({"$inc": {"n": 1}}, {"n": "5"}, "$inc cannot be applied to non-numeric field 'n'"),
        ({"$inc": {"n": 1}}, {"n": True}, "$inc cannot be applied to non-numeric field 'n'"),
        ({"$inc": {"n": 1}}, {"n": [1]}, "$inc cannot be applied to non-numeric field 'n'"),
        ({"$inc": {"a.b": 1}}, {"a": {"b": {}}}, "$inc cannot be applied to non-numeric field 'a.b'"),
        ({"$mul": {"n": "2"}}, {"n": 1}, "$mul value for 'n' must be numeric"),
        ({"$mul": {"n": 2}}, {"n": "x"}, "$mul cannot be applied to non-numeric field 'n'"),
        ({"$rename": {"a": 5}}, {"a": 1}, "$rename target for 'a' must be a string"),
        ({"$rename": {"a": None}}, {}, "$rename target for 'a' must be a string"),
        ({"$push": {"t": 1}}, {"t": "x"}, "$push requires field 't' to be an array"),
        ({"$push": {"t": 1}}, {"t": {}}, "$push requires field 't' to be an array"),
        ({"$pull": {"t": 1}}, {"t": 5}, "$pull requires field 't' to be an array"),
        ({"$addToSet": {"t": 1}}, {"t": 5}, "$addToSet requires field 't' to be an array"),
        ({"$pop": {"t": 1}}, {"t": 5}, "$pop requires field 't' to be an array"),
        ({"$pop": {"t": 2}}, {"t": [1]}, "$pop value for 't' must be 1 or -1"),
        ({"$pop": {"t": 1.0}}, {"t": [1]}, "$pop value for 't' must be 1 or -1"),
        ({"$pop": {"t": True}}, {"t": [1]}, "$pop value for 't' must be 1 or -1"),
        ({"$pop": {"t": "1"}}, {"t": [1]}, "$pop value for 't' must be 1 or -1"),
        ({"$set": 5}, {}, "$set value must be an object"),
        ({"$set": []}, {}, "$set value must be an object"),
        ({"$foo": {"a": 1}}, {}, "unknown update operator: $foo"),
        ({"$foo": 1}, {}, "unknown update operator: $foo"),
        ({"name": "x"}, {}, "unknown update operator: name"),
        ({"$set": {"a": 1}, "$bogus": {}}, {}, "unknown update operator: $bogus"),
        # reserved fields (deliberate deviation from v0.15, engine.md 1.2)
        ({"$set": {"_id": 9}}, {"_id": 1}, "$set cannot modify reserved field '_id'"),
        ({"$set": {"_id.x": 9}}, {"_id": 1}, "$set cannot modify reserved field '_id.x'"),
        ({"$inc": {"_version": 1}}, {}, "$inc cannot modify reserved field '_version'"),
        ({"$unset": {"_id": 1}}, {}, "$unset cannot modify reserved field '_id'"),
        ({"$rename": {"_id": "x"}}, {}, "$rename cannot modify reserved field '_id'"),
        ({"$rename": {"x": "_version"}}, {"x": 1}, "$rename cannot modify reserved field '_version'"),
        ({"$currentDate": {"_version": 1}}, {}, "$currentDate cannot modify reserved field '_version'"),
        ({"$push": {"_id": 1}}, {}, "$push cannot modify reserved field '_id'"),
        ({"$pull": {"_id": 1}}, {}, "$pull cannot modify reserved field '_id'"),
        ({"$addToSet": {"_id": 1}}, {}, "$addToSet cannot modify reserved field '_id'"),
        ({"$pop": {"_id": 1}}, {}, "$pop cannot modify reserved field '_id'"),
        ({"$min": {"_id": 1}}, {}, "$min cannot modify reserved field '_id'"),
        ({"$max": {"_version": 1}}, {}, "$max cannot modify reserved field '_version'"),
        ({"$mul": {"_id": 1}}, {}, "$mul cannot modify reserved field '_id'"),
    ],
)
def test_update_errors(update: dict[str, Any], doc: dict[str, Any], message: str) -> None:
    compiled = compile_update(update)  # never rejected up front
    before = deep_copy(doc)
    with pytest.raises(InvalidQueryError) as info:
        compiled.apply(doc, NOW)
    assert str(info.value) == "invalid query: " + message
    assert doc == before


def test_fields_with_reserved_prefix_are_ordinary() -> None:
    assert apply({"$set": {"_idx": 1, "_versions": 2}}, {}) == {"_idx": 1, "_versions": 2}


@pytest.mark.parametrize(
    "update, message",
    [
        (None, "invalid query: update must be an object"),
        ([], "invalid query: update must be an object"),
        ("x", "invalid query: update must be an object"),
        ({}, "invalid query: update must contain at least one operator"),
    ],
)
def test_up_front_errors(update: Any, message: str) -> None:
    with pytest.raises(InvalidQueryError) as info:
        compile_update(update)
    assert str(info.value) == message


def test_update_depth_is_bounded() -> None:
    value: Any = 1
    for _ in range(MAX_DEPTH):
        value = [value]
    with pytest.raises(TooLargeError):
        compile_update({"$set": {"a": value}})
    # a result that grows past the limit is refused too
    deep: Any = 1
    for _ in range(MAX_DEPTH - 3):
        deep = [deep]
    update = compile_update({"$set": {"a.b.c.d": deep}})
    with pytest.raises(TooLargeError):
        update.apply({}, NOW)


def test_values_are_copied_into_documents() -> None:
    update = compile_update({"$set": {"a": [1]}, "$push": {"a": 2}})
    first = update.apply({}, NOW)
    second = update.apply({}, NOW)
    assert first == second == {"a": [1, 2]}
    assert update.spec == {"$set": {"a": [1]}, "$push": {"a": 2}}


def test_current_date_uses_now_argument() -> None:
    update = compile_update({"$currentDate": {"a": 1, "b": 1}})
    assert update.apply({}, 0.0) == {"a": "1970-01-01T00:00:00+00:00", "b": "1970-01-01T00:00:00+00:00"}
    assert update.apply({}, 86400.25)["a"] == "1970-01-02T00:00:00.250+00:00"


def test_operator_list() -> None:
    assert set(UPDATE_OPERATORS) == {
        "$set", "$unset", "$inc", "$mul", "$min", "$max", "$rename",
        "$currentDate", "$push", "$pull", "$addToSet", "$pop",
    }  # fmt: skip


def test_bump_version() -> None:
    doc = {"_id": 1, "a": 1, "_version": 3}
    bumped = bump_version(doc)
    assert bumped == {"_id": 1, "a": 1, "_version": 4}
    assert list(bumped) == ["_id", "a", "_version"]
    assert doc["_version"] == 3
    assert bump_version({"_id": 1})["_version"] == 1


# --- properties --------------------------------------------------------------------------

_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(-5, 5), st.text(max_size=3)
)
_value = st.recursive(
    _leaf,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["a", "b", "t"]), children, max_size=2),
    max_leaves=6,
)
_docs = st.dictionaries(st.sampled_from(["a", "b", "t", "n"]), _value, max_size=4)
_paths = st.sampled_from(["a", "b", "t", "n", "a.b", "t.0", "a.b.c"])
_operand = {
    "$set": _value,
    "$unset": st.just(""),
    "$inc": st.integers(-3, 3) | st.floats(-3, 3),
    "$mul": st.integers(-3, 3),
    "$min": _value,
    "$max": _value,
    "$rename": _paths,
    "$currentDate": st.just(True),
    "$push": _value,
    "$pull": _value,
    "$addToSet": _value,
    "$pop": st.sampled_from([1, -1, 2]),
}
_updates = st.lists(
    st.sampled_from(sorted(_operand)).flatmap(
        lambda op: st.tuples(st.just(op), st.dictionaries(_paths, _operand[op], min_size=1, max_size=2))
    ),
    min_size=1,
    max_size=3,
).map(dict)


@given(_docs, _updates)
@settings(max_examples=300, deadline=None)
def test_update_never_mutates_its_inputs(doc: dict[str, Any], spec: dict[str, Any]) -> None:
    doc_before = deep_copy(doc)
    spec_before = deep_copy(spec)
    update = compile_update(spec)
    try:
        result = update.apply(doc, NOW)
    except InvalidQueryError:
        result = None
    assert json_equal(doc, doc_before)
    assert json_equal(spec, spec_before)
    if result is not None:
        assert result is not doc
        # applying again to the original gives the same result (determinism)
        assert json_equal(update.apply(doc, NOW), result)
