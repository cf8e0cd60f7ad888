"""
Index commands: C{create_index}, C{create_unique_index},
C{create_composite_index}, C{create_text_index}, C{create_ttl_index},
C{create_vector_index}, C{list_indexes}, C{drop_index}, C{text_search} and
C{vector_search} (server.md 3.3, 3.4, engine.md 4, 8.3, 10).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from oxidb.auth.rbac import Role
from oxidb.commands._args import max_time_ms, optional_uint
from oxidb.commands._registry import Command
from oxidb.commands._schema import MAX_TIME_MS, Field, JsonType, collection_field, fields
from oxidb.commands.collections import engine_of
from oxidb.engine import vectors
from oxidb.engine.operations import (
    CreateCompositeIndex,
    CreateIndex,
    CreateTextIndex,
    CreateUniqueIndex,
    CreateVectorIndex,
    DropIndex,
)
from oxidb.engine.textindex import DEFAULT_LIMIT
from oxidb.engine.ttl import MAX_EXPIRE_AFTER_SECONDS, CreateTtlIndex

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from oxidb.commands._context import CommandContext


def create_index(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{"index created"}; idempotent."""
    return ctx.write(CreateIndex(request["collection"], request["field"]))


def create_unique_index(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{"unique index created"}; upgrades a plain index on the field."""
    return ctx.write(CreateUniqueIndex(request["collection"], request["field"]))


def create_composite_index(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{{"index": "<fields joined by _>"}}."""
    return ctx.write(CreateCompositeIndex(request["collection"], request["fields"]))


def create_text_index(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{"text index created"}; an existing text index keeps its fields."""
    return ctx.write(CreateTextIndex(request["collection"], request["fields"]))


def create_ttl_index(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """
    C{"ttl index created"}: documents whose C{field} holds a date older than
    C{expireAfterSeconds} are deleted by the server's TTL passes.
    """
    return ctx.write(CreateTtlIndex(request["collection"], request["field"], request["expireAfterSeconds"]))


_EXPIRE_TEXT = f"'expireAfterSeconds' must be a non-negative integer (at most {MAX_EXPIRE_AFTER_SECONDS})"


def create_vector_index(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{"vector index created"}; an existing one keeps its dimension and metric."""
    dimension = vectors.check_dimension(request["dimension"])
    metric = vectors.normalize_metric(request.get("metric"))
    return ctx.write(CreateVectorIndex(request["collection"], request["field"], dimension, metric))


def vector_search(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """The nearest documents with C{_distance} and C{_similarity}; C{limit} defaults to 10."""
    collection = request["collection"]
    field = request["field"]
    vector = request.get("vector")
    vectors.query_vector(vector)
    # Optional numbers of the wrong type are ignored (server.md 3.2); the
    # engine refuses those above OXIDB_VECTOR_MAX_LIMIT.
    limit = optional_uint(request, "limit", vectors.DEFAULT_LIMIT)
    ef_search = optional_uint(request, "ef_search")
    return ctx.read(
        engine_of(ctx).vector_search, collection, field, vector, limit, ef_search, max_time_ms(request)
    )


def list_indexes(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """Index descriptors (engine.md 4.6)."""
    return ctx.read(engine_of(ctx).list_indexes, request["collection"])


def drop_index(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{"index dropped"}, or C{index not found: <name>}."""
    return ctx.write(DropIndex(request["collection"], request["index"]))


def text_search(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """Documents with C{_score}, best first; C{limit} defaults to 10."""
    limit = optional_uint(request, "limit", DEFAULT_LIMIT)
    return ctx.read(engine_of(ctx).text_search, request["collection"], request["query"], limit, max_time_ms(request))


_RW = Role.READWRITE
_FIELD = Field("field", JsonType.STRING, required=True, doc="the field path")
_FIELDS = Field(
    "fields",
    JsonType.ARRAY,
    required=True,
    message="missing 'fields' array",
    items=JsonType.STRING,
    items_message="'fields' must be an array of strings",
)

COMMANDS = [
    Command(
        "create_index",
        create_index,
        writes=True,
        audit_target=("field",),
        role=_RW,
        schema=fields(collection_field(), _FIELD),
        summary='`"index created"`; idempotent.',
    ),
    Command(
        "create_unique_index",
        create_unique_index,
        writes=True,
        audit_target=("field",),
        role=_RW,
        schema=fields(collection_field(), _FIELD),
        summary='`"unique index created"`; upgrades a plain index on the field.',
    ),
    Command(
        "create_composite_index",
        create_composite_index,
        writes=True,
        audit_target=("fields",),
        role=_RW,
        schema=fields(collection_field(), _FIELDS),
        summary='`{"index": "<fields joined by _>"}`.',
    ),
    Command(
        "create_text_index",
        create_text_index,
        writes=True,
        audit_target=("fields",),
        role=_RW,
        schema=fields(collection_field(), _FIELDS),
        summary='`"text index created"`; an existing text index keeps its fields.',
    ),
    Command(
        "create_ttl_index",
        create_ttl_index,
        writes=True,
        audit_target=("field",),
        schema=fields(
            collection_field(),
            Field(
                "field", JsonType.STRING, required=True, nonempty=True, doc="the date field (not `_id` or `_version`)"
            ),
            Field(
                "expireAfterSeconds",
                JsonType.UINT,
                required=True,
                message=_EXPIRE_TEXT,
                maximum=MAX_EXPIRE_AFTER_SECONDS,
                doc="documents expire this long after the field's date",
            ),
        ),
        summary='`"ttl index created"`; expired documents are deleted by the server (cluster: the leader).',
    ),
    Command(
        "create_vector_index",
        create_vector_index,
        writes=True,
        audit_target=("field",),
        role=_RW,
        schema=fields(
            collection_field(),
            _FIELD,
            Field(
                "dimension",
                JsonType.INTEGER,
                required=True,
                doc=f"the vectors' length, 1 to {vectors.MAX_DIMENSION} (checked by the handler)",
            ),
            Field(
                "metric",
                JsonType.STRING,
                doc="`cosine` (default), `euclidean` or `dot_product` (also `dotproduct`); any other value is cosine",
            ),
        ),
        summary='`"vector index created"` (`_vec_<field>`); an existing one keeps its dimension and metric.',
    ),
    Command(
        "list_indexes",
        list_indexes,
        role=Role.READ,
        schema=fields(collection_field()),
        summary="The collection's index descriptors; a large vector index's has its calibration (`search`).",
    ),
    Command(
        "drop_index",
        drop_index,
        writes=True,
        audit_target=("index",),
        role=_RW,
        schema=fields(collection_field(), Field("index", JsonType.STRING, required=True, doc="the index name")),
        summary='`"index dropped"`, or `index not found: <name>`.',
    ),
    Command(
        "text_search",
        text_search,
        role=Role.READ,
        schema=fields(
            collection_field(),
            Field(
                "query",
                JsonType.STRING,
                required=True,
                message="missing 'query' string",
                doc="at most `OXIDB_SEARCH_MAX_QUERY_LENGTH` characters (checked by the engine)",
            ),
            Field("limit", JsonType.UINT, doc=f"default {DEFAULT_LIMIT}"),
            MAX_TIME_MS,
        ),
        summary="Documents matching the text index, with `_score`, best first.",
    ),
    Command(
        "vector_search",
        vector_search,
        role=Role.READ,
        schema=fields(
            collection_field(),
            _FIELD,
            Field(
                "vector",
                JsonType.ARRAY,
                required=True,
                message="missing 'vector' array",
                doc="finite numbers within the 32-bit float range, as many as the index's dimension",
                handler=True,
            ),
            Field("limit", JsonType.UINT, doc=f"default {vectors.DEFAULT_LIMIT}; at most `OXIDB_VECTOR_MAX_LIMIT`"),
            Field(
                "ef_search",
                JsonType.UINT,
                doc="HNSW candidate list size; default: what the index's calibration chose (`list_indexes`);"
                " given, the graph is searched at this size even where exact search was chosen, which can lower"
                " recall; at most `OXIDB_VECTOR_MAX_LIMIT`",
            ),
            MAX_TIME_MS,
        ),
        summary="The nearest documents by the field's vector index, with `_distance` and `_similarity`.",
    ),
]
