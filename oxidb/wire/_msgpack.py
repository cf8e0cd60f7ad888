"""
The MessagePack payload codec (spec section 2.4), on the C{msgpack} library.

Requests decode to the JSON data model only: maps with string keys, arrays,
strings, numbers, booleans and nil. C{bin} and C{ext} values (timestamps
included) and non-string keys are refused, as upstream's decoder into a JSON
value refuses them; non-finite floats become nil, as in OxiWire. Replies are
the 2-map C{{"ok": .., "data"/"error": ..}}.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import msgpack

from oxidb.errors import DecodeError
from oxidb.wire._json import RawJSON
from oxidb.wire.limits import MAX_DEPTH

_SCALARS = (type(None), bool, int, str)
_Container = TypeVar("_Container", dict[str, object], list[object])
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
_I64_MIN = -0x8000_0000_0000_0000


class _Refused(ValueError):
    """A well-formed MessagePack item that a request may not carry."""


def decode(payload: bytes) -> object:
    """
    Decode one MessagePack value that spans the whole payload.

    @raise DecodeError: C{"invalid MsgPack: <detail>"}.
    """
    # Containers are built bottom-up; remember the depth of each one built so
    # far, by identity (every container stays alive until unpacking ends).
    depths: dict[int, int] = {}

    def check(value: object) -> tuple[object, int]:
        """C{value} made JSON-safe, and its nesting depth."""
        kind = type(value)
        if isinstance(value, float):
            return (value if math.isfinite(value) else None), 0
        if kind is dict or kind is list:
            return value, depths[id(value)]
        if kind in _SCALARS:
            return value, 0
        if kind is bytes:
            raise _Refused("bin values are not supported")
        raise _Refused("ext values are not supported")

    def container(value: _Container, depth: int) -> _Container:
        if depth > MAX_DEPTH:
            raise _Refused(f"nesting deeper than {MAX_DEPTH}")
        depths[id(value)] = depth
        return value

    def pairs_hook(pairs: list[tuple[object, object]]) -> dict[str, object]:
        result: dict[str, object] = {}
        deepest = 0
        for key, item in pairs:
            if type(key) is not str:
                raise _Refused("map keys must be strings")
            result[key], depth = check(item)
            deepest = max(deepest, depth)
        return container(result, deepest + 1)

    def list_hook(items: list[object]) -> list[object]:
        deepest = 0
        for index, item in enumerate(items):
            items[index], depth = check(item)
            deepest = max(deepest, depth)
        return container(items, deepest + 1)

    def ext_hook(code: int, data: bytes) -> object:
        raise _Refused("ext values are not supported")

    size = len(payload)
    try:
        value = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            object_pairs_hook=pairs_hook,
            list_hook=list_hook,
            ext_hook=ext_hook,
            # Nothing can be longer than the payload itself: a hostile
            # length header fails here instead of sizing an allocation.
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=size,
        )
        return check(value)[0]
    except (ValueError, TypeError, OverflowError) as e:
        raise DecodeError(f"invalid MsgPack: {str(e) or type(e).__name__}") from None


def encode(obj: object) -> bytes:
    """
    MessagePack for C{obj}: integers beyond int64/uint64 become float64 (nil
    when even that overflows), non-finite floats nil, tuples arrays,
    L{RawJSON} the value it denotes.

    @raise TypeError: a value or map key outside the JSON data model.
    """
    packed: bytes = msgpack.packb(_msgpack_safe(obj), use_bin_type=True)
    return packed


def _msgpack_safe(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is RawJSON:
        return _msgpack_safe(value.value())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        if _I64_MIN <= value <= _U64_MAX:
            return value
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"map keys must be strings, not {type(key).__name__}")
            result[key] = _msgpack_safe(item)
        return result
    if isinstance(value, (list, tuple)):
        return [_msgpack_safe(item) for item in value]
    if isinstance(value, str):
        return value
    raise TypeError(f"cannot encode object of type {type(value).__name__} as MsgPack")
