"""
Request field access with the upstream error texts.

A field that is present with the wrong type counts as missing (server.md 3.2);
optional integer fields of the wrong type are ignored and the default applies.
Only plain non-negative integers qualify as unsigned (never C{bool}, never
C{float}, even C{10.0}).
"""

from __future__ import annotations

from typing import Any

from oxidb.engine.store import check_client_collection
from oxidb.errors import BadRequestError


def require_str(request: dict[str, Any], key: str, message: str | None = None) -> str:
    """The string at C{key}, or L{BadRequestError} C{missing '<key>'}."""
    value = request.get(key)
    if not isinstance(value, str):
        raise BadRequestError(message or f"missing '{key}'")
    return value


def require_collection(request: dict[str, Any], key: str = "collection") -> str:
    """
    The collection a client names at C{key}: L{require_str}, and never one
    reserved for the server (L{oxidb.engine.store.RESERVED_PREFIX},
    L{oxidb.errors.ReservedCollectionError}).
    """
    name = require_str(request, key)
    check_client_collection(name)
    return name


def optional_str(request: dict[str, Any], key: str) -> str | None:
    value = request.get(key)
    return value if isinstance(value, str) else None


def require_object(request: dict[str, Any], key: str, message: str | None = None) -> dict[str, Any]:
    value = request.get(key)
    if not isinstance(value, dict):
        raise BadRequestError(message or f"missing '{key}'")
    return value


def require_present(request: dict[str, Any], key: str, message: str | None = None) -> Any:
    """Any non-null value at C{key}."""
    value = request.get(key)
    if value is None:
        raise BadRequestError(message or f"missing '{key}'")
    return value




def is_uint(value: Any) -> bool:
    return type(value) is int and value >= 0


def optional_uint(request: dict[str, Any], key: str, default: int | None = None) -> int | None:
    """A non-negative integer at C{key}; anything else gives C{default}."""
    value = request.get(key)
    return value if is_uint(value) else default




def max_time_ms(request: dict[str, Any]) -> Any:
    """
    The request's own time limit, C{max_time_ms} (or MongoDB's spelling
    C{maxTimeMS}), unchecked (the engine validates it); None if absent.
    """
    value = request.get("max_time_ms")
    return request.get("maxTimeMS") if value is None else value
