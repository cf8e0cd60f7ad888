"""
OxiWire, the binary payload format (spec section 2.3): value codec and the
request and reply envelopes.

The codec is the C extension L{oxidb.wire._oxiwire} when it is built and the
pure-Python reference L{oxidb.wire._oxiwire_py} otherwise; both behave alike
byte for byte. L{IMPLEMENTATION} (C{"c"} or C{"python"}) says which one is in
use.
"""

from __future__ import annotations

import struct

from oxidb.errors import DecodeError
from oxidb.wire._accel import IMPLEMENTATION
from oxidb.wire._accel import impl as _impl
from oxidb.wire._json import RawJSON, materialize
from oxidb.wire.limits import MAX_DEPTH

__all__ = [
    "IMPLEMENTATION",
    "MAGIC",
    "decode_reply",
    "decode_request",
    "decode_value",
    "encode_error",
    "encode_ok",
    "encode_value",
]

#: First byte of every OxiWire payload, request or reply.
MAGIC = 0xDB

_OK_HEADER = b"\xdb\x00"
_ERROR_HEADER = b"\xdb\x01\x06"
_U32 = struct.Struct("<I")


def encode_value(value: object) -> bytes:
    """
    One tagged OxiWire value, no envelope.

    @raise TypeError: a value or map key of a type OxiWire cannot carry.
    """
    encoded: bytes = _impl.encode(value)
    return encoded


def decode_value(data: bytes, offset: int = 0) -> object:
    """
    The tagged value starting at C{data[offset]}; trailing bytes are ignored.

    @raise DecodeError: C{str()} is upstream's bare error text
        (C{"truncated int64"}, ...), without a prefix.
    """
    try:
        return _impl.decode(data, offset, MAX_DEPTH)
    except _impl.OxiWireError as e:
        raise DecodeError(str(e)) from None


def decode_request(payload: bytes) -> object:
    """
    The value of a request payload C{0xDB <value>}.

    @raise DecodeError: C{"invalid OxiWire request: <detail>"}.
    """
    if not payload or payload[0] != MAGIC:
        raise DecodeError("invalid OxiWire request: missing 0xdb marker")
    try:
        return _impl.decode(payload, 1, MAX_DEPTH)
    except _impl.OxiWireError as e:
        raise DecodeError(f"invalid OxiWire request: {e}") from None


def encode_ok(data: object) -> bytes:
    """
    The success reply payload C{0xDB 0x00 <data>}; L{RawJSON} texts in
    C{data} are decoded first.
    """
    if type(data) is RawJSON:
        data = data.value()
    encoded: bytes
    try:
        encoded = _impl.encode(data, _OK_HEADER)
    except TypeError:
        resolved = materialize(data)
        if resolved is data:
            raise
        encoded = _impl.encode(resolved, _OK_HEADER)
    return encoded


def encode_error(message: str) -> bytes:
    """The error reply payload C{0xDB 0x01 0x06 <u32 length> <UTF-8 message>}."""
    raw = message.encode("utf-8")
    return _ERROR_HEADER + _U32.pack(len(raw)) + raw


def decode_reply(payload: bytes) -> tuple[bool, object]:
    """
    Split a reply payload into C{(ok, value)}: the data on success, the
    message string on error. For clients and tests.

    @raise DecodeError: C{"invalid OxiWire reply: <detail>"}.
    """
    if len(payload) < 2 or payload[0] != MAGIC or payload[1] not in (0, 1):
        raise DecodeError("invalid OxiWire reply: bad header")
    try:
        value = _impl.decode(payload, 2, MAX_DEPTH)
    except _impl.OxiWireError as e:
        raise DecodeError(f"invalid OxiWire reply: {e}") from None
    ok = payload[1] == 0
    if not ok and not isinstance(value, str):
        raise DecodeError("invalid OxiWire reply: error message is not a string")
    return ok, value
