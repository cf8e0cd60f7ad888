# Type stub of the C extension built from _keys.c; keys.keys_at is the
# pure-Python reference and documents what keys_at computes.

from collections.abc import Callable
from typing import Any

def keys_at(doc: dict[str, Any], paths: list[tuple[str, ...]], /) -> tuple[bytes, ...]: ...
def configure(
    number_rank: int, null_key: bytes, str_key: Callable[[str], bytes], value_key: Callable[[Any], bytes], /
) -> None: ...
