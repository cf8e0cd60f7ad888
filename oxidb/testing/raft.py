"""
The Raft core under test: an in-memory disk that crashes (L{CrashingDisk}),
a small key-value state machine (L{KVStateMachine}), and a seeded cluster
simulator (L{Simulation}: network faults, crashes, membership churn,
clients) that checks Raft's safety properties after every step and hands
its client history to the linearizability checker
(L{oxidb.testing.linearizability}). A seed replays a run exactly.
"""

from __future__ import annotations

import functools
import heapq
import random
from collections.abc import Callable
from typing import Any

import attrs
import orjson
from zope.interface import implementer

from oxidb.errors import RaftError
from oxidb.raft.core import RaftConfig, RaftCore, Ready
from oxidb.raft.disk import IDisk
from oxidb.raft.messages import (
    Entry,
    LogId,
    Message,
    VoteResponse,
    decode_message,
    encode_message,
)
from oxidb.raft.storage import RaftStorage
from oxidb.testing.linearizability import Op


class DiskCrashed(Exception):
    """The disk 'lost power' at an armed sync point."""


@attrs.define(eq=False)
class _Inode:
    data: bytearray
    synced: bytes = b""
    floor: int = 0  # the shortest length since the last sync (truncations)


@implementer(IDisk)
@attrs.define(eq=False)
class CrashingDisk:
    """
    An L{IDisk} in memory. File contents become durable at C{fsync}, names at
    C{fsync_dir}. L{crash} throws away what was not durable, except that a
    random prefix of unsynced appends may survive, possibly ending in zeros
    (a torn last record). C{crash_at_sync} makes the Nth sync call raise
    L{DiskCrashed} before it takes effect.
    """

    _dir: dict[str, _Inode] = attrs.field(init=False, factory=dict)
    _durable_dir: dict[str, _Inode] = attrs.field(init=False, factory=dict)
    #: how many sync calls (C{fsync}, C{fsync_dir}) were made
    syncs: int = attrs.field(init=False, default=0)
    #: the sync call that crashes (compared with L{syncs}), or C{None}
    crash_at_sync: int | None = attrs.field(init=False, default=None)

    def _sync_point(self) -> None:
        self.syncs += 1
        if self.crash_at_sync is not None and self.syncs >= self.crash_at_sync:
            self.crash_at_sync = None
            raise DiskCrashed()

    def listdir(self) -> list[str]:
        return sorted(self._dir)

    def read(self, name: str) -> bytes:
        if name not in self._dir:
            raise FileNotFoundError(name)
        return bytes(self._dir[name].data)

    def write(self, name: str, data: bytes) -> None:
        self._dir[name] = _Inode(bytearray(data))

    def append(self, name: str, data: bytes) -> None:
        inode = self._dir.get(name)
        if inode is None:
            inode = self._dir[name] = _Inode(bytearray())
        inode.data += data

    def truncate(self, name: str, size: int) -> None:
        inode = self._dir[name]
        del inode.data[size:]
        inode.floor = min(inode.floor, size)

    def fsync(self, name: str) -> None:
        self._sync_point()
        inode = self._dir[name]
        inode.synced = bytes(inode.data)
        inode.floor = len(inode.data)

    def rename(self, src: str, dst: str) -> None:
        self._dir[dst] = self._dir.pop(src)

    def remove(self, name: str) -> None:
        self._dir.pop(name, None)

    def fsync_dir(self) -> None:
        self._sync_point()
        self._durable_dir = dict(self._dir)

    def close(self) -> None:
        pass

    def crash(self, rng: random.Random | None = None) -> None:
        """Lose power: keep what was durable (and, with C{rng}, torn scraps)."""
        self.crash_at_sync = None
        self._dir = dict(self._durable_dir)
        # In name order: a set of inodes iterates in the order of their
        # addresses, which differ from run to run (and with PYTHONHASHSEED),
        # and each inode draws from rng, so the whole schedule after the
        # first crash would change.
        inodes = list({id(inode): inode for _name, inode in sorted(self._dir.items())}.values())
        for inode in inodes:
            data = bytes(inode.synced)
            if rng is not None and rng.random() < 0.6 and len(inode.data) > inode.floor:
                keep = rng.randint(inode.floor, len(inode.data))
                data = bytes(inode.data[:keep])
                if keep > inode.floor and rng.random() < 0.3:
                    zeros = min(keep - inode.floor, rng.randint(1, 16))
                    data = data[: keep - zeros] + b"\0" * zeros
            inode.data = bytearray(data)
            inode.synced = data
            inode.floor = len(data)


# --- the key-value state machine --------------------------------------------


@attrs.define(eq=False)
class KVStateMachine:
    """A volatile state machine: C{Put}/C{Append} requests on string keys."""

    data: dict[str, str] = attrs.field(init=False, factory=dict)
    applied: LogId | None = attrs.field(init=False, default=None)

    def apply(self, entry: Entry) -> None:
        request = entry.payload
        if isinstance(request, dict):
            ((kind, body),) = request.items()
            if kind == "Put":
                self.data[body["key"]] = body["value"]
            elif kind == "Append":
                self.data[body["key"]] = self.data.get(body["key"], "") + body["value"]
        self.applied = entry.log_id

    def snapshot(self) -> bytes:
        return orjson.dumps(self.data)

    def restore(self, data: bytes, last: LogId) -> None:
        self.data = orjson.loads(data)
        self.applied = last


# --- the simulator ------------------------------------------------------------


class SafetyViolation(AssertionError):
    """A Raft safety or liveness property failed in a L{Simulation}."""


@attrs.define
class Faults:
    """The probability of each fault the simulator injects (per message unless noted)."""

    drop: float = 0.05
    duplicate: float = 0.03
    long_delay: float = 0.05
    crash: float = 0.04  # per fault tick
    partition: float = 0.03
    heal: float = 0.1
    membership: float = 0.03
    transfer: float = 0.01
    torn_save: float = 0.01  # per save: crash in the middle of it
    slow_disk: float = 0.05  # per save: it takes a while


NO_FAULTS = Faults(0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0)

SIM_CONFIG = RaftConfig(
    heartbeat_interval=100,
    election_timeout_min=300,
    election_timeout_max=600,
    max_payload_entries=8,
    max_payload_bytes=2048,
    max_inflight=4,
    snapshot_threshold=40,
    keep_after_snapshot=10,
    snapshot_chunk_size=256,
)


@attrs.define(eq=False)
class SimNode:
    id: int
    disk: CrashingDisk
    core: RaftCore | None = None
    storage: RaftStorage | None = None
    sm: KVStateMachine = attrs.Factory(KVStateMachine)
    persisting: Ready | None = None
    incarnation: int = 0


@attrs.define(eq=False)
class _ClientOp:
    op_index: int
    node: int
    log_id: LogId | None = None
    read_id: int | None = None


class Simulation:
    """
    A cluster of up to C{n_nodes} nodes on one logical clock. Node 1 is
    initialized and the others join as learners and voters through the
    membership API. Every step checks election safety, log matching, state
    machine safety and leader completeness; L{run} then checks liveness and
    returns the client history for the linearizability checker.
    """

    TICK = 20

    def __init__(
        self,
        seed: int,
        n_nodes: int = 5,
        config: RaftConfig | None = None,
        faults: Faults | None = None,
        clients: int = 3,
        keys: int = 3,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        if config is None:
            # Safety must hold whatever the optional protections are set to.
            config = attrs.evolve(
                SIM_CONFIG,
                pre_vote=self.rng.random() < 0.75,
                check_quorum=self.rng.random() < 0.75,
            )
        self.config = config
        self.faults = faults or Faults()
        self.now = 0
        self.clock = 0  # a total order of client events
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self.nodes = {i: SimNode(i, CrashingDisk()) for i in range(1, n_nodes + 1)}
        self.cut: set[tuple[int, int]] = set()
        self.faults_on = True
        # Checks.
        self.leaders: dict[int, int] = {}
        self._completeness_checked: dict[int, int] = {}
        self.entry_registry: dict[tuple[int, int], tuple[bytes, LogId | None]] = {}
        self.committed: dict[int, LogId] = {}
        self.votes_sent: dict[tuple[int, int], int] = {}
        self.max_term_sent: dict[int, int] = {}
        # Clients.
        self.history: list[Op] = []
        self.keys = [f"k{i}" for i in range(keys)]
        self.client_ops: dict[int, _ClientOp] = {}
        self.waiting_writes: dict[tuple[int, LogId], int] = {}
        self.waiting_reads: dict[tuple[int, int], int] = {}
        self.acked_writes: list[LogId] = []
        self._write_counter = 0
        self.steps = 0
        for node in self.nodes.values():
            self._start(node)
        first = self.nodes[1]
        assert first.core is not None
        first.core.initialize({1: "n1"})
        self._drive(first)
        for client in range(clients):
            self._schedule(self.rng.randint(0, 50), functools.partial(self._client_step, client))
        self._schedule(self.TICK, self._tick_all)
        self._schedule(100, self._fault_step)

    # --- scheduling ----------------------------------------------------------

    def _schedule(self, delay: int, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, action))

    def run_until(self, end: int, until: Callable[[], bool] | None = None) -> bool:
        while self._queue and self._queue[0][0] <= end:
            when, _seq, action = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            action()
            self.steps += 1
            self._check_leaders()
            if until is not None and until():
                return True
        self.now = max(self.now, end)
        return until is not None and until()

    # --- nodes ---------------------------------------------------------------

    def _start(self, node: SimNode) -> None:
        node.incarnation += 1
        node.storage = RaftStorage(node.disk)
        state = node.storage.load()
        node.sm = KVStateMachine()
        node.persisting = None
        node.core = RaftCore(
            node.id,
            config=self.config,
            rng=random.Random(self.rng.random()),
            state=state,
            now=self.now,
        )
        term = state.hard_state.term
        if term < self.max_term_sent.get(node.id, 0):
            raise SafetyViolation(f"node {node.id} forgot its term after a restart")
        voted = self.votes_sent.get((node.id, term))
        if voted is not None and state.hard_state.voted_for != voted:
            raise SafetyViolation(f"node {node.id} forgot its vote in term {term}")

    def crash(self, node: SimNode) -> None:
        """Crash C{node} (its disk loses unsynced writes); restart it later."""
        if node.core is None:
            return
        self._schedule(self.rng.randint(100, 2000), lambda: self.restart(node))
        node.core = None
        node.storage = None
        node.persisting = None
        node.disk.crash(self.rng)
        for write in [k for k in self.waiting_writes if k[0] == node.id]:
            del self.waiting_writes[write]  # outcome unknown: stays pending
        for read in [k for k in self.waiting_reads if k[0] == node.id]:
            del self.waiting_reads[read]

    def restart(self, node: SimNode) -> None:
        if node.core is None:
            self._start(node)
            self._drive(node)

    def _drive(self, node: SimNode) -> None:
        core = node.core
        if core is None or node.persisting is not None or not core.has_ready():
            return
        ready = core.ready()
        self._check_new_entries(core, ready)
        for msg in ready.messages:
            self._transmit(msg)
        node.persisting = ready
        incarnation = node.incarnation
        delay = self.rng.randint(0, 4)
        if self.faults_on and self.rng.random() < self.faults.slow_disk:
            delay = self.rng.randint(20, 150)
        self._schedule(delay, lambda: self._persisted(node, ready, incarnation))

    def _persisted(self, node: SimNode, ready: Ready, incarnation: int) -> None:
        if node.incarnation != incarnation or node.core is None:
            return
        core, storage = node.core, node.storage
        assert storage is not None
        if self.faults_on and self.rng.random() < self.faults.torn_save:
            node.disk.crash_at_sync = node.disk.syncs + self.rng.randint(1, 3)
        try:
            storage.save(ready.persist)
        except DiskCrashed:
            self.crash(node)
            return
        node.disk.crash_at_sync = None
        for msg in ready.persisted_messages:
            if isinstance(msg, VoteResponse) and msg.pre_vote:
                pass  # carries the asker's future term, not the node's
            else:
                if isinstance(msg, VoteResponse) and msg.granted:
                    self.votes_sent[(node.id, msg.term)] = msg.dst
                self.max_term_sent[node.id] = max(self.max_term_sent.get(node.id, 0), msg.term)
            self._transmit(msg)
        if ready.apply_snapshot is not None:
            meta = ready.apply_snapshot.meta
            node.sm.restore(ready.apply_snapshot.data, meta.last_log_id)
            self._record_commit(node, meta.last_log_id)
        for entry in ready.committed_entries:
            node.sm.apply(entry)
            self._record_commit(node, entry.log_id)
            self._write_applied(node, entry)
        if node.sm.applied is not None:
            core.applied(node.sm.applied)
        for state in ready.read_states:
            self._read_done(node, state.request_id, ok=True)
        for request_id in ready.failed_reads:
            self._read_done(node, request_id, ok=False)
        if ready.build_snapshot and node.sm.applied is not None:
            core.snapshot_built(node.sm.applied, node.sm.snapshot())
        core.advance(ready)
        node.persisting = None
        self._drive(node)

    def _transmit(self, msg: Message) -> None:
        data = encode_message(msg)  # every message goes through its JSON form
        if (msg.src, msg.dst) in self.cut:
            return
        copies = 1
        if self.faults_on:
            if self.rng.random() < self.faults.drop:
                return
            if self.rng.random() < self.faults.duplicate:
                copies = 2
        for _ in range(copies):
            delay = self.rng.randint(1, 15)
            if self.faults_on and self.rng.random() < self.faults.long_delay:
                delay = self.rng.randint(50, 400)
            self._schedule(delay, lambda: self._deliver(decode_message(data)))

    def _deliver(self, msg: Message) -> None:
        node = self.nodes.get(msg.dst)
        if node is None or node.core is None or (msg.src, msg.dst) in self.cut:
            return
        node.core.tick(self.now)
        node.core.receive(msg)
        self._drive(node)

    def _tick_all(self) -> None:
        for node in self.nodes.values():
            if node.core is not None:
                node.core.tick(self.now)
                self._drive(node)
        self._schedule(self.TICK, self._tick_all)

    # --- checks ------------------------------------------------------------------

    def _check_leaders(self) -> None:
        for node in self.nodes.values():
            core = node.core
            if core is None or not core.is_leader:
                continue
            term = core.current_term
            seen = self.leaders.setdefault(term, node.id)
            if seen != node.id:
                raise SafetyViolation(f"two leaders in term {term}: {seen} and {node.id}")
            if self._completeness_checked.get(node.id) != term:
                self._completeness_checked[node.id] = term
                self._check_leader_completeness(node.id, core)

    def _check_leader_completeness(self, node_id: int, core: RaftCore) -> None:
        base = core.metrics().last_purged
        base_index = base.index if base else 0
        log = {e.index: e.log_id for e in core.entries()}
        for index, log_id in self.committed.items():
            if index > base_index and log.get(index) != log_id:
                raise SafetyViolation(
                    f"leader {node_id} lacks committed entry {log_id.display()}"
                )
            if index == base_index and base != log_id:
                raise SafetyViolation(f"leader {node_id} purged past a different entry")

    def _check_new_entries(self, core: RaftCore, ready: Ready) -> None:
        """Log matching: one entry per (index, term), always after the same entry."""
        entries = ready.persist.entries
        if not entries:
            return
        log = {e.index: e.log_id for e in core.entries()}
        prev: LogId | None = log.get(entries[0].index - 1)
        if prev is None and entries[0].index > 1:
            prev = core.metrics().last_purged
        for entry in entries:
            key = (entry.index, entry.term)
            known = self.entry_registry.setdefault(key, (entry.encoded, prev))
            if known != (entry.encoded, prev):
                raise SafetyViolation(f"log matching broken at {entry.log_id.display()}")
            prev = entry.log_id

    def _record_commit(self, node: SimNode, log_id: LogId) -> None:
        known = self.committed.setdefault(log_id.index, log_id)
        if known != log_id:
            raise SafetyViolation(
                f"node {node.id} applied {log_id.display()} where "
                f"{known.display()} was applied"
            )

    # --- clients ---------------------------------------------------------------

    def _tick_clock(self) -> int:
        self.clock += 1
        return self.clock

    def _pick_node(self) -> SimNode | None:
        alive = [n for n in self.nodes.values() if n.core is not None]
        if not alive:
            return None
        leaders = [n for n in alive if n.core is not None and n.core.is_leader]
        if leaders and self.rng.random() < 0.7:
            return self.rng.choice(leaders)
        return self.rng.choice(alive)

    def _client_step(self, client: int) -> None:
        if not self.faults_on:
            return
        node = self._pick_node()
        if node is None or node.core is None:
            self._schedule(50, lambda: self._client_step(client))
            return
        key = self.rng.choice(self.keys)
        kind = self.rng.choice(["put", "append", "get", "get"])
        op_index = len(self.history)
        if kind == "get":
            self.history.append(Op(client, "get", key, call=self._tick_clock()))
            request_id = node.core.read_index()
            self.waiting_reads[(node.id, request_id)] = op_index
            self.client_ops[op_index] = _ClientOp(op_index, node.id, read_id=request_id)
            self._drive(node)
        else:
            self._write_counter += 1
            value = f"{client}.{self._write_counter};"
            request = {kind.capitalize(): {"key": key, "value": value}}
            call = self._tick_clock()
            try:
                log_id = node.core.propose(request, ts=self.now)
            except RaftError:
                self._schedule(self.rng.randint(5, 60), lambda: self._client_step(client))
                return
            self.history.append(Op(client, kind, key, value, call=call))
            self.waiting_writes[(node.id, log_id)] = op_index
            self.client_ops[op_index] = _ClientOp(op_index, node.id, log_id=log_id)
            self._drive(node)
        self._schedule(1500, lambda: self._client_timeout(client, op_index))

    def _finish(self, op_index: int, **changes: Any) -> None:
        client_op = self.client_ops.pop(op_index, None)
        if client_op is None:
            return
        op = self.history[op_index]
        if changes:
            self.history[op_index] = attrs.evolve(op, ret=self._tick_clock(), **changes)
        self._schedule(self.rng.randint(0, 30), lambda: self._client_step(op.client))

    def _client_timeout(self, client: int, op_index: int) -> None:
        client_op = self.client_ops.get(op_index)
        if client_op is None:
            return
        if client_op.log_id is not None:
            self.waiting_writes.pop((client_op.node, client_op.log_id), None)
        if client_op.read_id is not None:
            self.waiting_reads.pop((client_op.node, client_op.read_id), None)
        self._finish(op_index)  # unknown outcome: ret stays None

    def _write_applied(self, node: SimNode, entry: Entry) -> None:
        for key in [k for k in self.waiting_writes if k[0] == node.id and k[1].index == entry.index]:
            op_index = self.waiting_writes.pop(key)
            if key[1] == entry.log_id:
                self.acked_writes.append(entry.log_id)
                self._finish(op_index, output=None)
            else:
                # Another entry won the index: this write can never commit.
                self.history[op_index] = attrs.evolve(self.history[op_index], kind="failed")
                self._finish(op_index, output=None)

    def _read_done(self, node: SimNode, request_id: int, ok: bool) -> None:
        op_index = self.waiting_reads.pop((node.id, request_id), None)
        if op_index is None:
            return
        if ok:
            op = self.history[op_index]
            self._finish(op_index, output=node.sm.data.get(op.key))
        else:
            self.history[op_index] = attrs.evolve(self.history[op_index], kind="failed")
            self._finish(op_index, output=None)

    def client_history(self) -> list[Op]:
        return [op for op in self.history if op.kind != "failed"]

    # --- faults -------------------------------------------------------------------

    def _leader(self) -> SimNode | None:
        leaders = [n for n in self.nodes.values() if n.core is not None and n.core.is_leader]
        # Every node in leaders has a core (filtered above).
        return max(leaders, key=lambda n: n.core.current_term) if leaders else None  # type: ignore[union-attr]

    def _fault_step(self) -> None:
        self._schedule(100, self._fault_step)
        f, rng = self.faults, self.rng
        if not self.faults_on:
            return
        nodes = list(self.nodes.values())
        if rng.random() < f.crash:
            node = rng.choice(nodes)
            self.crash(node)
        if rng.random() < f.partition:
            ids = list(self.nodes)
            rng.shuffle(ids)
            side = set(ids[: rng.randint(1, len(ids) // 2)])
            leader = self._leader()
            if leader is not None and rng.random() < 0.5:
                side.add(leader.id)  # isolate the leader (hashicorp's LeaderPartitions)
            self.cut = {(a, b) for a in ids for b in ids if (a in side) != (b in side)}
        if self.cut and rng.random() < f.heal:
            self.cut = set()
        first = self.nodes[1].core
        if first is not None and first.metrics().last_log_index is None:
            # The bootstrap entry was lost in a crash before it was synced:
            # the operator runs raft_init again.
            try:
                first.initialize({1: "n1"})
                # raft_init mints a new cluster id each time, so the new
                # bootstrap entry differs from the lost one, which no other
                # node can have (node 1 was the only member).
                self.entry_registry.pop((1, 0), None)
            except RaftError:
                pass  # it has a term already: bootstrapping is over
            self._drive(self.nodes[1])
        leader = self._leader()
        if leader is None or leader.core is None:
            return
        core = leader.core
        if rng.random() < f.membership or self.now < 3000:
            membership = core.membership
            if membership is not None:
                known = set(membership.membership.nodes)
                missing = sorted(set(self.nodes) - known)
                try:
                    if missing and (self.now < 3000 or rng.random() < 0.5):
                        node_id = rng.choice(missing)
                        core.add_learner(node_id, f"n{node_id}")
                    elif self.now < 3000:
                        core.change_membership(known)
                    else:
                        size = rng.randint(3, min(5, len(known))) if len(known) >= 3 else len(known)
                        core.change_membership(rng.sample(sorted(known), size))
                except RaftError:
                    pass
        if rng.random() < f.transfer:
            voters = sorted(core.membership.membership.voters - {leader.id}) if core.membership else []
            if voters:
                try:
                    core.transfer_leadership(rng.choice(voters))
                except RaftError:
                    pass
        self._drive(leader)

    # --- the run ---------------------------------------------------------------------

    def run(self, safety_ms: int = 8000, liveness_ms: int = 10000) -> None:
        """A safety phase with faults, then a liveness phase without."""
        self.run_until(safety_ms)
        self.faults_on = False
        self.cut = set()
        for node in self.nodes.values():
            self.restart(node)
        start = self.now
        if not self.run_until(start + liveness_ms, lambda: self._leader() is not None):
            raise SafetyViolation("liveness: no leader without faults")
        self._liveness_writes(start + liveness_ms)

    def _liveness_writes(self, deadline: int) -> None:
        """Every write commits (a client retries one that lost its leader)."""
        for value in range(5):
            while True:
                if self.now > deadline:
                    raise SafetyViolation("liveness: a write did not commit")
                leader = self._leader()
                try:
                    if leader is None or leader.core is None:
                        raise RaftError("no leader")
                    log_id = leader.core.propose({"Put": {"key": "live", "value": str(value)}}, self.now)
                except RaftError:
                    self.run_until(self.now + 50)
                    continue
                self._drive(leader)

                def committed(index: int = log_id.index) -> bool:
                    return index in self.committed

                self.run_until(min(deadline, self.now + 2000), committed)
                if self.committed.get(log_id.index) == log_id:
                    break
                # A deposed leader (without check-quorum it may not know yet)
                # took the write: the client retries.
                self.run_until(self.now + 50)

        def converged() -> bool:
            leader = self._leader()
            if leader is None or leader.core is None or leader.core.membership is None:
                return False
            members = leader.core.membership.membership
            if members.is_joint:
                return False
            applied = set()
            for node_id in members.nodes:
                node = self.nodes[node_id]
                if node.core is None or node.sm.applied is None:
                    return False
                applied.add(node.sm.applied)
            # A leader's metrics always carry its last log index.
            return len(applied) == 1 and applied.pop().index >= leader.core.metrics().last_log_index  # type: ignore[operator]

        if not self.run_until(deadline, converged):
            raise SafetyViolation("liveness: the cluster did not converge")
        leader = self._leader()
        assert leader is not None and leader.core is not None and leader.core.membership is not None
        states = {
            orjson.dumps(self.nodes[n].sm.data, option=orjson.OPT_SORT_KEYS)
            for n in leader.core.membership.membership.nodes
        }
        if len(states) != 1:
            raise SafetyViolation("state machines differ after convergence")
        for log_id in self.acked_writes:
            if self.committed.get(log_id.index) != log_id:
                raise SafetyViolation(f"acknowledged write {log_id.display()} lost")
