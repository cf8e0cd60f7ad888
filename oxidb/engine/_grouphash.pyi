# Type stub of the C extension built from _grouphash.c; grouphash.hash_rows_python
# is the pure-Python reference and documents what hash_rows computes.

from collections.abc import Iterable
from typing import Any

def hash_rows(
    rows: Iterable[tuple[Any, ...]], specs: tuple[tuple[int, int], ...], /
) -> list[tuple[Any, ...]] | None: ...
def hash_blobs(
    blobs: Iterable[bytes | None], specs: tuple[tuple[int, int], ...], sized: bool, /
) -> tuple[list[tuple[Any, ...]], int] | None: ...

NULL_RANK: int
NUMBER_RANK: int
