"""
Fuzzing every payload decoder: any input gives a value or a L{DecodeError},
never another exception and never a hang, and every value accepted can be
sent back in every format.
"""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.errors import DecodeError
from oxidb.wire import oxiwire
from oxidb.wire.codec import WireFormat, decode_reply, decode_request, encode_ok

pytestmark = pytest.mark.timeout(120)


def check_request(payload: bytes) -> None:
    try:
        fmt, value = decode_request(payload)
    except DecodeError as e:
        assert str(e).startswith(("invalid JSON: ", "invalid OxiWire request: ", "invalid MsgPack: "))
        return
    # whatever was accepted can be echoed in every format
    for out in WireFormat:
        encode_ok(out, value)
    assert decode_reply(encode_ok(WireFormat.JSON, value)) == {"ok": True, "data": value}


def check_reply(payload: bytes) -> None:
    try:
        reply = decode_reply(payload)
    except DecodeError:
        return
    assert isinstance(reply, dict) and isinstance(reply["ok"], bool)


prefixes = st.sampled_from(
    [b"", b"{", b"[", b" ", b"\n[", b"\xdb", b"\xdb\x07", b"\xdb\x08", b"\x81", b"\x91", b"\xdd", b"\xc7"]
)


@settings(max_examples=1000, deadline=None)
@given(prefix=prefixes, body=st.binary(max_size=120))
def test_random_bytes(prefix: bytes, body: bytes) -> None:
    check_request(prefix + body)
    check_reply(prefix + body)


json_tokens = st.sampled_from(
    [
        "{", "}", "[", "]", ",", ":", '"', '"a"', '"k":', "\\", "\\u", "d800", "\\udc00",
        "\\ud83d\\ude00", "0", "-", "1.5", "1e400", "-1e-400", "12345678901234567890",
        "-9223372036854775809", "NaN", "Infinity", "true", "false", "null", " ", "\n", "é", "\x00",
    ]
)


@settings(max_examples=1000, deadline=None)
@given(tokens=st.lists(json_tokens, max_size=40), lead=st.sampled_from(["{", "[", " "]))
def test_json_token_soup(tokens: list[str], lead: str) -> None:
    check_request((lead + "".join(tokens)).encode())


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


def msgpack_safe(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return None
    if isinstance(value, list):
        return [msgpack_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: msgpack_safe(v) for k, v in value.items()}
    return value


def encodings(value: object) -> list[bytes]:
    """C{value} as a request in all three formats."""
    return [
        json.dumps({"v": value}, allow_nan=True).encode(),
        b"\xdb" + oxiwire.encode_value({"v": value}),
        msgpack.packb({"v": msgpack_safe(value)}),
    ]


@settings(max_examples=500, deadline=None)
@given(
    value=values,
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete", "truncate"]),
            st.integers(0, 10_000),
            st.binary(min_size=1, max_size=3),
        ),
        max_size=4,
    ),
)
def test_mutated_valid_requests(value: object, edits: list[tuple[str, int, bytes]]) -> None:
    for encoded in encodings(value):
        data = bytearray(encoded)
        for action, where, blob in edits:
            position = where % max(1, len(data))
            if action == "flip" and data:
                data[position] ^= blob[0] or 0xFF
            elif action == "insert":
                data[position:position] = blob
            elif action == "delete" and data:
                del data[position]
            elif action == "truncate":
                del data[position:]
        check_request(bytes(data))


@settings(max_examples=200, deadline=None)
@given(value=values, cut=st.integers(0, 10_000))
def test_truncated_replies(value: object, cut: int) -> None:
    for fmt in WireFormat:
        reply = encode_ok(fmt, msgpack_safe(value))
        check_reply(reply[: cut % (len(reply) + 1)])


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 2_000_000,
        b"{" * 2_000_000,
        b'{"a":' * 500_000,
        b"\xdb" + b"\x07\x01\x00\x00\x00" * 500_000,
        b"\xdb" + b"\x08\x01\x00\x00\x00\x00\x00\x00\x00" * 500_000,
        b"\x91" * 2_000_000,
        b"\xdb\x07\xff\xff\xff\xff" + bytes(1_000_000),
        b"\xdd\xff\xff\xff\xff" + bytes(1_000_000),
        b"\x81\xdb\xff\xff\xff\xff",
        b'["' + b"\\" * 1_000_000,
        b"[" + b"1," * 500_000 + b"]",
        b"[" + b"9" * 10_000 + b"]",
    ],
)
def test_hostile_large_inputs(payload: bytes) -> None:
    check_request(payload)
