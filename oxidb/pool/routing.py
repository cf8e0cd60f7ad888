"""
Sharded routing, sans-IO (spec server.md 8.12): which shard or shards a
request goes to, what each shard is sent, and how their replies merge into
the one reply the client gets. Nothing here does I/O.

A collection is sharded by one field, its shard key. A document's shard is
C{chunk_map[crc32(key_text(value)) % num_chunks]}, where L{key_text} is the
string form of the key's value (a string is itself, a number its shortest
decimal text, C{true}/C{false}/C{null}, anything else compact JSON; a
document without the key counts as C{null}).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from oxidb.engine.paths import get_parts_sort
from oxidb.engine.values import sort_key

__all__ = [
    "Broadcast",
    "Scatter",
    "ShardMap",
    "Sequential",
    "Split",
    "Targeted",
    "Refused",
    "CROSS_SHARD_TX",
    "DDL_IN_TX",
    "key_text",
    "merge_counts",
    "merge_find",
    "merge_scored",
    "route",
    "scatter_find_request",
    "split_insert_many",
]

#: upstream's refusal texts (spec 8.12)
CROSS_SHARD_TX = "cross-shard transactions not supported; use the same shard key within a transaction"
DDL_IN_TX = "DDL commands not allowed inside transactions"

#: Commands sent to every shard (schema and users must be the same everywhere).
BROADCAST = frozenset(
    {
        "create_collection", "drop_collection", "create_index", "create_unique_index",
        "create_composite_index", "create_text_index", "create_vector_index", "create_ttl_index",
        "drop_index", "compact", "create_user", "drop_user", "update_user",
    }
)  # fmt: skip

#: Commands whose query may name the shard key; scatter-gather without it.
KEYED_QUERIES = frozenset(
    {"find", "find_one", "count", "update", "update_one", "delete", "delete_one", "find_and_modify"}
)

#: Reads that search every shard and merge by score.
SEARCHES = frozenset({"text_search", "vector_search"})


@attrs.frozen
class Targeted:
    """Send the request unchanged to one shard."""

    shard: int


@attrs.frozen
class Broadcast:
    """Send the request to every shard; all must succeed; answer with shard 0's reply."""


@attrs.frozen
class Scatter:
    """Send C{request} to every shard and merge (C{merge} names how: count, find, one, scored, aggregate)."""

    merge: str


@attrs.frozen
class Sequential:
    """Try the shards in order until one reports a match (C{update_one}, C{delete_one}, C{find_and_modify})."""


@attrs.frozen
class Split:
    """C{insert_many}: documents grouped by shard, each group a request of its own."""


@attrs.frozen
class Refused:
    """Answer with this error, sending nothing."""

    message: str


Route = Targeted | Broadcast | Scatter | Sequential | Split | Refused


def key_text(value: Any) -> str:
    """The string form of a shard-key value, which is hashed."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 2**63 else repr(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


@attrs.frozen
class ShardMap:
    """
    The shard layout: how many shards, the chunk map and each sharded
    collection's key field.

    @ivar chunk_map: chunk -> shard; its length is the number of chunks.
    @ivar keys: collection -> shard-key field (a dotted path is allowed).
    """

    shards: int
    chunk_map: tuple[int, ...]
    keys: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def default(cls, shards: int, num_chunks: int = 256, keys: Mapping[str, str] | None = None) -> ShardMap:
        """Chunk C{c} on shard C{c mod shards}."""
        return cls(shards, tuple(c % shards for c in range(num_chunks)), dict(keys or {}))

    def __attrs_post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("there must be at least one shard")
        if not self.chunk_map:
            raise ValueError("the chunk map is empty")
        bad = [s for s in self.chunk_map if not 0 <= s < self.shards]
        if bad:
            raise ValueError(f"the chunk map names shard {bad[0]}, but shards are 0..{self.shards - 1}")

    def shard_of(self, value: Any) -> int:
        """The shard of a shard-key value."""
        chunk = zlib.crc32(key_text(value).encode("utf-8", "surrogatepass")) % len(self.chunk_map)
        return self.chunk_map[chunk]

    def doc_shard(self, collection: str, doc: Any) -> int:
        key = self.keys.get(collection)
        if key is None or not isinstance(doc, dict):
            return 0
        found, value = get_parts_sort(doc, tuple(key.split(".")))
        return self.shard_of(value if found else None)

    def query_shard(self, collection: str, query: Any) -> int | None:
        """The one shard a query can match on, when it pins the key to one value; else C{None}."""
        key = self.keys.get(collection)
        if key is None:
            return 0
        if not isinstance(query, dict) or key not in query:
            return None
        value = query[key]
        if isinstance(value, dict):
            if len(value) == 1 and "$eq" in value:
                value = value["$eq"]
            elif any(isinstance(k, str) and k.startswith("$") for k in value):
                return None
        if isinstance(value, list):
            return None  # an array matches element-wise: several values
        return self.shard_of(value)


def route(shards: ShardMap, request: dict[str, Any]) -> Route:
    """Where C{request} goes (outside a transaction)."""
    cmd = request.get("cmd")
    collection = request.get("collection")
    if cmd in BROADCAST:
        return Broadcast()
    if not isinstance(collection, str) or collection not in shards.keys or shards.shards == 1:
        return Targeted(0)
    if cmd == "insert":
        return Targeted(shards.doc_shard(collection, request.get("doc")))
    if cmd == "insert_many":
        return Split()
    if cmd in KEYED_QUERIES:
        target = shards.query_shard(collection, request.get("query"))
        if target is not None:
            return Targeted(target)
        if request.get("upsert") is True:
            return Refused(
                f"oxipool: an upsert on sharded collection '{collection}' must give the shard key "
                f"'{shards.keys[collection]}' in its query"
            )
        if cmd in ("update_one", "delete_one", "find_and_modify"):
            return Sequential()
        if cmd == "find_one":
            return Scatter("one")
        if cmd == "find":
            return Scatter("find")
        return Scatter("count")
    if cmd == "aggregate":
        pipeline = request.get("pipeline")
        if isinstance(pipeline, list) and pipeline and isinstance(pipeline[0], dict) and "$match" in pipeline[0]:
            target = shards.query_shard(collection, pipeline[0]["$match"])
            if target is not None:
                return Targeted(target)
        return Scatter("aggregate")
    if cmd in SEARCHES:
        return Scatter("scored")
    return Targeted(0)


def route_in_tx(shards: ShardMap, request: dict[str, Any]) -> int | Refused:
    """The shard a request inside a transaction needs, or the refusal."""
    cmd = request.get("cmd")
    if cmd in BROADCAST:
        return Refused(DDL_IN_TX)
    where = route(shards, request)
    if isinstance(where, Targeted):
        return where.shard
    if isinstance(where, Split):
        targets = {shards.doc_shard(request["collection"], doc) for doc in request.get("docs") or []}
        if len(targets) <= 1:
            return targets.pop() if targets else 0
    if isinstance(where, Refused):
        return where
    return Refused(CROSS_SHARD_TX)


def split_insert_many(shards: ShardMap, request: dict[str, Any]) -> dict[int, list[int]]:
    """C{insert_many}'s documents by shard: shard -> the positions of its documents, in order."""
    groups: dict[int, list[int]] = {}
    collection = request["collection"]
    for position, doc in enumerate(request["docs"]):
        groups.setdefault(shards.doc_shard(collection, doc), []).append(position)
    return groups


def scatter_find_request(request: dict[str, Any]) -> dict[str, Any]:
    """
    What each shard is sent for a scatter C{find}: no C{skip}, and the
    C{limit} raised by the skip, so that the global page is among the union.
    """
    sent = dict(request)
    skip = request.get("skip")
    limit = request.get("limit")
    sent.pop("skip", None)
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        sent["limit"] = limit + (skip if isinstance(skip, int) and not isinstance(skip, bool) and skip > 0 else 0)
    return sent


def sort_documents(docs: list[Any], sort: Any) -> list[Any]:
    """C{docs} in C{sort} order (field -> 1 or -1), compared as the engine compares."""
    if not isinstance(sort, dict) or not sort:
        return docs
    out = list(docs)
    for path, direction in reversed(list(sort.items())):
        steps = tuple(str(path).split("."))

        def key(doc: Any, steps: tuple[str, ...] = steps) -> tuple[Any, ...]:
            found, value = get_parts_sort(doc, steps)
            return sort_key(value if found else None)

        out.sort(key=key, reverse=direction == -1)
    return out


def merge_find(request: dict[str, Any], replies: Sequence[list[Any]]) -> list[Any]:
    """The scatter C{find} answer: the shards' documents, sorted globally, then skipped and limited."""
    docs = [doc for reply in replies for doc in reply]
    docs = sort_documents(docs, request.get("sort"))
    skip = request.get("skip")
    if isinstance(skip, int) and not isinstance(skip, bool) and skip > 0:
        docs = docs[skip:]
    limit = request.get("limit")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        docs = docs[:limit]
    return docs


def merge_counts(replies: Sequence[Any]) -> Any:
    """C{count}/C{update}/C{delete} answers: numbers summed key by key (C{{"count": n}}, C{{"modified": n}})."""
    first = replies[0]
    if not isinstance(first, dict):
        return first
    out: dict[str, Any] = {}
    for reply in replies:
        if not isinstance(reply, dict):
            continue
        for name, value in reply.items():
            if isinstance(value, int) and not isinstance(value, bool) and isinstance(out.get(name, 0), int):
                out[name] = out.get(name, 0) + value
            else:
                out.setdefault(name, value)
    return out


def merge_scored(request: dict[str, Any], replies: Sequence[list[Any]]) -> list[Any]:
    """Text and vector search: best scores first across shards, then the request's limit."""
    docs = [doc for reply in replies for doc in reply]
    for field, descending in (("_score", True), ("_similarity", True), ("_distance", False)):
        if docs and all(isinstance(d, dict) and isinstance(d.get(field), int | float) for d in docs):
            docs.sort(key=lambda d: d[field], reverse=descending)
            break
    limit = request.get("limit")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        docs = docs[:limit]
    return docs
