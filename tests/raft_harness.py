"""
A hand-driven cluster for event-list tests of the Raft core: the test decides
which messages are delivered, dropped or held, and when time moves.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from oxidb.raft.core import RaftConfig, RaftCore
from oxidb.raft.messages import Message, PersistBatch, decode_message, encode_message
from oxidb.raft.storage import DurableState, RaftStorage
from oxidb.testing import CrashingDisk, KVStateMachine

CONFIG = RaftConfig(
    heartbeat_interval=100,
    election_timeout_min=300,
    election_timeout_max=600,
    snapshot_threshold=1000,
)


class Node:
    """One core with a real storage on a crashing in-memory disk."""

    def __init__(
        self,
        node_id: int,
        config: RaftConfig = CONFIG,
        now: int = 0,
        disk: CrashingDisk | None = None,
        state: DurableState | None = None,
        seed: int | None = None,
    ) -> None:
        self.id = node_id
        self.config = config
        self.disk = disk or CrashingDisk()
        self.storage = RaftStorage(self.disk)
        loaded = self.storage.load()
        if state is not None:
            # Write the crafted state through the storage, as the core would.
            self.storage.save(
                PersistBatch(hard_state=state.hard_state, entries=state.entries)
            )
            loaded = self.storage.load()
        self.sm = KVStateMachine()
        self.core = RaftCore(
            node_id, config=config, rng=random.Random(node_id if seed is None else seed), state=loaded, now=now
        )
        self.read_states: list[int] = []
        self.failed_reads: list[int] = []
        self.applied_entries: list = []

    def process(self) -> list[Message]:
        """Handle every ready as the driver would; return the messages sent."""
        out: list[Message] = []
        while self.core.has_ready():
            ready = self.core.ready()
            out.extend(ready.messages)
            self.storage.save(ready.persist)
            out.extend(ready.persisted_messages)
            if ready.apply_snapshot is not None:
                self.sm.restore(ready.apply_snapshot.data, ready.apply_snapshot.meta.last_log_id)
            for entry in ready.committed_entries:
                self.sm.apply(entry)
                self.applied_entries.append(entry)
            if self.sm.applied is not None:
                self.core.applied(self.sm.applied)
            self.read_states.extend(r.request_id for r in ready.read_states)
            self.failed_reads.extend(ready.failed_reads)
            if ready.build_snapshot and self.sm.applied is not None:
                self.core.snapshot_built(self.sm.applied, self.sm.snapshot())
            self.core.advance(ready)
        return out

    @property
    def state(self) -> str:
        return self.core.metrics().state

    @property
    def term(self) -> int:
        return self.core.metrics().current_term

    @property
    def commit(self) -> int:
        return self.core.metrics().commit_index

    def log_ids(self) -> list[tuple[int, int]]:
        return [(e.term, e.index) for e in self.core.entries()]


class Cluster:
    """Nodes, a clock and an explicit message queue."""

    def __init__(self, ids: Iterable[int] = (1, 2, 3), config: RaftConfig = CONFIG) -> None:
        self.now = 0
        self.config = config
        self.nodes = {i: Node(i, config) for i in ids}
        self.queue: list[Message] = []
        self.cut: set[int] = set()  # isolated nodes

    def __getitem__(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def flush(self, node_id: int | None = None) -> None:
        for node in self.nodes.values() if node_id is None else [self.nodes[node_id]]:
            self.queue.extend(node.process())

    def tick(self, ms: int, only: Iterable[int] | None = None) -> None:
        """Advance time in 10 ms steps, ticking (and flushing) the nodes."""
        ids = list(self.nodes) if only is None else list(only)
        end = self.now + ms
        while self.now < end:
            self.now = min(end, self.now + 10)
            for i in ids:
                self.nodes[i].core.tick(self.now)
                self.flush(i)

    def take(self, match: Callable[[Message], bool] = lambda m: True) -> list[Message]:
        taken = [m for m in self.queue if match(m)]
        self.queue = [m for m in self.queue if not match(m)]
        return taken

    def deliver(self, msg: Message) -> None:
        if msg.src in self.cut or msg.dst in self.cut or msg.dst not in self.nodes:
            return
        node = self.nodes[msg.dst]
        node.core.tick(self.now)
        node.core.receive(decode_message(encode_message(msg)))
        self.flush(msg.dst)

    def stabilize(
        self, drop: Callable[[Message], bool] = lambda m: False, limit: int = 10000
    ) -> None:
        """Deliver queued messages (and their consequences) until none are left."""
        for _ in range(limit):
            if not self.queue:
                return
            msg = self.queue.pop(0)
            if not drop(msg):
                self.deliver(msg)
        raise AssertionError("the cluster did not go quiet")

    def run(self, ms: int, step: int = 10) -> None:
        """Tick and deliver everything, as a healthy network would."""
        for _ in range(ms // step):
            self.tick(step)
            self.stabilize()

    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.core.is_leader]

    def elect(self, node_id: int) -> None:
        """Let C{node_id} time out first and win an election."""
        self.tick(self.config.election_timeout_max, only=[node_id])
        self.stabilize()
        assert self.leaders() == [node_id], self.leaders()


def bootstrap(ids: Iterable[int] = (1, 2, 3), config: RaftConfig = CONFIG) -> Cluster:
    """A cluster initialized on node 1 with every node as a voter; 1 leads."""
    cluster = Cluster(ids, config)
    cluster[1].core.initialize({i: f"n{i}" for i in cluster.nodes})
    cluster.flush()
    cluster.elect(1)
    cluster.run(200)
    return cluster
