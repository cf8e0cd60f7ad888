"""
Tests for the OxiWire codec (spec section 2.3), run against both the C
extension and the pure-Python reference, and for the envelopes in
L{oxidb.wire.oxiwire}.
"""

from __future__ import annotations

import importlib
import math
import struct
import tracemalloc
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.errors import DecodeError
from oxidb.wire import _oxiwire_py, oxiwire
from oxidb.wire.codec import WireFormat, decode_request, encode_error, encode_ok
from oxidb.wire.limits import MAX_DEPTH

# the C extension, or None when it is not built (reported by the fixture, not skipped)
_oxiwire_c: ModuleType | None
try:
    _oxiwire_c = importlib.import_module("oxidb.wire._oxiwire")
except ImportError:
    _oxiwire_c = None


@pytest.fixture(params=["python", "c"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each codec core; the C one must be built (gcc is part of the toolchain)."""
    if request.param == "python":
        return _oxiwire_py
    if _oxiwire_c is None:
        pytest.fail(
            "the C extension oxidb.wire._oxiwire is not built: "
            "run `pip install -e .` or `python setup.py build_ext --inplace`"
        )
    return _oxiwire_c


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def decode_error(impl: ModuleType, data: bytes, offset: int = 1) -> str:
    with pytest.raises(impl.OxiWireError) as info:
        impl.decode(data, offset, MAX_DEPTH)
    return str(info.value)


# --- the spec's byte examples --------------------------------------------------


@pytest.mark.parametrize(
    "value, encoded",
    [
        (42, "04 2a 00 00 00 00 00 00 00"),
        (-5, "03 fb ff ff ff ff ff ff ff"),
        (3.5, "05 00 00 00 00 00 00 0c 40"),
        (None, "00"),
        (False, "01"),
        (True, "02"),
        ("pong", "06 04 00 00 00 70 6f 6e 67"),
        ([], "07 00 00 00 00"),
        ({}, "08 00 00 00 00"),
    ],
)
def test_spec_examples(impl: ModuleType, value: object, encoded: str) -> None:
    assert impl.encode(value) == h(encoded)
    assert impl.decode(h(encoded), 0, MAX_DEPTH) == value


def test_ping_request(impl: ModuleType) -> None:
    request = h("db 08 01 00 00 00 03 00 00 00 63 6d 64 06 04 00 00 00 70 69 6e 67")
    assert impl.encode({"cmd": "ping"}, b"\xdb") == request
    assert impl.decode(request, 1, MAX_DEPTH) == {"cmd": "ping"}
    assert decode_request(request) == (WireFormat.OXIWIRE, {"cmd": "ping"})


def test_pong_reply() -> None:
    assert encode_ok(WireFormat.OXIWIRE, "pong") == h("db 00 06 04 00 00 00 70 6f 6e 67")
    assert oxiwire.decode_reply(h("db 00 06 04 00 00 00 70 6f 6e 67")) == (True, "pong")


def test_error_reply() -> None:
    payload = encode_error(WireFormat.OXIWIRE, "unknown command: nope")
    assert payload == b"\xdb\x01\x06" + struct.pack("<I", 21) + b"unknown command: nope"
    assert oxiwire.decode_reply(payload) == (False, "unknown command: nope")


def test_error_reply_is_utf8() -> None:
    payload = oxiwire.encode_error("é")
    assert payload == h("db 01 06 02 00 00 00 c3 a9")


def test_find_result_shape() -> None:
    docs = [{"a": 1}, {"a": 2}]
    payload = encode_ok(WireFormat.OXIWIRE, docs)
    assert payload[:7] == h("db 00 07 02 00 00 00")
    assert payload[7:] == oxiwire.encode_value({"a": 1}) + oxiwire.encode_value({"a": 2})


# --- encoder rules -------------------------------------------------------------


@pytest.mark.parametrize(
    "value, encoded",
    [
        (0, "04" + "00" * 8),
        (2**63 - 1, "04 ff ff ff ff ff ff ff 7f"),
        (2**63, "04 00 00 00 00 00 00 00 80"),
        (2**64 - 1, "04" + "ff" * 8),
        (-1, "03" + "ff" * 8),
        (-(2**63), "03 00 00 00 00 00 00 00 80"),
        (2**64, "05" + struct.pack("<d", 2.0**64).hex()),
        (-(2**63) - 1, "05" + struct.pack("<d", -(2.0**63)).hex()),
        (10**400, "00"),
        (-(10**400), "00"),
        (2.0, "05" + struct.pack("<d", 2.0).hex()),
        (-0.0, "05 00 00 00 00 00 00 00 80"),
        (float("nan"), "00"),
        (float("inf"), "00"),
        (float("-inf"), "00"),
        ((1, "a"), "07 02 00 00 00 04 01 00 00 00 00 00 00 00 06 01 00 00 00 61"),
    ],
)
def test_encoder_rules(impl: ModuleType, value: object, encoded: str) -> None:
    assert impl.encode(value) == h(encoded)


def test_bool_is_not_an_int(impl: ModuleType) -> None:
    assert impl.encode([True, False, 1, 0]) == h(
        "07 04 00 00 00 02 01 04 01 00 00 00 00 00 00 00 04 00 00 00 00 00 00 00 00"
    )


def test_map_keeps_insertion_order(impl: ModuleType) -> None:
    encoded = impl.encode({"b": 1, "a": None})
    assert encoded == h("08 02 00 00 00 01 00 00 00 62 04 01 00 00 00 00 00 00 00 01 00 00 00 61 00")
    assert list(impl.decode(encoded, 0, MAX_DEPTH)) == ["b", "a"]


def test_subclasses_encode_as_their_base(impl: ModuleType) -> None:
    class Text(str):
        pass

    class Number(int):
        pass

    class Mapping(dict):
        pass

    assert impl.encode(Mapping({Text("k"): Number(7)})) == impl.encode({"k": 7})


def test_header_is_prepended(impl: ModuleType) -> None:
    assert impl.encode(None, b"\xdb\x00") == b"\xdb\x00\x00"
    assert impl.encode("x" * 5000, b"hdr") == b"hdr" + impl.encode("x" * 5000)


def test_large_output(impl: ModuleType) -> None:
    value = ["x" * 1000] * 5000
    encoded = impl.encode(value)
    assert len(encoded) == 5 + 5000 * 1005
    assert impl.decode(encoded, 0, MAX_DEPTH) == value


@pytest.mark.parametrize(
    "value, message",
    [
        ({1: "a"}, "map keys must be strings, not int"),
        ({"a": {b"k": 1}}, "map keys must be strings, not bytes"),
        (b"raw", "cannot encode object of type bytes as OxiWire"),
        ([1, {2, 3}], "cannot encode object of type set as OxiWire"),
        (object(), "cannot encode object of type object as OxiWire"),
    ],
)
def test_encoder_refuses_what_json_cannot_carry(
    impl: ModuleType, value: object, message: str
) -> None:
    with pytest.raises(TypeError) as info:
        impl.encode(value)
    assert str(info.value) == message


def test_encoder_refuses_lone_surrogates(impl: ModuleType) -> None:
    with pytest.raises(UnicodeEncodeError):
        impl.encode("a\ud800")
    with pytest.raises(UnicodeEncodeError):
        impl.encode({"\udc00": 1})


def test_encoder_survives_self_reference(impl: ModuleType) -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(RecursionError):
        impl.encode(loop)


# --- decoder errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "payload, message",
    [
        ("db", "unexpected end of input"),
        ("db 03 00 00 00 00 00 00 00", "truncated int64"),
        ("db 04 00 00 00 00 00 00 00", "truncated uint64"),
        ("db 05 00 00 00 00 00 00 00", "truncated float64"),
        ("db 06 00 00 00", "truncated string length"),
        ("db 06 05 00 00 00 61 62", "truncated string data"),
        ("db 06 ff ff ff ff 61", "truncated string data"),
        ("db 07 01 00", "truncated array length"),
        ("db 07 02 00 00 00 00", "unexpected end of input"),
        ("db 07 ff ff ff ff", "unexpected end of input"),
        ("db 08 01", "truncated map length"),
        ("db 08 01 00 00 00 02 00", "truncated map key length"),
        ("db 08 ff ff ff ff", "truncated map key length"),
        ("db 08 01 00 00 00 03 00 00 00 61", "truncated map key data"),
        ("db 08 01 00 00 00 01 00 00 00 61", "unexpected end of input"),
        ("db 09", "unknown tag 0x09 at position 1"),
        ("db ff", "unknown tag 0xff at position 1"),
        ("db 07 02 00 00 00 00 0a", "unknown tag 0x0a at position 7"),
        ("db 08 01 00 00 00 01 00 00 00 61 db", "unknown tag 0xdb at position 11"),
        ("db 06 01 00 00 00 ff", "invalid utf8: invalid utf-8 sequence of 1 bytes from index 0"),
        ("db 06 04 00 00 00 61 e2 28 a1", "invalid utf8: invalid utf-8 sequence of 1 bytes from index 1"),
        ("db 06 03 00 00 00 61 e2 82", "invalid utf8: incomplete utf-8 byte sequence from index 1"),
        ("db 06 03 00 00 00 ed a0 80", "invalid utf8: invalid utf-8 sequence of 1 bytes from index 0"),
        ("db 06 02 00 00 00 c0 80", "invalid utf8: invalid utf-8 sequence of 1 bytes from index 0"),
        (
            "db 08 01 00 00 00 02 00 00 00 61 ff 00",
            "invalid utf8 key: invalid utf-8 sequence of 1 bytes from index 1",
        ),
        (
            "db 08 01 00 00 00 01 00 00 00 f0 00",
            "invalid utf8 key: incomplete utf-8 byte sequence from index 0",
        ),
    ],
)
def test_decoder_error_texts(impl: ModuleType, payload: str, message: str) -> None:
    assert decode_error(impl, h(payload)) == message


@pytest.mark.parametrize("payload", ["db 07 ff ff ff ff", "db 08 ff ff ff ff", "db 06 ff ff ff ff"])
def test_huge_counts_fail_without_allocating(impl: ModuleType, payload: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(impl.OxiWireError):
            impl.decode(h(payload) + bytes(64), 1, MAX_DEPTH)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_request_errors_carry_the_prefix() -> None:
    with pytest.raises(DecodeError) as info:
        decode_request(h("db 09"))
    assert str(info.value) == "invalid OxiWire request: unknown tag 0x09 at position 1"


def test_decode_value_errors_are_bare() -> None:
    with pytest.raises(DecodeError) as info:
        oxiwire.decode_value(h("03 00"))
    assert str(info.value) == "truncated int64"


# --- decoder semantics ---------------------------------------------------------


def test_extreme_integers(impl: ModuleType) -> None:
    assert impl.decode(h("04" + "ff" * 8), 0, MAX_DEPTH) == 2**64 - 1
    assert impl.decode(h("03 00 00 00 00 00 00 00 80"), 0, MAX_DEPTH) == -(2**63)
    assert impl.decode(h("03" + "ff" * 8), 0, MAX_DEPTH) == -1
    # both integer tags are accepted for any value
    assert impl.decode(h("03 2a 00 00 00 00 00 00 00"), 0, MAX_DEPTH) == 42


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_decode_to_null(impl: ModuleType, number: float) -> None:
    assert impl.decode(b"\x05" + struct.pack("<d", number), 0, MAX_DEPTH) is None


def test_duplicate_keys_later_value_first_position(impl: ModuleType) -> None:
    def entry(key: str, value: int) -> bytes:
        return struct.pack("<I", len(key)) + key.encode() + impl.encode(value)

    data = b"\x08" + struct.pack("<I", 3) + entry("a", 1) + entry("b", 2) + entry("a", 3)
    decoded = impl.decode(data, 0, MAX_DEPTH)
    assert decoded == {"a": 3, "b": 2}
    assert list(decoded) == ["a", "b"]


def test_trailing_bytes_are_ignored(impl: ModuleType) -> None:
    assert impl.decode(h("db 00 ff ff ff"), 1, MAX_DEPTH) is None
    assert decode_request(h("db 08 00 00 00 00 09 09")) == (WireFormat.OXIWIRE, {})


def test_decodes_from_any_buffer(impl: ModuleType) -> None:
    data = h("db 06 01 00 00 00 61")
    assert impl.decode(bytearray(data), 1, MAX_DEPTH) == "a"
    assert impl.decode(memoryview(data), 1, MAX_DEPTH) == "a"


def test_offset_out_of_range(impl: ModuleType) -> None:
    with pytest.raises(ValueError):
        impl.decode(b"\x00", 2, MAX_DEPTH)
    with pytest.raises(ValueError):
        impl.decode(b"\x00", -1, MAX_DEPTH)


def test_cached_keys_are_still_checked(impl: ModuleType) -> None:
    """Repeated and similar keys decode to the right strings every time."""
    docs = [{"name": i, "nAme": -i, "é": i, "x" * 100: i} for i in range(50)]
    assert impl.decode(impl.encode(docs), 0, MAX_DEPTH) == docs


def nested(depth: int, kind: str = "array") -> bytes:
    """C{depth} arrays (or maps under key C{k}) around null."""
    opener = b"\x07\x01\x00\x00\x00" if kind == "array" else b"\x08\x01\x00\x00\x00\x01\x00\x00\x00k"
    return opener * depth + b"\x00"


@pytest.mark.parametrize("kind", ["array", "map"])
def test_nesting_up_to_the_limit(impl: ModuleType, kind: str) -> None:
    value = impl.decode(nested(MAX_DEPTH, kind), 0, MAX_DEPTH)
    depth = 0
    while value is not None:
        value = value[0] if kind == "array" else value["k"]
        depth += 1
    assert depth == MAX_DEPTH


@pytest.mark.parametrize("kind", ["array", "map"])
def test_nesting_beyond_the_limit(impl: ModuleType, kind: str) -> None:
    assert decode_error(impl, nested(MAX_DEPTH + 1, kind), 0) == "nesting too deep"


def test_absurd_nesting_is_refused_not_a_crash(impl: ModuleType) -> None:
    assert decode_error(impl, b"\xdb" + nested(1_000_000)) == "nesting too deep"


def test_no_leaks_on_error_paths(impl: ModuleType) -> None:
    """
    Refcounting on error paths: decoding failing inputs (partially built
    lists, maps and strings included) again and again must not grow memory.
    """
    # keys that bypass the C key cache, so that a leaked key shows up as memory
    good = impl.encode({"é": [1, "two", {"k" * 70: 3.0}], "b": None}, b"\xdb")
    corpus = [good[:cut] for cut in range(1, len(good))]
    corpus += [good[:-1] + b"\x09", b"\xdb" + nested(MAX_DEPTH + 1), good.replace(b"two", b"t\xffo")]

    def run() -> int:
        failures = 0
        for data in corpus:
            try:
                impl.decode(data, 1, MAX_DEPTH)
            except impl.OxiWireError:
                failures += 1
        try:
            impl.encode([1, "x" * 5000, {2: 3}])
        except TypeError:
            failures += 1
        return failures

    assert run() == len(corpus) + 1
    tracemalloc.start()
    try:
        run()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(300):
            run()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 16 * 1024


# --- round trips -----------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(), inner, max_size=6),
    max_leaves=40,
)


def same(a: object, b: object) -> bool:
    """Equal, with int/float and the sign of zero told apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=300, deadline=None)
@given(value=values)
def test_round_trip(value: object) -> None:
    for core in (_oxiwire_py, _oxiwire_c):
        if core is None:
            continue
        assert same(core.decode(core.encode(value), 0, MAX_DEPTH), value)
    payload = encode_ok(WireFormat.OXIWIRE, value)
    assert oxiwire.decode_reply(payload)[0] is True
    assert same(oxiwire.decode_reply(payload)[1], value)


def test_c_extension_is_in_use() -> None:
    """The build in this checkout must provide the accelerator."""
    assert _oxiwire_c is not None, "run `pip install -e .` or `python setup.py build_ext --inplace`"
    assert oxiwire.IMPLEMENTATION == "c"
