"""
oxipool in memory (tests/pool_helpers.py): the router's client port, its
routing over three in-memory servers (one per shard), master/replica mode,
leader tracking and failure texts against scripted cluster members, and the
bounds (clients, in-flight requests, queue, timeout).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from client_helpers import memory_server
from pool_helpers import FakeNode, PoolStack, ok, server_docs

from oxidb.engine.matcher import apply_find
from oxidb.pool.config import PoolConfig
from oxidb.pool.metrics import render_metrics
from oxidb.pool.routing import CROSS_SHARD_TX, DDL_IN_TX, ShardMap
from oxidb.testing import MemoryServer
from oxidb.wire import oxiwire
from oxidb.wire.codec import decode_reply

SHARD_ADDRS = [("10.0.0.1", 4444), ("10.0.0.2", 4444), ("10.0.0.3", 4444)]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[MemoryServer]]:
    with ExitStack() as stack:
        yield [stack.enter_context(memory_server(tmp_path / f"shard{i}"))[0] for i in range(3)]


def sharded_config(**changes: Any) -> PoolConfig:
    groups = tuple((a,) for a in SHARD_ADDRS)
    base = dict(groups=groups, sharding=ShardMap.default(3, 256, {"orders": "customer_id"}), request_timeout=5.0)
    base.update(changes)
    return PoolConfig(**base)


@pytest.fixture
def stack(servers: list[MemoryServer]) -> Iterator[PoolStack]:
    pool = PoolStack(sharded_config(), dict(zip(SHARD_ADDRS, servers, strict=True)))
    yield pool
    pool.stop()


ORDERS = [{"customer_id": f"c{i % 7}", "n": i, "kind": ["a", "b", "c"][i % 3]} for i in range(40)]


def load(stack: PoolStack, client: Any) -> None:
    ok(stack.request(client, {"cmd": "create_collection", "collection": "orders"}))
    ok(stack.request(client, {"cmd": "create_index", "collection": "orders", "field": "n"}))
    for doc in ORDERS[:10]:
        assert "id" in ok(stack.request(client, {"cmd": "insert", "collection": "orders", "doc": doc}))
    ids = ok(stack.request(client, {"cmd": "insert_many", "collection": "orders", "docs": ORDERS[10:]}))
    assert len(ids) == 30


def test_sharded_routing_and_merges(stack: PoolStack, servers: list[MemoryServer]) -> None:
    client, _ = stack.client()
    load(stack, client)
    shards = stack.service.router.shards
    assert shards is not None
    # Every document is on its key's shard, once; DDL reached every shard.
    held = [server_docs(s, "orders") for s in servers]
    assert sum(len(h) for h in held) == len(ORDERS)
    for index, docs in enumerate(held):
        assert all(shards.shard_of(d["customer_id"]) == index for d in docs)
        indexes = ok(servers[index].request({"cmd": "list_indexes", "collection": "orders"}))
        assert any(i.get("fields") == ["n"] for i in indexes)
    # Scatter-gather reads equal the answer over all documents.
    everything = [dict(d) for h in held for d in h]
    find = {
        "cmd": "find",
        "collection": "orders",
        "query": {"n": {"$gte": 5}},
        "sort": {"n": -1},
        "skip": 3,
        "limit": 6,
    }
    got = ok(stack.request(client, find))
    assert [d["n"] for d in got] == [d["n"] for d in apply_find(everything, find["query"], {"n": -1}, 3, 6)]
    assert ok(stack.request(client, {"cmd": "count", "collection": "orders", "query": {}})) == {"count": 40}
    targeted = ok(stack.request(client, {"cmd": "count", "collection": "orders", "query": {"customer_id": "c3"}}))
    assert targeted == {"count": sum(1 for d in ORDERS if d["customer_id"] == "c3")}
    group = {
        "cmd": "aggregate",
        "collection": "orders",
        "pipeline": [{"$group": {"_id": "$kind", "total": {"$sum": "$n"}, "k": {"$sum": 1}}}, {"$sort": {"_id": 1}}],
    }
    expected = {}
    for d in ORDERS:
        total, k = expected.get(d["kind"], (0, 0))
        expected[d["kind"]] = (total + d["n"], k + 1)
    assert ok(stack.request(client, group)) == [
        {"_id": kind, "total": total, "k": k} for kind, (total, k) in sorted(expected.items())
    ]
    one = ok(stack.request(client, {"cmd": "find_one", "collection": "orders", "query": {"n": 17}}))
    assert one["n"] == 17
    # Writes: scatter sums, one-document writes stop at the first match, upserts need the key.
    updated = ok(
        stack.request(
            client, {"cmd": "update", "collection": "orders", "query": {"kind": "a"}, "update": {"$set": {"f": 1}}}
        )
    )
    assert updated["modified"] == sum(1 for d in ORDERS if d["kind"] == "a")
    ok(stack.request(client, {"cmd": "delete_one", "collection": "orders", "query": {"n": 33}}))
    assert ok(stack.request(client, {"cmd": "count", "collection": "orders", "query": {"n": 33}})) == {"count": 0}
    assert ok(stack.request(client, {"cmd": "count", "collection": "orders", "query": {}})) == {"count": 39}
    refused = stack.request(
        client,
        {"cmd": "update", "collection": "orders", "query": {"n": 1}, "update": {"$set": {"x": 1}}, "upsert": True},
    )
    assert not refused["ok"] and "shard key 'customer_id'" in refused["error"]
    # Unsharded collections and list_* stay on shard 0.
    ok(stack.request(client, {"cmd": "insert", "collection": "plain", "doc": {"a": 1}}))
    assert len(server_docs(servers[0], "plain")) == 1
    assert "orders" in ok(stack.request(client, {"cmd": "list_collections"}))
    assert ok(stack.request(client, {"cmd": "ping"})) == "pong"
    hello = stack.request(client, {"cmd": "hello"})
    assert hello["ok"] is True and "server" in hello


def test_transactions_pin_one_shard(stack: PoolStack, servers: list[MemoryServer]) -> None:
    client, _ = stack.client()
    ok(stack.request(client, {"cmd": "create_collection", "collection": "orders"}))
    shards = stack.service.router.shards
    assert shards is not None
    keys = {shards.shard_of(f"k{i}"): f"k{i}" for i in range(50)}
    a, b = keys[1], keys[2]
    ok(stack.request(client, {"cmd": "begin_tx"}))
    ok(stack.request(client, {"cmd": "insert", "collection": "orders", "doc": {"customer_id": a, "v": 1}}))
    cross = stack.request(client, {"cmd": "insert", "collection": "orders", "doc": {"customer_id": b}})
    assert cross == {"ok": False, "error": CROSS_SHARD_TX}
    ddl = stack.request(client, {"cmd": "create_index", "collection": "orders", "field": "v"})
    assert ddl == {"ok": False, "error": DDL_IN_TX}
    ok(stack.request(client, {"cmd": "commit_tx"}))
    assert [d["customer_id"] for d in server_docs(servers[1], "orders")] == [a]
    # A client that leaves with a transaction open: the router rolls it back.
    other, pump = stack.client()
    ok(stack.request(other, {"cmd": "begin_tx"}))
    ok(stack.request(other, {"cmd": "insert", "collection": "orders", "doc": {"customer_id": a, "v": 2}}))
    pump.client.transport.loseConnection()  # type: ignore[attr-defined]
    stack.flush()
    assert [d["v"] for d in server_docs(servers[1], "orders")] == [1]
    # The connection went back to the pool without a transaction in it.
    ok(stack.request(client, {"cmd": "begin_tx"}))
    ok(stack.request(client, {"cmd": "insert", "collection": "orders", "doc": {"customer_id": a, "v": 3}}))
    ok(stack.request(client, {"cmd": "commit_tx"}))
    assert [d["v"] for d in server_docs(servers[1], "orders")] == [1, 3]


def test_formats_answered_in_kind_and_bad_frames(stack: PoolStack) -> None:
    client, _ = stack.client()
    binary = stack.run(client.request_raw(bytes([oxiwire.MAGIC]) + oxiwire.encode_value({"cmd": "ping"})))
    assert binary[0] == "binary" and decode_reply(binary[1]) == {"ok": True, "data": "pong"}
    import msgpack  # type: ignore[import-untyped]

    packed = stack.run(client.request_raw(msgpack.packb({"cmd": "ping"})))
    assert packed[0] == "binary" and msgpack.unpackb(packed[1]) == {"ok": True, "data": "pong"}
    bad = stack.run(client.request_raw(b"{nope"))
    assert bad["ok"] is False and bad["error"].startswith("invalid JSON")
    assert stack.request(client, {"nocmd": 1}) == {"ok": False, "error": "missing 'cmd' field"}


def test_master_replica_mode(tmp_path: Path) -> None:
    with memory_server(tmp_path) as (server, _):
        config = PoolConfig(groups=((("10.0.0.9", 4444),),))
        stack = PoolStack(config, {("10.0.0.9", 4444): server})
        client, _ = stack.client()
        ok(stack.request(client, {"cmd": "insert_many", "collection": "c", "docs": [{"a": i} for i in range(5)]}))
        ok(stack.request(client, {"cmd": "begin_tx"}))
        ok(stack.request(client, {"cmd": "insert", "collection": "c", "doc": {"a": 5}}))
        ok(stack.request(client, {"cmd": "commit_tx"}))
        assert ok(stack.request(client, {"cmd": "count", "collection": "c", "query": {}})) == {"count": 6}
        assert ok(stack.request(client, {"cmd": "set_read_preference", "mode": "follower"})) == "follower"
        # One member: follower reads fall back to it.
        assert ok(stack.request(client, {"cmd": "count", "collection": "c", "query": {}})) == {"count": 6}
        status = ok(stack.request(client, {"cmd": "pool_status"}))
        assert status["mode"] == "master/replica" and status["shards"][0]["leader"] == "10.0.0.9:4444"
        stack.stop()


# --- leaders, failures, bounds ------------------------------------------------

MEMBERS = (("10.1.0.1", 4444), ("10.1.0.2", 4444), ("10.1.0.3", 4444))


def raft_group(**changes: Any) -> tuple[PoolStack, list[FakeNode]]:
    nodes = [FakeNode(), FakeNode(leader=True), FakeNode()]
    config = PoolConfig(groups=(MEMBERS,), **{"request_timeout": 3.0, "leader_poll": 1.0, **changes})
    return PoolStack(config, dict(zip(MEMBERS, nodes, strict=True))), nodes


def test_follows_the_leader_and_reports_unknown_outcomes() -> None:
    stack, nodes = raft_group()
    client, _ = stack.client()
    assert ok(stack.request(client, {"cmd": "insert", "collection": "c", "doc": {"a": 1}})) == {"id": 1}
    assert nodes[1].docs == [{"a": 1}] and not nodes[0].docs
    # Reads may go to followers when asked; writes never do.
    nodes[0].docs = [{"stale": True}]
    nodes[2].docs = [{"stale": True}]
    assert ok(
        stack.request(client, {"cmd": "find", "collection": "c", "query": {}, "read_preference": "follower"})
    ) == [{"stale": True}]
    assert ok(stack.request(client, {"cmd": "find", "collection": "c", "query": {}})) == [{"a": 1}]
    # The leader dies with a write in flight: its outcome is unknown, it is not sent again.
    nodes[1].hang = True
    d = client.request({"cmd": "insert", "collection": "c", "doc": {"a": 2}})
    stack.flush()
    nodes[1].crash()
    nodes[2].leader, nodes[2].term = True, 2
    reply = stack.run(d)
    assert reply["ok"] is False
    assert reply["error"] == "oxipool: shard 0 lost the connection with 'insert' in flight; its outcome is unknown"
    assert all({"a": 2} not in n.docs for n in nodes)
    # The next write finds the new leader.
    assert ok(stack.request(client, {"cmd": "insert", "collection": "c", "doc": {"a": 3}})) == {"id": 2}
    assert nodes[2].docs == [{"stale": True}, {"a": 3}]
    assert stack.service.groups[0].state.leader == MEMBERS[2]
    text = render_metrics(stack.service.groups).decode()
    assert 'oxipool_shard_leader{member="10.1.0.3:4444",shard="0"} 1.0' in text
    assert 'oxipool_shard_unknown_outcomes_total{shard="0"} 1.0' in text
    stack.stop()


def test_a_read_is_retried_on_the_new_leader_and_refused_writes_too() -> None:
    stack, nodes = raft_group()
    client, _ = stack.client()
    ok(stack.request(client, {"cmd": "insert", "collection": "c", "doc": {"a": 1}}))
    nodes[1].hang = True
    d = client.request({"cmd": "find", "collection": "c", "query": {}})
    stack.flush()
    nodes[1].crash()
    nodes[0].leader, nodes[0].term, nodes[0].docs = True, 2, [{"a": 1}]
    assert ok(stack.run(d)) == [{"a": 1}]
    # A stale leader refuses a write (not applied): it goes to the real one.
    nodes[0].leader = False
    nodes[2].leader, nodes[2].term = True, 3
    assert ok(stack.request(client, {"cmd": "insert", "collection": "c", "doc": {"b": 1}})) == {"id": 1}
    assert nodes[2].docs == [{"b": 1}]
    stack.stop()


def test_no_leader_and_timeouts_are_clear_errors() -> None:
    stack, nodes = raft_group(request_timeout=2.0)
    client, _ = stack.client()
    for node in nodes:
        node.crash()
    reply = stack.request(client, {"cmd": "find", "collection": "c", "query": {}})
    assert reply["ok"] is False and reply["error"].startswith("oxipool: shard 0 unreachable")
    stack.stop()
    stack, nodes = raft_group(request_timeout=2.0)
    client, _ = stack.client()
    nodes[1].hang = True
    reply = stack.request(client, {"cmd": "insert", "collection": "c", "doc": {}})
    assert reply == {
        "ok": False,
        "error": "oxipool: shard 0 did not answer 'insert' within 2s; its outcome is unknown",
    }
    stack.stop()


def test_bounds_clients_in_flight_and_queue() -> None:
    stack, nodes = raft_group(max_clients=3, max_in_flight=3, pool_size=1, max_queued=1, request_timeout=50.0)
    first, first_pump = stack.client()
    second, _ = stack.client()
    third, _ = stack.client()
    fourth, _ = stack.client()
    stack.flush()
    assert json.loads(fourth.unsolicited[0]) == {
        "ok": False,
        "error": "server busy: oxipool: 3 clients connected already",
    }
    nodes[1].hang = True
    pending = [first.request({"cmd": "find", "collection": "c", "query": {}}) for _ in range(3)]
    stack.flush()
    assert first_pump.server.paused  # type: ignore[attr-defined]
    assert len(nodes[1].received) == 1  # served one at a time
    # One connection, busy; one request may wait for it; the next is refused.
    waiting = second.request({"cmd": "find", "collection": "c", "query": {}})
    stack.flush()
    busy = stack.request(third, {"cmd": "find", "collection": "c", "query": {}})
    assert busy["ok"] is False and busy["error"].startswith("server busy: oxipool:")
    # The leader goes; the reads are sent again to the new one, and reading resumes.
    nodes[1].crash()
    nodes[2].leader, nodes[2].term = True, 2
    replies = [stack.run(d) for d in [*pending, waiting]]
    # (with a queue of one, two retries at once may find it full: refused, never lost)
    assert all(r == {"ok": True, "data": []} or r["error"].startswith("server busy") for r in replies)
    assert replies[-1]["ok"], replies
    assert not first_pump.server.paused  # type: ignore[attr-defined]
    stack.stop()


def test_too_large_a_merge_is_refused(stack: PoolStack, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = stack.client()
    load(stack, client)
    monkeypatch.setattr("oxidb.pool.router.MERGE_LIMIT", 100)
    pipeline = [{"$group": {"_id": "$kind", "avg": {"$avg": "$n"}}}]
    reply = stack.request(client, {"cmd": "aggregate", "collection": "orders", "pipeline": pipeline})
    assert reply["ok"] is False and "too large to merge" in reply["error"]


def test_idle_clients_are_closed() -> None:
    stack, _ = raft_group(idle_timeout=5)
    client, _ = stack.client()
    assert ok(stack.request(client, {"cmd": "find", "collection": "c", "query": {}})) == []
    stack.clock.advance(4)
    stack.flush()
    assert not client.lost_d.called
    stack.clock.advance(2)
    stack.flush()
    assert client.lost_d.called
    stack.stop()
