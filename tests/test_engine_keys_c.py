"""
The C extension's C{keys_at} (L{oxidb.engine._keys}) and the pure-Python
reference L{keys.keys_at_python} give the same index keys for any document
and paths: every type and its order (null and missing, booleans, integers
around 2**53 and past 64 bits, floats with C{-0.0}, infinities and NaN,
strings that read as dates), arrays, objects, nested and missing paths, and
the same error for values of no JSON type.
"""

from __future__ import annotations

import collections
import enum
import math
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.engine import keys, values
from tests.extensions import built_extension


@pytest.fixture(scope="module")
def c() -> ModuleType:
    return built_extension("oxidb.engine._keys")


class _Level(enum.IntEnum):
    LOW = 1


NAMES = ["a", "b", "é", ""]
edge_ints = st.sampled_from(
    [
        0,
        1,
        -1,
        1024,
        1025,
        -1025,
        2**53 - 1,
        2**53,
        2**53 + 1,
        -(2**53),
        -(2**53) - 1,
        2**63 - 1,
        -(2**63),
        2**64,
        -(2**64) - 3,
        10**40,
    ]
)
edge_floats = st.sampled_from(
    [0.0, -0.0, 1.0, -1.5, 2.0**53, 2.0**53 + 2, 1e300, -1e-300, 5e-324, math.inf, -math.inf, math.nan]
)
dates = st.sampled_from(
    [
        "2024-01-15",
        "2024-01-15T00:00:00Z",
        "2024-01-15 10:30:00",
        "2024-02-30",
        "2024-01-15T10:30:00.5",
        "1969-12-31T23:59:59.999Z",
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    edge_ints,
    st.floats(),
    edge_floats,
    st.text(max_size=6),
    st.text(st.characters(codec="utf-8", categories=["Cs", "Lo", "Nd"]), max_size=3),
    dates,
)
json_like = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(NAMES), inner, max_size=3)),
    max_leaves=8,
)
documents = st.dictionaries(st.sampled_from(NAMES), json_like, max_size=4)
paths = st.lists(
    st.tuples(st.sampled_from(NAMES)) | st.lists(st.sampled_from(NAMES), min_size=2, max_size=3).map(tuple), max_size=5
)


def _outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as e:  # the same error either way
        return (type(e).__name__, str(e))


@settings(max_examples=150, deadline=None)
@given(doc=documents, split=paths)
def test_c_keys_equal_the_python_keys(c: ModuleType, doc: dict[str, Any], split: list[tuple[str, ...]]) -> None:
    assert _outcome(c.keys_at, doc, split) == _outcome(keys.keys_at_python, doc, split)


@settings(max_examples=100, deadline=None)
@given(left=scalars, right=scalars)
def test_c_keys_order_as_values_do(c: ModuleType, left: Any, right: Any) -> None:
    """Memcmp order of the C keys is the engine's total order of the values (NaN is null there)."""
    (a,) = c.keys_at({"v": left}, [("v",)])
    (b,) = c.keys_at({"v": right}, [("v",)])
    ka, kb = values.sort_key(left), values.sort_key(right)
    assert (a < b) == (ka < kb) and (a == b) == (ka == kb)


def test_values_of_no_json_type(c: ModuleType) -> None:
    """A subclass of a JSON type, or no JSON type at all, fails as in Python (writes then read the stored form)."""
    for value in (_Level.LOW, object(), b"x", (1, 2)):
        doc = {"a": value}
        assert _outcome(c.keys_at, doc, [("a",)]) == _outcome(keys.keys_at_python, doc, [("a",)])
        assert isinstance(_outcome(c.keys_at, doc, [("a",)]), tuple)
    # Paths walk plain objects only.
    doc = {"a": collections.OrderedDict(b=1)}
    assert c.keys_at(doc, [("a", "b")]) == keys.keys_at_python(doc, [("a", "b")]) == (keys.NULL_KEY,)


def test_bad_arguments(c: ModuleType) -> None:
    with pytest.raises(TypeError):
        c.keys_at({}, (("a",),))
    with pytest.raises(TypeError):
        c.keys_at({}, [["a"]])
    with pytest.raises(TypeError):
        c.keys_at({})
    assert c.keys_at({"a": 1}, []) == ()


def test_writes_use_the_c_keys(c: ModuleType) -> None:
    assert keys.KEYS_AT_IMPLEMENTATION == "c" and keys.keys_at is c.keys_at
