"""
Document commands: C{insert}, C{insert_many}, C{find}, C{find_one},
C{update}, C{update_one}, C{delete}, C{delete_one}, C{count} (server.md 3.3,
engine.md 0-3) and C{find_and_modify} (server.md 3.4).

Request texts follow server.md 3.2: a required field that is absent, null or
(for strings and arrays) of the wrong type is C{missing '<field>'}; an
optional C{query} that is absent or null means C{{}}; a C{query} or
C{update} of the wrong type reaches the engine, which reports it (C{invalid
query: query must be a JSON object}). Invalid C{sort}/C{skip}/C{limit} values
of C{find} are ignored by the engine as upstream does, except a bad sort
direction and integers past 2**63 - 1. The dispatcher checks each row's
schema before its handler runs, so the handlers read their fields unchecked.

Reads take an optional C{max_time_ms} (or C{maxTimeMS}): it may lower the
server's time limit (see docs/security.md, "Limits").

Transaction seam. When a transaction is open on the connection
(C{ctx.session.tx}, an L{oxidb.commands.transactions.ISessionTransaction}),
every command here but C{find_and_modify} (refused there) hands over to it: writes call C{tx.buffer(ctx, op)} with
the very operation (an L{oxidb.engine.operations.Operation}) they would have
written; C{find}, C{find_one} and
C{count} call C{tx.find}/C{tx.find_one}/C{tx.count}. Unlike v0.15, none
bypasses the transaction (see docs/transactions.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from oxidb.auth.rbac import Role
from oxidb.commands._args import max_time_ms
from oxidb.commands._registry import Command
from oxidb.commands._schema import MAX_TIME_MS, Field, JsonType, collection_field, fields
from oxidb.commands.collections import engine_of
from oxidb.engine.operations import (
    MAX_LIMIT,
    Delete,
    DeleteOne,
    FindAndModify,
    Insert,
    InsertMany,
    Operation,
    Update,
    UpdateOne,
)
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
    return _write(ctx, Insert(request["collection"], request["doc"]))


def insert_many(ctx: CommandContext, request: dict[str, Any]) -> Any:
    """The new ids, consecutive, all-or-nothing."""
    return _write(ctx, InsertMany(request["collection"], request["docs"]))


def find(ctx: CommandContext, request: dict[str, Any]) -> Any:
    """Matching documents: filter, sort, skip, limit (engine.md 2.5)."""
    collection: str = request["collection"]
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
    collection: str = request["collection"]
    tx = ctx.session.tx
    if tx is not None:
        found: Deferred[Any] = tx.find_one(ctx, collection, _query(request))
        return found
    d = ctx.read(engine_of(ctx).find_one_raw, collection, _query(request), max_time_ms(request))
    return d.addCallback(_raw)


def count(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{{"count": n}}."""
    collection: str = request["collection"]
    tx = ctx.session.tx
    d: Deferred[Any]
    if tx is not None:
        d = tx.count(ctx, collection, _query(request))
    else:
        d = ctx.read(engine_of(ctx).count, collection, _query(request), max_time_ms(request))
    d.addCallback(lambda n: {"count": n})
    return d


def update_options(request: dict[str, Any]) -> tuple[bool, list[Any] | None]:
    """
    C{upsert} (default false) and C{array_filters} (or MongoDB's spelling
    C{arrayFilters}; null or absent: none), as the schema validated them.
    """
    array_filters = request.get("array_filters")
    if array_filters is None:
        array_filters = request.get("arrayFilters")
    return request.get("upsert") is True, array_filters


def _update(kind: type[Update] | type[UpdateOne], ctx: CommandContext, request: dict[str, Any]) -> Any:
    upsert, array_filters = update_options(request)
    return _write(ctx, kind(request["collection"], request["query"], request["update"], upsert, array_filters))


def update(ctx: CommandContext, request: dict[str, Any]) -> Any:
    """
    C{{"modified": n}}: every matching document, all-or-nothing. With
    C{upsert} and no match, one new document: C{{"modified": 0,
    "upserted_id": id}}.
    """
    return _update(Update, ctx, request)


def update_one(ctx: CommandContext, request: dict[str, Any]) -> Any:
    """C{{"modified": 0 | 1}}: the matching document with the lowest C{_id}; C{upsert} as C{update}."""
    return _update(UpdateOne, ctx, request)


def delete(ctx: CommandContext, request: dict[str, Any]) -> Any:
    """
    C{{"deleted": n}}. The optional C{limit} ([N]) deletes at most that many
    (lowest C{_id} first).
    """
    return _write(ctx, Delete(request["collection"], request["query"], request.get("limit")))


def delete_one(ctx: CommandContext, request: dict[str, Any]) -> Any:
    """C{{"deleted": 0 | 1}}: the matching document with the lowest C{_id}."""
    return _write(ctx, DeleteOne(request["collection"], request["query"]))


def find_and_modify(ctx: CommandContext, request: dict[str, Any]) -> Any:
    """
    The first matching document in C{sort} order, updated (C{update}) or
    removed (C{remove}) in one write: as it was, or as it is after the
    update with C{new}; C{upsert}, C{fields} (a projection) and
    C{array_filters} as for C{update}; null when nothing matched. Refused
    inside a transaction (it would bypass it).
    """
    upsert, array_filters = update_options(request)
    if ctx.session.tx is not None:
        raise BadRequestError("find_and_modify is not supported inside a transaction")
    op = FindAndModify(
        request["collection"],
        request["query"],
        request.get("update"),
        request.get("remove") is True,
        request.get("new") is True,
        upsert,
        request.get("sort"),
        request.get("fields"),
        array_filters,
    )
    return ctx.write(op)


_RW = Role.READWRITE
_ARRAY_FILTERS_TEXT = "'array_filters' must be an array of objects"
_UPDATE_FIELDS = (
    Field("update", JsonType.ANY, required=True, doc="update operators"),
    Field(
        "upsert",
        JsonType.BOOLEAN,
        invalid="'upsert' must be a boolean",
        doc=(
            "insert a document built from the query's equality fields and the update"
            ' when nothing matches; adds `"upserted_id"`'
        ),
    ),
    Field(
        "array_filters",
        JsonType.ARRAY,
        invalid=_ARRAY_FILTERS_TEXT,
        items=JsonType.OBJECT,
        doc='filters of the `$[<id>]` paths, e.g. `[{"x.qty": {"$gt": 5}}]`',
    ),
    Field(
        "arrayFilters",
        JsonType.ARRAY,
        invalid=_ARRAY_FILTERS_TEXT,
        items=JsonType.OBJECT,
        doc="MongoDB's spelling of `array_filters` (used when `array_filters` is absent)",
    ),
)
_FLAG_DOCS = {
    "remove": "delete the document instead of updating it",
    "new": "answer the document after the update (default: before)",
}
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
        schema=fields(collection_field(), _QUERY, *_UPDATE_FIELDS),
        summary=(
            'Updates every matching document, all-or-nothing: `{"modified": n}`; an upsert that matched'
            ' nothing adds `"upserted_id"`.'
        ),
    ),
    Command(
        "update_one",
        update_one,
        writes=True,
        role=_RW,
        schema=fields(collection_field(), _QUERY, *_UPDATE_FIELDS),
        summary=(
            'Updates the matching document with the lowest `_id`: `{"modified": 0 | 1}`; an upsert that'
            ' matched nothing adds `"upserted_id"`.'
        ),
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
                maximum=MAX_LIMIT,
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
    Command(
        "find_and_modify",
        find_and_modify,
        writes=True,
        role=_RW,
        schema=fields(
            collection_field(),
            _QUERY,
            Field("remove", JsonType.BOOLEAN, invalid="'remove' must be a boolean", doc=_FLAG_DOCS["remove"]),
            Field("new", JsonType.BOOLEAN, invalid="'new' must be a boolean", doc=_FLAG_DOCS["new"]),
            *_UPDATE_FIELDS[1:],
            Field("sort", JsonType.OBJECT, invalid="'sort' must be an object", doc="field -> 1 or -1: which document"),
            Field(
                "fields",
                JsonType.OBJECT,
                invalid="'fields' must be an object",
                doc="projection: paths -> 1 (include) or 0 (exclude); `_id` kept unless 0",
            ),
            Field(
                "update",
                JsonType.OBJECT,
                doc="update operators; required unless `remove` is true, refused with it",
                handler=True,
            ),
        ),
        summary=(
            "Updates or removes the first matching document in one replicated write: the document"
            " before (or with `new`, after) the change, or null."
        ),
    ),
]
