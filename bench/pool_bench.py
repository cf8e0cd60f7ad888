"""
oxipool bench: the reference deployment (3 shards x 3 Raft nodes, and the
router, all real processes on loopback) loaded with RECORDS records through
the router while one shard's leader is killed a third of the way in.

    python bench/pool_bench.py [--records 100000] [--million] [--writers 4] [--batch 100]

Prints records/s, the write gap during the failover (the longest time one
batch took to be acknowledged), scatter-gather latency (count, a sorted
find page, a $group; median of 5), and the RSS of the router and the
nodes. Every record is then checked: the count and the sum of the record
numbers equal what was acknowledged (a lost or doubled record changes one
or the other). A batch that fails is checked with a linearizable read and
only its missing records sent again, so nothing is sent twice blindly.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from procstat import memory_mib  # noqa: E402

from oxidb._harness import LocalCluster, ServerProcess, free_port  # noqa: E402
from oxidb.client import Client  # noqa: E402
from oxidb.client.errors import ClientError  # noqa: E402

NODE_ENV = {"OXIDB_IDLE_TIMEOUT": "0", "OXIDB_RAFT_HEARTBEAT_MS": "100", "OXIDB_RAFT_ELECTION_MS": "500-1000"}


def record(rid: int, batch: int) -> dict[str, Any]:
    return {"rid": rid, "customer_id": f"c{batch % 997}", "kind": f"k{rid % 7}", "amount": rid % 101}


class Loader:
    def __init__(self, url: str, batch: int) -> None:
        self.url = url
        self.batch = batch
        self.lock = threading.Lock()
        self.acked = 0
        self.acked_sum = 0
        self.batches_done = 0
        self.gap = 0.0
        self.errors: list[str] = []

    def run(self, batches: list[int]) -> None:
        with Client(self.url) as client:
            for b in batches:
                docs = [record(b * self.batch + j, b) for j in range(self.batch)]
                while docs:
                    started = time.monotonic()
                    try:
                        client.insert_many("orders", docs)
                        done, docs = docs, []
                    except ClientError as e:
                        self.errors.append(str(e))
                        time.sleep(0.2)
                        present = self.present(client, docs)
                        done = [d for d in docs if d["rid"] in present]
                        docs = [d for d in docs if d["rid"] not in present]
                    with self.lock:
                        self.gap = max(self.gap, time.monotonic() - started)
                        self.acked += len(done)
                        self.acked_sum += sum(d["rid"] for d in done)
                with self.lock:
                    self.batches_done += 1

    @staticmethod
    def present(client: Client, docs: list[dict[str, Any]]) -> set[int]:
        query = {"customer_id": docs[0]["customer_id"], "rid": {"$in": [d["rid"] for d in docs]}}
        while True:
            try:
                found = client.request(
                    {"cmd": "find", "collection": "orders", "query": query, "consistency": "linearizable"}
                )
                return {d["rid"] for d in found}
            except ClientError:
                time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--million", action="store_true", help="1,000,000 records")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    records = 1_000_000 if args.million else args.records
    batches = records // args.batch
    root = tempfile.mkdtemp(prefix="pool-bench-")
    shards = [LocalCluster(os.path.join(root, f"shard{s}"), env=NODE_ENV, start_timeout=120) for s in range(3)]
    router: ServerProcess | None = None
    try:
        started = time.monotonic()
        for cluster in shards:
            for n in (1, 2, 3):
                cluster.raft_addr(n)
        with ThreadPoolExecutor(9) as pool:
            list(pool.map(lambda sn: sn[0].start(sn[1]), [(c, n) for c in shards for n in (1, 2, 3)]))
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda c: c.bootstrap([1, 2, 3]), shards))
        members = ";".join(",".join(f"127.0.0.1:{c.nodes[n].port}" for n in (1, 2, 3)) for c in shards)
        metrics_port = free_port()
        router = ServerProcess(
            os.path.join(root, "pool"),
            env={
                "OXIPOOL_LISTEN": "127.0.0.1:0",
                "OXIPOOL_SHARDS": members,
                "OXIPOOL_SHARD_KEYS": "orders:customer_id",
                "OXIPOOL_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
                "OXIPOOL_LEADER_POLL": "0.5",
            },
            plugin="oxipool",
        ).start(120)
        url = f"oxidb://127.0.0.1:{router.port}?timeout=60"
        print(f"deployment up in {time.monotonic() - started:.1f}s (router on {router.port})")
        with Client(url) as client:
            client.create_collection("orders")

        loader = Loader(url, args.batch)
        threads = [
            threading.Thread(target=loader.run, args=(list(range(w, batches, args.writers)),))
            for w in range(args.writers)
        ]
        t0 = time.monotonic()
        for thread in threads:
            thread.start()
        while loader.batches_done < batches // 3:
            time.sleep(0.01)
        victim_cluster = shards[1]
        victim = victim_cluster.leader()
        victim_cluster.kill(victim)
        killed_at = time.monotonic() - t0
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - t0
        print(f"loaded {loader.acked:,} records in {elapsed:.1f}s: {loader.acked / elapsed:,.0f} records/s")
        print(f"killed shard 1's leader (node {victim}) at {killed_at:.1f}s; longest write gap {loader.gap:.2f}s")
        print(f"{len(loader.errors)} batch errors, each checked and completed (first: {loader.errors[:1]})")

        with Client(url) as client:
            timings: dict[str, list[float]] = {"count": [], "find page": [], "$group": []}
            for _ in range(5):
                t = time.monotonic()
                count = client.count("orders")["count"]
                timings["count"].append(time.monotonic() - t)
                t = time.monotonic()
                client.find("orders", {"amount": {"$gte": 50}}, sort={"amount": -1, "rid": 1}, skip=100, limit=100)
                timings["find page"].append(time.monotonic() - t)
                t = time.monotonic()
                total = client.aggregate(
                    "orders", [{"$group": {"_id": None, "n": {"$sum": 1}, "rids": {"$sum": "$rid"}}}]
                )
                timings["$group"].append(time.monotonic() - t)
            for name, values in timings.items():
                print(f"scatter-gather {name}: median {statistics.median(values) * 1000:.0f} ms")
            ok = count == loader.acked and total[0]["n"] == loader.acked and total[0]["rids"] == loader.acked_sum
            print(f"check: {count:,} stored, {loader.acked:,} acknowledged, sums {'match' if ok else 'DIFFER'}")
        print(
            f"RSS: router {memory_mib(router.process.pid):.0f} MiB; nodes "
            + ", ".join(
                f"{memory_mib(c.nodes[n].process.pid):.0f}"
                for c in shards
                for n in (1, 2, 3)
                if c.nodes[n].process.poll() is None
            )
            + " MiB"
        )
        if not ok:
            sys.exit(1)
    finally:
        if router is not None and router.process.poll() is None:
            router.stop()
        for cluster in shards:
            try:
                cluster.stop()
            except AssertionError as e:
                print(e)


if __name__ == "__main__":
    main()
