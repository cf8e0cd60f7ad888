"""
Blob storage and blob search commands (server.md 3.3, 3.4; engine.md 7,
8.4): buckets, objects, C{search} and C{extract_text}.

Request fields are checked here with upstream's texts; the storage work is
in L{oxidb.engine.blobs}. A put decodes and indexes its data on the thread
pool before it is queued, so neither the reactor nor the writer thread does
that work (the writer only stores what was prepared).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from oxidb.auth.rbac import Role
from oxidb.commands._args import max_time_ms, optional_str, optional_uint
from oxidb.commands._context import CommandContext
from oxidb.commands._registry import Command
from oxidb.commands._schema import MAX_TIME_MS, Field, JsonType, fields
from oxidb.engine import blobs, textindex
from oxidb.errors import BadRequestError, UnavailableError


def _read(ctx: CommandContext, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Run C{fn(reader, *args)} in one engine read on the thread pool."""
    engine = ctx.engine
    if engine is None:
        raise UnavailableError("storage engine is not available")
    return ctx.read(engine.read, fn, *args)


def _bucket(request: dict[str, Any]) -> str:
    return blobs.validate_bucket_name(request["bucket"])


def _bucket_and_key(request: dict[str, Any]) -> tuple[str, str]:
    return blobs.validate_bucket_name(request["bucket"]), blobs.validate_key(request["key"])


def create_bucket(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    return ctx.write(blobs.CreateBucket(_bucket(request)))


def list_buckets(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    return _read(ctx, blobs.list_buckets)


def delete_bucket(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    return ctx.write(blobs.DeleteBucket(_bucket(request)))


def put_object(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    bucket, key = _bucket_and_key(request)
    data: str = request["data"]
    blobs.check_size(blobs.decoded_size(data))
    content_type = optional_str(request, "content_type")
    if content_type is None:
        content_type = blobs.DEFAULT_CONTENT_TYPE
    metadata = blobs.clean_metadata(request.get("metadata"))
    engine = ctx.engine
    if engine is None:
        raise UnavailableError("storage engine is not available")
    op = blobs.PutObject(bucket, key, data, content_type, metadata)
    d = ctx.read(blobs.prepare_put, engine.prepared_puts, data, content_type, metadata)
    d.addCallback(lambda _: ctx.write(op))
    return d


def get_object(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    return _read(ctx, blobs.get_object, *_bucket_and_key(request))


def head_object(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    return _read(ctx, blobs.head_object, *_bucket_and_key(request))


def delete_object(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    bucket, key = _bucket_and_key(request)
    return ctx.write(blobs.DeleteObject(bucket, key))


def list_objects(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    bucket = _bucket(request)
    prefix = optional_str(request, "prefix")
    limit = optional_uint(request, "limit", blobs.DEFAULT_LIST_LIMIT)
    start_after = request.get("start_after")
    if start_after is not None and not isinstance(start_after, str):
        raise BadRequestError("'start_after' must be a string")
    return _read(ctx, blobs.list_objects, bucket, prefix, limit, start_after)


def search(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    query: str = request["query"]
    bucket = optional_str(request, "bucket")
    limit = optional_uint(request, "limit", textindex.DEFAULT_LIMIT)
    engine = ctx.engine
    if engine is None:
        raise UnavailableError("storage engine is not available")
    return ctx.read(engine.read_within, max_time_ms(request), blobs.search, query, bucket, limit)


def extract_text(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    return _read(ctx, blobs.extract_object_text, *_bucket_and_key(request))


_BUCKET_RULES = "not empty, no `/`, `\\` or NUL, no leading `.` (checked by the handler)"
_BUCKET = Field("bucket", JsonType.STRING, required=True, doc=_BUCKET_RULES)
_KEY = Field(
    "key",
    JsonType.STRING,
    required=True,
    max_bytes=blobs.MAX_KEY_BYTES,
    doc="not empty (length and emptiness checked by the handler)",
)
_BUCKET_AND_KEY = fields(_BUCKET, _KEY)


def _row(name: str, handler: Any, role: Role, summary: str, schema: Any = _BUCKET_AND_KEY, **kw: Any) -> Command:
    """A blob command: audited with the bucket as its collection."""
    return Command(name, handler, audit_collection="bucket", role=role, schema=schema, summary=summary, **kw)


COMMANDS = [
    _row("create_bucket", create_bucket, Role.READWRITE, '`"bucket created"`.', fields(_BUCKET), writes=True),
    Command(
        "list_buckets",
        list_buckets,
        audit_collection=None,
        role=Role.READ,
        summary="The bucket names, sorted.",
    ),
    _row(
        "delete_bucket",
        delete_bucket,
        Role.READWRITE,
        '`"bucket deleted"`, with its objects.',
        fields(_BUCKET),
        writes=True,
    ),
    _row(
        "put_object",
        put_object,
        Role.READWRITE,
        "Stores an object (replacing one with the same key): its metadata.",
        fields(
            _BUCKET,
            _KEY,
            Field(
                "data",
                JsonType.STRING,
                required=True,
                message="missing 'data' (base64)",
                max_bytes=blobs.MAX_OBJECT_BYTES,
                doc="the content, base64; the limit is on the decoded bytes (checked by the handler)",
            ),
            Field("content_type", JsonType.STRING, doc=f"default `{blobs.DEFAULT_CONTENT_TYPE}`"),
            Field("metadata", JsonType.OBJECT, doc="string values (checked by the handler)"),
        ),
        writes=True,
        audit_target=("key",),
    ),
    _row("get_object", get_object, Role.READ, "The object's content (base64) and metadata.", audit_target=("key",)),
    _row("head_object", head_object, Role.READ, "The object's metadata.", audit_target=("key",)),
    _row(
        "delete_object", delete_object, Role.READWRITE, '`"object deleted"`.', writes=True, audit_target=("key",)
    ),
    _row(
        "list_objects",
        list_objects,
        Role.READ,
        "The bucket's objects' metadata, by key; page with `limit` and `start_after`.",
        fields(
            # Upstream names the wrong field when the bucket is missing (server.md 3.3).
            Field("bucket", JsonType.STRING, required=True, message="missing 'collection'", doc=_BUCKET_RULES),
            Field("prefix", JsonType.STRING, doc="only keys starting with it"),
            Field("limit", JsonType.UINT, doc=f"default {blobs.DEFAULT_LIST_LIMIT}"),
            Field(
                "start_after",
                JsonType.STRING,
                invalid="'start_after' must be a string",
                doc="[N] only keys after it: the last key of a page asks for the next one",
            ),
        ),
    ),
    _row(
        "search",
        search,
        Role.READ,
        "Objects whose extracted text matches, with `_score`, best first.",
        fields(
            Field(
                "query",
                JsonType.STRING,
                required=True,
                doc="at most `OXIDB_SEARCH_MAX_QUERY_LENGTH` characters (checked by the engine)",
            ),
            Field("bucket", JsonType.STRING, doc="only this bucket"),
            Field("limit", JsonType.UINT, doc=f"default {textindex.DEFAULT_LIMIT}"),
            MAX_TIME_MS,
        ),
    ),
    _row("extract_text", extract_text, Role.READ, "The text extracted from the object."),
]
