"""
Change streams on a real 3-node cluster (twistd processes): a watcher
follows the leader, the leader is killed mid-stream, and the watcher
(oxidb.client's watch iterator) resumes on another node with its last
token: every insert is seen exactly once, in token order.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from oxidb._harness import LocalCluster, wait_until
from oxidb.client import Client
from oxidb.client.errors import ServerError, UnknownOutcome

ENV = {
    "OXIDB_RAFT_HEARTBEAT_MS": "100",
    "OXIDB_RAFT_ELECTION_MS": "500-1000",
    "OXIDB_CLUSTER_KEY": "watch end-to-end test cluster key, 32+ characters",
}

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    local = LocalCluster(str(tmp_path), env=ENV)
    yield local
    local.stop()


def test_watcher_resumes_on_another_node_after_the_leader_dies(cluster: LocalCluster) -> None:
    for node in (1, 2, 3):
        cluster.raft_addr(node)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(cluster.start, (1, 2, 3)))
    cluster.bootstrap([1, 2, 3])
    leader = cluster.leader()
    # The leader first, so that the watcher starts there.
    order = [leader] + [n for n in (1, 2, 3) if n != leader]
    url = "oxidb://" + ",".join(f"127.0.0.1:{cluster.nodes[n].port}" for n in order) + "?retries=40&timeout=5"
    writer = Client(url)
    # A write cut short by the failover is sent again; the unique index tells whether it had been applied.
    writer.create_unique_index("items", "n")
    events = Client(url).watch("items")

    def insert(n: int) -> None:
        for _ in range(40):
            try:
                writer.insert("items", {"n": n})
                return
            except UnknownOutcome:
                time.sleep(0.2)
            except ServerError as e:
                if "unique" in str(e):
                    return
                raise
        raise AssertionError(f"insert {n} never went through")

    insert(0)
    seen: list[dict[str, Any]] = [next(events)]
    for n in range(1, 20):
        insert(n)
    seen += [next(events) for _ in range(5)]  # the rest are in flight when the leader dies
    cluster.kill(leader)
    for n in range(20, 40):
        insert(n)
    while len(seen) < 40:
        seen.append(next(events))
    events.close()
    writer.close()

    assert all(e["event"] == "change" and e["data"]["operation"] == "insert" for e in seen)
    assert [e["data"]["document"]["n"] for e in seen] == list(range(40))
    tokens = [e["data"]["token"] for e in seen]
    assert tokens == sorted(set(tokens))
    # The documents are those 40 (a follower may apply the last ones a moment later).
    survivor = next(n for n in (1, 2, 3) if n != leader)
    count = {"cmd": "count", "collection": "items", "query": {}}
    wait_until(lambda: cluster.request(survivor, count) == {"ok": True, "data": {"count": 40}}, 10)
