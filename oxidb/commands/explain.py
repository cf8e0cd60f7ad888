"""
The C{explain} command (server.md 3.4): the plan and row counts of a
C{find}, C{find_one}, C{count} or C{aggregate} request given as C{inner}
(L{oxidb.engine.explain}; reply shape in docs/queries.md).

C{explain} has the read role, the role of every command it explains. The
inner request is checked as its own command checks it (C{missing
'collection'}, C{missing 'pipeline'}, ...). It reads committed data, also
while a transaction is open (a transaction's own view has no plan).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from oxidb.auth.rbac import Role
from oxidb.commands._args import max_time_ms, require_collection, require_object, require_present
from oxidb.commands._registry import Command
from oxidb.commands._schema import MAX_TIME_MS, Field, JsonType, fields
from oxidb.commands.collections import engine_of
from oxidb.engine import databases
from oxidb.engine.explain import EXPLAINABLE, explain
from oxidb.engine.store import validate_collection_name
from oxidb.engine.values import compact_json
from oxidb.errors import BadRequestError

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from oxidb.commands._context import CommandContext


def explain_command(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """The plan object of the inner request."""
    inner = require_object(request, "inner")
    command = inner.get("cmd")
    if command not in EXPLAINABLE:
        shown = command if isinstance(command, str) else compact_json(command)
        raise BadRequestError(f"explain supports find/count/aggregate, got: {shown}")
    database = request.get("db", databases.DEFAULT)
    collection = databases.qualify(database, validate_collection_name(require_collection(inner)))
    pipeline = require_present(inner, "pipeline") if command == "aggregate" else None
    query = inner.get("query")
    limit = max_time_ms(inner)
    if limit is None:
        limit = max_time_ms(request)
    return ctx.read(
        engine_of(ctx).read_within,
        limit,
        explain,
        command,
        collection,
        {} if query is None else query,
        inner.get("sort"),
        inner.get("skip"),
        inner.get("limit"),
        pipeline,
    )


COMMANDS = [
    Command(
        "explain",
        explain_command,
        role=Role.READ,
        database=True,
        schema=fields(
            Field(
                "inner",
                JsonType.OBJECT,
                required=True,
                doc="a `find`, `find_one`, `count` or `aggregate` request (its `cmd` and fields)",
            ),
            MAX_TIME_MS,
        ),
        summary="The plan of a find, find_one, count or aggregate: index, SQL, residual filter, rows.",
    ),
]
