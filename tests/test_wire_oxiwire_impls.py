"""
The C extension and the pure-Python reference of the OxiWire codec agree: the
same bytes for every value, and for every input the same value or the same
error type and text.
"""

from __future__ import annotations

import importlib
import math
import struct
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.wire import _oxiwire_py as py
from oxidb.wire.limits import MAX_DEPTH

# the C extension, or None when it is not built (reported by the fixture, not skipped)
c_ext: ModuleType | None
try:
    c_ext = importlib.import_module("oxidb.wire._oxiwire")
except ImportError:
    c_ext = None


@pytest.fixture(scope="module")
def c() -> ModuleType:
    if c_ext is None:
        pytest.fail(
            "the C extension oxidb.wire._oxiwire is not built: "
            "run `pip install -e .` or `python setup.py build_ext --inplace`"
        )
    return c_ext


def outcome(core: ModuleType, action: str, *args: object) -> tuple[str, object]:
    """What an API call gives: its result, or its error type and text."""
    try:
        result = getattr(core, action)(*args)
    except core.OxiWireError as e:
        return "OxiWireError", str(e)
    except (TypeError, ValueError, RecursionError, UnicodeError) as e:
        return type(e).__name__, str(e)
    if action == "decode":
        # canonical form: tells ints from floats, -0.0 from 0.0, key order
        return "value", py.encode(result)
    return "value", result


def assert_agree(c: ModuleType, action: str, *args: object) -> tuple[str, object]:
    expected = outcome(py, action, *args)
    assert outcome(c, action, *args) == expected
    return expected


# --- values ---------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too: those encode as float64 or null
    | st.floats()  # NaN and infinities too: those encode as null
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6)
    | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(value=values, header=st.binary(max_size=3))
def test_encoders_agree(c: ModuleType, value: object, header: bytes) -> None:
    kind, encoded = assert_agree(c, "encode", value, header)
    assert kind == "value"
    assert isinstance(encoded, bytes) and encoded.startswith(header)


@settings(max_examples=100, deadline=None)
@given(
    value=st.recursive(
        scalars | st.binary(max_size=3) | st.sets(st.integers(), max_size=2),
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=3) | st.integers() | st.binary(max_size=2), inner, max_size=4),
        max_leaves=12,
    )
)
def test_encoder_errors_agree(c: ModuleType, value: object) -> None:
    assert_agree(c, "encode", value)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(min_codepoint=0xD700, max_codepoint=0xE100), max_size=4))
def test_surrogate_errors_agree(c: ModuleType, text: str) -> None:
    assert_agree(c, "encode", [text])
    assert_agree(c, "encode", {text: 1})


@settings(max_examples=400, deadline=None)
@given(value=values)
def test_decoders_agree_on_valid_encodings(c: ModuleType, value: object) -> None:
    kind, _ = assert_agree(c, "decode", py.encode(value), 0, MAX_DEPTH)
    assert kind == "value"


# --- hostile input ----------------------------------------------------------------


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    """A valid encoding, then cut, with bytes flipped, inserted or removed."""
    data = bytearray(py.encode(draw(values)))
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        position = draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))
        if action == "flip" and data:
            data[position] = draw(st.integers(min_value=0, max_value=255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif action == "delete" and data:
            del data[position]
        elif action == "truncate":
            del data[position:]
    return bytes(data)


@settings(max_examples=600, deadline=None)
@given(data=mutated_encodings())
def test_decoders_agree_on_mutations(c: ModuleType, data: bytes) -> None:
    assert_agree(c, "decode", data, 0, MAX_DEPTH)


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=64), offset=st.integers(min_value=0, max_value=3))
def test_decoders_agree_on_random_bytes(c: ModuleType, data: bytes, offset: int) -> None:
    assert_agree(c, "decode", data, min(offset, len(data)), MAX_DEPTH)


# Bytes biased towards the tags, small lengths and UTF-8 edge cases, so that
# random input reaches deep into the decoder.
_INTERESTING = st.sampled_from(
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x61, 0x7F, 0x80, 0xBF, 0xC0, 0xC3, 0xE2, 0xED, 0xF0, 0xF4, 0xFF]
)


@settings(max_examples=600, deadline=None)
@given(data=st.lists(_INTERESTING, max_size=80).map(bytes), max_depth=st.integers(0, 4))
def test_decoders_agree_on_tag_soup(c: ModuleType, data: bytes, max_depth: int) -> None:
    assert_agree(c, "decode", data, 0, max_depth)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=12), tag=st.sampled_from([6, 8]))
def test_utf8_errors_agree(c: ModuleType, body: bytes, tag: int) -> None:
    """Arbitrary bytes as a string or a map key: the same text or error."""
    if tag == 6:
        data = b"\x06" + struct.pack("<I", len(body)) + body
    else:
        data = b"\x08\x01\x00\x00\x00" + struct.pack("<I", len(body)) + body + b"\x00"
    assert_agree(c, "decode", data, 0, MAX_DEPTH)


def test_decoders_agree_on_offsets_and_depths(c: ModuleType) -> None:
    data = b"\xdb\x06\x01\x00\x00\x00a"
    for offset in (-1, 0, 1, 6, 7, 8):
        assert_agree(c, "decode", data, offset, MAX_DEPTH)
    for max_depth in (-1, 0, 512, 513, 10**6):
        assert_agree(c, "decode", data, 1, max_depth)


@settings(max_examples=100, deadline=None)
@given(number=st.floats() | st.integers())
def test_number_rules_agree(c: ModuleType, number: float) -> None:
    assert_agree(c, "encode", number)
    decoded = c.decode(c.encode(number), 0, MAX_DEPTH)
    if isinstance(number, float) and not math.isfinite(number):
        assert decoded is None


# --- JSON pre-scan ---------------------------------------------------------------


@settings(max_examples=800, deadline=None)
@given(
    data=st.lists(st.sampled_from(list(b'[]{}"\\a ,:.eE-') + [b"1", b"9" * 10, b"0" * 19]), max_size=40).map(
        lambda parts: b"".join(p if isinstance(p, bytes) else bytes([p]) for p in parts)
    ),
    limit=st.integers(min_value=0, max_value=6),
)
def test_json_scans_agree(c: ModuleType, data: bytes, limit: int) -> None:
    assert c.json_scan(data, limit) == py.json_scan(data, limit)


@settings(max_examples=800, deadline=None)
@given(
    data=st.lists(
        st.sampled_from([b'"', b"\\", b"\\" * 2, b"[", b"]", b"x", b"x" * 7, b"x" * 23, b"y" * 100, b"9" * 19]),
        max_size=60,
    ).map(b"".join),
    limit=st.integers(min_value=0, max_value=6),
)
def test_json_scans_of_long_strings_agree(c: ModuleType, data: bytes, limit: int) -> None:
    """Strings past the first bytes are searched differently (memchr): escapes at that edge included."""
    assert c.json_scan(data, limit) == py.json_scan(data, limit)


def test_json_scan_results_agree(c: ModuleType) -> None:
    assert (c.JSON_FAST, c.JSON_TOO_DEEP, c.JSON_LONG_INTEGER) == (
        py.JSON_FAST,
        py.JSON_TOO_DEEP,
        py.JSON_LONG_INTEGER,
    )


FAST, DEEP, LONG = py.JSON_FAST, py.JSON_TOO_DEEP, py.JSON_LONG_INTEGER


@pytest.mark.parametrize(
    "data, limit, result",
    [
        (b"[[]]", 2, FAST),
        (b"[[[]]]", 2, DEEP),
        (b'["[[[[", {"a": "{{{{"}]', 2, FAST),
        (b'["\\"[[[["]', 1, FAST),
        (b'"\\\\"[[', 1, DEEP),
        (b'"unterminated [[[[', 1, FAST),
        (b'["' + b"x" * 23 + b'\\"[[[["]', 1, FAST),
        (b'["' + b"x" * 40 + b'\\\\"[[', 1, DEEP),
        (b'["' + b"x" * 40 + b'\\\\\\"[["]', 1, FAST),
        (b'"' + b"x" * 40 + b"\\", 0, FAST),
        (b"]]]][[", 2, FAST),
        (b"{" * 129, 128, DEEP),
        (b"[" * 128, 128, FAST),
        (b"[1234567890123456789]", 1, LONG),
        (b"[-1234567890123456789]", 1, LONG),
        (b"[123456789012345678]", 1, FAST),
        (b"[0.1234567890123456789]", 1, FAST),
        (b"[1234567890123456789.5]", 1, FAST),
        (b"[1234567890123456789e5]", 1, FAST),
        (b"[1234567890123456789E5]", 1, FAST),
        (b"[1e1234567890123456789]", 1, LONG),
        (b'["1234567890123456789"]', 1, FAST),
        (b"1234567890123456789", 0, LONG),
        (b"[[1234567890123456789]]", 1, DEEP),
        (b"[1234567890123456789,[[]]]", 2, DEEP),
    ],
)
def test_json_scan_examples(c: ModuleType, data: bytes, limit: int, result: int) -> None:
    assert py.json_scan(data, limit) == result
    assert c.json_scan(data, limit) == result
