"""
A Jepsen-style nemesis against a real 3-node cluster (twistd processes on
loopback). Every Raft connection goes through the fault proxy
(L{oxidb._harness.FaultProxyProcess}); a seeded schedule mixes partitions
(the leader isolated, a node isolated, a bridge, a one-way cut, slow links),
kill -9, SIGSTOP/SIGCONT and graceful restarts, while clients write
registers and read them back with linearizable reads on random nodes.

After healing everything it checks:

* every acknowledged write is on every node exactly once; a write whose
  outcome is unknown (timeout, lost connection, an "outcome unknown" error)
  at most once; a write the server said was not applied, nowhere;
* every node holds the same data;
* each register's history is linearizable (L{oxidb.testing.linearizability}); writes of
  unknown outcome may have happened or not.

Knobs: C{OXIDB_NEMESIS_SECONDS} (how long faults are injected, default 20),
C{OXIDB_NEMESIS_SEED} (replay a schedule; the seed is printed on failure),
C{OXIDB_NEMESIS_OPS} (most client operations, default 120 per second of faults). The seed fixes
the schedule (which faults, on which nodes, for how long) and the clients'
choices; process timing on a real machine still varies from run to run.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import secrets
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from oxidb._harness import BlockingClient, FaultProxyProcess, LocalCluster, wait_until
from oxidb.testing import Op, check_history

SECONDS = float(os.environ.get("OXIDB_NEMESIS_SECONDS", "20"))
MAX_OPS = int(os.environ.get("OXIDB_NEMESIS_OPS") or 120 * SECONDS)
SEED = int(os.environ.get("OXIDB_NEMESIS_SEED") or secrets.randbelow(2**32))

NODES = (1, 2, 3)
CLIENTS = 4
#: Registers per generation; a new generation every OPS_PER_GENERATION
#: operations keeps each key's history short, so checking it stays cheap.
KEYS_PER_GENERATION = 3
OPS_PER_GENERATION = 90
#: A request unanswered this long has an unknown outcome.
REQUEST_TIMEOUT = 8.0

TIMINGS = {
    "OXIDB_RAFT_HEARTBEAT_MS": "100",
    "OXIDB_RAFT_ELECTION_MS": "500-1000",
    "OXIDB_RAFT_SNAPSHOT_LOGS": "200",
    "OXIDB_RAFT_KEEP_LOGS": "20",
}

#: Error replies that say a write was not applied (everything else leaves it open).
NOT_APPLIED = ("the write was lost in a leader change; retry it", "no leader elected within")

pytestmark = pytest.mark.timeout(SECONDS + 240)


class History:
    """Client operations with call and return times from one counter."""

    def __init__(self) -> None:
        self._clock = itertools.count(1)
        self._lock = threading.Lock()
        self.ops: list[Op] = []
        self.acked: set[str] = set()
        self.unknown: set[str] = set()
        self.failed: set[str] = set()
        self.errors: Counter[str] = Counter()
        self.reads = 0

    def now(self) -> int:
        with self._lock:
            return next(self._clock)

    def record(self, op: Op, outcome: str | None = None) -> None:
        with self._lock:
            self.ops.append(op)
            if op.kind == "put" and outcome is not None:
                {"ok": self.acked, "unknown": self.unknown}[outcome].add(op.value)
            elif op.kind == "get":
                self.reads += 1

    def error(self, text: str) -> None:
        with self._lock:
            self.errors[text[:80]] += 1


class Nemesis:
    def __init__(self, root: Path, rng: random.Random) -> None:
        self.rng = rng
        self.key = secrets.token_urlsafe(32)  # 43 characters
        self.cluster = LocalCluster(str(root), env={**TIMINGS, "OXIDB_CLUSTER_KEY": self.key})
        self.proxy = FaultProxyProcess().start()
        self.env: dict[int, dict[str, str]] = {}
        self.paused: set[int] = set()
        self.down: set[int] = set()
        self.events: list[str] = []
        self.started = time.monotonic()
        self._lock = threading.Lock()  # process starts, kills and signals

    # --- the cluster behind the proxy ---------------------------------------------------

    def start_cluster(self) -> None:
        for node in NODES:
            self.proxy.add_node(node, self.cluster.raft_addr(node))
        for node in NODES:
            peers = ",".join(f"{o}=127.0.0.1:{self.proxy.link_port(node, o)}" for o in NODES if o != node)
            self.env[node] = {"OXIDB_RAFT_ADVERTISE": self.proxy.address(node), "OXIDB_RAFT_PEERS": peers}
            self.cluster.start(node, **self.env[node])
        self.cluster.bootstrap(list(NODES), {n: self.proxy.address(n) for n in NODES})
        membership = self.cluster.metrics(1)["membership_config"]
        for node in NODES:
            # Every node is known by its front door, so all Raft traffic crosses the proxy.
            assert self.proxy.address(node) in membership and self.cluster.raft_addr(node) not in membership, membership
        assert all(s["bytes_forward"] > 0 for s in self.proxy.stats() if s["src"] == 1)
        # The proxy really partitions: cut off from the others, the leader is replaced.
        old = self.cluster.leader()
        others = [n for n in NODES if n != old]
        self.proxy.partition([[old], others])
        new = self.cluster.leader(others, timeout=30)
        self.proxy.heal()
        wait_until(lambda: self.cluster.metrics(old)["current_leader"] == new, 30)

    def log(self, text: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:7.2f}s {text}")

    def leader(self) -> int | None:
        """The leader as some running node sees it, asked with a short timeout."""
        for node in self.rng.sample(NODES, len(NODES)):
            if node in self.paused or node in self.down:
                continue
            try:
                client = BlockingClient("127.0.0.1", self.cluster.nodes[node].port or 0, timeout=1.0)
                try:
                    data = client.request({"cmd": "raft_metrics"})["data"]
                finally:
                    client.close()
            except (OSError, ValueError, KeyError):
                continue
            if data.get("current_leader") in NODES:
                return int(data["current_leader"])
        return None

    # --- faults ---------------------------------------------------------------------------

    def run(self, seconds: float, stop: threading.Event) -> None:
        deadline = time.monotonic() + seconds
        faults: list[Callable[[], Callable[[], None]]] = [
            self.isolate_leader, self.isolate_one, self.bridge, self.one_way, self.slow_links,
            self.kill, self.pause, self.restart,
        ]
        while time.monotonic() < deadline and not stop.is_set():
            fault = self.rng.choice(faults)
            undo = fault()
            stop.wait(self.rng.uniform(0.5, 4.0))  # the fault lasts (part of the schedule)
            undo()
            stop.wait(self.rng.uniform(0.2, 2.0))  # a healthy spell

    def _partition(self, groups: list[list[int]], what: str) -> Callable[[], None]:
        mode = self.rng.choice(["blackhole", "blackhole", "drop"])
        reset = self.rng.random() < 0.5
        self.log(f"partition {groups} ({what}, {mode})")
        self.proxy.partition(groups, mode)

        def heal() -> None:
            self.log(f"heal{' (reset connections)' if reset else ''}")
            self.proxy.heal(reset)

        return heal

    def isolate_leader(self) -> Callable[[], None]:
        target = self.leader() or self.rng.choice(NODES)
        return self._partition([[target], [n for n in NODES if n != target]], "leader isolated")

    def isolate_one(self) -> Callable[[], None]:
        target = self.rng.choice(NODES)
        return self._partition([[target], [n for n in NODES if n != target]], "minority | majority")

    def bridge(self) -> Callable[[], None]:
        a, middle, b = self.rng.sample(NODES, 3)
        return self._partition([[a, middle], [middle, b]], f"bridge through {middle}")

    def one_way(self) -> Callable[[], None]:
        src = self.leader() if self.rng.random() < 0.5 else None
        src = src or self.rng.choice(NODES)
        dst = self.rng.choice([n for n in NODES if n != src])
        self.log(f"one-way: nothing from {src} reaches {dst}")
        # Bytes from src to dst travel on src's connections to dst and on dst's to src.
        self.proxy.set_links([(src, dst)], "one-way")
        self.proxy.set_links([(dst, src)], "one-way-back")
        reset = self.rng.random() < 0.5

        def heal() -> None:
            self.log(f"heal{' (reset connections)' if reset else ''}")
            self.proxy.heal(reset)

        return heal

    def slow_links(self) -> Callable[[], None]:
        delay = self.rng.randrange(20, 400)
        links = [(a, b) for a in NODES for b in NODES if a != b and self.rng.random() < 0.7]
        self.log(f"delay {delay} ms on {links}")
        self.proxy.set_links(links, "delay", delay_ms=delay)

        def heal() -> None:
            self.log("heal")
            self.proxy.heal()

        return heal

    def _target(self) -> int:
        """A running, unpaused node; often the leader."""
        up = [n for n in NODES if n not in self.down and n not in self.paused]
        leader = self.leader() if self.rng.random() < 0.6 else None
        return leader if leader in up else self.rng.choice(up)

    def kill(self) -> Callable[[], None]:
        target = self._target()
        self.log(f"kill -9 node {target}")
        with self._lock:
            self.cluster.kill(target)
            self.paused.discard(target)
            self.down.add(target)
        return lambda: self.revive(target)

    def revive(self, node: int) -> None:
        with self._lock:
            if node in self.down:
                self.log(f"start node {node}")
                self.cluster.start(node, **self.env[node])
                self.down.discard(node)

    def pause(self) -> Callable[[], None]:
        target = self._target()
        self.log(f"SIGSTOP node {target}")
        with self._lock:
            self.cluster.nodes[target].signal(signal.SIGSTOP)
            self.paused.add(target)

        def resume() -> None:
            with self._lock:
                if target in self.paused:
                    self.log(f"SIGCONT node {target}")
                    self.cluster.nodes[target].signal(signal.SIGCONT)
                    self.paused.discard(target)

        return resume

    def restart(self) -> Callable[[], None]:
        target = self._target()
        self.log(f"restart node {target} (SIGTERM)")
        with self._lock:
            client = self.cluster._clients.pop(target, None)
            if client is not None:
                client.close()
            self.cluster.nodes[target].stop()
            self.down.add(target)
            self.cluster.start(target, **self.env[target])
            self.down.discard(target)
        return lambda: None

    def heal_all(self) -> None:
        self.log("heal everything")
        self.proxy.heal()
        for node in list(self.paused):
            self.cluster.nodes[node].signal(signal.SIGCONT)
            self.paused.discard(node)
        for node in list(self.down):
            self.revive(node)

    def close(self) -> None:
        for node in list(self.paused):
            self.cluster.nodes[node].signal(signal.SIGCONT)
        self.cluster.stop()
        self.proxy.stop()


class Client(threading.Thread):
    """Writes and linearizably reads registers on random nodes until told to stop."""

    def __init__(
        self, number: int, nemesis: Nemesis, history: History, stop: threading.Event, ops: Iterator[int]
    ) -> None:
        super().__init__(name=f"nemesis-client-{number}", daemon=True)
        self.number = number
        self.nemesis = nemesis
        self.history = history
        self.stop = stop
        self.ops = ops
        self.rng = random.Random(nemesis.rng.random())
        self.connections: dict[int, BlockingClient] = {}
        self.failure: BaseException | None = None

    def connection(self, node: int) -> BlockingClient:
        client = self.connections.get(node)
        if client is None:
            port = self.nemesis.cluster.nodes[node].port or 0
            client = self.connections[node] = BlockingClient("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        return client

    def drop(self, node: int) -> None:
        client = self.connections.pop(node, None)
        if client is not None:
            client.close()

    def run(self) -> None:
        try:
            for n in self.ops:
                if self.stop.is_set():
                    break
                generation = n // OPS_PER_GENERATION
                key = f"g{generation}k{self.rng.randrange(KEYS_PER_GENERATION)}"
                node = self.rng.choice(NODES)
                if self.rng.random() < 0.5:
                    self.write(node, key, f"c{self.number}-{n}")
                else:
                    self.read(node, key)
                self.stop.wait(self.rng.uniform(0, 0.02))  # think time: keeps the operation count bounded
        except BaseException as e:  # reported by the test
            self.failure = e
        finally:
            for node in list(self.connections):
                self.drop(node)

    def request(self, node: int, request: dict[str, Any]) -> dict[str, Any] | None:
        """The reply, or C{None} if there was none (refused, lost, timed out)."""
        try:
            reply: dict[str, Any] = self.connection(node).request(request)
            return reply
        except (OSError, ValueError):
            self.drop(node)
            return None

    def write(self, node: int, key: str, value: str) -> None:
        call = self.history.now()
        try:
            self.connection(node)
        except OSError:
            return  # never sent: the node is down
        reply = self.request(node, {"cmd": "insert", "collection": "reg", "doc": {"k": key, "v": value}})
        ret = self.history.now()
        if reply is not None and reply.get("ok"):
            self.history.record(Op(self.number, "put", key, value, call, ret), "ok")
            return
        if reply is not None:
            error = str(reply.get("error"))
            self.history.error(f"write: {error}")
            if any(text in error for text in NOT_APPLIED):
                self.history.failed.add(value)
                return
        self.history.record(Op(self.number, "put", key, value, call, None), "unknown")

    def read(self, node: int, key: str) -> None:
        call = self.history.now()
        try:
            self.connection(node)
        except OSError:
            return
        reply = self.request(node, {
            "cmd": "find", "collection": "reg", "query": {"k": key}, "sort": {"_id": -1}, "limit": 1,
            "consistency": "linearizable",
        })
        ret = self.history.now()
        if reply is None:
            return
        if not reply.get("ok"):
            self.history.error(f"read: {reply.get('error')}")
            return
        docs = reply["data"]
        self.history.record(Op(self.number, "get", key, call=call, ret=ret, output=docs[0]["v"] if docs else None))


@pytest.fixture
def nemesis(tmp_path: Path) -> Iterator[Nemesis]:
    print(f"nemesis seed {SEED} (replay: OXIDB_NEMESIS_SEED={SEED})")
    subject = Nemesis(tmp_path, random.Random(SEED))
    try:
        yield subject
    finally:
        subject.close()


#: What a node logs when an exception escaped the code that should have handled it.
UNHANDLED = ("Unhandled Error", "Unhandled error in Deferred")


def unhandled_errors(root: Path) -> list[str]:
    """
    An excerpt of each unhandled error, and of each other logged traceback
    (a request that failed with an internal error), in the nodes' logs
    (every run of every node).
    """
    found = []
    for path in sorted(root.glob("node*.twistd.log*")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        last_marker = -10
        for i, line in enumerate(lines):
            if any(marker in line for marker in UNHANDLED):
                last_marker = i
            elif "Traceback (most recent call last)" not in line or i - last_marker <= 3:
                continue
            found.append(f"{path.name}:{i + 1}:\n" + "\n".join(lines[max(0, i - 1) : i + 22]))
    return found


def dump(nemesis: Nemesis, node: int) -> list[dict[str, Any]]:
    client = nemesis.cluster.nodes[node].client(timeout=30)
    try:
        reply = client.request({"cmd": "find", "collection": "reg", "query": {}, "sort": {"_id": 1}})
    finally:
        client.close()
    assert reply.get("ok"), reply
    docs: list[dict[str, Any]] = reply["data"]
    return docs


def converge(nemesis: Nemesis) -> None:
    """A leader commits a write, and then every node has applied all the leader has."""
    cluster = nemesis.cluster

    def committed() -> str | None:
        cluster._clients.clear()  # connections from before the faults may be dead
        try:
            leader = cluster.leader(timeout=5)
            if not cluster.request(leader, {"cmd": "insert", "collection": "marker", "doc": {}}).get("ok"):
                return None
            return str(cluster.metrics(leader)["last_applied"])
        except (OSError, ValueError, AssertionError):
            return None

    target = wait_until(committed, 90, interval=0.2)

    def applied() -> bool:
        try:
            return all(cluster.metrics(n)["last_applied"] == target for n in NODES)
        except (OSError, ValueError):
            cluster._clients.clear()
            return False

    wait_until(applied, 60, interval=0.1)


def test_nemesis(nemesis: Nemesis) -> None:
    nemesis.start_cluster()
    history = History()
    stop = threading.Event()
    ops = iter(range(MAX_OPS))
    lock = threading.Lock()

    def next_op() -> Iterator[int]:
        while True:
            with lock:
                n = next(ops, None)
            if n is None:
                return
            yield n

    clients = [Client(i, nemesis, history, stop, next_op()) for i in range(CLIENTS)]
    for client in clients:
        client.start()
    try:
        nemesis.run(SECONDS, stop)
    finally:
        stop.set()
        for client in clients:
            client.join(REQUEST_TIMEOUT * 3)
        nemesis.heal_all()
    converge(nemesis)

    context = (
        f"seed {SEED} (replay: OXIDB_NEMESIS_SEED={SEED}); {len(history.ops)} operations, "
        f"{len(history.acked)} acknowledged writes, {len(history.unknown)} of unknown outcome, "
        f"{len(history.failed)} refused, {history.reads} reads\nschedule:\n" + "\n".join(nemesis.events)
        + f"\nerrors: {dict(history.errors)}"
    )
    print(context)
    for client in clients:
        assert client.failure is None and not client.is_alive(), (repr(client.failure), context)
    assert len(history.acked) > 20 and history.reads > 20, f"too little progress to test anything\n{context}"

    dumps = {node: dump(nemesis, node) for node in NODES}
    for node in NODES[1:]:
        assert dumps[node] == dumps[NODES[0]], f"node {node} differs from node {NODES[0]}\n{context}"
    written = Counter(doc["v"] for doc in dumps[NODES[0]])
    issued = history.acked | history.unknown | history.failed
    problems = [f"acknowledged {v} is there {written[v]} times" for v in sorted(history.acked) if written[v] != 1]
    problems += [f"unknown {v} is there {written[v]} times" for v in sorted(history.unknown) if written[v] > 1]
    problems += [f"refused {v} is there {written[v]} times" for v in sorted(history.failed) if written[v]]
    problems += [f"{v} was never written" for v in sorted(written) if v not in issued]
    assert not problems, "\n".join(problems[:20]) + f"\n{context}"

    bad = check_history(history.ops)
    if bad:
        by_key: dict[str, list[Op]] = defaultdict(list)
        for op in history.ops:
            by_key[op.key].append(op)
        excerpt = "\n".join(
            json.dumps([op.kind, op.client, op.value or op.output, op.call, op.ret])
            for op in sorted(by_key[bad[0]], key=lambda o: o.call)
        )
        pytest.fail(
            f"not linearizable: keys {bad}\n"
            f"history of {bad[0]} (kind, client, value, call, return):\n{excerpt}\n{context}"
        )

    # No node may have lost control of an exception on the way.
    errors = unhandled_errors(Path(nemesis.cluster.root))
    assert not errors, f"{len(errors)} unhandled errors in the nodes' logs; the first:\n{errors[0]}\n{context}"
