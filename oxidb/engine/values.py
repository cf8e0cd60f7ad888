"""
The engine's value model (engine.md 2.1 and Appendix D).

Every JSON value maps to a comparison key, L{sort_key}, a tuple
C{(rank, payload)}:

    rank 0  null              C{(0,)}
    rank 1  boolean           C{(1, False)} < C{(1, True)}
    rank 2  number            C{(2, n)}; C{1 == 1.0}, compared exactly
    rank 3  date-time string  C{(3, epoch_ms)}, see L{parse_date_ms}
    rank 4  other string, array, object
                              C{(4, text)}; arrays and objects as their
                              canonical compact JSON text

Queries, sorts, C{$min}/C{$max}, unique indexes and C{$in} use this key;
C{values_equal(a, b)} is exactly C{sort_key(a) == sort_key(b)}, so the key is
a total preorder consistent with equality (and hashable, so it can key sets
and dicts).

Decisions where the spec leaves room:

  - Objects compare order-insensitively (the REC of engine.md 2.2): their
    text is the compact JSON with keys sorted at every level
    (L{canonical_json}), which is also the form v0.15 itself used after a
    restart. Arrays keep element order. Numbers inside containers compare as
    text (C{[1]} differs from C{[1.0]}), as in v0.15.
  - Integers are compared exactly with each other and with floats (v0.15
    rounds through f64, so it confuses integers above 2**53); this is a
    strict refinement.
  - A non-finite float (only reachable through non-JSON wire formats) ranks
    as null, like serde_json, which cannot hold one either.

Updates use the other equality, L{json_equal}: exact JSON equality where
C{1 != 1.0} and C{True != 1} (C{$pull}, C{$addToSet}).

Arithmetic results go through L{normalize_number}: float arithmetic, and an
integral result within the signed 64-bit range becomes an C{int}.

Everything here is pure and thread-safe: module state is immutable.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from oxidb.errors import TooLargeError

MAX_DEPTH = 100
"""
Deepest container nesting accepted in a document, query, update or
pipeline (C{{}} and C{[]} count 1 each, scalars 0).
"""

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1

RANK_NULL = 0
RANK_BOOL = 1
RANK_NUMBER = 2
RANK_DATE = 3
RANK_TEXT = 4

_NULL_KEY = (RANK_NULL,)

# --- JSON text ----------------------------------------------------------------


def compact_json(value: Any) -> str:
    """
    The compact JSON text of C{value}: no whitespace, keys in stored order,
    non-ASCII characters unescaped (serde_json's C{to_string}).
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> str:
    """
    Like L{compact_json} but with object keys sorted (by code point) at every
    level: the text under which arrays and objects compare.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


# --- dates --------------------------------------------------------------------

# chrono's DateTime::parse_from_rfc3339: exact widths, 'T', 't' or ' ' between
# date and time, optional fraction of any length, then 'Z'/'z' or a numeric
# offset (the Unicode minus sign is accepted too).
_RFC3339 = re.compile(
    "([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    "(?:\\.([0-9]+))?"
    "(?:[Zz]|([+\\-\u2212])([0-9]{2}):([0-9]{2}))"
)
# chrono's NaiveDateTime::parse_from_str with "%Y-%m-%dT%H:%M:%S" or
# "%Y-%m-%d %H:%M:%S": day and time fields take one or two digits. The month
# is two digits because of the pre-filter.
_NAIVE = re.compile("([0-9]{4})-([0-9]{2})-([0-9]{1,2})[T ]([0-9]{1,2}):([0-9]{1,2}):([0-9]{1,2})")
_DATE_ONLY = re.compile("([0-9]{4})-([0-9]{2})-([0-9]{2})")

_DIGITS = frozenset("0123456789")
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _instant_ms(
    year: int, month: int, day: int, hour: int, minute: int, second: int, millis: int
) -> int | None:
    if not 1 <= month <= 12:
        return None
    days_in_month = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= days_in_month:
        return None
    # Second 60 is a leap second: chrono keeps it as 59 s + 1000 ms.
    if hour > 23 or minute > 59 or second > 60:
        return None
    days = _days_from_civil(year, month, day)
    return ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis


def parse_date_ms(text: str) -> int | None:
    """
    The instant denoted by C{text} in epoch milliseconds (UTC), or C{None}
    if it is not a date-time string (engine.md 2.1).

    A candidate is at least 10 characters and starts with four digits, C{-},
    two digits; it must then fully parse as, in this order: an RFC 3339
    timestamp with a zone, C{YYYY-MM-DDTHH:MM:SS}, C{YYYY-MM-DD HH:MM:SS}
    (both taken as UTC) or C{YYYY-MM-DD} (midnight UTC). Sub-millisecond
    digits are dropped.
    """
    if (
        len(text) < 10
        or text[4] != "-"
        or not _DIGITS.issuperset(text[0:4])
        or not _DIGITS.issuperset(text[5:7])
    ):
        return None
    m = _RFC3339.fullmatch(text)
    if m is not None:
        year, month, day, hour, minute, second, frac, sign, off_h, off_m = m.groups()
        millis = int(frac[:3].ljust(3, "0")) if frac else 0
        offset_ms = 0
        if sign is not None:
            if int(off_m) > 59:
                return None
            offset_ms = (int(off_h) * 60 + int(off_m)) * 60_000
            if offset_ms >= 86_400_000:
                return None
            if sign != "+":
                offset_ms = -offset_ms
        ms = _instant_ms(
            int(year), int(month), int(day), int(hour), int(minute), int(second), millis
        )
        return None if ms is None else ms - offset_ms
    m = _NAIVE.fullmatch(text)
    if m is None:
        m = _DATE_ONLY.fullmatch(text)
        if m is None:
            return None
        return _instant_ms(int(m[1]), int(m[2]), int(m[3]), 0, 0, 0, 0)
    year, month, day, hour, minute, second = (int(g) for g in m.groups())
    return _instant_ms(year, month, day, hour, minute, second, 0)


def is_date_string(value: Any) -> bool:
    """True if C{value} is a string that ranks as a date-time."""
    return type(value) is str and parse_date_ms(value) is not None


def format_rfc3339(seconds: float) -> str:
    """
    C{seconds} since the epoch as an RFC 3339 UTC timestamp with a C{+00:00}
    offset, the way chrono's C{to_rfc3339} prints one: fractional digits in
    groups of 3 (milli-/microseconds), none for a whole second. Precision is
    the microsecond (a Python float carries no more).
    """
    micros = round(seconds * 1_000_000)
    days, rest = divmod(micros, 86_400_000_000)
    secs, frac = divmod(rest, 1_000_000)
    year, month, day = _civil_from_days(days)
    hour, rem = divmod(secs, 3600)
    minute, second = divmod(rem, 60)
    if frac == 0:
        fraction = ""
    elif frac % 1000 == 0:
        fraction = f".{frac // 1000:03d}"
    else:
        fraction = f".{frac:06d}"
    return (
        f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
        f"{fraction}+00:00"
    )


def _civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    return year, month, day


# --- comparison -----------------------------------------------------------------


def sort_key(value: Any) -> tuple[Any, ...]:
    """
    The engine.md 2.1 comparison key of a JSON value (see the module
    docstring). Raises C{TypeError} for a value that is not JSON.
    """
    kind = type(value)
    if kind is str:
        ms = parse_date_ms(value)
        return (RANK_TEXT, value) if ms is None else (RANK_DATE, ms)
    if kind is int:
        return (RANK_NUMBER, value)
    if kind is float:
        return (RANK_NUMBER, value) if math.isfinite(value) else _NULL_KEY
    if kind is bool:
        return (RANK_BOOL, value)
    if value is None:
        return _NULL_KEY
    if kind is dict or kind is list:
        return (RANK_TEXT, canonical_json(value))
    raise TypeError(f"not a JSON value: {kind.__name__}")


def values_equal(a: Any, b: Any) -> bool:
    """Equality as queries see it (engine.md 2.1)."""
    return sort_key(a) == sort_key(b)


def compare(a: Any, b: Any) -> int:
    """-1, 0 or 1 as C{a} sorts before, with or after C{b}."""
    ka, kb = sort_key(a), sort_key(b)
    return (ka > kb) - (ka < kb)


def json_equal(a: Any, b: Any) -> bool:
    """
    Exact JSON equality (serde_json's C{Value == Value}): types must agree,
    so C{1 != 1.0} and C{True != 1}; object key order does not matter; no
    date normalisation.
    """
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is dict:
        if len(a) != len(b):
            return False
        for key, item in a.items():
            if key not in b or not json_equal(item, b[key]):
                return False
        return True
    if kind is list:
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# --- numbers --------------------------------------------------------------------


def is_number(value: Any) -> bool:
    """True for JSON numbers (C{int} or C{float}, never C{bool})."""
    kind = type(value)
    return kind is int or kind is float


def to_float(value: int | float) -> float:
    """A number as f64; integers too large for a float become +-inf."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def normalize_number(result: float) -> int | float | None:
    """
    The stored form of an arithmetic result (engine.md 3.2, Appendix D):
    C{None} (null) if not finite, an C{int} if integral and within the signed
    64-bit range, otherwise the float.
    """
    if not math.isfinite(result):
        return None
    if result.is_integer() and I64_MIN <= result < 2.0**63:
        return int(result)
    return result


# --- structure ------------------------------------------------------------------


def deep_copy(value: Any) -> Any:
    """A deep copy of a JSON value (dicts and lists copied, scalars shared)."""
    kind = type(value)
    if kind is dict:
        return {key: deep_copy(item) for key, item in value.items()}
    if kind is list:
        return [deep_copy(item) for item in value]
    return value


def check_depth(value: Any, what: str, limit: int = MAX_DEPTH) -> None:
    """
    Raise L{TooLargeError} C{"<what> exceeds the maximum nesting depth of
    <limit>"} if C{value} nests deeper than C{limit} (L{MAX_DEPTH}).
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is dict:
            children = item.values()
        elif kind is list:
            children = item
        else:
            continue
        if depth > limit:
            raise TooLargeError(f"{what} exceeds the maximum nesting depth of {limit}")
        stack.extend(
            (child, depth + 1) for child in children if type(child) is dict or type(child) is list
        )
