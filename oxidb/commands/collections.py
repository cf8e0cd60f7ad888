"""
Collection commands: C{create_collection}, C{list_collections},
C{drop_collection} and C{compact} (server.md 3.3, engine.md 1.6, 12).

Handlers validate the request on the reactor thread and hand the work to the
engine: writes as Raft-shaped operations through C{ctx.write}, reads through
C{ctx.read}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from oxidb.auth.rbac import Role
from oxidb.commands._registry import Command
from oxidb.commands._schema import collection_field, fields
from oxidb.engine.databases import DEFAULT
from oxidb.engine.operations import Compact, CreateCollection, DropCollection
from oxidb.engine.store import is_reserved_collection
from oxidb.errors import UnavailableError

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from oxidb.commands._context import CommandContext


def engine_of(ctx: CommandContext) -> Any:
    """The open engine, or L{UnavailableError} while there is none."""
    engine = ctx.engine
    if engine is None:
        raise UnavailableError("storage engine is not available")
    return engine


def create_collection(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{"collection created"}; C{collection already exists: <name>} if it does."""
    return ctx.write(CreateCollection(request["collection"]))


def list_collections(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """
    Every collection name of the target database a client may use, sorted
    (the server's own are not listed).
    """
    d = ctx.read(engine_of(ctx).database_collections, request.get("db", DEFAULT))
    return d.addCallback(lambda names: [name for name in names if not is_reserved_collection(name)])


def drop_collection(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{"collection dropped"}, also for an unknown collection."""
    return ctx.write(DropCollection(request["collection"]))


def compact(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{{"old_size", "new_size", "docs_kept"}} (see L{oxidb.engine.writes.WriteTxn.compact})."""
    return ctx.write(Compact(request["collection"]))


COMMANDS = [
    Command(
        "create_collection",
        create_collection,
        writes=True,
        role=Role.READWRITE,
        schema=fields(collection_field()),
        summary='`"collection created"`; `collection already exists: <name>` if it does.',
    ),
    Command(
        "list_collections",
        list_collections,
        audit_collection=None,
        role=Role.READ,
        database=True,
        summary="Every collection name a client may use, sorted.",
    ),
    Command(
        "drop_collection",
        drop_collection,
        writes=True,
        role=Role.READWRITE,
        schema=fields(collection_field()),
        summary='`"collection dropped"`, also for an unknown collection.',
    ),
    Command(
        "compact",
        compact,
        writes=True,
        role=Role.READWRITE,
        schema=fields(collection_field()),
        summary='Rewrites a collection\'s storage: `{"old_size", "new_size", "docs_kept"}`.',
    ),
]
