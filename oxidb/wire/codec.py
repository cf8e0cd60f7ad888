"""
Payload formats: detection, request decoding and reply encoding (spec
sections 1.4, 1.8 and 2.1-2.5).

Each frame payload is classified on its own by its first byte (L{detect}); the
reply to a request is encoded in the request's format, except that decode
failures are always answered in JSON (C{encode_error(WireFormat.JSON,
str(error))}) and the C{hello} success reply is always top-level JSON
(L{encode_json_top}).
"""

from __future__ import annotations

import enum
from typing import Any

from oxidb.errors import DecodeError
from oxidb.wire import _json, _msgpack, oxiwire
from oxidb.wire._json import RawJSON
from oxidb.wire.limits import MAX_DEPTH

__all__ = [
    "MAX_DEPTH",
    "RawJSON",
    "WireFormat",
    "decode_reply",
    "decode_request",
    "detect",
    "encode_error",
    "encode_event",
    "encode_json_top",
    "encode_ok",
    "encode_text",
    "is_small",
    "size_at_least",
]


class WireFormat(enum.Enum):
    JSON = "json"
    OXIWIRE = "oxiwire"
    MSGPACK = "msgpack"


_JSON = WireFormat.JSON

# First bytes that mean JSON: "{", "[" and the four JSON whitespace bytes.
# Upstream takes leading whitespace for MessagePack; we deliberately do not.
_JSON_FIRST = frozenset(b"{[ \t\n\r")


def detect(payload: bytes) -> WireFormat:
    """
    The format of a payload, from its first byte: C{{}, C{[} or JSON
    whitespace mean JSON, C{0xDB} OxiWire, anything else (the empty payload
    included) MessagePack.
    """
    if not payload:
        return WireFormat.MSGPACK
    first = payload[0]
    if first in _JSON_FIRST:
        return WireFormat.JSON
    if first == oxiwire.MAGIC:
        return WireFormat.OXIWIRE
    return WireFormat.MSGPACK


#: JSON requests up to this many bytes that are one flat object (such as
#: C{{"cmd":"ping"}}) are decoded once: L{decode_request} keeps their values
#: by text and hands out a copy.
SMALL_REQUEST = 128
#: At most this many of them (the memo starts over when full).
_SMALL_REQUESTS_KEPT = 256
_small_requests: dict[bytes, dict[str, object]] = {}


def decode_request(payload: bytes) -> tuple[WireFormat, object]:
    """
    Detect the payload's format and decode it. The value is usually a dict;
    any other valid value is returned as it is (the dispatcher treats it as
    a request without C{cmd}).

    @raise DecodeError: C{"invalid JSON: ..."}, C{"invalid OxiWire request:
        ..."} or C{"invalid MsgPack: ..."}; reply with
        C{encode_error(WireFormat.JSON, str(error))}.
    """
    if type(payload) is bytes and len(payload) <= SMALL_REQUEST:
        # A request seen before (ping): nothing else to find out.
        known = _small_requests.get(payload)
        if known is not None:
            return _JSON, known.copy()
    if payload and payload[0] in _JSON_FIRST:  # detect(), inline: most requests
        if len(payload) > SMALL_REQUEST or type(payload) is not bytes:
            return _JSON, _json.decode(payload)
        value = _json.decode(payload)
        if type(value) is dict and payload.count(b"{") == 1 and b"[" not in payload:
            # One flat object (its values are strings, numbers, booleans or
            # null): kept, so that the same text is not parsed again.
            if len(_small_requests) >= _SMALL_REQUESTS_KEPT:
                _small_requests.clear()
            _small_requests[payload] = value.copy()
        return _JSON, value
    fmt = detect(payload)
    if fmt is WireFormat.OXIWIRE:
        return fmt, oxiwire.decode_request(payload)
    return fmt, _msgpack.decode(payload)


def encode_ok(fmt: WireFormat, data: object) -> bytes:
    """
    The success reply payload: JSON C{{"ok":true,"data":<data>}}, OxiWire
    C{0xDB 0x00 <data>}, MessagePack map C{{"ok": true, "data": <data>}}.
    A L{RawJSON} inside C{data} stands for the value its text denotes (JSON
    embeds the text verbatim).

    @raise TypeError: C{data} holds something outside the JSON data model
        (a server bug).
    """
    if fmt is WireFormat.JSON:
        return _json.encode({"ok": True, "data": data})
    if fmt is WireFormat.OXIWIRE:
        return oxiwire.encode_ok(data)
    return _msgpack.encode({"ok": True, "data": data})


#: Text replies up to this many characters are kept once encoded (L{encode_text}).
SHORT_TEXT = 64
#: At most this many of them per format and outcome (the cache starts over when full).
_SHORT_CACHED = 256
# Per format: the payloads of success and of error replies, by text.
_short_ok: tuple[dict[str, bytes], dict[str, bytes], dict[str, bytes]] = ({}, {}, {})
_short_error: tuple[dict[str, bytes], dict[str, bytes], dict[str, bytes]] = ({}, {}, {})


def encode_text(fmt: WireFormat, ok: bool, text: str) -> bytes:
    """
    C{encode_ok(fmt, text)} if C{ok}, else C{encode_error(fmt, text)}, for
    a C{str}. The payloads of short texts (C{"pong"}, most error messages)
    are kept and returned again, so that they are encoded once, not per
    request.
    """
    index = 0 if fmt is _JSON else 1 if fmt is WireFormat.OXIWIRE else 2
    cache = _short_ok[index] if ok else _short_error[index]
    payload = cache.get(text)
    if payload is None:
        payload = encode_ok(fmt, text) if ok else encode_error(fmt, text)
        if len(text) <= SHORT_TEXT:
            if len(cache) >= _SHORT_CACHED:
                cache.clear()
            cache[text] = payload
    return payload


def encode_error(fmt: WireFormat, message: str) -> bytes:
    """
    The error reply payload: JSON C{{"ok":false,"error":<message>}}, OxiWire
    C{0xDB 0x01 <string>}, MessagePack map C{{"ok": false, "error": <message>}}.
    """
    if fmt is WireFormat.JSON:
        return _json.encode({"ok": False, "error": message})
    if fmt is WireFormat.OXIWIRE:
        return oxiwire.encode_error(message)
    return _msgpack.encode({"ok": False, "error": message})


def is_small(value: object, budget: int = 1024) -> bool:
    """
    Whether C{value} is surely cheap to encode in every format, looking at
    no more than about C{budget} of its parts: every value counts 1, a
    container also the number of its elements, a string or L{RawJSON} text
    also one per 64 characters. False as soon as the count passes
    C{budget}, so the answer costs little even for a huge value. A server
    encodes small replies inline and hands the others to a worker thread.
    """
    stack: list[Any] = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str:
            budget -= 1 + len(item) // 64
        elif kind is RawJSON:
            budget -= 1 + len(item.text) // 64
        elif kind is dict:
            budget -= 1 + len(item)
            if budget < 0:
                return False
            extend(item.values())
        elif kind is list or kind is tuple:
            budget -= 1 + len(item)
            if budget < 0:
                return False
            extend(item)
        else:
            budget -= 1
        if budget < 0:
            return False
    return True


def size_at_least(value: object, limit: int) -> int:
    """
    A lower bound of the size of C{value} encoded in any format. Every
    value counts one byte, a string its length, a L{RawJSON} text a fifth of
    its length (C{false} is five characters of JSON, one byte of
    MessagePack). The walk stops as soon as the bound passes C{limit}, so it
    costs no more than the first C{limit} bytes' worth of C{value}.
    """
    total = 0
    stack: list[Any] = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str:
            total += 1 + len(item)
        elif kind is RawJSON:
            total += 1 + len(item.text) // 5
        elif kind is dict:
            total += 1 + sum(map(len, item))
            extend(item.values())
        elif kind is list or kind is tuple:
            total += 1
            extend(item)
        else:
            total += 1
        if total > limit:
            break
    return total


def encode_json_top(obj: dict[str, object]) -> bytes:
    """
    Compact JSON of a whole top-level object, for replies that have no
    C{data} wrapper (the C{hello} success reply).
    """
    return _json.encode(obj)


def encode_event(fmt: WireFormat, obj: dict[str, object]) -> bytes:
    """
    A pushed event (a change stream's C{{"event": ..., "data": ...}}): a
    top-level map in JSON and MessagePack; OxiWire has no top-level map, so
    its connections get JSON text (as upstream sends events to every
    connection).
    """
    if fmt is WireFormat.MSGPACK:
        return _msgpack.encode(obj)
    return _json.encode(obj)


def decode_reply(payload: bytes) -> dict[str, object]:
    """
    A reply payload in any format, as the JSON-shaped envelope dict
    (C{{"ok": True, "data": ...}} or C{{"ok": False, "error": ...}}; a
    top-level JSON reply such as C{hello}'s comes back as it is). For
    clients, tests and the OxiWire branch of C{pipeline}.

    @raise DecodeError: the payload is not a well-formed reply.
    """
    fmt = detect(payload)
    if fmt is WireFormat.OXIWIRE:
        ok, value = oxiwire.decode_reply(payload)
        return {"ok": True, "data": value} if ok else {"ok": False, "error": value}
    reply = _json.decode(payload) if fmt is WireFormat.JSON else _msgpack.decode(payload)
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise DecodeError(f"invalid {fmt.value} reply: not an envelope")
    return reply
