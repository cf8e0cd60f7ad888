"""
C{backup} and C{restore} (server.md 3.3): archives of the data directory,
written and unpacked on the thread pool (L{oxidb.engine.backup}). Both run
on the node that receives them only; they are Admin-only in the RBAC table.

C{restore_documents} [N] is the write path of a logical restore
(C{oxidb-cli restore}): documents keep their C{_id} and C{_version} and the
collection's id counter is set, through a typed operation
(L{oxidb.engine.operations.RestoreDocuments}) that replicates like any
write. Admin only.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from oxidb.commands._context import CommandContext
from oxidb.commands._registry import Command
from oxidb.commands._schema import Field, JsonType, collection_field, fields
from oxidb.engine import backup as archives
from oxidb.engine.operations import RestoreDocuments
from oxidb.errors import UnavailableError


def backup(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    path: str = request["path"]
    engine = ctx.engine
    if engine is None:
        raise UnavailableError("storage engine is not available")
    return ctx.read(archives.create_backup, engine, path, ctx.clock.seconds())


def restore(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    key = None if ctx.engine is None else ctx.engine.key
    return ctx.read(archives.restore_backup, request["archive"], request["target"], key)


def restore_documents(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    last_id = request.get("last_id")
    return ctx.write(RestoreDocuments(request["collection"], request["docs"], 0 if last_id is None else last_id))


def _path_field(name: str, doc: str) -> Field:
    return Field(name, JsonType.STRING, required=True, nonempty=True, doc=doc)


COMMANDS = [
    Command(
        "backup",
        backup,
        audit_collection=None,
        audit_target=("path",),
        schema=fields(_path_field("path", "the archive to write, on the server")),
        summary="Writes an archive of the data directory on this node.",
    ),
    Command(
        "restore",
        restore,
        audit_collection=None,
        audit_target=("archive", "target"),
        schema=fields(
            _path_field("archive", "the archive to read, on the server"),
            _path_field("target", "the directory to unpack it into"),
        ),
        summary="Unpacks an archive into a directory on this node.",
    ),
    Command(
        "restore_documents",
        restore_documents,
        writes=True,
        schema=fields(
            collection_field(),
            Field(
                "docs",
                JsonType.ARRAY,
                required=True,
                message="missing or invalid 'docs' array",
                doc="documents with their `_id` and `_version` (integers of at least 1, ids not in the collection)",
            ),
            Field(
                "last_id",
                JsonType.UINT,
                invalid="'last_id' must be an integer from 0 to 2^63-1",
                doc="raise the collection's id counter to at least this (the next insert gets a higher id)",
            ),
        ),
        summary="Inserts documents keeping their `_id` and `_version` (a logical restore): "
        '`{"restored": n, "last_id": m}`.',
    ),
]
