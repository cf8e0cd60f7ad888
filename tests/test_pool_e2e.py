"""
The reference deployment, for real: docs/sharding.md's local 3 x 3 recipe
(nine server processes in three Raft groups, and the router) runs verbatim,
then records are loaded through the router with C{oxidb.client} while one
shard's leader is killed mid-stream. Every acknowledged record is there
exactly once, and scatter-gather finds, counts and C{$group} equal the
reference computed here. The one test that starts these processes; the
100k/1M version is bench/pool_bench.py.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from oxidb._harness import BlockingClient, wait_until
from oxidb.client import Client
from oxidb.client.errors import ClientError

DOC = Path(__file__).resolve().parent.parent / "docs" / "sharding.md"
NODES = [(s, n) for s in (1, 2, 3) for n in (1, 2, 3)]
PORTS = (4600, 4601, *(4600 + 10 * s + n for s, n in NODES), *(4700 + 10 * s + n for s, n in NODES))
BATCHES, BATCH = 120, 25  # 3,000 records, one customer per batch (one shard, one write)

pytestmark = pytest.mark.timeout(300)


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _kill_all(directory: Path) -> None:
    for pidfile in directory.glob("*.pid"):
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        except (ValueError, OSError):
            pass


def record(batch: int, j: int) -> dict[str, Any]:
    rid = batch * BATCH + j
    return {"rid": rid, "customer_id": f"c{batch % 37}", "kind": f"k{rid % 5}", "amount": rid % 13}


def leader_of(shard: int) -> int:
    for n in (1, 2, 3):
        try:
            client = BlockingClient("127.0.0.1", 4600 + 10 * shard + n, timeout=5.0)
            try:
                if client.request({"cmd": "raft_metrics"})["data"]["state"] == "Leader":
                    return n
            finally:
                client.close()
        except OSError:
            continue
    raise AssertionError(f"shard {shard} has no leader")


class Loader:
    """Writes batches through the router; a failed batch is checked and only its missing records sent again."""

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.done_batches = 0
        self.gap = 0.0

    def run(self, batches: list[int]) -> None:
        client = Client("oxidb://127.0.0.1:4600?timeout=60", sleep=time.sleep)
        try:
            for batch in batches:
                docs = [record(batch, j) for j in range(BATCH)]
                while docs:
                    started = time.monotonic()
                    try:
                        client.insert_many("orders", docs)
                        confirmed = [d["rid"] for d in docs]
                        docs = []
                    except ClientError as e:
                        with self.lock:
                            self.errors.append(str(e))
                        time.sleep(0.2)
                        present = self.present(client, docs)
                        confirmed = [d["rid"] for d in docs if d["rid"] in present]
                        docs = [d for d in docs if d["rid"] not in present]
                    with self.lock:
                        self.gap = max(self.gap, time.monotonic() - started)
                        self.acked.extend(confirmed)
                with self.lock:
                    self.done_batches += 1
        finally:
            client.close()

    @staticmethod
    def present(client: Client, docs: list[dict[str, Any]]) -> set[int]:
        """Which of C{docs} are stored (a linearizable read on their shard's leader)."""
        for _ in range(100):
            try:
                found = client.request(
                    {
                        "cmd": "find",
                        "collection": "orders",
                        "query": {"customer_id": docs[0]["customer_id"], "rid": {"$in": [d["rid"] for d in docs]}},
                        "consistency": "linearizable",
                    }
                )
                return {d["rid"] for d in found}
            except ClientError:
                time.sleep(0.2)
        raise AssertionError("the shard never answered")


def test_reference_deployment_with_a_failover(tmp_path: Path) -> None:
    blocks = shell_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 5
    busy = [port for port in PORTS if not _free(port)]
    assert not busy, f"the recipe's ports {busy} are in use on this machine"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OXIDB_", "OXIPOOL_"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    started = time.monotonic()
    try:
        script = "set -euo pipefail\n" + "\n".join(blocks[:4])
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, (done.stdout, done.stderr, (tmp_path / "pool.log").read_text())
        expected = [line[5:] for block in blocks for line in block.splitlines() if line.startswith("# -> ")]
        assert done.stdout.splitlines() == expected
        setup = time.monotonic() - started

        # Load through the router; kill shard 2's leader (the router's shard 1) a third of the way in.
        loader = Loader()
        writers = [threading.Thread(target=loader.run, args=(list(range(w, BATCHES, 2)),)) for w in range(2)]
        for thread in writers:
            thread.start()
        wait_until(lambda: loader.done_batches >= BATCHES // 3 or not any(t.is_alive() for t in writers), 120)
        assert loader.done_batches >= BATCHES // 3, loader.errors[-5:]
        victim = leader_of(2)
        os.kill(int((tmp_path / f"s2-n{victim}.pid").read_text()), signal.SIGKILL)
        for thread in writers:
            thread.join(timeout=200)
        total = BATCHES * BATCH
        assert sorted(loader.acked) == list(range(total))

        with Client("oxidb://127.0.0.1:4600?timeout=60") as client:
            stored = client.find("orders", {"rid": {"$exists": True}}, sort={"rid": 1})
            assert [d["rid"] for d in stored] == list(range(total))  # each exactly once
            assert client.count("orders") == {"count": total + 1}  # and the recipe's own order
            reference = [record(b, j) for b in range(BATCHES) for j in range(BATCH)]
            page = client.find("orders", {"amount": {"$gte": 7}}, sort={"amount": -1, "rid": 1}, skip=40, limit=25)
            want = sorted((r for r in reference if r["amount"] >= 7), key=lambda r: (-r["amount"], r["rid"]))[40:65]
            assert [d["rid"] for d in page] == [r["rid"] for r in want]
            groups = client.aggregate(
                "orders",
                [
                    {"$match": {"rid": {"$exists": True}}},
                    {"$group": {"_id": "$kind", "total": {"$sum": "$amount"}, "n": {"$sum": 1}}},
                    {"$sort": {"_id": 1}},
                ],
            )
            sums: dict[str, list[int]] = {}
            for r in reference:
                sums.setdefault(r["kind"], [0, 0])
                sums[r["kind"]][0] += r["amount"]
                sums[r["kind"]][1] += 1
            assert groups == [{"_id": k, "total": t, "n": n} for k, (t, n) in sorted(sums.items())]
            mine = client.count("orders", {"customer_id": "c5"})
            assert mine == {"count": sum(1 for r in reference if r["customer_id"] == "c5")}
            status = client.command("pool_status")
            assert status["shards"][1]["leader"] != f"127.0.0.1:462{victim}"

        with urllib.request.urlopen("http://127.0.0.1:4601/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert re.search(r'oxipool_shard_leader_changes_total\{shard="1"\} [2-9]', metrics), metrics
        assert f'oxipool_shard_leader{{member="127.0.0.1:462{victim}",shard="1"}} 0.0' in metrics
        print(f"setup {setup:.1f}s, load {time.monotonic() - started - setup:.1f}s, write gap {loader.gap:.2f}s")

        stop = subprocess.run(["bash", "-c", blocks[4]], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert "No such process" in stop.stderr or stop.returncode == 0  # the killed node has no process
    finally:
        _kill_all(tmp_path)
