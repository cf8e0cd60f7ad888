"""
Transaction commands: C{begin_tx}, C{commit_tx}, C{rollback_tx} (server.md
3.5, engine.md 6), and the open transaction the CRUD handlers hand over to
(L{ISessionTransaction}).

One transaction per connection, in C{ctx.session.tx}. Inside it:

  - C{insert} answers C{{"id": n}} and C{insert_many} the id array ([N]
    shapes): the ids are reserved at once by a C{ReserveIds} write, so they
    are final, never reused, and the same on every replica;
  - C{update}, C{update_one}, C{delete} and C{delete_one} run on the
    transaction's view at once (their errors surface at once) and answer
    C{"buffered"}; C{update_one}/C{delete_one} touch at most one document;
  - C{find}, C{find_one} and C{count} read the transaction's view (committed
    data overlaid with its own writes); C{find} honours sort, skip and limit.

C{commit_tx} takes the transaction off the session first (a failed commit
ends it too) and writes one C{CommitTransaction} operation; metrics count
commits and conflicts. A connection that closes drops its transaction with
the session: nothing else holds state for it (reserved ids are simply
gaps, and no locks are taken).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from oxidb.auth.rbac import Role
from oxidb.commands._registry import Command
from oxidb.commands.collections import engine_of
from oxidb.engine.databases import DEFAULT
from oxidb.engine.operations import Delete, DeleteOne, Insert, InsertMany, Operation, Update, UpdateOne
from oxidb.engine.transactions import Transaction, reserve_operation
from oxidb.errors import (
    DocumentNotObjectError,
    NoTransactionError,
    TransactionActiveError,
    TransactionConflictError,
)

if TYPE_CHECKING:
    from oxidb.commands._context import CommandContext

#: Transaction numbers, process-wide, from 1 (C{begin_tx} and procedure calls).
_tx_ids = itertools.count(1)


def new_transaction() -> Transaction:
    """A fresh transaction with the next process-wide number."""
    return Transaction(next(_tx_ids))


class ISessionTransaction(Interface):
    """
    The seam between the CRUD handlers and a connection's open transaction.
    Every method returns a Deferred firing with the reply data (C{count}:
    the number).
    """

    def buffer(ctx: CommandContext, op: Operation) -> Any:
        """
        Buffer the write operation a handler would have written: L{Insert},
        L{InsertMany}, L{Update}, L{UpdateOne}, L{Delete} (with its optional
        C{limit}) or L{DeleteOne}.
        """

    def find(ctx: CommandContext, collection: str, query: Any, sort: Any, skip: Any, limit: Any) -> Any:
        """Matching documents in the transaction's view."""

    def find_one(ctx: CommandContext, collection: str, query: Any) -> Any:
        """The first matching document in the view, or None."""

    def count(ctx: CommandContext, collection: str, query: Any) -> Any:
        """The number of matching documents in the view (an int)."""


@implementer(ISessionTransaction)
@attrs.define(eq=False)
class SessionTransaction:
    """
    A connection's open transaction (the value of C{session.tx}), bound to
    the database it was begun in (server.md 3.7).
    """

    tx: Transaction
    database: str = DEFAULT

    def _read(self, ctx: CommandContext, fn: Any, *args: Any) -> Deferred[Any]:
        return ctx.read(engine_of(ctx).read, fn, *args)

    def buffer(self, ctx: CommandContext, op: Operation) -> Deferred[Any]:
        match op:
            case Insert(collection=collection, document=document):
                d = self._insert(ctx, collection, [document])
                return d.addCallback(lambda ids: {"id": ids[0]})
            case InsertMany(collection=collection, documents=documents):
                return self._insert(ctx, collection, documents)
            case Update() | UpdateOne():
                return self._update(ctx, op)
            case Delete(collection=collection, query=query, limit=limit):
                d = self._read(ctx, self.tx.stage_delete, collection, query, limit)
            case DeleteOne(collection=collection, query=query):
                d = self._read(ctx, self.tx.stage_delete, collection, query, 1)
            case _:
                raise ValueError(f"not a transactional operation: {op.KIND}")
        return d.addCallback(lambda _: "buffered")

    def _update(self, ctx: CommandContext, op: Update | UpdateOne) -> Deferred[Any]:
        """
        C{"buffered"}; an upsert that matched nothing in the view buffers
        its new document as an insert under a reserved id and answers
        C{{"upserted_id": id}}.
        """
        now = ctx.clock.seconds()
        limit = 1 if isinstance(op, UpdateOne) else None
        stage = self.tx.stage_update
        d = self._read(ctx, stage, op.collection, op.query, op.update, now, limit, op.array_filters)

        def staged(matched: int) -> Any:
            if matched or not op.upsert:
                return "buffered"
            document = self.tx.upsert_document(op.query, op.update, now, op.array_filters)
            inserted = self._insert(ctx, op.collection, [document])
            return inserted.addCallback(lambda ids: {"upserted_id": ids[0]})

        return d.addCallback(staged)

    def _insert(self, ctx: CommandContext, collection: str, documents: list[Any]) -> Deferred[list[int]]:
        if any(type(doc) is not dict for doc in documents):
            raise DocumentNotObjectError()
        if not documents:
            return succeed([])
        d = ctx.write(reserve_operation(collection, len(documents)))
        return d.addCallback(lambda first: ctx.read(self.tx.stage_insert, collection, first, documents))

    def find(self, ctx: CommandContext, collection: str, query: Any, sort: Any, skip: Any, limit: Any) -> Deferred[Any]:
        return self._read(ctx, self.tx.find, collection, query, sort, skip, limit)

    def find_one(self, ctx: CommandContext, collection: str, query: Any) -> Deferred[Any]:
        return self._read(ctx, self.tx.find_one, collection, query)

    def count(self, ctx: CommandContext, collection: str, query: Any) -> Deferred[Any]:
        return self._read(ctx, self.tx.count, collection, query)


def commit(executor: Any, tx: Transaction, metrics: Any = None) -> Deferred[str]:
    """
    Commit C{tx} with one write through C{executor}; fires with
    C{"committed"} or fails (a L{TransactionConflictError} on conflict).
    C{metrics} (or None) counts the outcome, on the reactor thread.
    """
    op = tx.commit_operation()
    d: Deferred[Any] = succeed(None) if op is None else executor.write(op)

    def committed(_: Any) -> str:
        if metrics is not None:
            metrics.tx_committed()
        return "committed"

    def failed(failure: Failure) -> Failure:
        if metrics is not None and failure.check(TransactionConflictError):
            metrics.tx_conflicted()
        return failure

    return d.addCallbacks(committed, failed)


def begin_tx(ctx: CommandContext, request: dict[str, Any]) -> Any:
    """C{{"tx_id": n}}."""
    if ctx.session.tx is not None:
        raise TransactionActiveError()
    tx = new_transaction()
    ctx.session.tx = SessionTransaction(tx, request.get("db", DEFAULT))
    return {"tx_id": tx.tx_id}


def commit_tx(ctx: CommandContext, request: dict[str, Any]) -> Deferred[str]:
    """C{"committed"}, or the commit's error; either way the transaction is over."""
    open_tx = ctx.session.tx
    if open_tx is None:
        raise NoTransactionError()
    ctx.session.tx = None
    return commit(ctx.executor, open_tx.tx, ctx.metrics)


def rollback_tx(ctx: CommandContext, request: dict[str, Any]) -> str:
    """C{"rolled back"}: the buffered writes are dropped."""
    if ctx.session.tx is None:
        raise NoTransactionError()
    ctx.session.tx = None
    return "rolled back"


COMMANDS = [
    Command(
        "begin_tx",
        begin_tx,
        role=Role.READWRITE,
        database=True,
        summary='Opens the connection\'s transaction: `{"tx_id": n}`.',
    ),
    Command(
        "commit_tx",
        commit_tx,
        writes=True,
        role=Role.READWRITE,
        summary='`"committed"`, or the commit\'s error; either way the transaction is over.',
    ),
    Command(
        "rollback_tx",
        rollback_tx,
        role=Role.READWRITE,
        summary='`"rolled back"`: the buffered writes are dropped.',
    ),
]
