"""
The pure-Python OxiWire value codec.

This is the reference implementation and the fallback when the C extension
L{oxidb.wire._oxiwire} is not built. Both modules expose the same names (L{OxiWireError},
L{encode}, L{decode}, L{json_scan} and its three results) and must agree
on every input: the same bytes, the same value, or the same error type and
text. C{tests/test_wire_oxiwire_impls.py} checks that with Hypothesis.

Value layout (spec section 2.3): one tag byte, then a little-endian body.
C{0x00} null, C{0x01} false, C{0x02} true, C{0x03} int64, C{0x04} uint64,
C{0x05} float64, C{0x06} string (u32 length + UTF-8), C{0x07} array (u32
count + values), C{0x08} map (u32 count + entries of untagged key (u32 length
+ UTF-8) and tagged value).
"""

from __future__ import annotations

import math
import re
import struct

_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")

_U32_MAX = 0xFFFF_FFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
_I64_MIN = -0x8000_0000_0000_0000

# The largest max_depth decode() accepts: both decoders recurse once per level.
_MAX_DEPTH_CAP = 512


class OxiWireError(ValueError):
    """A malformed OxiWire value; C{str()} is upstream's error text."""


# --- encoding ---------------------------------------------------------------


def encode(value: object, header: bytes = b"") -> bytes:
    """
    Encode C{value} as one tagged OxiWire value, after the bytes C{header}.

    Integers in C{[0, 2**64)} become uint64, negative ones that fit int64
    become int64, every other integer a float64 (or null when it does not
    fit a double); non-finite floats become null; tuples encode as arrays.

    @raise TypeError: a value or map key of an unsupported type.
    @raise ValueError: a string, array or map longer than a u32 can count.
    @raise UnicodeEncodeError: a string holding a lone surrogate.
    """
    out = bytearray(header)
    _encode_into(out, value)
    return bytes(out)


def _encode_into(out: bytearray, value: object) -> None:
    if value is None:
        out.append(0x00)
    elif value is True:
        out.append(0x02)
    elif value is False:
        out.append(0x01)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) > _U32_MAX:
            raise ValueError("string too long for OxiWire")
        out.append(0x06)
        out += _U32.pack(len(raw))
        out += raw
    elif isinstance(value, int):
        _encode_int(out, value)
    elif isinstance(value, float):
        _encode_float(out, value)
    elif isinstance(value, dict):
        if len(value) > _U32_MAX:
            raise ValueError("map too long for OxiWire")
        out.append(0x08)
        out += _U32.pack(len(value))
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"map keys must be strings, not {type(key).__name__}")
            raw = key.encode("utf-8")
            if len(raw) > _U32_MAX:
                raise ValueError("map key too long for OxiWire")
            out += _U32.pack(len(raw))
            out += raw
            _encode_into(out, item)
    elif isinstance(value, (list, tuple)):
        if len(value) > _U32_MAX:
            raise ValueError("array too long for OxiWire")
        out.append(0x07)
        out += _U32.pack(len(value))
        for item in value:
            _encode_into(out, item)
    else:
        raise TypeError(f"cannot encode object of type {type(value).__name__} as OxiWire")


def _encode_int(out: bytearray, value: int) -> None:
    if 0 <= value <= _U64_MAX:
        out.append(0x04)
        out += _U64.pack(value)
    elif _I64_MIN <= value < 0:
        out.append(0x03)
        out += _I64.pack(value)
    else:
        try:
            as_float = float(value)
        except OverflowError:
            out.append(0x00)
        else:
            out.append(0x05)
            out += _F64.pack(as_float)


def _encode_float(out: bytearray, value: float) -> None:
    if math.isfinite(value):
        out.append(0x05)
        out += _F64.pack(value)
    else:
        out.append(0x00)


# --- decoding ---------------------------------------------------------------


def decode(data: bytes, offset: int, max_depth: int) -> object:
    """
    Decode the tagged value that starts at C{data[offset]}; bytes after it
    are ignored.

    Arrays and maps nested more than C{max_depth} (at most 512) deep are
    refused. Counts
    never size an allocation: a count larger than the input fails on the
    first missing element.

    @raise OxiWireError: the input is truncated or malformed; the message
        is upstream's text (C{truncated int64}, C{unknown tag 0x09 at
        position 1}, ...), with positions counted from C{data[0]}.
    """
    if not 0 <= offset <= len(data):
        raise ValueError("offset out of range")
    if not 0 <= max_depth <= _MAX_DEPTH_CAP:
        raise ValueError("max_depth out of range")
    value, _ = _decode_value(data, offset, 0, max_depth)
    return value


def _decode_value(data: bytes, pos: int, depth: int, max_depth: int) -> tuple[object, int]:
    size = len(data)
    if pos >= size:
        raise OxiWireError("unexpected end of input")
    tag = data[pos]
    at = pos
    pos += 1
    if tag == 0x00:
        return None, pos
    if tag == 0x01:
        return False, pos
    if tag == 0x02:
        return True, pos
    if tag == 0x03:
        if size - pos < 8:
            raise OxiWireError("truncated int64")
        return _I64.unpack_from(data, pos)[0], pos + 8
    if tag == 0x04:
        if size - pos < 8:
            raise OxiWireError("truncated uint64")
        return _U64.unpack_from(data, pos)[0], pos + 8
    if tag == 0x05:
        if size - pos < 8:
            raise OxiWireError("truncated float64")
        number = _F64.unpack_from(data, pos)[0]
        return (number if math.isfinite(number) else None), pos + 8
    if tag == 0x06:
        if size - pos < 4:
            raise OxiWireError("truncated string length")
        length = _U32.unpack_from(data, pos)[0]
        pos += 4
        if size - pos < length:
            raise OxiWireError("truncated string data")
        return _utf8(data, pos, pos + length, "invalid utf8"), pos + length
    if tag == 0x07:
        if depth >= max_depth:
            raise OxiWireError("nesting too deep")
        if size - pos < 4:
            raise OxiWireError("truncated array length")
        count = _U32.unpack_from(data, pos)[0]
        pos += 4
        items = []
        for _ in range(count):
            item, pos = _decode_value(data, pos, depth + 1, max_depth)
            items.append(item)
        return items, pos
    if tag == 0x08:
        if depth >= max_depth:
            raise OxiWireError("nesting too deep")
        if size - pos < 4:
            raise OxiWireError("truncated map length")
        count = _U32.unpack_from(data, pos)[0]
        pos += 4
        result: dict[str, object] = {}
        for _ in range(count):
            if size - pos < 4:
                raise OxiWireError("truncated map key length")
            length = _U32.unpack_from(data, pos)[0]
            pos += 4
            if size - pos < length:
                raise OxiWireError("truncated map key data")
            key = _utf8(data, pos, pos + length, "invalid utf8 key")
            item, pos = _decode_value(data, pos + length, depth + 1, max_depth)
            result[key] = item
        return result, pos
    raise OxiWireError(f"unknown tag 0x{tag:02x} at position {at}")


def _utf8(data: bytes, start: int, end: int, what: str) -> str:
    """
    Decode C{data[start:end]}; on failure say what Rust's C{Utf8Error} says,
    with indexes counted from C{start}.
    """
    try:
        return str(data[start:end], "utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data":
            detail = f"incomplete utf-8 byte sequence from index {e.start}"
        else:
            detail = f"invalid utf-8 sequence of {e.end - e.start} bytes from index {e.start}"
        raise OxiWireError(f"{what}: {detail}") from None


# --- JSON pre-scan ------------------------------------------------------------

#: L{json_scan} results.
JSON_FAST = 0
JSON_TOO_DEEP = 1
JSON_LONG_INTEGER = 2

# A JSON string from its opening quote to its closing quote, or to the end of
# the input when it is unterminated (a trailing lone backslash included).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\[\s\S][^"\\]*)*(?:"|\\?\Z)')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")
_DIGIT_RUN = re.compile(rb"[0-9]{19,}")


def json_scan(data: bytes, limit: int) -> int:
    """
    A cheap look at a JSON text before parsing it, ignoring what is inside
    strings: L{JSON_TOO_DEEP} if it opens more than C{limit} arrays or
    objects inside one another, else L{JSON_LONG_INTEGER} if it holds a run
    of 19 or more digits that is neither a fraction (after C{.}) nor followed
    by C{.}, C{e} or C{E} (an integer literal that may not fit 64 bits), else
    L{JSON_FAST}. Text that is not JSON gets an answer too; the parser
    rejects it afterwards either way.
    """
    if data.count(b"[") + data.count(b"{") <= limit and _DIGIT_RUN.search(data) is None:
        return JSON_FAST
    # Strings become "" so that what surrounds them keeps its neighbours.
    outside = _JSON_STRING.sub(b'""', data)
    depth = 0
    for match in _JSON_BRACKET.finditer(outside):
        if match.group() in b"[{":
            depth += 1
            if depth > limit:
                return JSON_TOO_DEEP
        elif depth:
            depth -= 1
    for match in _DIGIT_RUN.finditer(outside):
        start, end = match.span()
        if outside[start - 1 : start] != b"." and outside[end : end + 1] not in (b".", b"e", b"E"):
            return JSON_LONG_INTEGER
    return JSON_FAST


# --- frame splitting ------------------------------------------------------------

_PREFIX = struct.Struct("<I")


def split_frames(
    buffer: bytes | bytearray | memoryview, start: int, length: int, max_frame: int
) -> tuple[list[bytes], int, int, bool]:
    """
    The payloads of the whole length-prefixed frames (a u32 little-endian
    length, then that many bytes) in C{buffer} from C{start} on.

    @param length: the declared length of the frame at C{start} when its
        prefix was read before, else -1.
    @return: C{(frames, start, length, oversized)}: C{start} and C{length}
        say the same of the first frame not complete. A prefix above
        C{max_frame} stops the split: C{oversized} is then true and
        C{length} that prefix's value.
    """
    if not 0 <= start <= len(buffer):
        raise ValueError("split_frames(): start outside the buffer")
    frames: list[bytes] = []
    end = len(buffer)
    with memoryview(buffer) as view:
        while True:
            if length < 0:
                if end - start < 4:
                    break
                (length,) = _PREFIX.unpack_from(view, start)
                if length > max_frame:
                    return frames, start, length, True
            if end - start - 4 < length:
                break
            frames.append(bytes(view[start + 4 : start + 4 + length]))
            start += 4 + length
            length = -1
    return frames, start, length, False
