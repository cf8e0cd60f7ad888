"""
The C{aggregate} and C{aggregate_docs} commands (server.md 3.3 and 3.4,
engine.md 5, docs/aggregation.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from oxidb.auth.rbac import Role
from oxidb.commands._args import max_time_ms
from oxidb.commands._registry import Command
from oxidb.commands._schema import MAX_TIME_MS, Field, JsonType, collection_field, fields
from oxidb.commands.collections import engine_of
from oxidb.engine.reads import Reader

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from oxidb.commands._context import CommandContext


def aggregate(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """
    The pipeline's output documents. A C{pipeline} that is not an array
    reaches the engine (C{invalid pipeline: pipeline must be an array}).
    """
    return ctx.read(engine_of(ctx).aggregate, request["collection"], request["pipeline"], max_time_ms(request))


def aggregate_docs(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """
    The pipeline's output over the request's C{docs} (server.md 3.4): no
    collection is read but C{$lookup}'s. Each document must be an object.
    """
    engine = engine_of(ctx)
    return ctx.read(
        engine.read_within, max_time_ms(request), Reader.aggregate_docs, request["pipeline"], request["docs"]
    )


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
    Command(
        "aggregate_docs",
        aggregate_docs,
        role=Role.READ,
        schema=fields(
            Field(
                "pipeline",
                JsonType.ANY,
                required=True,
                max_items="`OXIDB_PIPELINE_MAX_STAGES`",
                doc="an array of stages (checked by the engine)",
            ),
            Field(
                "docs",
                JsonType.ARRAY,
                required=True,
                message="missing or invalid 'docs' array",
                max_items="`OXIDB_AGG_MAX_DOCS`",
                doc="the input documents (objects), in order",
            ),
            MAX_TIME_MS,
        ),
        summary="The aggregation pipeline's output over the documents given in the request.",
    ),
]
