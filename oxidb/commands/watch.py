"""
Change streams: C{watch} and C{unwatch} (server.md 3.6; our differences in
docs/change-streams.md).

C{watch} subscribes the connection to the node's change feed
(L{oxidb.server.changefeed}) and answers C{"watching"}; once that reply is
written the server pushes C{change} and C{overflow} events, and the
connection honours nothing but C{unwatch}, which ends the stream and answers
C{"unwatched"} (the connection then takes requests again; upstream closes
it). Both are audited like every command, one line each.

Roles: a Read role may watch the collections it may read; without
C{collection}, every collection, which takes a role that may read them all
(today every role may read every collection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from oxidb.auth.rbac import Role
from oxidb.commands._registry import Command
from oxidb.commands._schema import Field, JsonType, fields
from oxidb.engine import databases
from oxidb.engine.changes import MAX_TOKEN
from oxidb.errors import BadRequestError, UnavailableError

if TYPE_CHECKING:
    from oxidb.commands._context import CommandContext

_TOKEN_TEXT = "'resume_after' must be an unsigned 64-bit integer"


def watch(ctx: CommandContext, request: dict[str, Any]) -> str:
    """C{"watching"}; the events follow once the reply is written."""
    collection = request.get("collection")
    resume_after = request.get("resume_after")
    session = ctx.session
    feed = ctx.changes
    if feed is None or session.watcher is None:
        raise UnavailableError("change streams are not available on this connection")
    if session.watch is not None:
        raise BadRequestError("already watching")
    # The dispatcher qualified the collection with the target database (db).
    database = request.get("db", databases.DEFAULT)
    session.watch = feed.subscribe(session.watcher, collection, resume_after, database)
    return "watching"


def unwatch(ctx: CommandContext, request: dict[str, Any]) -> str:
    """C{"unwatched"}: no event follows."""
    subscription = ctx.session.watch
    if subscription is None:
        raise BadRequestError("not watching")
    ctx.session.watch = None
    subscription.cancel()
    return "unwatched"


COMMANDS = [
    Command(
        "watch",
        watch,
        role=Role.READ,
        schema=fields(
            Field(
                "collection",
                JsonType.STRING,
                invalid="'collection' must be a string",
                collection=True,
                doc="only this collection's changes; default every collection",
            ),
            Field(
                "resume_after",
                JsonType.UINT,
                invalid=_TOKEN_TEXT,
                maximum=MAX_TOKEN,
                doc="replay the changes after this token (at most 2^64-1; `resume token too old` past the buffer)",
            ),
        ),
        summary='Streams document changes: `"watching"`, then `change` and `overflow` events (docs/change-streams.md).',
    ),
    Command(
        "unwatch",
        unwatch,
        role=Role.READ,
        audit_collection=None,
        summary='Ends the connection\'s change stream: `"unwatched"`; the connection takes requests again.',
    ),
]
