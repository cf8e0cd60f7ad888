"""
The JSON payload codec (spec sections 1.8 and 2.2).

Output is compact UTF-8 JSON as C{json.dumps(obj, ensure_ascii=False,
separators=(",", ":"))} writes it, with non-finite floats as C{null}. Input
is any JSON text. C{orjson} does the work; the standard library takes over
where orjson would lose information (integers beyond 64 bits) or refuses
(encoding nesting beyond its limit).

A L{RawJSON} value anywhere in an encoded object is embedded verbatim (the
engine hands its stored document texts over this way, so that C{find}
replies never parse and re-encode them); L{materialize} turns it back into
values for the binary formats.
"""

from __future__ import annotations

import json
import math
from typing import Any

import attrs
import orjson

from oxidb.errors import DecodeError
from oxidb.wire._accel import impl as _impl
from oxidb.wire.limits import MAX_DEPTH


@attrs.define(repr=False, weakref_slot=False)
class RawJSON:
    """
    A JSON text to embed verbatim in a reply, in place of the value it
    denotes. The text must be compact JSON as L{encode} writes it (the
    engine's stored documents are), so that the reply is byte for byte the
    one the decoded value would give. Equal to another C{RawJSON} of the
    same text.
    """

    text: str

    def __repr__(self) -> str:
        return f"RawJSON({self.text!r})"

    def __hash__(self) -> int:
        return hash(self.text)

    def value(self) -> Any:
        """The value the text denotes."""
        return orjson.loads(self.text)


def materialize(value: Any) -> Any:
    """
    C{value} with every L{RawJSON} inside replaced by the value it denotes;
    C{value} itself when it holds none.
    """
    kind = type(value)
    if kind is RawJSON:
        return value.value()
    if kind is dict:
        items = {key: materialize(item) for key, item in value.items()}
        if any(items[key] is not item for key, item in value.items()):
            return items
        return value
    if kind is list or kind is tuple:
        elements = [materialize(item) for item in value]
        if any(new is not old for new, old in zip(elements, value, strict=True)):
            return elements
        return value
    return value


def _default(value: Any) -> Any:
    if type(value) is RawJSON:
        return orjson.Fragment(value.text)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


_json_scan = _impl.json_scan
_JSON_FAST = _impl.JSON_FAST
_JSON_TOO_DEEP = _impl.JSON_TOO_DEEP


def decode(payload: bytes) -> object:
    """
    Parse one JSON text. Integers stay exact at any size; C{NaN},
    C{Infinity}, numbers that overflow a double, lone surrogates and nesting
    deeper than L{MAX_DEPTH} are refused. Duplicate keys: the last wins.

    @raise DecodeError: C{"invalid JSON: <detail>"}.
    """
    # The scan runs first so that no parser ever recurses deeper than
    # MAX_DEPTH. orjson reads integers beyond 64 bits as floats, so text that
    # may hold one goes to the exact standard-library parser instead.
    scan = _json_scan(payload, MAX_DEPTH)
    if scan == _JSON_FAST:
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            raise DecodeError(f"invalid JSON: {e}") from None
    if scan == _JSON_TOO_DEEP:
        raise DecodeError(f"invalid JSON: nesting deeper than {MAX_DEPTH}")
    return _decode_exact(payload)


def _decode_exact(payload: bytes) -> object:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError(f"invalid JSON: {e}") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as e:
        raise DecodeError(f"invalid JSON: {e}") from None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise DecodeError("invalid JSON: lone surrogate in string") from None
    return value


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number out of range: {text}")
    return number


def encode(obj: object) -> bytes:
    """
    Compact UTF-8 JSON for C{obj} (non-finite floats as C{null}).

    @raise TypeError: a value or object key that JSON cannot carry.
    @raise UnicodeEncodeError: a string holding a lone surrogate.
    """
    try:
        return orjson.dumps(obj, default=_default)
    except orjson.JSONEncodeError:
        # Integers beyond 64 bits or nesting beyond orjson's limit; anything
        # else fails again below with the standard library's own message.
        pass
    text = json.dumps(
        _json_safe(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )
    return text.encode("utf-8")


def _json_safe(value: Any) -> Any:
    """
    C{value} with non-finite floats as C{None} and L{RawJSON} decoded;
    non-str keys are refused.
    """
    if type(value) is RawJSON:
        return value.value()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"object keys must be strings, not {type(key).__name__}")
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value
