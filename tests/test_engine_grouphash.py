"""
The C hash aggregate of C{$group} (L{oxidb.engine._grouphash}) and its
pure-Python reference L{grouphash.hash_rows_python} give the same result for
any rows: keys of any kind in any order of C{_id}, every JSON text a value's
C{doc -> path} gives (null and missing, booleans, strings, arrays, objects,
integers up to and past 18 digits, floats with C{-0.0}, exponents and
overflow) and texts no JSON number reads as (both leave those to Python),
the index keys of summed paths (every rank, numbers past a double, bytes no
key is); and the C one refuses rows and specs of the wrong shape with a
clear error.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.engine import grouphash, keys, values
from tests.extensions import built_extension


@pytest.fixture(scope="module")
def c() -> ModuleType:
    return built_extension("oxidb.engine._grouphash")


numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-20, 20),
    st.sampled_from([10**17, 10**18 - 1, 10**18, -(10**18) + 1, 2**53, 2**53 + 1, 2**63 - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.0, 2.5, -1.5, 1e300, 4.0e15]),
)
texts = st.one_of(
    st.none(),
    numbers.map(lambda n: str(n) if type(n) is int else orjson.dumps(n).decode()),
    st.sampled_from(["null", "true", "false", '"a"', '""', "[1]", "{}", "[]", '{"a":1}']),
    # Number texts as written by hand, and texts no JSON number reads as.
    st.sampled_from(["1E5", "-1.5e-7", "1e400", "-0", "0.0", "2.0", "1e+2", "-1E-400"]),
    st.sampled_from(["", "nan", "inf", "-", "007", "1.", ".5", "1_0", "+1", "0x1F", " 1", "1 ", "١", "n"]),
)
group_keys = st.one_of(st.none(), st.sampled_from([b"\x00", b"\x02a", b"\x02b", b"\x03x", b""]))
# The index keys of summed paths: every kind of value, numbers past a double,
# and bytes no key is.
index_keys = st.one_of(
    st.none(),
    st.one_of(
        numbers, st.none(), st.booleans(), st.text(max_size=3), st.just("2024-01-15"), st.lists(numbers, max_size=2)
    ).map(keys.key_of_value),
    st.sampled_from([b"", b"\x02", b"\x02" + bytes(9), b"\x02" + bytes(8) + b"\x02", b"\x00\x00"]),
)


@st.composite
def tables(draw: Any) -> tuple[list[tuple[Any, ...]], tuple[tuple[int, int], ...]]:
    """Rows and specs; a column of keys is only summed (as L{sqlquery.group_scan_statement} reads them)."""
    width = draw(st.integers(0, 3))
    keyed = [draw(st.booleans()) for _ in range(width)]
    kinds = [grouphash.SUM, grouphash.MIN, grouphash.MAX]
    specs = [(column, grouphash.SUM if keyed[column] else draw(st.sampled_from(kinds))) for column in range(width)]
    for _ in range(draw(st.integers(0, 2)) if width else 0):
        column = draw(st.integers(0, width - 1))
        specs.append((column, grouphash.SUM if keyed[column] else draw(st.sampled_from(kinds))))
    ids = draw(st.lists(st.integers(-(2**62), 2**62), unique=True, max_size=30))
    rows = [
        (doc_id, draw(st.integers(0, 10**6)), draw(group_keys))
        + tuple(draw(index_keys if keyed[column] else texts) for column in range(width))
        for doc_id in ids
    ]
    return rows, tuple(specs)


def _same(a: Any, b: Any) -> bool:
    """Equal, telling ints from floats and C{-0.0} from C{0.0}."""
    return orjson.dumps(a) == orjson.dumps(b)


@settings(max_examples=120, deadline=None)
@given(table=tables())
def test_c_equals_python(c: ModuleType, table: tuple[list[tuple[Any, ...]], tuple[tuple[int, int], ...]]) -> None:
    rows, specs = table
    assert _same(c.hash_rows(iter(rows), specs), grouphash.hash_rows_python(iter(rows), specs))


def test_figures(c: ModuleType) -> None:
    """Groups in order of their first C{_id}, and the figures of each kind of accumulator."""
    key = keys.key_of_value
    rows = [
        (5, 10, b"b", "1", "2.5", '"s"', key(-1.5)),
        (3, 20, b"a", "null", "-7", "true", key(None)),
        (4, 30, b"b", None, "3", "4", key("x")),
        (9, 40, b"a", "2.0", "1e2", "[1]", key(4)),
    ]
    specs = ((0, grouphash.SUM), (1, grouphash.MIN), (2, grouphash.MAX), (0, grouphash.MAX), (3, grouphash.SUM))
    expected = [
        # first _id, count; $sum; $min; $max; $max; $sum of a key column; size
        (3, 2, 1, 2.0, 2.0, 0, -7, 100.0, 0, None, None, 2, None, 2.0, 0, 1, 4.0, 4.0, 0, 60),
        (4, 2, 1, 1.0, 1.0, 0, 3, 2.5, 0, 4, None, 1, 1, None, 0, 1, -1.5, 1.5, 1, 40),
    ]
    for hash_rows in (c.hash_rows, grouphash.hash_rows_python):
        assert _same(hash_rows(rows, specs), expected)
    # A fraction, and numbers past 18 digits or a double (left to Python).
    assert c.hash_rows([(1, 0, b"a", "0.5")], ((0, grouphash.SUM),)) == [(1, 1, 1, 0.5, 0.5, 1, 0)]
    assert c.hash_rows([(1, 0, b"a", "1" * 19)], ((0, grouphash.SUM),)) is None
    assert c.hash_rows([(1, 0, b"a", key(2**53 + 1))], ((0, grouphash.SUM),)) is None


def test_ranks(c: ModuleType) -> None:
    """The key ranks both read are the engine's."""
    assert (grouphash.NULL_RANK, grouphash.NUMBER_RANK) == (values.RANK_NULL, values.RANK_NUMBER)
    assert (c.NULL_RANK, c.NUMBER_RANK) == (values.RANK_NULL, values.RANK_NUMBER)
    assert keys.NULL_KEY == bytes([values.RANK_NULL])


@pytest.mark.parametrize(
    ("rows", "specs", "message"),
    [
        ([(1, 0, b"a")], ((0, 0),), "wrong shape"),
        ([[1, 0, b"a", "1"]], ((0, 0),), "wrong shape"),
        ([(1, 0, b"a", 5)], ((0, 0),), "str, bytes or None"),
        ([("x", 0, b"a", "1")], ((0, 0),), "integer"),
        ([(1, 0, b"a", "1")], ((0, 7),), "out of range"),
        ([(1, 0, b"a", "1")], ((-1, 0),), "out of range"),
        ([(1, 0, b"a", "1")], ((2**70, 0),), "too large"),
        ([(1, 0, b"a", "1")], (0,), "(column, kind)"),
        ([(1, 0, [], "1")], ((0, 0),), "unhashable"),
        ([(1, 0, b"a", keys.key_of_value(3))], ((0, 1),), "not its key"),
    ],
)
def test_bad_input(c: ModuleType, rows: Any, specs: Any, message: str) -> None:
    with pytest.raises((TypeError, ValueError, OverflowError)) as raised:
        c.hash_rows(rows, specs)
    assert message in str(raised.value)


def test_bad_arguments(c: ModuleType) -> None:
    with pytest.raises(TypeError, match="takes an iterable"):
        c.hash_rows([])
    with pytest.raises(TypeError, match="not iterable"):
        c.hash_rows(5, ())


def test_an_error_from_the_rows_reaches_the_caller(c: ModuleType) -> None:
    """A cursor's error (a read's time limit) stops the aggregate with that error."""

    def rows() -> Any:
        yield (1, 0, b"a", "1")
        raise KeyError("stopped")

    with pytest.raises(KeyError, match="stopped"):
        c.hash_rows(rows(), ((0, 0),))


def _record(row: tuple[Any, ...], sized: bool) -> bytes:
    """A row packed as L{sqlquery.group_blob_statement} packs it (C{char(length(k)) || k || _id || x'1e' ...})."""
    doc_id, size, key, *columns = row
    out = chr(len(key)).encode() + key + str(doc_id).encode() + b"\x1e"
    if sized:
        out += str(size).encode() + b"\x1e"
    for column in columns:
        out += chr(len(column)).encode() + column
    return out


@st.composite
def packed(draw: Any) -> tuple[list[tuple[Any, ...]], tuple[tuple[int, int], ...], bool, list[bytes | None]]:
    """Rows of key columns only, summed, and the blobs packing them (split anywhere between records)."""
    width = draw(st.integers(0, 3))
    columns = list(range(width)) + (draw(st.lists(st.integers(0, width - 1), max_size=2)) if width else [])
    specs = tuple((column, grouphash.SUM) for column in columns)
    sized = draw(st.booleans())
    key = st.one_of(
        st.sampled_from([b"\x00", b"\x02a", b"\x02b", b"\x03x", b"\x1e\x1e", b"\xff\x00"]),
        st.sampled_from([b"\x04" + b"x" * 200, b"\x04" + b"y" * 3000]),  # lengths of 2 and 3 UTF-8 bytes
    )
    value = st.one_of(
        st.sampled_from([keys.key_of_value(v) for v in (None, True, "a", "2024-01-15", [1], 2**53 + 1, 10**40)]),
        numbers.map(keys.key_of_value),
    )
    raw = draw(
        st.lists(
            st.tuples(
                st.integers(-(2**59), 2**59),
                st.integers(0, 10**12),
                key,
                st.lists(value, min_size=width, max_size=width),
            ),
            max_size=12,
            unique_by=lambda row: row[0],
        )
    )
    rows = [(doc_id, size, k, *values) for doc_id, size, k, values in raw]
    blobs: list[bytes | None] = []
    records = [_record(row, sized) for row in rows]
    while records:
        take = draw(st.integers(0, len(records)))
        blobs.append(b"".join(records[:take]) if take or draw(st.booleans()) else None)
        records = records[take:]
    return rows, specs, sized, blobs


@settings(max_examples=60, deadline=None)
@given(case=packed())
def test_blobs_c_equals_python(c: ModuleType, case: Any) -> None:
    """Both read the same rows from the blobs, and aggregate them as L{grouphash.hash_rows_python} does."""
    rows, specs, sized, blobs = case
    expected = grouphash.hash_rows_python([(i, s if sized else 0, *rest) for i, s, *rest in rows], specs)
    python = grouphash.hash_blobs_python(iter(blobs), specs, sized)
    assert _same(python, None if expected is None else (expected, len(rows)))
    assert _same(c.hash_blobs(iter(blobs), specs, sized), python)


@pytest.mark.parametrize(
    "blob",
    [
        b"\x05ab",  # a key longer than the blob
        b"\x01a12",  # an _id without its end
        b"\x01a\x1e",  # no _id
        b"\x01a1x\x1e",  # not a decimal
        b"\x01a" + b"1" * 19 + b"\x1e",  # past 18 digits
        b"\x01a1\x1e\x0a\x02",  # a value longer than the blob
        b"\x01a1\x1e",  # no value
        b"\xc3",  # a length cut short
        b"\xc3\x41",  # not UTF-8
        b"\xf8",  # not UTF-8
    ],
)
def test_malformed_blobs(c: ModuleType, blob: bytes) -> None:
    for hash_blobs in (c.hash_blobs, grouphash.hash_blobs_python):
        with pytest.raises(ValueError, match="malformed"):
            hash_blobs([blob], ((0, grouphash.SUM),), False)


def test_blob_bad_arguments(c: ModuleType) -> None:
    with pytest.raises(TypeError, match="3 arguments"):
        c.hash_blobs([], ())
    with pytest.raises(TypeError, match="bytes or None"):
        c.hash_blobs(["text"], (), False)
    with pytest.raises(TypeError, match="tuple"):
        c.hash_blobs([], [(0, 0)], False)
