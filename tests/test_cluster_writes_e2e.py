"""
Real cluster nodes (twistd processes): an upsert and a find_and_modify
upsert (sent to a follower, forwarded) create the same documents on every
node, a TTL index's expired documents are deleted by the leader's
passes as replicated deletes, on every node alike, and databases are
created, written and dropped on every node, and a logical restore's
documents keep their ids and versions on every node.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import ok

from oxidb._harness import LocalCluster, wait_until

ENV = {
    "OXIDB_RAFT_HEARTBEAT_MS": "100",
    "OXIDB_RAFT_ELECTION_MS": "500-1000",
    "OXIDB_CLUSTER_KEY": "writes end-to-end test cluster key, 32+ characters",
    "OXIDB_TTL_INTERVAL_SECS": "1",
}

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    local = LocalCluster(str(tmp_path), env=ENV)
    yield local
    local.stop()


def items(cluster: LocalCluster, node: int) -> list[dict[str, Any]]:
    return ok(cluster.request(node, {"cmd": "find", "collection": "items", "query": {}, "sort": {"_id": 1}}))


def test_upserts_and_ttl_deletes_replicate(cluster: LocalCluster) -> None:
    for node in (1, 2, 3):
        cluster.raft_addr(node)  # every port chosen before the nodes start
    with ThreadPoolExecutor(3) as pool:  # the three start-ups overlap
        list(pool.map(cluster.start, (1, 2, 3)))
    cluster.bootstrap([1, 2, 3])
    leader = cluster.leader()
    follower = next(n for n in (1, 2, 3) if n != leader)

    upsert = {
        "cmd": "update",
        "collection": "items",
        "query": {"sku": "a", "dims.h": 2},
        "update": {"$currentDate": {"at": True}, "$setOnInsert": {"qty": 1}},
        "upsert": True,
    }
    assert ok(cluster.request(leader, upsert)) == {"modified": 0, "upserted_id": 1}
    made = ok(
        cluster.request(
            follower,
            {
                "cmd": "find_and_modify",
                "collection": "items",
                "query": {"sku": "b"},
                "update": {"$set": {"at": "2001-01-01T00:00:00Z"}},
                "upsert": True,
                "new": True,
            },
        )
    )
    assert made == {"sku": "b", "at": "2001-01-01T00:00:00Z", "_id": 2, "_version": 1}
    assert ok(cluster.request(leader, upsert)) == {"modified": 1}

    expected_before = items(cluster, leader)
    assert [d["_id"] for d in expected_before] == [1, 2]
    wait_until(lambda: all(items(cluster, n) == expected_before for n in (1, 2, 3)), 15)

    index = {"cmd": "create_ttl_index", "collection": "items", "field": "at", "expireAfterSeconds": 3600}
    assert ok(cluster.request(leader, index)) == "ttl index created"
    expected = [expected_before[0]]
    wait_until(lambda: all(items(cluster, n) == expected for n in (1, 2, 3)), 20)
    for node in (1, 2, 3):
        listed = ok(cluster.request(node, {"cmd": "list_indexes", "collection": "items"}))
        assert listed == [
            {"name": "_ttl_at", "index_type": "ttl", "fields": ["at"], "unique": False, "expireAfterSeconds": 3600}
        ]
    # Only the leader swept; the followers applied its delete.
    assert "TTL: deleted 1 expired documents" in cluster.nodes[leader].log()
    assert all("TTL: deleted" not in cluster.nodes[n].log() for n in (1, 2, 3) if n != leader)

    # Databases replicate: created through a follower (forwarded), written
    # through the leader, dropped with their collections on every node.
    created = cluster.request(follower, {"cmd": "create_database", "name": "crm"})
    assert ok(created) == "database 'crm' created"
    insert = {"cmd": "insert", "collection": "items", "doc": {"sku": "crm"}, "db": "crm"}
    assert ok(cluster.request(leader, insert)) == {"id": 1}
    in_crm = {"cmd": "find", "collection": "items", "query": {}, "db": "crm"}
    crm_items = [{"sku": "crm", "_id": 1, "_version": 1}]
    wait_until(lambda: all(cluster.request(n, in_crm).get("data") == crm_items for n in (1, 2, 3)), 15)
    for node in (1, 2, 3):
        assert ok(cluster.request(node, {"cmd": "list_databases"})) == ["oxidb", "crm"]
        assert items(cluster, node) == expected
    assert ok(cluster.request(follower, {"cmd": "drop_database", "name": "crm"})) == "database 'crm' dropped"
    listing = {"cmd": "list_databases"}
    wait_until(lambda: all(cluster.request(n, listing).get("data") == ["oxidb"] for n in (1, 2, 3)), 15)
    assert cluster.request(leader, in_crm) == {"ok": False, "error": "database not found: crm"}

    # restore_documents (sent to a follower, forwarded) replicates with its
    # ids, versions and id counter: the next insert gets the same id everywhere.
    restored = [{"_id": 7, "_version": 3, "v": "a"}, {"_id": 9, "_version": 1, "v": "b"}]
    restore = {"cmd": "restore_documents", "collection": "restored", "docs": restored, "last_id": 20}
    assert ok(cluster.request(follower, restore)) == {"restored": 2, "last_id": 20}
    assert ok(cluster.request(leader, {"cmd": "insert", "collection": "restored", "doc": {"v": "c"}})) == {"id": 21}
    everything = {"cmd": "find", "collection": "restored", "query": {}, "sort": {"_id": 1}}
    wanted = [*restored, {"v": "c", "_id": 21, "_version": 1}]
    wait_until(lambda: all(cluster.request(n, everything).get("data") == wanted for n in (1, 2, 3)), 15)
