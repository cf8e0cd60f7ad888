"""
Change capture for change streams: what the writer committed, document by
document, with a resume token each.

The engine's write primitives (L{oxidb.engine.writes.WriteTxn}: insert,
update, delete) record every document they change in the writer's
L{ChangeRecorder}; nothing else changes documents, so inserts, updates,
deletes, transactions, C{insert_many}, C{find_and_modify}, TTL deletes and
procedure steps are all captured where they are applied. A failing
operation, or a rolled back savepoint inside one, leaves no record.

B{Tokens.} Each committed operation that changed documents gets a
I{sequence}: its Raft log index in cluster mode (the same on every node,
since every node applies the same entries), or standalone the previous
sequence plus one. The token of a change is C{(sequence << 20) | position},
its position among the operation's changes counted from 0. The last token
is stored in C{oxi_meta} (C{change_token}) in the same SQLite transaction as
the data, so a restarted node knows where its history stands.

An operation records at most L{MAX_CHANGES_PER_OPERATION} changes; the
changes past that are counted (L{Change.lost}, on its last recorded change)
and reported to watchers as an C{overflow}, not one by one.

After the commit the writer hands the batch's changes to the engine's
L{IChangeListener} (on the writer thread), one L{OperationChanges} per
operation: the recorder's compact list as it stands, with the operation's
first token. L{Change} objects are built from it only when a watcher reads
(L{OperationChanges.change}), so a write nobody watches pays nothing per
document beyond the recorder's list. Nothing here imports Twisted.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, NamedTuple

import attrs
from zope.interface import Interface

from oxidb.engine import databases

#: Bits of a token holding the position of a change within its operation.
POSITION_BITS = 20

#: The largest resume token (tokens are unsigned 64-bit integers).
MAX_TOKEN = 2**64 - 1

#: Changes recorded per operation; more are only counted (L{Change.lost}).
#: As many as a replay buffer holds (server.md 3.6): more would push the
#: operation's own first changes out of it before any watcher could read
#: them.
MAX_CHANGES_PER_OPERATION = 4096

#: The database of every change until databases exist (kept out of events).

#: The C{oxi_meta} key of the last token committed.
META_KEY = "change_token"


def token_of(sequence: int, position: int) -> int:
    """The token of the change at C{position} in the operation of C{sequence}."""
    return (sequence << POSITION_BITS) | position


def sequence_of(token: int) -> int:
    """The sequence (Raft index, or standalone commit number) of a token."""
    return token >> POSITION_BITS


class Change(NamedTuple):
    """
    One committed document change. A named tuple rather than an attrs
    class: the writer makes one per changed document, and a tuple is
    several times cheaper to build.

    @ivar token: its resume token.
    @ivar operation: C{"insert"}, C{"update"} or C{"delete"}.
    @ivar doc_id: the document's C{_id}.
    @ivar document: the inserted document (inserts only), else None.
    @ivar tx_id: the transaction number of a transaction's commit, else None.
    @ivar size: bytes of C{document}'s JSON text (0 without one).
    @ivar lost: changes of the same operation after this one that were not
        recorded (L{MAX_CHANGES_PER_OPERATION}).
    @ivar collection: the engine's (qualified) name of the collection
        (L{oxidb.engine.databases.qualify}).
    """

    token: int
    operation: str
    collection: str
    doc_id: int
    document: dict[str, Any] | None = None
    tx_id: int | None = None
    size: int = 0
    lost: int = 0

    def event_data(self) -> dict[str, Any]:
        """
        The C{data} of its C{change} event (server.md 3.6). C{collection}
        is the name a client uses; a collection outside the default
        database adds C{db}, its database (the default's events keep
        upstream's shape).
        """
        database, collection = databases.split(self.collection)
        data: dict[str, Any] = {
            "token": self.token,
            "operation": self.operation,
            "collection": collection,
            "doc_id": self.doc_id,
        }
        if database != databases.DEFAULT:
            data["db"] = database
        if self.document is not None:
            data["document"] = self.document
        if self.tx_id is not None:
            data["tx_id"] = self.tx_id
        return data


class IChangeListener(Interface):
    """Told what the engine's writer committed (on the writer thread, or the opening one)."""

    def opened(last_token: int) -> None:
        """
        The engine (re)opened its database, whose last committed token is
        C{last_token}: changes committed while it was closed, or in a
        database swapped in meanwhile (a Raft snapshot), were not seen.
        """

    def committed(operations: list[OperationChanges]) -> None:
        """The changes of C{operations} (in token order) are durable."""


# A change recorded but not yet committed: operation, collection, doc_id,
# document, size.
_Pending = tuple[str, str, int, "dict[str, Any] | None", int]

_size = itemgetter(4)


@attrs.define(eq=False)
class OperationChanges:
    """
    The changes one committed operation made, as the recorder listed them:
    the change at position C{i} has the token C{first + i}. One per
    operation, whatever its number of documents; L{change} builds a
    change's L{Change} when it is wanted.

    @ivar first: the token of its first change.
    @ivar last: the token of its last change.
    @ivar pending: C{(operation, collection, doc_id, document, size)} per
        change, in token order (not empty).
    @ivar tx_id: the transaction number of a transaction's commit, else None.
    @ivar lost: changes of the operation past the last one listed that were
        not recorded (L{MAX_CHANGES_PER_OPERATION}).
    @ivar size: bytes of the JSON text of its documents.
    """

    first: int
    last: int
    pending: list[_Pending]
    tx_id: int | None = None
    lost: int = 0
    size: int = 0
    _only: str | None = attrs.field(default=None, init=False)
    _only_known: bool = attrs.field(default=False, init=False)

    @classmethod
    def of(cls, first: int, pending: list[_Pending], tx_id: int | None = None, lost: int = 0) -> OperationChanges:
        """The changes C{pending} listed from token C{first} on."""
        return cls(first, first + len(pending) - 1, pending, tx_id, lost, sum(map(_size, pending)))

    @property
    def collection(self) -> str | None:
        """The one collection (qualified) all its changes are in, or None if several."""
        if not self._only_known:
            pending = self.pending
            name = pending[0][1]
            self._only = name if all(p[1] == name for p in pending) else None
            self._only_known = True
        return self._only

    def change(self, position: int) -> Change:
        """Its change at C{position} (the token C{first + position})."""
        operation, collection, doc_id, document, size = self.pending[position]
        lost = self.lost if position == len(self.pending) - 1 else 0
        return Change(self.first + position, operation, collection, doc_id, document, self.tx_id, size, lost)

    def changes(self) -> list[Change]:
        """All its changes, in token order."""
        return [self.change(position) for position in range(len(self.pending))]


class ChangeRecorder:
    """
    The writer's record of the changes of the operation being applied
    (writer thread only).

    @ivar tx_id: the transaction number the current operation commits, if
        any (set by a transaction's commit while it applies).
    """

    def __init__(self, limit: int = MAX_CHANGES_PER_OPERATION) -> None:
        self._limit = limit
        self._pending: list[_Pending] = []
        self._lost = 0
        self.tx_id: int | None = None

    def begin(self) -> None:
        """A new operation starts."""
        self._pending = []
        self._lost = 0
        self.tx_id = None

    def mark(self) -> tuple[int, int]:
        """Where the record stands, for L{rollback_to}."""
        return len(self._pending), self._lost

    def rollback_to(self, mark: tuple[int, int]) -> None:
        """Forget what was recorded since C{mark} (a rolled back savepoint)."""
        del self._pending[mark[0] :]
        self._lost = mark[1]

    def record(self, operation: str, collection: str, doc_id: int, document: Any = None, size: int = 0) -> None:
        if len(self._pending) < self._limit:
            self._pending.append((operation, collection, doc_id, document, size))
        else:
            self._lost += 1

    def record_inserts(self, collection: str, rows: list[tuple[int, int, dict[str, Any], str]]) -> None:
        """Inserted rows (C{(_id, _version, document, json_text)})."""
        room = max(self._limit - len(self._pending), 0)
        self._pending.extend(("insert", collection, row[0], row[2], len(row[3])) for row in rows[:room])
        self._lost += max(len(rows) - room, 0)

    def record_many(self, operation: str, collection: str, ids: list[int]) -> None:
        room = max(self._limit - len(self._pending), 0)
        self._pending.extend((operation, collection, doc_id, None, 0) for doc_id in ids[:room])
        self._lost += max(len(ids) - room, 0)

    @property
    def room(self) -> int:
        """Changes the current operation may still record one by one."""
        return max(self._limit - len(self._pending), 0)

    def count_lost(self, n: int) -> None:
        """C{n} more changes of the operation, counted but not recorded."""
        self._lost += n

    @property
    def empty(self) -> bool:
        return not self._pending and not self._lost

    def finish(self, sequence: int) -> OperationChanges | None:
        """
        The operation committed as C{sequence}: its changes, with the
        token of the first (None if it recorded none). The recorded list is
        handed over as it is, not copied.
        """
        pending, lost, tx_id = self._pending, self._lost, self.tx_id
        self.begin()
        if not pending:
            return None
        return OperationChanges.of(sequence << POSITION_BITS, pending, tx_id, lost)


__all__ = [
    "MAX_CHANGES_PER_OPERATION",
    "MAX_TOKEN",
    "META_KEY",
    "POSITION_BITS",
    "Change",
    "ChangeRecorder",
    "IChangeListener",
    "OperationChanges",
    "sequence_of",
    "token_of",
]
