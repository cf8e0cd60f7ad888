"""
Cluster bench: durable quorum write throughput of a 3-node cluster against
the same writes on a standalone server, and failover time after kill -9 of
the leader. Every server is a real ``twistd -n oxidb`` process on loopback;
the cluster uses its default timings (heartbeat 200 ms, elections
1000-2000 ms) unless told otherwise, and a cluster key, as in production.

    python bench/cluster_bench.py [--seconds 5] [--connections 16] [--failovers 5]
    python bench/cluster_bench.py --failover-only --failovers 11 --steady-seconds 60 \
        [--heartbeat-ms 500 --election-ms 1500-3000]

Writes:
  * ``insert``: one document per request, CONNECTIONS connections each with
    one request in flight (latency bound: group commit is what helps);
  * ``insert_many``: 100 documents per request, same concurrency;
  each against a standalone server (fsync per commit), a one-node cluster
  (the Raft log and driver alone), the leader of a 3-node cluster, and a
  follower of it (which forwards to the leader).

Failover: kill -9 the leader, time until a survivor reports itself leader
and until a write sent to a survivor succeeds; restart the old leader on its
data, wait until it has caught up, repeat.

Spurious elections: a healthy 3-node cluster under steady write load (the
insert workload on the leader) for STEADY_SECONDS, no faults; every term
change is an election nobody needed. Run it with the timings under test
(``--heartbeat-ms``, ``--election-ms``; default: the server's defaults)
before changing a default.

Everything runs on the same machine, so the cluster's three processes and
the load generator share its cores; figures are ratios against the
standalone run made in the same process tree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from loadgen import run as load  # noqa: E402

from oxidb._harness import LocalCluster, ServerProcess, wait_until  # noqa: E402

KEY = {"OXIDB_CLUSTER_KEY": "cluster bench shared secret, 32+ characters"}
DOC = {"name": "bench", "n": 1, "tags": ["a", "b"], "nested": {"x": 1.5}}


def payloads() -> dict[str, tuple[bytes, int]]:
    """Workload name -> (request payload, documents per request)."""
    return {
        "insert": (json.dumps({"cmd": "insert", "collection": "bench", "doc": DOC}).encode(), 1),
        "insert_many x100": (
            json.dumps({"cmd": "insert_many", "collection": "bench", "docs": [DOC] * 100}).encode(),
            100,
        ),
    }


def measure(port: int, count_on: Any, args: argparse.Namespace) -> dict[str, float]:
    """Documents per second for each workload; checks every reply was a write."""
    rates = {}
    for name, (payload, per_request) in payloads().items():
        before = count_on()
        replies = load(port, args.connections, 1, args.seconds, payload)
        # The load generator stops without waiting for its last replies.
        counts = [count_on()]
        while len(counts) < 2 or counts[-1] != counts[-2]:
            time.sleep(0.1)
            counts.append(count_on())
        written = counts[-1] - before
        if abs(written - replies * args.seconds * per_request) > args.connections * per_request * 2:
            print(f"  warning: {name}: {written} documents for {replies * args.seconds:.0f} replies", file=sys.stderr)
        rates[name] = written / args.seconds
    return rates


def standalone(root: str, args: argparse.Namespace) -> dict[str, float]:
    server = ServerProcess(os.path.join(root, "standalone")).start()
    try:
        client = server.client()
        return measure(
            server.port or 0, lambda: client.request({"cmd": "count", "collection": "bench"})["data"]["count"], args
        )
    finally:
        server.stop()


def single_node_rates(root: str, args: argparse.Namespace) -> dict[str, float]:
    """A one-node cluster: the Raft log and driver without replication or shared cores."""
    cluster = LocalCluster(os.path.join(root, "single"), env=KEY)
    try:
        cluster.start(1)
        cluster.bootstrap([1])
        return measure(
            cluster.nodes[1].port or 0,
            lambda: int(cluster.request(1, {"cmd": "count", "collection": "bench"})["data"]["count"]),
            args,
        )
    finally:
        cluster.stop()


def cluster_rates(root: str, args: argparse.Namespace) -> tuple[dict[str, float], dict[str, float]]:
    cluster = LocalCluster(os.path.join(root, "cluster"), env=KEY)
    try:
        for node in (1, 2, 3):
            cluster.start(node)
        cluster.bootstrap([1, 2, 3])

        def count() -> int:
            reply = cluster.request(1, {"cmd": "count", "collection": "bench", "consistency": "linearizable"})
            return int(reply["data"]["count"])

        leader = measure(cluster.nodes[1].port or 0, count, args)
        follower = measure(cluster.nodes[2].port or 0, count, args)
        return leader, follower
    finally:
        cluster.stop()


def failovers(root: str, runs: int, env: dict[str, str]) -> list[tuple[float, float]]:
    cluster = LocalCluster(os.path.join(root, "failover"), env={**KEY, **env})
    results = []
    try:
        for node in (1, 2, 3):
            cluster.start(node)
        cluster.bootstrap([1, 2, 3])
        leader = 1
        for run in range(runs):
            survivors = [n for n in (1, 2, 3) if n != leader]
            cluster.request(leader, {"cmd": "insert", "collection": "f", "doc": {"run": run}})
            cluster.kill(leader)
            killed = time.monotonic()
            new_leader = cluster.leader(survivors, timeout=60)
            elected = time.monotonic() - killed

            def write(node: int = survivors[0], run: int = run) -> bool:
                reply = cluster.request(node, {"cmd": "insert", "collection": "f", "doc": {"after": run}})
                return bool(reply.get("ok"))

            wait_until(write, 60, interval=0.01)
            writable = time.monotonic() - killed
            results.append((elected, writable))
            print(
                f"  failover {run + 1}: leader {leader} -> {new_leader}:"
                f" elected {elected:.2f}s, writable {writable:.2f}s"
            )
            cluster.start(leader)
            target = cluster.metrics(new_leader)["last_applied"]
            wait_until(lambda node=leader, target=target: cluster.metrics(node)["last_applied"] == target, 60)
            leader = new_leader
        return results
    finally:
        cluster.stop()


def steady_elections(root: str, seconds: float, connections: int, env: dict[str, str]) -> tuple[int, int, float]:
    """Elections (term changes) and leader changes in a healthy cluster under write load; and its docs/s."""
    cluster = LocalCluster(os.path.join(root, "steady"), env={**KEY, **env})
    try:
        for node in (1, 2, 3):
            cluster.start(node)
        cluster.bootstrap([1, 2, 3])
        leader = cluster.leader()
        before = {n: cluster.metrics(n) for n in (1, 2, 3)}
        payload = payloads()["insert"][0]
        replies = load(cluster.nodes[leader].port or 0, connections, 1, seconds, payload)
        after = {}
        for n in (1, 2, 3):  # new connections: the old ones idled through the load
            client = cluster.nodes[n].client()
            after[n] = client.request({"cmd": "raft_metrics"})["data"]
            client.close()
        elections = max(m["current_term"] for m in after.values()) - max(m["current_term"] for m in before.values())
        leaders = {m["current_leader"] for m in after.values()}
        return elections, int(leaders != {leader}), replies
    finally:
        cluster.stop()


def timing_env(args: argparse.Namespace) -> dict[str, str]:
    env = {}
    if args.heartbeat_ms:
        env["OXIDB_RAFT_HEARTBEAT_MS"] = args.heartbeat_ms
    if args.election_ms:
        env["OXIDB_RAFT_ELECTION_MS"] = args.election_ms
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per throughput measurement")
    parser.add_argument("--connections", type=int, default=16, help="concurrent client connections")
    parser.add_argument("--failovers", type=int, default=5, help="kill -9 runs")
    parser.add_argument("--steady-seconds", type=float, default=30.0,
                        help="seconds of fault-free write load while counting elections (0: skip)")
    parser.add_argument("--failover-only", action="store_true", help="skip the throughput measurements")
    parser.add_argument(
        "--heartbeat-ms", default="", help="OXIDB_RAFT_HEARTBEAT_MS for the cluster (default: server default)"
    )
    parser.add_argument(
        "--election-ms", default="", help="OXIDB_RAFT_ELECTION_MS for the cluster (default: server default)"
    )
    args = parser.parse_args()
    env = timing_env(args)
    from oxidb.config import Config

    defaults = Config(data_dir=".")
    timings = (
        f"heartbeat {args.heartbeat_ms or defaults.raft_heartbeat_ms} ms, election timeout "
        f"{args.election_ms or '-'.join(map(str, defaults.raft_election_ms))} ms"
    )
    with tempfile.TemporaryDirectory(prefix="oxidb-cluster-bench-") as root:
        if args.failover_only:
            report_failover(root, args, env, timings)
            return
        print(f"throughput: {args.connections} connections, {args.seconds:g}s per run")
        alone = standalone(root, args)
        single = single_node_rates(root, args)
        leader, follower = cluster_rates(root, args)
        print()
        print(
            f"{'workload (docs/s)':<18} {'standalone':>10} {'1-node cluster':>15} {'ratio':>6} "
            f"{'3 nodes, leader':>16} {'ratio':>6} {'via follower':>13} {'ratio':>6}"
        )
        for name in alone:
            print(
                f"{name:<18} {alone[name]:>10.0f} {single[name]:>15.0f} {single[name] / alone[name]:>6.2f} "
                f"{leader[name]:>16.0f} {leader[name] / alone[name]:>6.2f} "
                f"{follower[name]:>13.0f} {follower[name] / alone[name]:>6.2f}"
            )
        report_failover(root, args, env, timings)


def report_failover(root: str, args: argparse.Namespace, env: dict[str, str], timings: str) -> None:
    if args.failovers > 0:
        print()
        print(f"failover after kill -9 of the leader ({args.failovers} runs, {timings}):")
        runs = failovers(root, args.failovers, env)
        elected = sorted(r[0] for r in runs)
        writable = sorted(r[1] for r in runs)
        print()
        print(f"{'':<22} {'min':>6} {'median':>7} {'max':>6}")
        for label, values in (("new leader elected", elected), ("writes accepted again", writable)):
            print(f"{label:<22} {values[0]:>5.2f}s {statistics.median(values):>6.2f}s {values[-1]:>5.2f}s")
    if args.steady_seconds > 0:
        elections, changed, rate = steady_elections(root, args.steady_seconds, args.connections, env)
        print()
        print(
            f"steady load, no faults ({args.steady_seconds:g}s, {args.connections} connections, {rate:.0f} writes/s): "
            f"{elections} elections, leader changed: {'yes' if changed else 'no'}"
        )


if __name__ == "__main__":
    main()
