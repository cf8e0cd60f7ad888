"""
Real cluster nodes (twistd processes) on loopback: upstream's bootstrap
sequence, 10k documents in batches, kill -9 of the leader, a restart on its
data, a node added after the log was compacted, forwarding, linearizable
reads and the haproxy health check.
"""

from __future__ import annotations

import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import everything, ok

from oxidb._harness import LocalCluster, free_port, wait_until
from oxidb.client import Client
from oxidb.wire import oxiwire

#: Fast elections and a tiny snapshot threshold, so that the log is compacted
#: and a late node must be sent a snapshot.
FAST = {
    "OXIDB_RAFT_HEARTBEAT_MS": "100",
    "OXIDB_RAFT_ELECTION_MS": "500-1000",
    "OXIDB_RAFT_SNAPSHOT_LOGS": "10",
    "OXIDB_RAFT_KEEP_LOGS": "3",
    "OXIDB_CLUSTER_KEY": "end-to-end test cluster key, 32+ characters",
}

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    local = LocalCluster(str(tmp_path), env=FAST)
    yield local
    local.stop()


def haproxy_check(port: int) -> bytes:
    """The 26 bytes upstream's haproxy sends, and the raw reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"\x16\x00\x00\x00" + b'{"cmd":"raft_metrics"}')
        header = sock.recv(4, socket.MSG_WAITALL)
        (length,) = struct.unpack("<I", header)
        return sock.recv(length, socket.MSG_WAITALL)


def test_bootstrap_failover_restart_and_snapshot_catch_up(cluster: LocalCluster) -> None:
    for node in (1, 2, 3):
        cluster.start(node)
    cluster.bootstrap([1, 2, 3])
    assert cluster.leader() == 1
    assert b'"state":"Leader"' in haproxy_check(cluster.nodes[1].port or 0)
    assert b'"state":"Leader"' not in haproxy_check(cluster.nodes[2].port or 0)

    # 10k documents in batches of 500, half through the leader, half
    # forwarded by a follower.
    ids: list[int] = []
    for batch in range(20):
        docs = [{"n": batch * 500 + k, "batch": batch} for k in range(500)]
        ids += ok(cluster.request(1 if batch % 2 else 2, {"cmd": "insert_many", "collection": "docs", "docs": docs}))
    assert ids == list(range(1, 10001))

    # Our client, given every node as a seed, finds the leader.
    seeds = {node: ("127.0.0.1", cluster.nodes[node].port or 0) for node in (1, 2, 3)}
    client = Client(f"oxidb://{','.join(f'{h}:{p}' for h, p in seeds.values())}?retries=8")
    assert client.count("docs") == {"count": 10000} and client.address == seeds[1]

    # kill -9 the leader: the others elect a new one.
    cluster.kill(1)
    killed_at = time.monotonic()
    leader = cluster.leader([2, 3])
    failover = time.monotonic() - killed_at
    assert failover < 10, failover
    follower = 5 - leader
    more = [ok(cluster.request(follower, {"cmd": "insert", "collection": "docs", "doc": {"n": 10000 + k}}))["id"]
            for k in range(30)]
    assert more == list(range(10001, 10031))
    ok(
        cluster.request(
            leader, {"cmd": "update", "collection": "docs", "query": {"batch": 3}, "update": {"$set": {"seen": True}}}
        )
    )
    # The client's connection died with node 1: it reconnects and finds the new leader among the seeds.
    assert client.count("docs") == {"count": 10030} and client.address == seeds[leader]
    client.close()

    # The killed node comes back on its data with no command and catches up.
    cluster.start(1)
    want = everything(cluster, leader)
    assert len(want) == 10030
    wait_until(lambda: cluster.metrics(1)["last_applied"] == cluster.metrics(leader)["last_applied"], 30)
    for node in (1, 2, 3):
        assert everything(cluster, node) == want
    assert cluster.metrics(1)["state"] == "Follower" and cluster.metrics(1)["current_leader"] == leader
    rejected = cluster.request(1, {"cmd": "raft_init"})
    assert rejected["ok"] is False and rejected["error"].startswith("raft init failed: not allowed to initialize")

    # A node added now is far behind a compacted log: it gets a snapshot.
    cluster.start(4)
    reply = ok(cluster.request(leader, {"cmd": "raft_add_learner", "node_id": 4, "addr": cluster.raft_addr(4)}))
    assert set(reply) == {"log_id", "membership"} and "4: BasicNode" in reply["membership"]
    wait_until(lambda: cluster.metrics(4)["last_applied"] == cluster.metrics(leader)["last_applied"], 30)
    assert everything(cluster, 4) == want
    assert "raft: installing snapshot" in cluster.nodes[4].log()
    assert cluster.metrics(4)["state"] == "Learner"


def ready(port: int, query: str = "") -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready{query}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_forwarding_off_linearizable_reads_and_errors(cluster: LocalCluster) -> None:
    metrics = {1: free_port(), 2: free_port()}
    cluster.start(1, OXIDB_METRICS_ADDR=f"127.0.0.1:{metrics[1]}")
    cluster.start(2, OXIDB_FORWARD_WRITES="false", OXIDB_METRICS_ADDR=f"127.0.0.1:{metrics[2]}")
    cluster.start(3)
    cluster.bootstrap([1, 2, 3])
    # The HTTP leader check on the metrics port.
    wait_until(lambda: ready(metrics[2]) == 200, 10)
    assert ready(metrics[1], "?role=leader") == 200 and ready(metrics[2], "?role=leader") == 503
    leader_addr = cluster.raft_addr(1)
    assert cluster.request(2, {"cmd": "insert", "collection": "c", "doc": {"a": 1}}) == {
        "ok": False,
        "error": f'raft error: has to forward request to: Some(1), Some(BasicNode {{ addr: "{leader_addr}" }})',
    }
    # Management commands must go to the leader.
    reply = cluster.request(3, {"cmd": "raft_add_learner", "node_id": 9, "addr": "127.0.0.1:1"})
    assert reply == {
        "ok": False,
        "error": f'add learner failed: has to forward request to: Some(1), Some(BasicNode {{ addr: "{leader_addr}" }})',
    }
    assert cluster.request(1, {"cmd": "raft_add_learner", "node_id": 9}) == {
        "ok": False, "error": "missing 'addr' (raft address)"}
    assert cluster.request(1, {"cmd": "raft_change_membership", "members": [1, "2"]}) == {
        "ok": False, "error": "'members' must be array of node IDs"}
    # Node 3 forwards; a linearizable read on any node sees the write at once.
    written = ok(cluster.request(3, {"cmd": "insert", "collection": "c", "doc": {"a": 2}}))
    for node in (2, 3):
        found = ok(cluster.request(node, {"cmd": "find", "collection": "c", "query": {"a": 2},
                                          "consistency": "linearizable"}))
        assert [d["_id"] for d in found] == [written["id"]]
    # OxiWire works in cluster mode too: a binary write forwarded by a follower.
    client = cluster.client(3)
    client.send_raw(b"\xdb" + oxiwire.encode_value({"cmd": "insert", "collection": "c", "doc": {"wire": "oxi"}}))
    reply = client.recv_raw()
    assert reply[:2] == b"\xdb\x00"
    assert oxiwire.decode_reply(reply) == (True, {"id": written["id"] + 1})
    client.close()
    # Our client with the leader as its last seed: it probes the followers, keeps one as a
    # fallback and writes through the leader (node 2 would refuse, not forwarding).
    seeds = {node: ("127.0.0.1", cluster.nodes[node].port or 0) for node in (1, 2, 3)}
    hinted = Client(f"oxidb://{','.join(f'{h}:{p}' for h, p in (seeds[2], seeds[3], seeds[1]))}")
    assert hinted.insert("c", {"via": "client"}) == {"id": written["id"] + 2}
    assert hinted.address == seeds[1]
    hinted.close()
    status = ok(cluster.request(2, {"cmd": "server_status"}))
    assert status["mode"] == "cluster" and status["raft"]["leader"] == 1
