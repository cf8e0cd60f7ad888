"""
Tests for the engine value model (engine.md 2.1, Appendix D) and dotted
paths (2.4, 2.5, 3.2).
"""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.engine import paths
from oxidb.engine.values import (
    MAX_DEPTH,
    canonical_json,
    check_depth,
    compact_json,
    compare,
    deep_copy,
    format_rfc3339,
    is_number,
    json_equal,
    normalize_number,
    parse_date_ms,
    sort_key,
    to_float,
    values_equal,
)
from oxidb.errors import TooLargeError

JAN_15_MS = 1705276800000  # 2024-01-15T00:00:00Z


# --- dates ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2024-01-15", JAN_15_MS),
        ("2024-01-15T00:00:00Z", JAN_15_MS),
        ("2024-01-15 00:00:00", JAN_15_MS),
        ("2024-01-15T00:00:00", JAN_15_MS),
        ("2024-01-15t00:00:00z", JAN_15_MS),
        ("2024-01-15 00:00:00Z", JAN_15_MS),
        ("2024-01-15T02:00:00+02:00", JAN_15_MS),
        ("2024-01-14T22:30:00-01:30", JAN_15_MS),
        ("2024-01-14T22:30:00\u221201:30", JAN_15_MS),
        ("2024-01-15T00:00:00.123Z", JAN_15_MS + 123),
        ("2024-01-15T00:00:00.5Z", JAN_15_MS + 500),
        # sub-millisecond digits are dropped, any number of them is accepted
        ("2024-01-15T00:00:00.1239999999999Z", JAN_15_MS + 123),
        # chrono's %d/%H/%M/%S take one or two digits in the naive formats
        ("2024-01-15T1:2:3", JAN_15_MS + 3723000),
        ("2024-01-5 00:00:00", JAN_15_MS - 10 * 86400000),
        # leap second: 59 s + 1000 ms
        ("2024-01-14T23:59:60Z", JAN_15_MS),
        ("2024-02-29", 1709164800000),
        ("1970-01-01", 0),
        ("1969-12-31T23:59:59.999Z", -1),
        ("0000-01-01", -62167219200000),
    ],
)
def test_dates_parse(text: str, expected: int) -> None:
    assert parse_date_ms(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-15T10:30:00.5",  # fraction without a zone
        "2024-1-5",
        "2024-01-5",  # too short
        "2024-02-30",
        "2023-02-29",
        "2024-13-01",
        "2024-00-10",
        "2024-01-15T24:00:00Z",
        "2024-01-15T10:60:00Z",
        "2024-01-15T10:30:61Z",
        "2024-01-15T10:30:00+24:00",
        "2024-01-15T10:30:00+05:60",
        "2024-01-15T10:30:00+0500",
        "2024-01-15T10:30:00 Z",
        "2024-01-15x",
        "2024-01-15 ",
        " 2024-01-15",
        "2024-01-15T10:30",
        "2024-01-15T10:30:00ZZ",
        "20240115",
        "hello world",
        "\u0662\u0660\u0662\u0664-01-15",  # non-ASCII digits
        "",
    ],
)
def test_non_dates(text: str) -> None:
    assert parse_date_ms(text) is None
    assert sort_key(text) == (4, text)


@given(
    st.datetimes(
        min_value=datetime.datetime(1, 1, 1),
        max_value=datetime.datetime(9999, 12, 31),
    ).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
)
@settings(max_examples=100, deadline=None)
def test_date_spellings_agree_with_datetime(moment: datetime.datetime) -> None:
    utc = moment.replace(tzinfo=datetime.UTC)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    expected = (utc - epoch) // datetime.timedelta(milliseconds=1)
    iso = moment.replace(microsecond=0).isoformat()
    ms = moment.microsecond // 1000
    assert parse_date_ms(f"{iso}.{ms:03d}Z") == expected
    assert parse_date_ms(f"{iso}.{ms:03d}+00:00") == expected
    whole = expected - ms
    assert parse_date_ms(iso) == whole
    assert parse_date_ms(iso.replace("T", " ")) == whole
    shifted = utc.astimezone(datetime.timezone(datetime.timedelta(hours=5, minutes=45)))
    if 1 <= shifted.year <= 9999:
        local = shifted.replace(tzinfo=None, microsecond=0).isoformat()
        assert parse_date_ms(f"{local}.{ms:03d}+05:45") == expected


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0.0, "1970-01-01T00:00:00+00:00"),
        (1700000000.5, "2023-11-14T22:13:20.500+00:00"),
        (1700000000.123456, "2023-11-14T22:13:20.123456+00:00"),
        (-1.5, "1969-12-31T23:59:58.500+00:00"),
        (951782400.0, "2000-02-29T00:00:00+00:00"),
    ],
)
def test_format_rfc3339(seconds: float, text: str) -> None:
    assert format_rfc3339(seconds) == text
    assert parse_date_ms(text) == round(seconds * 1000)


# --- ordering --------------------------------------------------------------------

ORDERED = [
    None,
    False,
    True,
    -1e300,
    -5,
    0,
    0.5,
    1,
    2**64,
    1e300,
    "1969-12-31",
    "2024-01-15",
    "2024-01-15T00:00:01Z",
    "",
    "Z",
    "[1,2]",
    [1, 2],
    "a",
    {"a": 1},
    "\u00e9",
    "\U0001f600",
]


def test_total_order_of_classes() -> None:
    keys = [sort_key(v) for v in ORDERED]
    assert keys == sorted(keys)
    assert sort_key("[1,2]") == sort_key([1, 2])


@pytest.mark.parametrize(
    "a, b",
    [
        (1, 1.0),
        (0, -0.0),
        (2**53, float(2**53)),
        ("2024-01-15", "2024-01-15T00:00:00Z"),
        ("2024-01-15", "2024-01-15 00:00:00"),
        ("2024-01-15T01:00:00+01:00", "2024-01-15T00:00:00.000Z"),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        ({"x": {"a": 1, "b": 2}}, {"x": {"b": 2, "a": 1}}),
        ([1, 2], "[1,2]"),
        ({"a": 1}, '{"a":1}'),
        (None, math.nan),
        (None, math.inf),
    ],
)
def test_equal_under_query_equality(a: Any, b: Any) -> None:
    assert values_equal(a, b)
    assert compare(a, b) == 0


@pytest.mark.parametrize(
    "a, b",
    [
        (True, 1),
        (False, 0),
        (None, False),
        ("1", 1),
        ([1], [1.0]),
        ([1, 2], [2, 1]),
        (2**53 + 1, float(2**53)),
        ("2024-01-15", "2024-01-15T00:00:00.001Z"),
        ("abc", "ABC"),
    ],
)
def test_unequal_under_query_equality(a: Any, b: Any) -> None:
    assert not values_equal(a, b)


def test_sort_key_rejects_non_json() -> None:
    with pytest.raises(TypeError):
        sort_key(object())


@pytest.mark.parametrize(
    "a, b, equal",
    [
        (1, 1, True),
        (1, 1.0, False),
        (True, 1, False),
        (0, False, False),
        (None, None, True),
        ("2024-01-15", "2024-01-15T00:00:00Z", False),
        ({"a": 1, "b": [1, {"c": None}]}, {"b": [1, {"c": None}], "a": 1}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ([1, 2], [2, 1], False),
        ([1], [1.0], False),
        ({"$gte": 3}, {"$gte": 3}, True),
    ],
)
def test_json_equal(a: Any, b: Any, equal: bool) -> None:
    assert json_equal(a, b) is equal
    assert json_equal(b, a) is equal


# --- numbers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (2.0, 2),
        (1.5, 1.5),
        (-0.0, 0),
        (1e20, 1e20),
        (-(2.0**63), -(2**63)),
        (2.0**63, 2.0**63),
        (math.inf, None),
        (-math.inf, None),
        (math.nan, None),
    ],
)
def test_normalize_number(value: float, expected: Any) -> None:
    result = normalize_number(value)
    assert result == expected and type(result) is type(expected)


def test_number_helpers() -> None:
    assert is_number(1) and is_number(1.5)
    assert not is_number(True) and not is_number("1") and not is_number(None)
    assert to_float(10**400) == math.inf
    assert to_float(-(10**400)) == -math.inf
    assert to_float(3) == 3.0


# --- text and structure ---------------------------------------------------------------


def test_json_texts() -> None:
    value = {"b": [1, 2.5, "\u00e9"], "a": {"d": None, "c": True}}
    assert compact_json(value) == '{"b":[1,2.5,"\u00e9"],"a":{"d":null,"c":true}}'
    assert canonical_json(value) == '{"a":{"c":true,"d":null},"b":[1,2.5,"\u00e9"]}'


def test_deep_copy_is_independent() -> None:
    original = {"a": [1, {"b": [2]}], "c": "x"}
    copy = deep_copy(original)
    assert copy == original
    copy["a"][1]["b"].append(3)
    assert original == {"a": [1, {"b": [2]}], "c": "x"}


def _nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = {"a": value} if i % 2 else [value]
    return value


def test_check_depth() -> None:
    check_depth(_nested(MAX_DEPTH), "document")
    check_depth("scalar", "document")
    with pytest.raises(TooLargeError) as info:
        check_depth(_nested(MAX_DEPTH + 1), "document")
    assert str(info.value) == "document exceeds the maximum nesting depth of 100"


# --- properties -------------------------------------------------------------------------

_dates = st.builds(
    lambda d, fmt: d.strftime(fmt),
    st.datetimes(min_value=datetime.datetime(1990, 1, 1), max_value=datetime.datetime(2030, 1, 1)),
    st.sampled_from(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"]),
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**66), 2**66)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
    | _dates
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=8,
)


@given(json_values, json_values, json_values)
@settings(max_examples=200, deadline=None)
def test_sort_key_is_a_total_preorder(a: Any, b: Any, c: Any) -> None:
    ka, kb, kc = sort_key(a), sort_key(b), sort_key(c)
    assert (ka <= kb) or (kb <= ka)
    if ka <= kb and kb <= kc:
        assert ka <= kc
    assert values_equal(a, b) == (ka == kb) == (compare(a, b) == 0)
    assert values_equal(a, b) == values_equal(b, a)
    if values_equal(a, b):
        assert hash(ka) == hash(kb)
    assert compare(a, b) == -compare(b, a)


@given(json_values, json_values)
@settings(max_examples=200, deadline=None)
def test_json_equal_is_finer_than_query_equality(a: Any, b: Any) -> None:
    assert json_equal(a, a)
    assert json_equal(a, deep_copy(a))
    if json_equal(a, b):
        assert values_equal(a, b)


# --- paths ------------------------------------------------------------------------------

DOC = {"a": {"b": {"c": 1}, "n": None}, "tags": ["x", "y"], "s": 5, "list": [{"k": 1}]}


@pytest.mark.parametrize(
    "path, expected",
    [
        ("a.b.c", (True, 1)),
        ("a.b", (True, {"c": 1})),
        ("a.n", (True, None)),
        ("a.missing", (False, None)),
        ("a.n.x", (False, None)),
        ("s.x", (False, None)),
        ("tags.0", (False, None)),
        ("list.0.k", (False, None)),
        ("nope", (False, None)),
    ],
)
def test_get_path_objects_only(path: str, expected: tuple[bool, Any]) -> None:
    assert paths.get_path(DOC, path) == expected


@pytest.mark.parametrize(
    "path, expected",
    [
        ("tags.0", (True, "x")),
        ("tags.1", (True, "y")),
        ("tags.+1", (True, "y")),
        ("tags.2", (False, None)),
        ("tags.-1", (False, None)),
        ("tags.x", (False, None)),
        ("list.0.k", (True, 1)),
        ("a.b.c", (True, 1)),
    ],
)
def test_get_path_sort_indexes_arrays(path: str, expected: tuple[bool, Any]) -> None:
    assert paths.get_path_sort(DOC, path) == expected


@pytest.mark.parametrize(
    "doc, path, value, expected",
    [
        ({}, "a", 1, {"a": 1}),
        ({}, "a.b.c", 1, {"a": {"b": {"c": 1}}}),
        ({"a": 5}, "a.b", 1, {"a": {"b": 1}}),
        ({"a": None}, "a.b", 1, {"a": {"b": 1}}),
        ({"tags": ["r"]}, "tags.0", "x", {"tags": {"0": "x"}}),
        ({"a": {"x": 1}}, "a.y", 2, {"a": {"x": 1, "y": 2}}),
    ],
)
def test_set_path_and_with_path(
    doc: dict[str, Any], path: str, value: Any, expected: dict[str, Any]
) -> None:
    before = deep_copy(doc)
    assert paths.with_path(doc, path, value) == expected
    assert doc == before
    paths.set_path(doc, path, value)
    assert doc == expected


def test_set_path_keeps_key_position() -> None:
    doc = {"a": 1, "b": 2, "c": 3}
    paths.set_path(doc, "b", 9)
    assert list(doc) == ["a", "b", "c"]


def test_with_path_shares_untouched_subtrees() -> None:
    doc = {"a": {"b": 1}, "other": {"deep": [1]}}
    new = paths.with_path(doc, "a.c", 2)
    assert new["other"] is doc["other"]
    assert doc["a"] == {"b": 1}


@pytest.mark.parametrize(
    "path, removed, expected",
    [
        ("s", True, {"a": {"b": 1}, "t": [1]}),
        ("a.b", True, {"a": {}, "s": 1, "t": [1]}),
        ("a.x", False, {"a": {"b": 1}, "s": 1, "t": [1]}),
        ("s.x", False, {"a": {"b": 1}, "s": 1, "t": [1]}),
        ("t.0", False, {"a": {"b": 1}, "s": 1, "t": [1]}),
        ("zz.y", False, {"a": {"b": 1}, "s": 1, "t": [1]}),
    ],
)
def test_unset_path(path: str, removed: bool, expected: dict[str, Any]) -> None:
    doc = {"a": {"b": 1}, "s": 1, "t": [1]}
    assert paths.unset_path(doc, path) is removed
    assert doc == expected
