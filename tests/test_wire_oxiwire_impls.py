"""
The C extension and the pure-Python reference of the OxiWire codec agree: the
same bytes for every value, and for every input the same value or the same
error type and text.
"""

from __future__ import annotations

import math
import struct
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.wire import _oxiwire_py as py
from oxidb.wire.limits import MAX_DEPTH
from tests.extensions import built_extension


@pytest.fixture(scope="module")
def c() -> ModuleType:
    return built_extension("oxidb.wire._oxiwire")


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


# --- the C codec's fast paths and their edges --------------------------------------
#
# The C encoder reads compact ASCII strs and one-digit ints straight from the
# object and copies short strings without memcpy; the decoder keeps short
# ASCII keys and values in caches and decodes other UTF-8 itself. Each such
# path must give what the reference gives on both sides of its edges.


class _Str(str):
    pass


class _Int(int):
    pass


@pytest.mark.parametrize(
    "number",
    [
        0,
        1,
        -1,
        2**30 - 1,  # the largest one-digit int on 30-bit-digit builds
        2**30,
        -(2**30) + 1,
        -(2**30),
        2**31,
        2**60,
        2**63 - 1,
        2**63,
        2**64 - 1,
        2**64,
        -(2**63),
        -(2**63) - 1,
        2**1023 * 2 - 1,  # beyond uint64 but a finite double
        10**400,  # not even a double: null
        -(10**400),
        _Int(7),
        _Int(-(2**40)),
        _Int(2**70),
        True,
        False,
    ],
)
def test_integer_edges_agree(c: ModuleType, number: int) -> None:
    assert_agree(c, "encode", number)
    assert_agree(c, "encode", [number, {"n": number}])


@pytest.mark.parametrize(
    "number", [0.0, -0.0, 5e-324, -1.5, 1.7976931348623157e308, math.nan, -math.nan, math.inf, -math.inf]
)
def test_float_edges_agree(c: ModuleType, number: float) -> None:
    _, encoded = assert_agree(c, "encode", number)
    assert isinstance(encoded, bytes)
    if not math.isfinite(number):
        assert encoded == b"\x00"  # NaN and infinities are refused as numbers: null
    decoded = c.decode(encoded, 0, MAX_DEPTH)
    if math.isfinite(number):
        assert isinstance(decoded, float)
        assert math.copysign(1, decoded) == math.copysign(1, number)  # -0.0 keeps its sign


# lengths on both sides of each short-copy and cache boundary
_LENGTHS = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 200]


@pytest.mark.parametrize("length", _LENGTHS)
@pytest.mark.parametrize("char", ["a", "\u00e9", "\u2013", "\U0001f600"])
def test_string_lengths_agree(c: ModuleType, length: int, char: str) -> None:
    text = ("0123456789" * 20)[: max(0, length - 1)] + char if length else ""
    value = {text: text, "k": [text, _Str(text)], _Str(text + "!"): 1}
    kind, encoded = assert_agree(c, "encode", value)
    assert kind == "value"
    assert_agree(c, "decode", encoded, 0, MAX_DEPTH)
    assert c.decode(encoded, 0, MAX_DEPTH) == value


@pytest.mark.parametrize("length", [2, 3, 8, 9, 16, 17, 24, 40, 64])
def test_cached_strings_differing_in_few_bytes(c: ModuleType, length: int) -> None:
    """
    Thousands of keys and values of one length, alike but for the bytes at
    the start, the middle or the end, share the caches' 1024 slots: each
    decodes to itself however often it repeats, as a hit is confirmed on
    every byte.
    """
    strings = set()
    for number in range(3000):
        mark = f"{number:x}"[-min(length, 3) :]
        for at in (0, max(0, length // 2 - 1), length - len(mark)):
            strings.add(("m" * at + mark + "m" * length)[:length])
    ordered = sorted(strings)
    docs = [{s: s for s in ordered[i : i + 50]} for i in range(0, len(ordered), 50)]
    encoded = c.encode(docs)
    assert encoded == py.encode(docs)
    for _ in range(2):
        assert c.decode(encoded, 0, MAX_DEPTH) == docs


@pytest.mark.parametrize(
    "body",
    [
        b"\xc2\x80",  # smallest 2-byte sequence
        b"\xdf\xbf",
        b"\xc1\xbf",  # overlong 2-byte
        b"\xe0\xa0\x80",  # smallest 3-byte sequence
        b"\xe0\x9f\xbf",  # overlong 3-byte
        b"\xed\x9f\xbf",  # last before the surrogates
        b"\xed\xa0\x80",  # a surrogate
        b"\xee\x80\x80",
        b"\xef\xbf\xbf",
        b"\xf0\x90\x80\x80",  # smallest 4-byte sequence
        b"\xf0\x8f\xbf\xbf",  # overlong 4-byte
        b"\xf4\x8f\xbf\xbf",  # U+10FFFF
        b"\xf4\x90\x80\x80",  # beyond U+10FFFF
        b"\xf5\x80\x80\x80",
        b"\xff",
        b"\x80",
        b"a\xe2\x82",  # truncated at the end
        b"\xe2\x82a",  # continuation missing
        b"ab\xc3\xa9cd\xf0\x9f\x98\x80",
        b"\xc3\xa9" * 40,
    ],
)
def test_utf8_edges_agree(c: ModuleType, body: bytes) -> None:
    string = b"\x06" + struct.pack("<I", len(body)) + body
    entry = b"\x08\x01\x00\x00\x00" + struct.pack("<I", len(body)) + body + b"\x00"
    for data in (string, entry):
        assert_agree(c, "decode", data, 0, MAX_DEPTH)
    try:
        expected = body.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert c.decode(string, 0, MAX_DEPTH) == expected


@pytest.mark.parametrize("depth", [1, 31, 32, 33, 100])
def test_nesting_around_the_unguarded_levels_agrees(c: ModuleType, depth: int) -> None:
    value: object = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    assert_agree(c, "encode", value)


def test_failures_deep_inside_leave_the_recursion_guard_balanced(c: ModuleType) -> None:
    """
    An error raised below the levels the encoder encodes unguarded must
    release every Py_EnterRecursiveCall it made: thousands of such failures
    leave deep values encodable and self-references a RecursionError.
    """
    bad: object = {"k": {1, 2}}
    for _ in range(60):
        bad = [bad]
    for _ in range(3000):
        with pytest.raises(TypeError):
            c.encode(bad)
    deep: object = None
    for _ in range(200):
        deep = [deep]
    assert c.encode(deep) == py.encode(deep)
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(RecursionError):
        c.encode(loop)


@pytest.mark.parametrize("key", [1, 1.5, None, b"k", ("t",)])
def test_non_str_keys_agree(c: ModuleType, key: object) -> None:
    assert_agree(c, "encode", {"a": 1, key: 2})
    assert_agree(c, "encode", [{"ok": 1}, {"deep": {key: 2}}])


# --- frame splitting --------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=12), max_size=6),
    cut=st.integers(min_value=0, max_value=120),
    start=st.integers(min_value=0, max_value=8),
    max_frame=st.integers(min_value=0, max_value=14),
    known=st.booleans(),
)
def test_frame_splits_agree(
    c: ModuleType, payloads: list[bytes], cut: int, start: int, max_frame: int, known: bool
) -> None:
    """Whole frames, a cut one, a prefix over the limit, a known pending length, a bad start: the same outcome."""
    stream = bytearray(b"\0" * start + b"".join(struct.pack("<I", len(p)) + p for p in payloads))
    del stream[start + cut :]
    length = len(payloads[0]) if known and payloads and len(stream) - start >= 4 else -1
    expected = assert_agree(c, "split_frames", stream, start, length, max_frame)
    assert_agree(c, "split_frames", bytes(stream), start, length, max_frame)
    frames, _, pending, oversized = expected[1]  # type: ignore[misc]
    assert frames == payloads[: len(frames)]
    if oversized:
        assert pending == len(payloads[len(frames)]) > max_frame


def test_frame_split_refuses_a_start_outside_the_buffer(c: ModuleType) -> None:
    for core in (c, py):
        with pytest.raises(ValueError, match="start outside the buffer"):
            core.split_frames(b"\0\0\0\0", 5, -1, 10)
        with pytest.raises(ValueError, match="start outside the buffer"):
            core.split_frames(b"\0\0\0\0", -1, -1, 10)


def test_frame_split_reads_a_32_bit_prefix(c: ModuleType) -> None:
    """A prefix with its top bit set is a large length, not a negative one."""
    stream = b"\xff\xff\xff\xff" + b"x" * 8
    for core in (c, py):
        assert core.split_frames(stream, 0, -1, 16 << 20) == ([], 0, 0xFFFFFFFF, True)
        assert core.split_frames(stream, 0, -1, 1 << 40) == ([], 0, 0xFFFFFFFF, False)
