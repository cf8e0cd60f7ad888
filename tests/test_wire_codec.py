"""
Tests for L{oxidb.wire.codec}: format detection, the JSON and MessagePack
codecs, and the reply envelopes of all three formats.
"""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.errors import DecodeError
from oxidb.wire import _json
from oxidb.wire.codec import (
    MAX_DEPTH,
    WireFormat,
    decode_reply,
    decode_request,
    detect,
    encode_error,
    encode_json_top,
    encode_ok,
    encode_text,
)


def decode_fails(payload: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        decode_request(payload)
    return str(info.value)


def nested_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# --- detection --------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload, fmt",
    [
        (b"{}", WireFormat.JSON),
        (b"[1]", WireFormat.JSON),
        (b" {}", WireFormat.JSON),
        (b"\t{}", WireFormat.JSON),
        (b"\n{}", WireFormat.JSON),
        (b"\r\n{}", WireFormat.JSON),
        (b"\xdb\x00", WireFormat.OXIWIRE),
        (b"\xdb", WireFormat.OXIWIRE),
        (b"", WireFormat.MSGPACK),
        (b"\x81\xa3cmd\xa4ping", WireFormat.MSGPACK),
        (b'"x"', WireFormat.MSGPACK),
        (b"3", WireFormat.MSGPACK),
        (b"\x0c{}", WireFormat.MSGPACK),
        (b"\xa0", WireFormat.MSGPACK),
    ],
)
def test_detect(payload: bytes, fmt: WireFormat) -> None:
    assert detect(payload) is fmt


# --- JSON requests ----------------------------------------------------------------


def test_ping() -> None:
    assert decode_request(b'{"cmd":"ping"}') == (WireFormat.JSON, {"cmd": "ping"})


def test_leading_whitespace_is_json_not_msgpack() -> None:
    """We deliberately differ from upstream, which reads this as MessagePack."""
    assert decode_request(b' \n\t\r{ "cmd" : "ping" }') == (WireFormat.JSON, {"cmd": "ping"})


def test_python_client_output() -> None:
    """The official client sends C{json.dumps} defaults: spaces and \\u escapes."""
    request = {"cmd": "insert", "collection": "c", "doc": {"name": "Zoë 😀", "n": [1, 2.5, None, True]}}
    fmt, decoded = decode_request(json.dumps(request).encode())
    assert fmt is WireFormat.JSON
    assert decoded == request


@pytest.mark.parametrize("payload", [b"[1]", b' "x"', b" 3", b"[]", b" null"])
def test_non_object_values_are_returned_as_is(payload: bytes) -> None:
    assert decode_request(payload) == (WireFormat.JSON, json.loads(payload))


@pytest.mark.parametrize(
    "number",
    [
        2**63 - 1,
        2**63,
        2**64 - 1,
        2**64,
        -(2**63),
        -(2**63) - 1,
        10**40,
        -(10**40),
        1234567890123456789,
    ],
)
def test_integers_are_exact_at_any_size(number: int) -> None:
    fmt, decoded = decode_request(b'{"n":%d,"s":"x"}' % number)
    assert decoded == {"n": number, "s": "x"}
    assert type(decoded["n"]) is int


def test_long_digit_runs_in_strings_change_nothing() -> None:
    payload = '{"phone":"12345678901234567890","é":"\\u00e9","f":1.5,"n":-0}'.encode()
    assert decode_request(payload) == (
        WireFormat.JSON,
        {"phone": "12345678901234567890", "é": "é", "f": 1.5, "n": 0},
    )


def test_floats() -> None:
    assert decode_request(b'[1.0, 1e2, -0.0, 2.5E-3, 1e-400]')[1] == [1.0, 100.0, -0.0, 0.0025, 0.0]


def test_long_digit_runs_in_floats() -> None:
    payload = (
        b"[0.000123456789012345678901, 12345678901234567890.5, 1234567890123456789012e-3, 1e-00000000000000000001]"
    )
    assert decode_request(payload)[1] == [
        0.000123456789012345678901,
        12345678901234567890.5,
        1234567890123456789012e-3,
        0.1,
    ]


@settings(max_examples=300, deadline=None)
@given(value=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
))
def test_fast_and_exact_json_paths_agree(value: object) -> None:
    """The orjson path and the standard-library path give the same value."""
    payload = json.dumps(value).encode()
    exact = _json._decode_exact(payload)
    assert json.dumps(decode_request(b" " + payload)[1]) == json.dumps(exact)


def test_duplicate_keys_last_wins() -> None:
    decoded = decode_request(b'{"a":1,"b":2,"a":3}')[1]
    assert decoded == {"a": 3, "b": 2}
    assert list(decoded) == ["a", "b"]


# Each case is tried as it is and with a 20-digit integer added, which sends
# it down the exact standard-library path: both paths must refuse it.
_EXACT = b'[12345678901234567890,'


@pytest.mark.parametrize(
    "body",
    [
        b"NaN]",
        b"Infinity]",
        b"-Infinity]",
        b"1e400]",
        b"-1e400]",
        b'"\\ud800"]',
        b'"\\udc00x"]',
        b'"a\\ud83d"]',
        b'"\xff"]',
        b'"\xed\xa0\x80"]',
        b'"tab\there"]',
        b"1,]",
        b"1] x",
        b"01]",
        b"'x']",
        b"",
    ],
)
def test_invalid_json_is_refused_on_both_paths(body: bytes) -> None:
    for payload in (b"[" + body, _EXACT + body):
        assert decode_fails(payload).startswith("invalid JSON: ")


def test_surrogate_pairs_are_accepted_on_both_paths() -> None:
    assert decode_request(b'["\\ud83d\\ude00"]')[1] == ["😀"]
    assert decode_request(_EXACT + b'"\\ud83d\\ude00"]')[1] == [12345678901234567890, "😀"]


@pytest.mark.parametrize("payload", [b" ", b"\n\n", b"{", b'{"a":}', b'{"a" 1}'])
def test_truncated_or_broken(payload: bytes) -> None:
    assert decode_fails(payload).startswith("invalid JSON: ")


def test_nesting_limit() -> None:
    assert MAX_DEPTH == 128
    assert decode_request(nested_json(MAX_DEPTH))[0] is WireFormat.JSON
    assert decode_fails(nested_json(MAX_DEPTH + 1)) == "invalid JSON: nesting deeper than 128"
    assert decode_fails(b"[" * 1_000_000) == "invalid JSON: nesting deeper than 128"
    # on the exact path too
    assert decode_fails(b"[12345678901234567890," + nested_json(MAX_DEPTH)) == (
        "invalid JSON: nesting deeper than 128"
    )


def test_brackets_inside_strings_do_not_count() -> None:
    payload = b'{"a":"' + b"[{" * 500 + b'\\"","b":[]}'
    assert decode_request(payload)[1] == {"a": "[{" * 500 + '"', "b": []}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, ascii_only=st.booleans(), indent=st.sampled_from([None, 1]))
def test_json_round_trip_from_stdlib_text(value: object, ascii_only: bool, indent: int | None) -> None:
    text = json.dumps({"v": value}, ensure_ascii=ascii_only, indent=indent)
    assert decode_request(text.encode())[1] == {"v": value}


# --- JSON replies -------------------------------------------------------------------


def test_pong_reply_bytes() -> None:
    assert encode_ok(WireFormat.JSON, "pong") == b'{"ok":true,"data":"pong"}'


def test_error_reply_bytes() -> None:
    assert encode_error(WireFormat.JSON, 'bad "x" / é') == b'{"ok":false,"error":"bad \\"x\\" / \xc3\xa9"}'


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80), st.sampled_from(list(WireFormat)), st.booleans())
def test_encode_text_is_encode_ok_or_error(text: str, fmt: WireFormat, ok: bool) -> None:
    expected = encode_ok(fmt, text) if ok else encode_error(fmt, text)
    # The first call may fill the cache; the second may read it: both agree.
    assert encode_text(fmt, ok, text) == expected
    assert encode_text(fmt, ok, text) == expected


def test_encode_text_keeps_short_texts_only() -> None:
    assert encode_text(WireFormat.JSON, True, "pong") is encode_text(WireFormat.JSON, True, "pong")
    assert encode_text(WireFormat.JSON, False, "pong") == b'{"ok":false,"error":"pong"}'
    long = "x" * 65
    assert encode_text(WireFormat.JSON, True, long) is not encode_text(WireFormat.JSON, True, long)


def test_encode_text_cache_is_bounded() -> None:
    from oxidb.wire import codec

    for i in range(3 * codec._SHORT_CACHED):
        assert encode_text(WireFormat.MSGPACK, False, f"unknown command: c{i}") == encode_error(
            WireFormat.MSGPACK, f"unknown command: c{i}"
        )
    assert len(codec._short_error[2]) <= codec._SHORT_CACHED


_flat_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.dictionaries(st.text(max_size=6), _flat_values, max_size=4),
        st.dictionaries(st.text(max_size=3), st.lists(_flat_values, max_size=2), max_size=2),
        st.lists(_flat_values, max_size=3),
    ),
    st.sampled_from(["", " "]),
)
def test_small_requests_decode_the_same_every_time(value: Any, space: str) -> None:
    """The memo of small flat requests is invisible: equal values, never one shared with the caller."""
    payload = json.dumps(value, separators=("," + space, ":" + space)).encode()
    expected = _json.decode(payload)
    for _ in range(3):
        fmt, got = decode_request(payload)
        assert fmt is WireFormat.JSON
        assert json.dumps(got) == json.dumps(expected)
        if isinstance(got, dict):
            got["mutated"] = True
            got.clear()


def test_small_request_memo_is_bounded_and_skips_nested_and_large() -> None:
    from oxidb.wire import codec

    for i in range(3 * codec._SMALL_REQUESTS_KEPT):
        assert decode_request(b'{"cmd":"c%d"}' % i)[1] == {"cmd": f"c{i}"}
    assert len(codec._small_requests) <= codec._SMALL_REQUESTS_KEPT
    codec._small_requests.clear()
    nested = b'{"cmd":"find","query":{"_id":5}}'
    large = b'{"cmd":"%s"}' % (b"x" * codec.SMALL_REQUEST)
    for payload in (nested, large, b'{"a":[1]}'):
        decode_request(payload)
        decode_request(payload)
    assert codec._small_requests == {}
    assert decode_request(bytearray(b'{"cmd":"ping"}')) == (WireFormat.JSON, {"cmd": "ping"})


def test_decode_errors_are_replied_in_json() -> None:
    with pytest.raises(DecodeError) as info:
        decode_request(b"\xdb\x09")
    assert encode_error(WireFormat.JSON, str(info.value)) == (
        b'{"ok":false,"error":"invalid OxiWire request: unknown tag 0x09 at position 1"}'
    )


def stdlib_json(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


@settings(max_examples=300, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
        max_leaves=30,
    )
)
def test_json_output_is_byte_identical_to_stdlib(value: object) -> None:
    assert encode_ok(WireFormat.JSON, value) == stdlib_json({"ok": True, "data": value})


@settings(max_examples=300, deadline=None)
@given(number=st.floats(allow_nan=False, allow_infinity=False))
def test_floats_round_trip_through_json_output(number: float) -> None:
    encoded = encode_ok(WireFormat.JSON, number)
    decoded = json.loads(encoded)["data"]
    assert decoded == number and math.copysign(1, decoded) == math.copysign(1, number)


def test_json_output_text_conventions() -> None:
    value = {"s": "é/😀\x00\x1f\"\\\n\u2028", "n": [1, -2, 2.5, 1e16, True, None]}
    assert encode_ok(WireFormat.JSON, value) == stdlib_json({"ok": True, "data": value})


def test_non_finite_floats_encode_as_null() -> None:
    assert encode_ok(WireFormat.JSON, [math.nan, math.inf, -math.inf]) == (
        b'{"ok":true,"data":[null,null,null]}'
    )


def test_huge_integers_in_json_output() -> None:
    value = {"big": 2**64, "neg": -(10**30), "nan": math.nan}
    assert encode_ok(WireFormat.JSON, value) == (
        b'{"ok":true,"data":{"big":18446744073709551616,"neg":-1000000000000000000000000000000,"nan":null}}'
    )


def test_deep_values_beyond_orjsons_limit_still_encode() -> None:
    value: Any = None
    for _ in range(300):
        value = [value]
    encoded = encode_ok(WireFormat.JSON, value)
    assert encoded == b'{"ok":true,"data":' + b"[" * 300 + b"null" + b"]" * 300 + b"}"


def test_json_output_refuses_non_str_keys() -> None:
    with pytest.raises(TypeError):
        encode_ok(WireFormat.JSON, {1: "a"})
    with pytest.raises(TypeError):
        encode_ok(WireFormat.JSON, {"big": 2**64, "bad": {1: "a"}})


def test_hello_reply_is_top_level_json() -> None:
    hello = {
        "ok": True,
        "server": {"name": "oxidb-server", "wire_version": 1, "supported_wire_versions": [1]},
    }
    assert encode_json_top(hello) == (
        b'{"ok":true,"server":{"name":"oxidb-server","wire_version":1,"supported_wire_versions":[1]}}'
    )
    assert decode_reply(encode_json_top(hello)) == hello


# --- MessagePack ------------------------------------------------------------------


def test_msgpack_request() -> None:
    payload = msgpack.packb({"cmd": "find", "collection": "c", "limit": 10, "f": 1.5, "x": None})
    assert decode_request(payload) == (
        WireFormat.MSGPACK,
        {"cmd": "find", "collection": "c", "limit": 10, "f": 1.5, "x": None},
    )


def test_msgpack_non_map_values_are_returned_as_is() -> None:
    assert decode_request(msgpack.packb([1, "a"])) == (WireFormat.MSGPACK, [1, "a"])
    assert decode_request(msgpack.packb(3)) == (WireFormat.MSGPACK, 3)


@pytest.mark.parametrize(
    "payload, detail",
    [
        (msgpack.packb({1: "a"}), "int is not allowed for map key"),
        (msgpack.packb({"a": {2: "b"}}), "int is not allowed for map key"),
        (msgpack.packb({b"k": 1}), "map keys must be strings"),
        (msgpack.packb({"k": b"raw"}), "bin values are not supported"),
        (msgpack.packb([b""]), "bin values are not supported"),
        (msgpack.packb(b"top"), "bin values are not supported"),
        (msgpack.packb({"k": msgpack.ExtType(5, b"x")}), "ext values are not supported"),
        (msgpack.packb([msgpack.Timestamp(1, 0)]), "ext values are not supported"),
        (msgpack.packb(msgpack.ExtType(1, b"")), "ext values are not supported"),
        (msgpack.packb({"a": 1}) + b"\x00", "extra data"),
        (b"\xc1", "FormatError"),
        (b"\x82\xa1a\x01", "incomplete input"),
        (b"\x82\xa1a", "exceeds max_map_len"),
    ],
)
def test_msgpack_refusals(payload: bytes, detail: str) -> None:
    message = decode_fails(payload)
    assert message.startswith("invalid MsgPack: ")
    assert detail in message


def test_empty_payload_is_invalid_msgpack() -> None:
    assert decode_fails(b"").startswith("invalid MsgPack: ")


@pytest.mark.parametrize("header", [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff"])
def test_msgpack_hostile_lengths_fail_fast(header: bytes) -> None:
    # 0xdb would be OxiWire; wrap the header in an array to stay in MsgPack
    assert decode_fails(b"\x91" + header + b"\x00" * 16).startswith("invalid MsgPack: ")


def test_msgpack_non_finite_floats_become_nil() -> None:
    payload = msgpack.packb({"a": [math.nan, math.inf], "b": -math.inf})
    assert decode_request(payload)[1] == {"a": [None, None], "b": None}
    assert decode_request(msgpack.packb(math.nan))[1] is None


def test_msgpack_nesting_limit() -> None:
    def nested(depth: int) -> bytes:
        return b"\x91" * depth + b"\xc0"

    value = decode_request(nested(MAX_DEPTH))[1]
    for _ in range(MAX_DEPTH):
        value = value[0]  # type: ignore[index]
    assert value is None
    assert decode_fails(nested(MAX_DEPTH + 1)) == "invalid MsgPack: nesting deeper than 128"
    assert decode_fails(b"\x81\xa1k" * (MAX_DEPTH + 1) + b"\xc0") == (
        "invalid MsgPack: nesting deeper than 128"
    )
    assert decode_fails(nested(100_000)).startswith("invalid MsgPack: ")


def test_msgpack_duplicate_keys_last_wins() -> None:
    payload = b"\x83\xa1a\x01\xa1b\x02\xa1a\x03"
    decoded = decode_request(payload)[1]
    assert decoded == {"a": 3, "b": 2}
    assert list(decoded) == ["a", "b"]


def test_msgpack_replies() -> None:
    ok = encode_ok(WireFormat.MSGPACK, {"n": 1})
    assert ok[0] == 0x82
    assert ok == b"\x82\xa2ok\xc3\xa4data\x81\xa1n\x01"
    error = encode_error(WireFormat.MSGPACK, "nope")
    assert error == b"\x82\xa2ok\xc2\xa5error\xa4nope"


def test_msgpack_reply_numbers() -> None:
    value = [2**64 - 1, -(2**63), 2**64, -(2**63) - 1, 10**400, math.nan, 2.0, (1, 2)]
    decoded = msgpack.unpackb(encode_ok(WireFormat.MSGPACK, value))
    assert decoded == {"ok": True, "data": [2**64 - 1, -(2**63), 2.0**64, -(2.0**63), None, None, 2.0, [1, 2]]}


def test_msgpack_reply_refuses_non_json_values() -> None:
    with pytest.raises(TypeError):
        encode_ok(WireFormat.MSGPACK, {1: "a"})
    with pytest.raises(TypeError):
        encode_ok(WireFormat.MSGPACK, [b"raw"])


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=msgpack_values)
def test_msgpack_round_trip(value: object) -> None:
    assert decode_request(msgpack.packb({"v": value}))[1] == {"v": value}
    assert decode_reply(encode_ok(WireFormat.MSGPACK, value)) == {"ok": True, "data": value}


# --- all formats --------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(value=msgpack_values, fmt=st.sampled_from(list(WireFormat)), message=st.text())
def test_reply_round_trip_in_every_format(value: object, fmt: WireFormat, message: str) -> None:
    assert decode_reply(encode_ok(fmt, value)) == {"ok": True, "data": value}
    assert decode_reply(encode_error(fmt, message)) == {"ok": False, "error": message}


@pytest.mark.parametrize(
    "payload",
    [b"[1]", b'{"data":1}', b"\x91\x01", b"\xdb", b"\xdb\x02\x00", b"\xdb\x01\x00", b"\xdb\x00\x09"],
)
def test_decode_reply_refuses_non_envelopes(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_reply(payload)


# --- without the C extension -----------------------------------------------------------

_FALLBACK_SCRIPT = r"""
import sys
sys.modules["oxidb.wire._oxiwire"] = None  # as if the extension were not built
from oxidb.errors import DecodeError
from oxidb.wire import oxiwire
from oxidb.wire.codec import WireFormat, decode_request, encode_ok
assert oxiwire.IMPLEMENTATION == "python", oxiwire.IMPLEMENTATION
assert decode_request(b'{"n":123456789012345678901234567890}')[1] == {"n": 123456789012345678901234567890}
assert decode_request(b"\xdb\x08\x01\x00\x00\x00\x01\x00\x00\x00k\x02") == (WireFormat.OXIWIRE, {"k": True})
assert encode_ok(WireFormat.OXIWIRE, "pong") == b"\xdb\x00\x06\x04\x00\x00\x00pong"
from oxidb.wire.framing import FrameDecoder, encode_frame
frames = FrameDecoder()
assert frames.feed(encode_frame(b"ab") + encode_frame(b"c")[:3]) == [b"ab"]
assert frames.feed(b"\0c") == [b"c"]
for bad in (b"[" * 129 + b"]" * 129, b"\xdb\x09"):
    try:
        decode_request(bad)
    except DecodeError as e:
        print(e)
"""


def test_codec_works_without_the_c_extension() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _FALLBACK_SCRIPT],
        capture_output=True,
        text=True,
        cwd=pathlib.Path(__file__).resolve().parent.parent,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "invalid JSON: nesting deeper than 128",
        "invalid OxiWire request: unknown tag 0x09 at position 1",
    ]
