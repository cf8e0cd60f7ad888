"""
C{backup} and C{restore} (server.md 3.3): archives of the data directory,
written and unpacked on the thread pool (L{oxidb.engine.backup}). Both run
on the node that receives them only; they are Admin-only in the RBAC table.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from oxidb.commands._args import require_str
from oxidb.commands._context import CommandContext
from oxidb.commands._registry import Command
from oxidb.commands._schema import Field, JsonType, fields
from oxidb.engine import backup as archives
from oxidb.errors import BadRequestError, UnavailableError


def _path(request: dict[str, Any], key: str) -> str:
    value = require_str(request, key)
    if not value:
        raise BadRequestError(f"missing '{key}'")
    return value


def backup(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    path = _path(request, "path")
    engine = ctx.engine
    if engine is None:
        raise UnavailableError("storage engine is not available")
    return ctx.read(archives.create_backup, engine, path, ctx.clock.seconds())


def restore(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    archive = _path(request, "archive")
    target = _path(request, "target")
    return ctx.read(archives.restore_backup, archive, target)


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
]
