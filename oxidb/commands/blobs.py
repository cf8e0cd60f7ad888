"""
Blob storage and blob search commands (server.md 3.3, 3.4; engine.md 7,
8.4): buckets, objects, C{search} and C{extract_text}.

Request fields are checked here with upstream's texts; the storage work is
in L{oxidb.engine.blobs}. A put decodes and indexes its data on the thread
pool before it is queued, so neither the reactor nor the writer thread does
that work (the writer only stores what was prepared).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred

from oxidb.commands._args import max_time_ms, optional_str, optional_uint, require_str
from oxidb.commands._context import CommandContext
from oxidb.commands._registry import Command
from oxidb.engine import blobs, textindex
from oxidb.errors import UnavailableError


def _read(ctx: CommandContext, fn: Callable[..., Any], *args: Any) -> "Deferred[Any]":
    """Run C{fn(reader, *args)} in one engine read on the thread pool."""
    engine = ctx.engine
    if engine is None:
        raise UnavailableError("storage engine is not available")
    return ctx.read(engine.read, fn, *args)


def _bucket(request: dict[str, Any]) -> str:
    return blobs.validate_bucket_name(require_str(request, "bucket"))


def _bucket_and_key(request: dict[str, Any]) -> tuple[str, str]:
    bucket = require_str(request, "bucket")
    key = require_str(request, "key")
    return blobs.validate_bucket_name(bucket), blobs.validate_key(key)


def create_bucket(ctx: CommandContext, request: dict[str, Any]) -> "Deferred[Any]":
    return ctx.write(blobs.CreateBucket(_bucket(request)))


def list_buckets(ctx: CommandContext, request: dict[str, Any]) -> "Deferred[Any]":
    return _read(ctx, blobs.list_buckets)


def delete_bucket(ctx: CommandContext, request: dict[str, Any]) -> "Deferred[Any]":
    return ctx.write(blobs.DeleteBucket(_bucket(request)))


def put_object(ctx: CommandContext, request: dict[str, Any]) -> "Deferred[Any]":
    bucket = require_str(request, "bucket")
    key = require_str(request, "key")
    data = require_str(request, "data", "missing 'data' (base64)")
    blobs.validate_bucket_name(bucket)
    blobs.validate_key(key)
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


def get_object(ctx: CommandContext, request: dict[str, Any]) -> "Deferred[Any]":
    return _read(ctx, blobs.get_object, *_bucket_and_key(request))


def head_object(ctx: CommandContext, request: dict[str, Any]) -> "Deferred[Any]":
    return _read(ctx, blobs.head_object, *_bucket_and_key(request))


def delete_object(ctx: CommandContext, request: dict[str, Any]) -> "Deferred[Any]":
    bucket, key = _bucket_and_key(request)
    return ctx.write(blobs.DeleteObject(bucket, key))


def list_objects(ctx: CommandContext, request: dict[str, Any]) -> "Deferred[Any]":
    # Upstream names the wrong field when the bucket is missing (server.md 3.3).
    bucket = blobs.validate_bucket_name(require_str(request, "bucket", "missing 'collection'"))
    prefix = optional_str(request, "prefix")
    limit = optional_uint(request, "limit", blobs.DEFAULT_LIST_LIMIT)
    return _read(ctx, blobs.list_objects, bucket, prefix, limit)


def search(ctx: CommandContext, request: dict[str, Any]) -> "Deferred[Any]":
    query = require_str(request, "query")
    bucket = optional_str(request, "bucket")
    limit = optional_uint(request, "limit", textindex.DEFAULT_LIMIT)
    engine = ctx.engine
    if engine is None:
        raise UnavailableError("storage engine is not available")
    return ctx.read(engine.read_within, max_time_ms(request), blobs.search, query, bucket, limit)


def extract_text(ctx: CommandContext, request: dict[str, Any]) -> "Deferred[Any]":
    return _read(ctx, blobs.extract_object_text, *_bucket_and_key(request))


COMMANDS = [
    Command("create_bucket", create_bucket, writes=True, audit_collection="bucket"),
    Command("list_buckets", list_buckets, audit_collection=None),
    Command("delete_bucket", delete_bucket, writes=True, audit_collection="bucket"),
    Command("put_object", put_object, writes=True, audit_collection="bucket", audit_target=("key",)),
    Command("get_object", get_object, audit_collection="bucket", audit_target=("key",)),
    Command("head_object", head_object, audit_collection="bucket", audit_target=("key",)),
    Command("delete_object", delete_object, writes=True, audit_collection="bucket", audit_target=("key",)),
    Command("list_objects", list_objects, audit_collection="bucket"),
    Command("search", search, audit_collection="bucket"),
    Command("extract_text", extract_text, audit_collection="bucket"),
]
