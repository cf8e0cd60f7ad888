"""
Document commands: C{insert}, C{insert_many}, C{find}, C{find_one},
C{update}, C{update_one}, C{delete}, C{delete_one}, C{count} (server.md 3.3,
engine.md 0-3).

Request texts follow server.md 3.2: a required field that is absent, null or
(for strings and arrays) of the wrong type is C{missing '<field>'}; an
optional C{query} that is absent or null means C{{}}; a C{query} or
C{update} of the wrong type reaches the engine, which reports it (C{invalid
query: query must be a JSON object}). Invalid C{sort}/C{skip}/C{limit} values
of C{find} are ignored by the engine as upstream does, except a bad sort
direction and integers past 2**63 - 1.

Reads take an optional C{max_time_ms} (or C{maxTimeMS}): it may lower the
server's time limit (see docs/security.md, "Limits").

Transaction seam. When a transaction is open on the connection
(C{ctx.session.tx}, an L{oxidb.commands.transactions.ISessionTransaction}),
every command here hands over to it: writes call C{tx.buffer(ctx, op)} with
the very operation (an L{oxidb.engine.operations.Operation}) they would have
written; C{find}, C{find_one} and
C{count} call C{tx.find}/C{tx.find_one}/C{tx.count}. Unlike v0.15, none
bypasses the transaction (see docs/transactions.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from oxidb.auth.rbac import Role
from oxidb.commands._args import is_uint, max_time_ms, require_collection, require_list, require_present
from oxidb.commands._registry import Command
from oxidb.commands._schema import MAX_TIME_MS, Field, JsonType, collection_field, fields
from oxidb.commands.collections import engine_of
from oxidb.engine.operations import Delete, DeleteOne, Insert, InsertMany, Operation, Update, UpdateOne
from oxidb.errors import BadRequestError
from oxidb.wire.codec import RawJSON

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from oxidb.commands._context import CommandContext


def _write(ctx: CommandContext, op: Operation) -> Any:
    tx = ctx.session.tx
    if tx is not None:
        return tx.buffer(ctx, op)
    return ctx.write(op)


def _raw(text: str | None) -> RawJSON | None:
    """Stored document text, embedded in the reply without re-encoding."""
    return None if text is None else RawJSON(text)


def _query(request: dict[str, Any]) -> Any:
    """The optional query of a read: absent or null means C{{}}."""
    query = request.get("query")
    return {} if query is None else query


def insert(ctx: CommandContext, request: dict[str, Any]) -> Any:
    """C{{"id": n}}."""
    collection = require_collection(request)
    document = require_present(request, "doc")
    return _write(ctx, Insert(collection, document))


def insert_many(ctx: CommandContext, request: dict[str, Any]) -> Any:
    """The new ids, consecutive, all-or-nothing."""
    collection = require_collection(request)
    documents = require_list(request, "docs", "missing or invalid 'docs' array")
    return _write(ctx, InsertMany(collection, documents))


def find(ctx: CommandContext, request: dict[str, Any]) -> Any:
    """Matching documents: filter, sort, skip, limit (engine.md 2.5)."""
    collection = require_collection(request)
    query = _query(request)
    tx = ctx.session.tx
    if tx is not None:
        return tx.find(ctx, collection, query, request.get("sort"), request.get("skip"), request.get("limit"))
    d = ctx.read(
        engine_of(ctx).find_raw,
        collection,
        query,
        request.get("sort"),
        request.get("skip"),
        request.get("limit"),
        max_time_ms(request),
    )
    return d.addCallback(_raw)


def find_one(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """The matching document with the lowest C{_id}, or null."""
    collection = require_collection(request)
    tx = ctx.session.tx
    if tx is not None:
        found: Deferred[Any] = tx.find_one(ctx, collection, _query(request))
        return found
    d = ctx.read(engine_of(ctx).find_one_raw, collection, _query(request), max_time_ms(request))
    return d.addCallback(_raw)


def count(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{{"count": n}}."""
    collection = require_collection(request)
    tx = ctx.session.tx
    d: Deferred[Any]
    if tx is not None:
        d = tx.count(ctx, collection, _query(request))
    else:
        d = ctx.read(engine_of(ctx).count, collection, _query(request), max_time_ms(request))
    d.addCallback(lambda n: {"count": n})
    return d


def _update(kind: type[Update] | type[UpdateOne], ctx: CommandContext, request: dict[str, Any]) -> Any:
    collection = require_collection(request)
    query = require_present(request, "query")
    update = require_present(request, "update")
    return _write(ctx, kind(collection, query, update))


def update(ctx: CommandContext, request: dict[str, Any]) -> Any:
    """C{{"modified": n}}: every matching document, all-or-nothing."""
    return _update(Update, ctx, request)


def update_one(ctx: CommandContext, request: dict[str, Any]) -> Any:
    """C{{"modified": 0 | 1}}: the matching document with the lowest C{_id}."""
    return _update(UpdateOne, ctx, request)


def delete(ctx: CommandContext, request: dict[str, Any]) -> Any:
    """
    C{{"deleted": n}}. The optional C{limit} ([N]) deletes at most that many
    (lowest C{_id} first) and must be a non-negative integer.
    """
    collection = require_collection(request)
    query = require_present(request, "query")
    limit = request.get("limit")
    if limit is not None and not is_uint(limit):
        raise BadRequestError("'limit' must be a non-negative integer")
    return _write(ctx, Delete(collection, query, limit))


def delete_one(ctx: CommandContext, request: dict[str, Any]) -> Any:
    """C{{"deleted": 0 | 1}}: the matching document with the lowest C{_id}."""
    collection = require_collection(request)
    query = require_present(request, "query")
    return _write(ctx, DeleteOne(collection, query))


_RW = Role.READWRITE
_QUERY = Field("query", JsonType.ANY, required=True, doc="a filter object (checked by the engine)")
_READ_QUERY = Field("query", JsonType.OBJECT, doc="a filter; absent or null: `{}`; checked by the engine")

COMMANDS = [
    Command(
        "insert",
        insert,
        writes=True,
        role=_RW,
        schema=fields(collection_field(), Field("doc", JsonType.ANY, required=True, doc="the document (an object)")),
        summary='Inserts one document: `{"id": n}`.',
    ),
    Command(
        "insert_many",
        insert_many,
        writes=True,
        role=_RW,
        schema=fields(
            collection_field(),
            Field(
                "docs", JsonType.ARRAY, required=True, message="missing or invalid 'docs' array", doc="the documents"
            ),
        ),
        summary="Inserts documents all-or-nothing: their consecutive ids.",
    ),
    Command(
        "find",
        find,
        role=Role.READ,
        schema=fields(
            collection_field(),
            _READ_QUERY,
            Field("sort", JsonType.OBJECT, doc="field -> 1 or -1"),
            Field("skip", JsonType.UINT),
            Field("limit", JsonType.UINT),
            MAX_TIME_MS,
        ),
        summary="Matching documents, filtered, sorted, skipped and limited.",
    ),
    Command(
        "find_one",
        find_one,
        role=Role.READ,
        schema=fields(collection_field(), _READ_QUERY, MAX_TIME_MS),
        summary="The matching document with the lowest `_id`, or null.",
    ),
    Command(
        "count",
        count,
        role=Role.READ,
        schema=fields(collection_field(), _READ_QUERY, MAX_TIME_MS),
        summary='`{"count": n}`: the number of matching documents.',
    ),
    Command(
        "update",
        update,
        writes=True,
        role=_RW,
        schema=fields(collection_field(), _QUERY, Field("update", JsonType.ANY, required=True, doc="update operators")),
        summary='Updates every matching document, all-or-nothing: `{"modified": n}`.',
    ),
    Command(
        "update_one",
        update_one,
        writes=True,
        role=_RW,
        schema=fields(collection_field(), _QUERY, Field("update", JsonType.ANY, required=True, doc="update operators")),
        summary='Updates the matching document with the lowest `_id`: `{"modified": 0 | 1}`.',
    ),
    Command(
        "delete",
        delete,
        writes=True,
        role=_RW,
        schema=fields(
            collection_field(),
            _QUERY,
            Field(
                "limit",
                JsonType.UINT,
                invalid="'limit' must be a non-negative integer",
                doc="delete at most this many, lowest `_id` first",
            ),
        ),
        summary='Deletes matching documents: `{"deleted": n}`.',
    ),
    Command(
        "delete_one",
        delete_one,
        writes=True,
        role=_RW,
        schema=fields(collection_field(), _QUERY),
        summary='Deletes the matching document with the lowest `_id`: `{"deleted": 0 | 1}`.',
    ),
]
