"""
The writer's cache of index definitions.

Every write reads its collection's index definitions (the key columns to
fill, the unique fields to check, the text and vector indexes to keep). An
L{IndexCatalog} keeps them per collection so that a write does not query
C{oxi_indexes} each time.

It is only correct on the one connection that changes the catalog (the
writer's), and only if every change to a collection's index definitions is
followed by L{IndexCatalog.forget} (the DDL methods of
L{oxidb.engine.writes.WriteTxn} do it), and every rollback to a savepoint
or of a transaction by L{IndexCatalog.rolled_back} or L{IndexCatalog.clear}
(the writer and L{oxidb.engine.writes.WriteTxn.savepoint} do it): a
rollback can bring back definitions a DDL statement had removed, or remove
ones it had added. Opening the engine starts with an empty catalog, so a
database file replaced while the engine was closed (a Raft snapshot, a
restored backup) is read afresh.
"""

from __future__ import annotations

import attrs

from oxidb.engine import sqlite, store
from oxidb.engine.store import IndexDef


@attrs.frozen
class CollectionIndexes:
    """
    One collection's index definitions and what writes derive from them.

    @ivar defs: the definitions in creation order (L{store.list_index_defs}).
    @ivar key_columns: C{(column, path)} of every key column (L{store.key_columns}).
    @ivar columns: the key column to read each indexed path from (L{store.column_map}).
    """

    defs: tuple[IndexDef, ...]
    key_columns: tuple[tuple[str, str], ...]
    columns: dict[str, str]

    @classmethod
    def of(cls, defs: list[IndexDef]) -> CollectionIndexes:
        return cls(tuple(defs), tuple(store.key_columns(defs)), store.column_map(defs))


@attrs.define
class IndexCatalog:
    """
    Index definitions per collection name, read from the catalog tables on
    first use.

    @ivar generation: bumped by every L{forget} and L{clear}; a savepoint
        remembers it (L{mark}) so that its rollback drops the cache only
        when DDL ran inside it.
    """

    _cached: dict[str, CollectionIndexes] = attrs.field(factory=dict)
    generation: int = 0

    def get(self, conn: sqlite.Connection, collection: str) -> CollectionIndexes:
        """The indexes of C{collection} as C{conn} sees them."""
        entry = self._cached.get(collection)
        if entry is None:
            entry = CollectionIndexes.of(store.list_index_defs(conn, collection))
            self._cached[collection] = entry
        return entry

    def defs(self, conn: sqlite.Connection, collection: str) -> tuple[IndexDef, ...]:
        """The index definitions of C{collection} in creation order."""
        return self.get(conn, collection).defs

    def forget(self, collection: str) -> None:
        """The index definitions of C{collection} changed (or may have)."""
        self._cached.pop(collection, None)
        self.generation += 1

    def clear(self) -> None:
        """Forget every collection (a transaction rolled back)."""
        self._cached.clear()
        self.generation += 1

    def mark(self) -> int:
        """What L{rolled_back} compares with: take it when a savepoint opens."""
        return self.generation

    def rolled_back(self, mark: int) -> None:
        """A savepoint opened at C{mark} rolled back: forget everything if DDL ran since."""
        if self.generation != mark:
            self.clear()
