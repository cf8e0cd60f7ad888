"""
A hash aggregate for a pushed-down C{$group} keyed by an index key column
(L{oxidb.engine.sqlquery.group_scan_statement}): one pass over the rows of
one cursor, with no sort (SQLite's C{GROUP BY} sorts every row by the key,
which was most of the statement's time).

Each row is C{(_id, size, key, value, ...)}: the document's id, its text
size for the budget (or 0 when the caller counts it otherwise), the key
column's value, then one column per accumulated path: the JSON text of the
value there (C{doc -> path}) or None when missing; or, for a path only
summed, its index key column when it has one (L{oxidb.engine.keys}: no
JSON read per row; a sum adds the same double whether the number was an
integer or a float, and a key holds either exactly up to 2**53). C{specs}
gives each accumulator's column (counted from the first value) and kind
(L{SUM} for C{$sum}/C{$avg}, L{MIN}, L{MAX}).

The result is, per group in order of its first C{_id}: the first C{_id},
the row count, then for each accumulator the figures C{group_statement}
computes in SQL (for L{SUM}: the count of numbers, their float total, the
total of their magnitudes, the count of non-integral floats; for
L{MIN}/L{MAX}: the extreme integer, the extreme float, the count of other
non-null values), last the total size. None when a value's text is a
number no C{int64} holds or not a JSON number the parser reads, or a key
holds a number past a double (the caller then takes the Python path).

L{hash_rows} and L{hash_blobs} (the same over rows packed in blobs) are
the C extension L{oxidb.engine._grouphash}, None when it is not built:
L{hash_rows_python} and L{hash_blobs_python}, their references
(tests/test_engine_grouphash.py holds them identical with Hypothesis), are
slower than SQLite's sorting C{GROUP BY}, which the caller then uses.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterable
from typing import Any

#: Kinds of accumulator.
SUM, MIN, MAX = 0, 1, 2

#: Integer texts with more digits than this go to the Python path.
MAX_DIGITS = 18

_NOT_NUMBER = frozenset('"[{tf')

#: A JSON number: its integer digits, fraction, exponent.
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")

HashRows = Callable[[Iterable[tuple[Any, ...]], tuple[tuple[int, int], ...]], "list[tuple[Any, ...]] | None"]


#: The first byte of a key (L{oxidb.engine.values} ranks) of null, of a
#: number (the C extension's C{NULL_RANK} and C{NUMBER_RANK}).
NULL_RANK, NUMBER_RANK = 0, 2

_KEY_BITS = struct.Struct(">Q")
_DOUBLE = struct.Struct("<d")
_SIGN = 1 << 63


class _Bail(Exception):
    pass


def _parse_key(key: bytes) -> float | bool | None:
    """
    The number a key column holds as a double; None for null or missing,
    False for another value; L{_Bail} for a number past a double.
    """
    if not key or key == bytes([NULL_RANK]):
        return None
    if key[0] != NUMBER_RANK:
        return False
    if len(key) != 10 or key[9] != 1:
        raise _Bail
    (bits,) = _KEY_BITS.unpack_from(key, 1)
    bits = bits & ~_SIGN if bits & _SIGN else ~bits & (_SIGN * 2 - 1)
    (number,) = _DOUBLE.unpack(bits.to_bytes(8, "little"))
    return float(number)


def _parse(text: str) -> int | float | bool | None:
    """
    The number a value's JSON text holds; None for null or missing, False
    for another value; L{_Bail} if not read exactly.
    """
    if not text or text == "null":
        return None
    if text[0] in _NOT_NUMBER:
        return False
    match = _NUMBER.fullmatch(text)
    if match is None:
        raise _Bail
    if match.group(2) or match.group(3):
        return float(text)
    if len(match.group(1)) > MAX_DIGITS:
        raise _Bail
    return int(text)


def _parse_value(value: str | bytes | None) -> int | float | bool | None:
    if value is None:
        return None
    if type(value) is bytes:
        return _parse_key(value)
    if type(value) is not str:
        raise TypeError("a value must be str, bytes or None")
    return _parse(value)


def hash_rows_python(
    rows: Iterable[tuple[Any, ...]], specs: tuple[tuple[int, int], ...]
) -> list[tuple[Any, ...]] | None:
    """The hash aggregate in Python (see the module docstring)."""
    groups: dict[Any, list[Any]] = {}
    try:
        for row in rows:
            doc_id, size, key = row[0], row[1], row[2]
            state = groups.get(key)
            if state is None:
                state = [doc_id, 0, 0]
                for _, kind in specs:
                    state.append([0, 0.0, 0.0, 0] if kind == SUM else [None, None, 0])
                groups[key] = state
            elif doc_id < state[0]:
                state[0] = doc_id
            state[1] += 1
            state[2] += size
            parsed = [_parse_value(value) for value in row[3:]]
            for i, (column, kind) in enumerate(specs):
                value = parsed[column]
                if value is None:
                    continue
                stats = state[3 + i]
                if value is False:
                    if kind != SUM:
                        stats[2] += 1
                    continue
                if kind == SUM:
                    stats[0] += 1
                    stats[1] += float(value)
                    stats[2] += abs(float(value))
                    if type(value) is float and math.isfinite(value) and not value.is_integer():
                        stats[3] += 1
                    continue
                if type(row[3 + column]) is bytes:
                    raise ValueError("a $min or $max reads a value's text, not its key")
                slot = 0 if type(value) is int else 1
                current = stats[slot]
                if current is None or (value > current if kind == MAX else value < current):
                    stats[slot] = value
    except _Bail:
        return None
    out = []
    for state in sorted(groups.values(), key=lambda state: state[0]):
        row_out: list[Any] = [state[0], state[1]]
        for stats in state[3:]:
            row_out.extend(stats)
        row_out.append(state[2])
        out.append(tuple(row_out))
    return out


#: The end of a decimal in a record of L{hash_blobs_python}.
RECORD_END = 0x1E


def _read_length(blob: bytes, at: int) -> tuple[int, int]:
    """The code point SQL's C{char()} wrote at C{at} (UTF-8) and the offset after it."""
    if at >= len(blob):
        raise ValueError("a malformed record")
    first = blob[at]
    if first < 0x80:
        return first, at + 1
    if first & 0xE0 == 0xC0:
        more = 1
    elif first & 0xF0 == 0xE0:
        more = 2
    elif first & 0xF8 == 0xF0:
        more = 3
    else:
        raise ValueError("a malformed record")
    tail = blob[at + 1 : at + 1 + more]
    if len(tail) < more or any(byte & 0xC0 != 0x80 for byte in tail):
        raise ValueError("a malformed record")
    code = first & (0x7F >> (more + 1))
    for byte in tail:
        code = code << 6 | byte & 0x3F
    return code, at + 1 + more


def _read_decimal(blob: bytes, at: int) -> tuple[int, int]:
    """A decimal ended by L{RECORD_END} at C{at}, and the offset after it."""
    end = blob.find(RECORD_END, at)
    text = blob[at:end] if end >= 0 else b""
    digits = text[1:] if text[:1] == b"-" else text
    if not digits or len(digits) > MAX_DIGITS or not digits.isdigit():
        raise ValueError("a malformed record")
    return int(text), end + 1


def hash_blobs_python(
    blobs: Iterable[bytes | None], specs: tuple[tuple[int, int], ...], sized: bool
) -> tuple[list[tuple[Any, ...]], int] | None:
    """
    L{hash_rows_python} over rows packed in blobs, with the count of rows:
    each row a record of its key (its length as SQL's C{char()} writes a
    code point, then its bytes), its C{_id} and with C{sized} its size (each
    a decimal ended by L{RECORD_END}), then each value column, an index key
    (its length and bytes). A blob of None holds no row. Reading no Python
    object per row, where a cursor gives a tuple of them, halves the cost
    of a scan (L{oxidb.engine.sqlquery.group_blob_statement} writes them).
    """
    width = max((column + 1 for column, _ in specs), default=0)
    count = 0

    def rows() -> Iterable[tuple[Any, ...]]:
        nonlocal count
        for blob in blobs:
            if blob is None:
                continue
            if type(blob) is not bytes:
                raise TypeError("a blob must be bytes or None")
            at = 0
            while at < len(blob):
                length, at = _read_length(blob, at)
                if len(blob) - at < length:
                    raise ValueError("a malformed record")
                key, at = blob[at : at + length], at + length
                doc_id, at = _read_decimal(blob, at)
                size = 0
                if sized:
                    size, at = _read_decimal(blob, at)
                row: list[Any] = [doc_id, size, key]
                for _ in range(width):
                    length, at = _read_length(blob, at)
                    if len(blob) - at < length:
                        raise ValueError("a malformed record")
                    row.append(blob[at : at + length])
                    at += length
                count += 1
                yield tuple(row)

    out = hash_rows_python(rows(), specs)
    return None if out is None else (out, count)


HashBlobs = Callable[
    [Iterable["bytes | None"], tuple[tuple[int, int], ...], bool], "tuple[list[tuple[Any, ...]], int] | None"
]

hash_rows: HashRows | None
hash_blobs: HashBlobs | None
try:
    from oxidb.engine import _grouphash
except ImportError:  # the optional extension was not built
    hash_rows = hash_blobs = None
else:
    hash_rows = _grouphash.hash_rows
    hash_blobs = _grouphash.hash_blobs
