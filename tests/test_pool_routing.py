"""
The router's pure parts (oxidb.pool.routing, oxidb.pool.aggregate): shard
choice by CRC32 over chunks, per-command routes, and merges that equal the
unsharded answer (Hypothesis: documents spread over shards, each shard
answering its part, the merge compared with one engine over all of them).
"""

from __future__ import annotations

import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.engine.aggregate import compile_pipeline
from oxidb.engine.matcher import apply_find
from oxidb.engine.values import json_equal
from oxidb.pool.aggregate import split_pipeline
from oxidb.pool.routing import (
    CROSS_SHARD_TX,
    DDL_IN_TX,
    Broadcast,
    Refused,
    Scatter,
    Sequential,
    ShardMap,
    Split,
    Targeted,
    key_text,
    merge_counts,
    merge_find,
    merge_scored,
    route,
    route_in_tx,
    scatter_find_request,
    split_insert_many,
)

SHARDS = ShardMap.default(3, 256, {"orders": "customer_id", "nested": "a.b"})


def no_lookup(collection: str, query: Any) -> list[Any]:
    raise AssertionError("unexpected lookup")


def aggregate(pipeline: list[Any], docs: list[Any]) -> list[Any]:
    return compile_pipeline(pipeline).run(docs, no_lookup)


def test_shard_is_crc32_of_the_key_text_over_chunks() -> None:
    for value in ("cust-1", 42, 7.0, True, None, {"x": 1}):
        chunk = zlib.crc32(key_text(value).encode()) % 256
        assert SHARDS.shard_of(value) == chunk % 3
    assert key_text(42) == key_text(42.0) == "42"
    assert key_text(False) == "false" and key_text(None) == "null"
    custom = ShardMap(2, (1, 1, 0, 0), {"c": "k"})
    assert custom.shard_of("x") == (1, 1, 0, 0)[zlib.crc32(b"x") % 4]


def test_bad_maps_are_refused() -> None:
    with pytest.raises(ValueError, match="names shard 5"):
        ShardMap(2, (0, 5))
    with pytest.raises(ValueError, match="empty"):
        ShardMap(2, ())


def test_routes() -> None:
    key = "cust-9"
    home = SHARDS.shard_of(key)
    assert route(SHARDS, {"cmd": "insert", "collection": "orders", "doc": {"customer_id": key}}) == Targeted(home)
    assert route(SHARDS, {"cmd": "find", "collection": "orders", "query": {"customer_id": key}}) == Targeted(home)
    assert route(SHARDS, {"cmd": "count", "collection": "orders", "query": {"customer_id": {"$eq": key}}}) == Targeted(
        home
    )
    assert route(SHARDS, {"cmd": "find", "collection": "orders", "query": {"customer_id": {"$in": [1]}}}) == Scatter(
        "find"
    )
    assert route(SHARDS, {"cmd": "find", "collection": "orders", "query": {}}) == Scatter("find")
    assert route(SHARDS, {"cmd": "find_one", "collection": "orders", "query": {}}) == Scatter("one")
    assert route(SHARDS, {"cmd": "count", "collection": "orders"}) == Scatter("count")
    assert route(SHARDS, {"cmd": "delete", "collection": "orders", "query": {"x": 1}}) == Scatter("count")
    assert route(SHARDS, {"cmd": "update_one", "collection": "orders", "query": {}}) == Sequential()
    upsert = route(SHARDS, {"cmd": "update", "collection": "orders", "query": {"x": 1}, "upsert": True})
    assert isinstance(upsert, Refused) and "shard key 'customer_id'" in upsert.message
    assert route(SHARDS, {"cmd": "insert_many", "collection": "orders", "docs": []}) == Split()
    assert route(SHARDS, {"cmd": "create_index", "collection": "orders", "field": "x"}) == Broadcast()
    assert route(SHARDS, {"cmd": "create_user", "username": "u"}) == Broadcast()
    assert route(SHARDS, {"cmd": "find", "collection": "plain", "query": {}}) == Targeted(0)
    assert route(SHARDS, {"cmd": "list_collections"}) == Targeted(0)
    assert route(SHARDS, {"cmd": "put_object", "bucket": "b"}) == Targeted(0)
    assert route(SHARDS, {"cmd": "text_search", "collection": "orders"}) == Scatter("scored")
    match = {"cmd": "aggregate", "collection": "orders", "pipeline": [{"$match": {"customer_id": key}}]}
    assert route(SHARDS, match) == Targeted(home)
    assert route(SHARDS, {"cmd": "aggregate", "collection": "orders", "pipeline": []}) == Scatter("aggregate")
    nested = {"cmd": "insert", "collection": "nested", "doc": {"a": {"b": 5}}}
    assert route(SHARDS, nested) == Targeted(SHARDS.shard_of(5))
    assert route(SHARDS, {"cmd": "insert", "collection": "orders", "doc": {}}) == Targeted(SHARDS.shard_of(None))


def test_routes_in_a_transaction() -> None:
    key = "c1"
    insert = {"cmd": "insert", "collection": "orders", "doc": {"customer_id": key}}
    assert route_in_tx(SHARDS, insert) == SHARDS.shard_of(key)
    assert route_in_tx(SHARDS, {"cmd": "find", "collection": "orders", "query": {}}) == Refused(CROSS_SHARD_TX)
    assert route_in_tx(SHARDS, {"cmd": "create_index", "collection": "o"}) == Refused(DDL_IN_TX)
    same = {"cmd": "insert_many", "collection": "orders", "docs": [{"customer_id": key}] * 2}
    assert route_in_tx(SHARDS, same) == SHARDS.shard_of(key)


def test_insert_many_split_keeps_order_within_shards() -> None:
    docs = [{"customer_id": f"c{i}"} for i in range(30)]
    groups = split_insert_many(SHARDS, {"collection": "orders", "docs": docs})
    assert sorted(p for ps in groups.values() for p in ps) == list(range(30))
    for shard, positions in groups.items():
        assert positions == sorted(positions)
        assert all(SHARDS.shard_of(docs[p]["customer_id"]) == shard for p in positions)


def test_scatter_find_request_and_small_merges() -> None:
    request = {"cmd": "find", "collection": "o", "query": {}, "skip": 2, "limit": 3}
    assert scatter_find_request(request) == {"cmd": "find", "collection": "o", "query": {}, "limit": 5}
    assert merge_counts([{"count": 2}, {"count": 3}, {"count": 0}]) == {"count": 5}
    assert merge_counts([{"modified": 1}, {"modified": 0, "upserted_id": 4}]) == {"modified": 1, "upserted_id": 4}
    hits = [[{"_score": 1.0}, {"_score": 0.5}], [{"_score": 2.0}]]
    assert merge_scored({"limit": 2}, hits) == [{"_score": 2.0}, {"_score": 1.0}]


# --- merges equal the unsharded answer ----------------------------------------

values = st.one_of(st.integers(-5, 5), st.sampled_from(["a", "b", "c"]), st.none())
documents = st.lists(
    st.fixed_dictionaries(
        {"customer_id": st.integers(0, 20), "n": st.integers(-100, 100)},
        optional={"g": values, "v": st.integers(-10, 10)},
    ),
    max_size=30,
)


def spread(docs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    shards: list[list[dict[str, Any]]] = [[] for _ in range(SHARDS.shards)]
    for i, doc in enumerate(docs):
        shards[SHARDS.doc_shard("orders", doc)].append({"_id": i + 1, **doc})
    return shards


def unsharded(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"_id": i + 1, **doc} for i, doc in enumerate(docs)]


@settings(max_examples=60, deadline=None)
@given(
    documents,
    st.sampled_from(["n", "g", "customer_id"]),
    st.sampled_from([1, -1]),
    st.integers(0, 5),
    st.integers(0, 6),
)
def test_scatter_find_equals_unsharded(docs: list[Any], field: str, direction: int, skip: int, limit: int) -> None:
    request = {"cmd": "find", "collection": "orders", "query": {}, "sort": {field: direction, "_id": 1}}
    if skip:
        request["skip"] = skip
    if limit:
        request["limit"] = limit
    sent = scatter_find_request(request)
    replies = [apply_find(shard, {}, sent.get("sort"), sent.get("skip"), sent.get("limit")) for shard in spread(docs)]
    expected = apply_find(unsharded(docs), {}, request["sort"], request.get("skip"), request.get("limit"))
    assert merge_find(request, replies) == expected


PIPELINES = [
    [
        {"$group": {"_id": "$g", "total": {"$sum": "$n"}, "low": {"$min": "$v"}, "high": {"$max": "$v"},
                    "k": {"$count": {}}}},
        {"$sort": {"_id": 1}},
    ],
    [{"$match": {"n": {"$gt": 0}}}, {"$group": {"_id": None, "c": {"$sum": 1}}}],
    [{"$group": {"_id": "$g", "avg": {"$avg": "$n"}}}, {"$sort": {"_id": 1}}],
    [{"$sort": {"n": -1, "_id": 1}}, {"$skip": 2}, {"$limit": 3}],
    [{"$project": {"n": 1}}, {"$limit": 4}, {"$count": "c"}],
    [{"$match": {"v": {"$exists": True}}}, {"$count": "with_v"}],
    [{"$addFields": {"m": {"$multiply": ["$n", 2]}}}, {"$sort": {"m": 1, "_id": 1}}],
    [
        {"$group": {"_id": {"g": "$g"}, "s": {"$sum": "$n"}}},
        {"$match": {"s": {"$gt": 0}}},
        {"$sort": {"s": -1, "_id.g": 1}},
    ],
]  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(documents, st.sampled_from(range(len(PIPELINES))))
def test_split_aggregation_equals_unsharded(docs: list[Any], which: int) -> None:
    pipeline = PIPELINES[which]
    split = split_pipeline(pipeline)
    parts = [doc for shard in spread(docs) for doc in aggregate(split.shard, shard)]
    merged = aggregate(split.merge, parts) if split.merge else parts
    expected = aggregate(pipeline, unsharded(docs))
    if not any("$sort" in stage for stage in pipeline):
        key = repr
        merged, expected = sorted(merged, key=key), sorted(expected, key=key)
    assert len(merged) == len(expected)
    assert all(json_equal(a, b) for a, b in zip(merged, expected, strict=True)), (merged, expected)


def test_split_shapes() -> None:
    group = split_pipeline([{"$match": {"x": 1}}, {"$group": {"_id": "$g", "t": {"$sum": "$n"}}}])
    assert group.shard == [{"$match": {"x": 1}}, {"$group": {"_id": "$g", "t": {"$sum": "$n"}}}]
    assert group.merge == [{"$group": {"_id": "$_id", "t": {"$sum": "$t"}}}]
    avg = split_pipeline([{"$group": {"_id": "$g", "a": {"$avg": "$n"}}}])
    assert avg.shard == [] and avg.merge == [{"$group": {"_id": "$g", "a": {"$avg": "$n"}}}]
    top = split_pipeline([{"$sort": {"n": 1}}, {"$skip": 1}, {"$limit": 2}])
    assert top.shard == [{"$sort": {"n": 1}}, {"$limit": 3}]
    assert split_pipeline([{"$project": {"a": 1}}]).merge == []
