"""
Order-preserving binary keys for the total order of values (engine.md 2.1),
and the SQL functions that compute them from stored documents.

L{encode_key} turns a value into bytes whose C{memcmp} order is exactly the
order of L{oxidb.engine.values.sort_key}, and whose equality is exactly
equality of sort keys. SQLite compares BLOBs with C{memcmp}, so conditions,
C{ORDER BY} and indexes over these keys give the answers of the pure
matcher while letting the planner use B-tree indexes. Indexed paths have
their keys stored in key columns, computed with L{key_at} when a document is
written (see L{oxidb.engine.store}); other paths are keyed in SQL.

A missing path and an explicit C{null} have the same key (L{NULL_KEY}): that
is what sorting needs (engine.md 2.5: missing sorts as null, ties by C{_id}),
and it lets one index serve both sorts and filters. Conditions that must tell
them apart add a presence test (L{present_sql}).

Paths are read with SQLite's C{->} operator when the path can be written as
an SQLite JSON path (every step is an object key; see L{json_path}); other
paths go through a Python function over the whole document. Both forms
give what L{key_at} gives for the same path of the parsed document.
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from collections.abc import Callable
from typing import Any

import orjson

from oxidb.engine import paths, sqlite, values

#: The key of C{null} and of a missing path.
NULL_KEY = b"\x00"

_RANK_BYTES = tuple(bytes([rank]) for rank in range(8))
_NUMBER = _RANK_BYTES[values.RANK_NUMBER]
_F64 = struct.Struct(">d")
_U64 = struct.Struct(">Q")
_DIGIT_CHARS = frozenset("0123456789")
_SIGN = 1 << 63
_MASK = (1 << 64) - 1


def _encode_float(number: float) -> bytes:
    if number == 0.0:
        number = 0.0  # -0.0 == 0.0
    (bits,) = _U64.unpack(_F64.pack(number))
    bits = (~bits & _MASK) if bits & _SIGN else bits | _SIGN
    return _U64.pack(bits)


def _encode_number(number: int | float) -> bytes:
    """
    Exact order for ints of any size and floats: the nearest double (rounding
    is monotonic, so distinct doubles already order their values), then the
    exact integer remainder to break ties between values sharing a double.
    """
    if isinstance(number, float):
        if math.isnan(number):
            raise ValueError("NaN has no key")
        return _encode_float(number) + b"\x01"
    try:
        nearest = float(number)
    except OverflowError:
        # Beyond every finite double: the infinities (which never occur as
        # floats here: a non-finite float ranks as null) head these, and the
        # integer itself orders them.
        nearest = math.inf if number > 0 else -math.inf
        remainder = number
    else:
        remainder = number - int(nearest)
    head = _encode_float(nearest)
    if remainder == 0:
        return head + b"\x01"
    magnitude = abs(remainder).to_bytes((abs(remainder).bit_length() + 7) // 8, "big")
    if len(magnitude) > 254:
        raise ValueError("number too large to index")
    if remainder > 0:
        return head + b"\x02" + bytes([len(magnitude)]) + magnitude
    return head + b"\x00" + bytes([255 - len(magnitude)]) + bytes(255 - b for b in magnitude)


def _encode_payload(payload: Any) -> bytes:
    if payload is None:
        return b""
    if payload is True:
        return b"\x01"
    if payload is False:
        return b"\x00"
    if isinstance(payload, (int, float)):
        return _encode_number(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogatepass")
    raise TypeError(f"unexpected sort-key payload {payload!r}")


def encode_sort_key(sort_key: tuple[Any, ...]) -> bytes:
    """Bytes ordered like the L{values.sort_key} tuple C{sort_key}."""
    rank: int = sort_key[0]
    if len(sort_key) == 1:
        return _RANK_BYTES[rank]
    return _RANK_BYTES[rank] + _encode_payload(sort_key[1])


def encode_key(value: Any) -> bytes:
    """The key of a present value."""
    return encode_sort_key(values.sort_key(value))


def key_of_value(value: Any) -> bytes:
    """
    L{encode_key} with fast paths for the common scalars (what index key
    columns are computed with on every write).
    """
    kind = type(value)
    if kind is str:
        return _cached_str_key(value)
    if kind is float:
        if math.isfinite(value):
            return _NUMBER + _encode_float(value) + b"\x01"
    elif kind is int:
        number: int = value
        if -_SMALL_INT <= number <= _SMALL_INT:
            return _SMALL_INT_KEYS[number + _SMALL_INT]
        return _NUMBER + _encode_number(number)
    return encode_key(value)


def key_at(doc: dict[str, Any], parts: tuple[str, ...]) -> bytes:
    """
    The key at a split objects-only path of a document, L{NULL_KEY} when the
    path does not resolve: what L{key_sql} computes from the stored text.
    """
    found, value = paths.get_parts(doc, parts)
    return key_of_value(value) if found else NULL_KEY


def keys_at_python(doc: dict[str, Any], paths_parts: list[tuple[str, ...]]) -> tuple[bytes, ...]:
    """
    L{key_at} of each split path (one call per written row, so inlined):
    L{keys_at} when the C extension is not built, and its reference.
    """
    out = []
    for parts in paths_parts:
        if len(parts) == 1:
            value = doc.get(parts[0], _ABSENT)
            if value is _ABSENT:
                out.append(NULL_KEY)
                continue
        else:
            found, value = paths.get_parts(doc, parts)
            if not found:
                out.append(NULL_KEY)
                continue
        kind = type(value)
        if kind is str:
            out.append(_cached_str_key(value))
        elif kind is float and math.isfinite(value):
            out.append(_NUMBER + _encode_float(value) + b"\x01")
        elif kind is int and -_SMALL_INT <= value <= _SMALL_INT:
            out.append(_SMALL_INT_KEYS[value + _SMALL_INT])
        else:
            out.append(key_of_value(value))
    return tuple(out)


_ABSENT = object()


def key_of_json(text: str | None) -> bytes:
    """SQL function C{oxi_key(json_text)}: the key of C{doc -> path}."""
    if text is None:
        return NULL_KEY
    if len(text) <= _CACHED_TEXT:
        return _cached_key_of_json(text)
    return _key_of_json(text)


def _key_of_json(text: str) -> bytes:
    if text[0] == '"' and "\\" not in text:
        # A string without escapes (the common case): skip the JSON parser.
        return encode_key(text[1:-1])
    value = orjson.loads(text)
    if type(value) is int:
        return _NUMBER + _encode_number(value)
    return encode_key(value)


#: Keys of short JSON texts are cached: a column's values repeat a lot, and a
#: scan or an index build computes one key per row.
_CACHED_TEXT = 48
_cached_key_of_json = functools.lru_cache(maxsize=1 << 16)(_key_of_json)

#: Strings need the date test; their keys are cached like short JSON texts.
_cached_str_key = functools.lru_cache(maxsize=1 << 16)(encode_key)
_SMALL_INT = 1024
_SMALL_INT_KEYS = tuple(_NUMBER + _encode_number(n) for n in range(-_SMALL_INT, _SMALL_INT + 1))

#: L{keys_at_python}, in C when the optional extension L{oxidb.engine._keys}
#: is built (it encodes ints and floats itself and leaves strings to
#: L{_cached_str_key}, everything else to L{key_of_value}).
keys_at: Callable[[dict[str, Any], list[tuple[str, ...]]], tuple[bytes, ...]]
try:
    from oxidb.engine import _keys
except ImportError:  # the optional extension was not built
    keys_at = keys_at_python
else:
    _keys.configure(values.RANK_NUMBER, NULL_KEY, _cached_str_key, key_of_value)
    keys_at = _keys.keys_at

#: C{"c"} or C{"python"}: the L{keys_at} in use.
KEYS_AT_IMPLEMENTATION = "python" if keys_at is keys_at_python else "c"


def _decode_path(raw: bytes | str) -> str:
    return raw.decode("utf-8", "surrogatepass") if isinstance(raw, bytes) else raw


def key_of_path(doc: str, raw_path: bytes | str) -> bytes:
    """SQL function C{oxi_key_path(doc, path)} for paths C{->} cannot read."""
    found, value = paths.get_path(orjson.loads(doc), _decode_path(raw_path))
    return encode_key(value) if found else NULL_KEY


def has_path(doc: str, raw_path: bytes | str) -> int:
    """SQL function C{oxi_has_path(doc, path)}: 1 if the path resolves."""
    return int(paths.get_path(orjson.loads(doc), _decode_path(raw_path))[0])


def sort_key_of_path(doc: str, raw_path: bytes | str) -> bytes:
    """SQL function C{oxi_sort_key(doc, path)}: the key C{find}'s sort uses."""
    found, value = paths.get_path_sort(orjson.loads(doc), _decode_path(raw_path))
    return encode_key(value) if found else NULL_KEY


def register_functions(conn: sqlite.Connection) -> None:
    """Register the key functions on a connection (every connection needs them)."""
    sqlite.register_function(conn, "oxi_key", key_of_json, 1)
    sqlite.register_function(conn, "oxi_key_path", key_of_path, 2)
    sqlite.register_function(conn, "oxi_has_path", has_path, 2)
    sqlite.register_function(conn, "oxi_sort_key", sort_key_of_path, 2)


# --- SQL expressions ----------------------------------------------------------


def json_path(path: str) -> str | None:
    """
    The SQLite JSON path reading C{path} through objects only, or None.

    Every step is written as a quoted object label (C{$."a"."b"}), which never
    indexes an array. SQLite compares labels with the key's raw JSON text, and
    documents are stored by orjson, which escapes only C{"}, C{\\} and control
    characters; steps containing those cannot be written.
    """
    steps = path.split(".")
    for step in steps:
        if '"' in step or "\\" in step or any(ord(ch) < 0x20 for ch in step):
            return None
    return "$" + "".join(f'."{step}"' for step in steps)


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_blob(text: str) -> str:
    return "X'" + text.encode("utf-8", "surrogatepass").hex() + "'"


def value_sql(path: str) -> str | None:
    """C{doc -> '<path>'} (the value's JSON text, NULL if missing), or None."""
    jpath = json_path(path)
    return None if jpath is None else f"(doc -> {_sql_text(jpath)})"


def key_sql(path: str) -> str:
    """The SQL expression of the key at C{path} (also used in index DDL)."""
    value = value_sql(path)
    if value is None:
        return f"oxi_key_path(json(doc), {_sql_blob(path)})"
    return f"oxi_key{value}"


def present_sql(path: str) -> str:
    """An SQL condition true when C{path} resolves (to anything, even null)."""
    value = value_sql(path)
    if value is None:
        return f"oxi_has_path(json(doc), {_sql_blob(path)})"
    return f"{value} IS NOT NULL"


def sort_key_sql(path: str) -> str:
    """
    The SQL expression of C{find}'s sort key at C{path}. Sort paths may index
    arrays through numeric steps (engine.md 2.5); a path without any digit
    cannot, so it reads like an objects-only path and shares L{key_sql} (and
    therefore its indexes).
    """
    if any(ch in _DIGIT_CHARS for ch in path):
        return f"oxi_sort_key(json(doc), {_sql_blob(path)})"
    return key_sql(path)


# --- fingerprint --------------------------------------------------------------

_PROBES: tuple[Any, ...] = (
    None, False, True, 0, -0.0, 1, 1.0, -1, 1.5, 2**53, 2**53 + 1, -(2**63), 2**64 - 1, 1e300, -1e-300,
    "", "a", "é", "\U0001f600", "2024-01-15", "2024-01-15T00:00:00Z", "2024-01-15 10:30:00",
    "2024-01-15T10:30:00.123+02:00", "2024-02-30", "2024-01-15T10:30:00.5", "1969-12-31T23:59:59.999Z",
    [1, "a"], {"b": 1, "a": [None]}, [], {},
)


def fingerprint() -> str:
    """
    A digest of the encoding of fixed probe values. Stored with the data; when
    it changes (a new version orders values differently), indexes are rebuilt.
    """
    digest = hashlib.sha256()
    for probe in _PROBES:
        digest.update(encode_key(probe))
        digest.update(b"|")
    return digest.hexdigest()[:32]
