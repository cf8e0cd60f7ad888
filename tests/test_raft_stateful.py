"""
Hypothesis stateful test of a 3-node cluster: Hypothesis chooses which
message is delivered, dropped or duplicated, when time passes, which node
crashes (losing unsynced writes) or restarts, and what is proposed; Raft's
safety properties are invariants checked after every rule.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from raft_harness import CONFIG, Cluster, Node

from oxidb.errors import RaftError
from oxidb.raft.messages import LogId

NODES = (1, 2, 3)


class RaftCluster(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.cluster = Cluster(NODES)
        self.cluster[1].core.initialize({i: f"n{i}" for i in NODES})
        self.cluster.flush()
        self.down: set[int] = set()
        self.leaders: dict[int, int] = {}
        self.applied: dict[int, LogId] = {}
        self.proposals = 0

    @rule(ms=st.integers(10, 400))
    def time_passes(self, ms: int) -> None:
        self.cluster.tick(ms, only=[i for i in NODES if i not in self.down])

    @rule(ms=st.integers(10, 700))
    def run_healthy(self, ms: int) -> None:
        """Time passes in small steps with every message delivered at once."""
        for _ in range(ms // 10):
            self.cluster.tick(10, only=[i for i in NODES if i not in self.down])
            self.deliver_all()

    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        if self.cluster.queue:
            msg = self.cluster.queue.pop(data.draw(st.integers(0, len(self.cluster.queue) - 1)))
            if msg.dst not in self.down:
                self.cluster.deliver(msg)

    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        if self.cluster.queue:
            i = data.draw(st.integers(0, len(self.cluster.queue) - 1))
            self.cluster.queue.append(self.cluster.queue[i])

    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        if self.cluster.queue:
            self.cluster.queue.pop(data.draw(st.integers(0, len(self.cluster.queue) - 1)))

    @rule()
    def deliver_all(self) -> None:
        self.cluster.stabilize(drop=lambda m: m.dst in self.down)

    @rule(value=st.integers(0, 100))
    def propose(self, value: int) -> None:
        for i in self.cluster.leaders():
            if i not in self.down:
                try:
                    self.cluster[i].core.propose({"Put": {"key": "k", "value": str(value)}}, ts=0)
                except RaftError:
                    pass
                self.cluster.flush(i)

    @rule(node=st.sampled_from(NODES))
    def crash(self, node: int) -> None:
        if node not in self.down and len(self.down) < 1:
            self.cluster[node].disk.crash()
            self.down.add(node)
            self.cluster.queue = [m for m in self.cluster.queue if m.src != node]

    @rule(node=st.sampled_from(NODES))
    def restart(self, node: int) -> None:
        if node in self.down:
            self.down.discard(node)
            self.cluster.nodes[node] = Node(node, CONFIG, now=self.cluster.now, disk=self.cluster[node].disk)
            self.cluster.flush(node)

    @invariant()
    def one_leader_per_term(self) -> None:
        for i in self.cluster.leaders():
            if i not in self.down:
                assert self.leaders.setdefault(self.cluster[i].term, i) == i

    @invariant()
    def applied_entries_agree(self) -> None:
        for i in NODES:
            for entry in self.cluster[i].applied_entries:
                assert self.applied.setdefault(entry.index, entry.log_id) == entry.log_id

    @invariant()
    def leaders_hold_every_applied_entry(self) -> None:
        for i in self.cluster.leaders():
            if i in self.down:
                continue
            log = {e.index: e.log_id for e in self.cluster[i].core.entries()}
            for index, log_id in self.applied.items():
                assert log.get(index) == log_id


TestRaftCluster = RaftCluster.TestCase
TestRaftCluster.settings = settings(max_examples=60, stateful_step_count=60, deadline=None)
