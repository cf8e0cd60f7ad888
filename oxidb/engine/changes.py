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
operation: the recorder's runs as they stand (one per write primitive
called: the ids, and for inserts the stored JSON texts), with the
operation's first token. L{Change} objects are built from it only when a
watcher reads (L{OperationChanges.change}), so a write nobody watches pays
nothing per document for change capture beyond two C-level list copies.
Nothing here imports Twisted.
"""

from __future__ import annotations

import bisect
from operator import itemgetter
from typing import Any, NamedTuple

import attrs
import orjson
from zope.interface import Interface

from oxidb.engine import databases
from oxidb.wire.codec import RawJSON

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
    One committed document change, built when a watcher is written it
    (L{OperationChanges.change}). A named tuple rather than an attrs class:
    a watcher following a busy collection gets one per document.

    @ivar token: its resume token.
    @ivar operation: C{"insert"}, C{"update"} or C{"delete"}.
    @ivar doc_id: the document's C{_id}.
    @ivar text: the inserted document's JSON text, as stored (inserts
        only), else None.
    @ivar tx_id: the transaction number of a transaction's commit, else None.
    @ivar size: bytes of C{text} (0 without one).
    @ivar lost: changes of the same operation after this one that were not
        recorded (L{MAX_CHANGES_PER_OPERATION}).
    @ivar collection: the engine's (qualified) name of the collection
        (L{oxidb.engine.databases.qualify}).
    """

    token: int
    operation: str
    collection: str
    doc_id: int
    text: str | None = None
    tx_id: int | None = None
    size: int = 0
    lost: int = 0

    @property
    def document(self) -> dict[str, Any] | None:
        """The inserted document (inserts only), else None."""
        if self.text is None:
            return None
        document: dict[str, Any] = orjson.loads(self.text)
        return document

    def event_data(self, raw: bool = False) -> dict[str, Any]:
        """
        The C{data} of its C{change} event (server.md 3.6). C{collection}
        is the name a client uses; a collection outside the default
        database adds C{db}, its database (the default's events keep
        upstream's shape).

        @param raw: give the document as its stored text (L{RawJSON}, which
            the JSON encoder embeds as it is) instead of parsing it.
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
        if self.text is not None:
            data["document"] = RawJSON(self.text) if raw else self.document
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


# A run of changes recorded by one call: operation, collection, the
# position of its first change in the operation, the documents' ids, and
# for inserts their JSON texts (else None).
Run = tuple[str, str, int, list[int], "list[str] | None"]

_row_id = itemgetter(0)
_row_text = itemgetter(3)
_run_start = itemgetter(2)


@attrs.define(eq=False)
class OperationChanges:
    """
    The changes one committed operation made, as the recorder listed them:
    a few runs (one per write primitive it called), the change at position
    C{i} having the token C{first + i}. One per operation, whatever its
    number of documents; L{change} builds a change's L{Change} when it is
    wanted.

    @ivar first: the token of its first change.
    @ivar last: the token of its last change.
    @ivar count: its changes (recorded ones).
    @ivar runs: the L{Run}s, in position order (not empty).
    @ivar tx_id: the transaction number of a transaction's commit, else None.
    @ivar lost: changes of the operation past the last one recorded that
        were not recorded (L{MAX_CHANGES_PER_OPERATION}).
    @ivar size: bytes of the JSON texts of its inserted documents.
    """

    first: int
    last: int
    count: int
    runs: list[Run]
    tx_id: int | None = None
    lost: int = 0
    size: int = 0

    @classmethod
    def of(cls, first: int, runs: list[Run], tx_id: int | None = None, lost: int = 0) -> OperationChanges:
        """The changes of C{runs} (positions from 0), from token C{first} on."""
        last_run = runs[-1]
        count = last_run[2] + len(last_run[3])
        size = 0
        for run in runs:
            if run[4] is not None:
                size += sum(map(len, run[4]))
        return cls(first, first + count - 1, count, runs, tx_id, lost, size)

    @property
    def collection(self) -> str | None:
        """The one collection (qualified) all its changes are in, or None if several."""
        runs = self.runs
        name = runs[0][1]
        if len(runs) > 1 and any(run[1] != name for run in runs):
            return None
        return name

    def run_at(self, position: int) -> Run:
        """The run holding the change at C{position}."""
        runs = self.runs
        if len(runs) == 1:
            return runs[0]
        return runs[bisect.bisect_right(runs, position, key=_run_start) - 1]

    def change(self, position: int) -> Change:
        """Its change at C{position} (the token C{first + position})."""
        operation, collection, start, ids, texts = self.run_at(position)
        i = position - start
        lost = self.lost if position == self.count - 1 else 0
        if texts is None:
            return Change(self.first + position, operation, collection, ids[i], None, self.tx_id, 0, lost)
        text = texts[i]
        return Change(self.first + position, operation, collection, ids[i], text, self.tx_id, len(text), lost)

    def changes(self) -> list[Change]:
        """All its changes, in token order."""
        return [self.change(position) for position in range(self.count)]


class ChangeRecorder:
    """
    The writer's record of the changes of the operation being applied
    (writer thread only): one L{Run} per call, holding the caller's lists
    of ids, not a record per document.

    @ivar tx_id: the transaction number the current operation commits, if
        any (set by a transaction's commit while it applies).
    """

    def __init__(self, limit: int = MAX_CHANGES_PER_OPERATION) -> None:
        self._limit = limit
        self._runs: list[Run] = []
        self._count = 0
        self._lost = 0
        self.tx_id: int | None = None

    def begin(self) -> None:
        """A new operation starts."""
        self._runs = []
        self._count = 0
        self._lost = 0
        self.tx_id = None

    def mark(self) -> tuple[int, int]:
        """Where the record stands (changes recorded, changes lost), for L{rollback_to}."""
        return self._count, self._lost

    def rollback_to(self, mark: tuple[int, int]) -> None:
        """Forget what was recorded since C{mark} (a rolled back savepoint)."""
        count, self._lost = mark
        runs = self._runs
        # A mark falls between two calls, so between two runs.
        while runs and runs[-1][2] >= count:
            runs.pop()
        self._count = count

    def _add(self, operation: str, collection: str, ids: list[int], texts: list[str] | None) -> None:
        room = self._limit - self._count
        if len(ids) > room:
            self._lost += len(ids) - max(room, 0)
            if room <= 0:
                return
            ids = ids[:room]
            texts = None if texts is None else texts[:room]
        if ids:
            self._runs.append((operation, collection, self._count, ids, texts))
            self._count += len(ids)

    def record(self, operation: str, collection: str, doc_id: int) -> None:
        """One change of a document without its text (an update or delete)."""
        self._add(operation, collection, [doc_id], None)

    def record_inserts(self, collection: str, rows: list[tuple[int, int, dict[str, Any], str]]) -> None:
        """Inserted rows (C{(_id, _version, document, json_text)}): their ids and texts are kept."""
        room = self._limit - self._count
        if len(rows) > room:
            self._lost += len(rows) - max(room, 0)
            rows = rows[: max(room, 0)]
        if rows:
            self._runs.append(("insert", collection, self._count, list(map(_row_id, rows)), list(map(_row_text, rows))))
            self._count += len(rows)

    def record_many(self, operation: str, collection: str, ids: list[int]) -> None:
        """Changes of the documents C{ids} (kept as it is: not to be changed after)."""
        self._add(operation, collection, ids, None)

    @property
    def room(self) -> int:
        """Changes the current operation may still record one by one."""
        return max(self._limit - self._count, 0)

    def count_lost(self, n: int) -> None:
        """C{n} more changes of the operation, counted but not recorded."""
        self._lost += n

    @property
    def empty(self) -> bool:
        return not self._count and not self._lost

    def finish(self, sequence: int) -> OperationChanges | None:
        """
        The operation committed as C{sequence}: its changes, with the
        token of the first (None if it recorded none). The runs are handed
        over as they are, not copied.
        """
        runs, lost, tx_id = self._runs, self._lost, self.tx_id
        self.begin()
        if not runs:
            return None
        return OperationChanges.of(sequence << POSITION_BITS, runs, tx_id, lost)


__all__ = [
    "MAX_CHANGES_PER_OPERATION",
    "MAX_TOKEN",
    "META_KEY",
    "POSITION_BITS",
    "Change",
    "ChangeRecorder",
    "IChangeListener",
    "OperationChanges",
    "Run",
    "sequence_of",
    "token_of",
]
