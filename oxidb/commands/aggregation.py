"""
The C{aggregate} command (server.md 3.3, engine.md 5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from oxidb.auth.rbac import Role
from oxidb.commands._args import max_time_ms
from oxidb.commands._registry import Command
from oxidb.commands._schema import MAX_TIME_MS, Field, JsonType, collection_field, fields
from oxidb.commands.collections import engine_of

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from oxidb.commands._context import CommandContext


def aggregate(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """
    The pipeline's output documents. A C{pipeline} that is not an array
    reaches the engine (C{invalid pipeline: pipeline must be an array}).
    """
    return ctx.read(engine_of(ctx).aggregate, request["collection"], request["pipeline"], max_time_ms(request))


COMMANDS = [
    Command(
        "aggregate",
        aggregate,
        role=Role.READ,
        schema=fields(
            collection_field(),
            Field(
                "pipeline",
                JsonType.ANY,
                required=True,
                max_items="`OXIDB_PIPELINE_MAX_STAGES`",
                doc="an array of stages (checked by the engine)",
            ),
            MAX_TIME_MS,
        ),
        summary="The aggregation pipeline's output documents.",
    ),
]
