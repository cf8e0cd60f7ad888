"""
The Raft consensus core: deterministic and sans-IO.

L{RaftCore} is driven by inputs (L{RaftCore.tick}, L{RaftCore.receive},
L{RaftCore.propose} and the other commands, L{RaftCore.applied},
L{RaftCore.snapshot_built}) and hands out its outputs as one L{Ready} at a
time. The driver makes the ready's L{PersistBatch} durable, then sends
L{Ready.persisted_messages}, gives the snapshot and committed entries to the
state machine, and calls L{RaftCore.advance}; L{Ready.messages} may go out at
once. Time is a logical millisecond clock passed to L{RaftCore.tick};
randomness comes from the C{random.Random} given at construction.

Protocol: Raft with pre-vote and check-quorum (etcd-io/raft style), pipelined
and batched replication with per-follower progress, learners, joint-consensus
membership changes (openraft style), leadership transfer, chunked snapshots,
log compaction and ReadIndex reads (C{max(commit, the term's blank entry)},
confirmed by a quorum heartbeat round). See C{docs/raft-internals.md}.

This module holds the step logic (etcd-io/raft's C{raft.go}): roles,
elections, the handling of each message, replication decisions, membership
commands and identity checks. What it steps over lives beside it, along
etcd's seams: the log in L{oxidb.raft.log}, each peer's replication progress
in L{oxidb.raft.progress}, quorum arithmetic in L{oxidb.raft.quorum},
membership changes in L{oxidb.raft.confchange} and ReadIndex reads in
L{oxidb.raft.readonly}.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from oxidb.errors import NotLeaderError, RaftError
from oxidb.raft import confchange
from oxidb.raft.log import RaftLog
from oxidb.raft.messages import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    Entry,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    LogId,
    Membership,
    Message,
    PersistBatch,
    ReadIndexRequest,
    ReadIndexResponse,
    Refused,
    Snapshot,
    SnapshotMeta,
    StoredMembership,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    snapshot_id_for,
)
from oxidb.raft.progress import Mode, Progress
from oxidb.raft.quorum import VoteResult, tally
from oxidb.raft.readonly import ReadOnly, ReadState
from oxidb.raft.storage import DurableState


@attrs.frozen
class RaftConfig:
    """
    Timing (logical milliseconds) and limits. The limits are upstream's
    (server.md 8.9) and openraft's; the timings are faster than upstream's
    500 and 1500-3000 ms (failover in about 1.4 s instead of 1.9 s, with no
    more elections under load: docs/clustering.md, "Timing").
    """

    heartbeat_interval: int = 200
    election_timeout_min: int = 1000
    election_timeout_max: int = 2000
    max_payload_entries: int = 300
    max_payload_bytes: int = 1 << 20
    max_inflight: int = 64
    snapshot_threshold: int = 5000
    keep_after_snapshot: int = 1000
    snapshot_chunk_size: int = 3 << 20
    pre_vote: bool = True
    check_quorum: bool = True

    def __attrs_post_init__(self) -> None:
        if not 0 < self.heartbeat_interval < self.election_timeout_min:
            raise ValueError("the heartbeat interval must be below the election timeout")
        if self.election_timeout_max <= self.election_timeout_min:
            raise ValueError("election_timeout_max must exceed election_timeout_min")
        if min(self.max_payload_entries, self.max_payload_bytes, self.max_inflight,
               self.snapshot_threshold, self.snapshot_chunk_size) < 1:
            raise ValueError("limits must be positive")
        if self.keep_after_snapshot < 0:
            raise ValueError("keep_after_snapshot must not be negative")


class SafetyViolationError(Exception):
    """
    This node would contradict an entry it has committed, or sees a peer's
    committed prefix disagree with its own log: the node must stop (as etcd
    panics) rather than answer or carry on. The message names the node, the
    term and the index.
    """


@attrs.frozen
class RaftEvent:
    """
    Something an operator should see in the log (the driver logs it):
    C{level} is C{"info"} or C{"warn"}, C{text} a format string over
    C{fields}.
    """

    level: str
    text: str
    fields: Mapping[str, Any] = attrs.field(factory=dict)


def new_identity(rng: random.Random) -> str:
    """A fresh random id (an incarnation or a cluster id): 128 bits in hex."""
    return f"{rng.getrandbits(128):032x}"


@attrs.frozen
class Ready:
    """
    One batch of outputs. Handle it in this order:

      1. send L{messages} (they depend on nothing in this batch);
      2. make L{persist} durable (L{oxidb.raft.storage.RaftStorage.save});
      3. send L{persisted_messages};
      4. give L{apply_snapshot} (replace the state machine's state), then
         L{committed_entries} to the state machine, in order, and report
         progress with L{RaftCore.applied};
      5. answer L{read_states} (the read may run now) and fail
         L{failed_reads}; if L{build_snapshot}, ask the state machine for a
         snapshot and report it with L{RaftCore.snapshot_built};
      6. call L{RaftCore.advance} with this ready.

    No other ready is handed out until L{RaftCore.advance}; inputs that
    arrive meanwhile are batched into the next one (group commit).

    L{committed_entries} are durable before this ready (they never wait for
    its L{persist}): without an L{apply_snapshot} they may be given to the
    state machine before step 2, and entries committed while the persist
    runs may follow them at once (L{RaftCore.take_committed}).
    """

    persist: PersistBatch
    messages: tuple[Message, ...] = ()
    persisted_messages: tuple[Message, ...] = ()
    apply_snapshot: Snapshot | None = None
    committed_entries: tuple[Entry, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    failed_reads: tuple[int, ...] = ()
    build_snapshot: bool = False
    events: tuple[RaftEvent, ...] = ()


@attrs.frozen
class RaftMetrics:
    """
    Upstream's C{raft_metrics} fields plus monitoring extras: C{commit_index},
    and on a leader C{replication} (each peer's matched index; the lag is
    C{last_log_index - match}).
    """

    id: int
    state: str
    current_term: int
    last_log_index: int | None
    last_applied: LogId | None
    current_leader: int | None
    membership: StoredMembership | None
    commit_index: int
    replication: Mapping[int, int]
    snapshot: LogId | None
    last_purged: LogId | None
    incarnation: str | None = None
    cluster_id: str | None = None
    #: Peers this node refuses to count, and why.
    refused: Mapping[int, str] = attrs.field(factory=dict)
    #: Why a peer (the leader, usually) refuses this node, if it does.
    refused_by: tuple[int, str] | None = None

    def upstream_json(self) -> dict[str, Any]:
        """The C{raft_metrics} reply data of upstream, in its key order."""
        return {
            "id": self.id,
            "state": self.state,
            "current_term": self.current_term,
            "last_log_index": self.last_log_index,
            "last_applied": self.last_applied.display() if self.last_applied else None,
            "current_leader": self.current_leader,
            "membership_config": self.membership.debug_text() if self.membership else None,
        }


class Role(enum.Enum):
    FOLLOWER = "Follower"
    PRE_CANDIDATE = "PreCandidate"
    CANDIDATE = "Candidate"
    LEADER = "Leader"
    SHUTDOWN = "Shutdown"


_FROM_LEADER = (AppendEntriesRequest, Heartbeat, InstallSnapshotRequest)


class RaftCore:
    """
    One Raft node. See the module docstring for the driving protocol and
    L{Ready} for the outputs.

    @param node_id: this node's id (never reused for another node).
    @param state: what L{oxidb.raft.storage.RaftStorage.load} returned.
    @param now: the current logical time in milliseconds.
    @param applied: the last log id the state machine has durably applied
        (C{None} for an empty or volatile state machine).
    """

    def __init__(
        self,
        node_id: int,
        *,
        config: RaftConfig,
        rng: random.Random,
        state: DurableState,
        now: int,
        applied: LogId | None = None,
    ) -> None:
        self.id = node_id
        self._cfg = config
        self._rng = rng
        self._now = now
        self._term = state.hard_state.term
        self._voted_for = state.hard_state.voted_for
        self._role = Role.FOLLOWER
        self._leader: int | None = None
        # Identity: the data directory's incarnation (minted here if the
        # storage has none; it is saved with the next batch, before any
        # message that carries it leaves) and the cluster's id.
        self._incarnation = state.hard_state.incarnation or new_identity(rng)
        self._identity_unsaved = state.hard_state.incarnation is None
        self._cluster_id = state.hard_state.cluster_id
        self._events: list[RaftEvent] = []
        self._refused_peers: dict[int, str] = {}
        self._refused_by: tuple[int, str] | None = None
        self._refused_by_logged = 0
        self._became_leader_at = 0

        self._log = log = RaftLog.restore(state)
        self._membership = log.find_membership(log.last_index)
        if self._cluster_id is None and self._membership is not None:
            self._cluster_id = self._membership.membership.cluster_id
            self._identity_unsaved = self._identity_unsaved or self._cluster_id is not None

        last = log.last_index
        applied_index = applied.index if applied else 0
        if applied_index > last:
            raise ValueError("the state machine is ahead of the Raft log")
        snap_index = state.snapshot.meta.last_log_id.index if state.snapshot else 0
        # The meta file's commit point is trusted only where the log holds
        # that very entry. Versions before this check saved it in the same
        # batch as the entries it named, and the meta file is written before
        # the log is cut and appended: a crash between the two left a commit
        # point over a stale entry (or beyond the log). Such a node learns
        # its commit point from the leader again.
        committed = state.committed
        committed_index = 0
        if committed is not None and committed.index > log.base_index:
            if log.has_index(committed.index) and log.log_id_at(committed.index) == committed:
                committed_index = committed.index
            else:
                held = log.log_id_at(committed.index) if log.has_index(committed.index) else None
                self._event(
                    "warn",
                    "raft: node {node} ignores the commit point {committed} of its meta file: its log holds "
                    "{held} at that index (a save interrupted by a crash)",
                    node=node_id,
                    committed=committed.display(),
                    held=_display(held),
                )
        log.committed = min(last, max(committed_index, snap_index, applied_index, log.base_index))
        log.applying = applied_index
        self._last_applied = applied
        if log.snapshot is not None and applied_index < snap_index:
            log.apply_snapshot = log.snapshot

        # Output accumulators.
        self._msgs: list[Message] = []
        self._durable_msgs: list[Message] = []
        self._hs_dirty = False
        self._in_flight: Ready | None = None
        self._building_snapshot = False

        # Elections.
        self._votes: dict[int, bool] = {}
        self._last_leader_contact: int | None = None
        self._election_deadline = 0
        self._reset_election_timer()

        # Leader state.
        self._progress: dict[int, Progress] = {}
        self._blank_index = 0
        self._heartbeat_deadline = 0
        self._quorum_deadline = 0
        self._replication_dirty = False
        self._transfer_to: int | None = None
        self._transfer_deadline = 0

        # Reads.
        self._reads = ReadOnly()

        # Follower-side snapshot reception: meta and bytes so far.
        self._snapshot_rx: tuple[SnapshotMeta, bytearray] | None = None

    @property
    def cluster_id(self) -> str | None:
        """The id of the cluster this node belongs to (minted by C{raft_init}), or None before."""
        return self._cluster_id

    # --- the log ----------------------------------------------------------------

    # The step logic's names for the log's commit point, last index and terms.

    @property
    def _commit(self) -> int:
        return self._log.committed

    @_commit.setter
    def _commit(self, index: int) -> None:
        self._log.committed = index

    @property
    def _last_index(self) -> int:
        return self._log.last_index

    def _term_at(self, index: int) -> int:
        return self._log.term_at(index)

    def _append(self, entries: Iterable[Entry]) -> None:
        if self._log.append(entries):
            self._set_membership(self._log.find_membership(self._log.last_index))
            self._sync_progress()

    def _truncate(self, index: int) -> None:
        """Drop entries from C{index} on (a follower's conflicting suffix)."""
        self._log.truncate(index)
        self._set_membership(self._log.find_membership(self._log.last_index))

    def _set_membership(self, stored: StoredMembership | None) -> None:
        """The membership in force changed (appended, truncated or from a snapshot)."""
        if stored == self._membership:
            return
        self._membership = stored
        if stored is None:
            return
        self._event(
            "info",
            "raft: node {node} membership is now {membership} (entry {log_id})",
            node=self.id,
            membership=stored.membership.to_json(),
            log_id=stored.log_id.display() if stored.log_id else None,
        )
        cluster = stored.membership.cluster_id
        if cluster is not None and self._cluster_id is None:
            self._cluster_id = cluster
            self._identity_unsaved = True
            self._event("info", "raft: node {node} joined cluster {cluster}", node=self.id, cluster=cluster)

    def _event(self, level: str, text: str, **fields: Any) -> None:
        self._events.append(RaftEvent(level, text, fields))

    def _violation(self, detail: str, index: int) -> SafetyViolationError:
        """Stop this node: it would break Raft's safety (see L{SafetyViolationError})."""
        self._role = Role.SHUTDOWN
        return SafetyViolationError(
            f"raft safety violation on node {self.id} (term {self._term}, index {index}): {detail}; stopping"
        )

    @property
    def _voters(self) -> frozenset[int]:
        return self._membership.membership.voters if self._membership else frozenset()

    def _is_quorum(self, ids: Iterable[int]) -> bool:
        return self._membership is not None and self._membership.membership.is_quorum(ids)

    # --- outputs --------------------------------------------------------------

    def _stamp(self, msg: Message) -> Message:
        stamped: Message = attrs.evolve(msg, cluster=self._cluster_id, incarnation=self._incarnation)
        return stamped

    def _send(self, msg: Message) -> None:
        self._msgs.append(self._stamp(msg))

    def _send_durable(self, msg: Message) -> None:
        self._durable_msgs.append(self._stamp(msg))

    def has_ready(self) -> bool:
        """A ready is waiting (and none is in flight)."""
        if self._in_flight is not None or self._role is Role.SHUTDOWN:
            return False
        return bool(
            self._msgs
            or self._durable_msgs
            or self._hs_dirty
            or self._log.has_updates()
            or self._reads.has_answers()
            or (
                self._role is Role.LEADER
                and (self._replication_dirty or self._reads.round_pending)
            )
            or self._wants_snapshot()
            or bool(self._events)
        )

    def ready(self) -> Ready:
        """Take the next batch of outputs; see L{Ready}."""
        if not self.has_ready():
            raise RuntimeError("no ready: check has_ready() first")
        if self._role is Role.LEADER:
            if self._reads.round_pending:
                self._broadcast_heartbeat()
            self._flush_replication()
        save_state = self._hs_dirty or self._identity_unsaved
        persist = self._log.take_persist(
            HardState(self._term, self._voted_for, self._incarnation, self._cluster_id) if save_state else None
        )
        messages, durable = self._msgs, self._durable_msgs
        if save_state:
            # Nothing leaves before the term, vote and identity it was sent
            # with are durable.
            messages, durable = [], messages + durable
        apply_snapshot, committed = self._log.take_committed()
        build = self._wants_snapshot()
        read_states, failed_reads = self._reads.take_answers()
        ready = Ready(
            persist=persist,
            messages=tuple(messages),
            persisted_messages=tuple(durable),
            apply_snapshot=apply_snapshot,
            committed_entries=committed,
            read_states=read_states,
            failed_reads=failed_reads,
            build_snapshot=build,
            events=tuple(self._events),
        )
        self._building_snapshot = self._building_snapshot or build
        self._msgs, self._durable_msgs = [], []
        self._events = []
        self._hs_dirty = self._identity_unsaved = False
        self._in_flight = ready
        return ready

    def advance(self, ready: Ready) -> None:
        """The driver has handled C{ready} (its batch is durable)."""
        if ready is not self._in_flight:
            raise RuntimeError("advance() takes the ready that is in flight")
        self._in_flight = None
        self._log.stable_to(ready.persist)
        hard_state = ready.persist.hard_state
        if (
            self._role is Role.CANDIDATE
            and hard_state is not None
            and (hard_state.term, hard_state.voted_for) == (self._term, self.id)
            and self._is_quorum([self.id])
        ):
            self._become_leader()
        if self._role is Role.LEADER:
            self._maybe_commit()

    def _wants_snapshot(self) -> bool:
        if self._building_snapshot or self._last_applied is None:
            return False
        done = self._log.snapshot.meta.last_log_id.index if self._log.snapshot else 0
        return self._last_applied.index - done >= self._cfg.snapshot_threshold

    # --- inputs: time ------------------------------------------------------------

    def _reset_election_timer(self) -> None:
        self._election_deadline = self._now + self._rng.randrange(
            self._cfg.election_timeout_min, self._cfg.election_timeout_max
        )

    def tick(self, now: int) -> None:
        """Logical time (ms) has advanced to C{now}; call it every few tens of ms."""
        if self._role is Role.SHUTDOWN:
            return
        self._now = max(self._now, now)
        if self._role is Role.LEADER:
            self._tick_leader()
        elif self._now >= self._election_deadline:
            if self.id in self._voters and self._own_refusal() is None:
                self._campaign(pre_vote=self._cfg.pre_vote)
            else:
                self._reset_election_timer()
        self._reads.expire(self._now)

    def _tick_leader(self) -> None:
        if self._now >= self._heartbeat_deadline:
            self._heartbeat_deadline = self._now + self._cfg.heartbeat_interval
            for pr in self._progress.values():
                pr.heartbeat_elapsed()
            self._broadcast_heartbeat()
            self._replication_dirty = True
        if self._cfg.check_quorum and self._now >= self._quorum_deadline:
            self._quorum_deadline = self._now + self._cfg.election_timeout_min
            active = {self.id} | {p for p, pr in self._progress.items() if pr.active}
            for pr in self._progress.values():
                pr.active = False
            if not self._is_quorum(active):
                self._become_follower(self._term, None, "no quorum of voters answered within an election timeout")
                return
        if self._transfer_to is not None and self._now >= self._transfer_deadline:
            self._transfer_to = None
            if self.id not in self._voters:
                self._become_follower(self._term, None, "it is no longer a voter")
                return
        self._maybe_pin_identities()

    # --- role changes ------------------------------------------------------------

    def _become_follower(self, term: int, leader: int | None, why: str = "") -> None:
        if term > self._term:
            self._term, self._voted_for = term, None
            self._hs_dirty = True
        if self._role is Role.LEADER:
            self._abandon_leadership()
            self._event(
                "info",
                "raft: node {node} lost leadership (term {term}): {why}",
                node=self.id,
                term=self._term,
                why=why or "a higher term was seen",
            )
        self._role = Role.FOLLOWER
        self._see_leader(leader)
        self._reset_election_timer()

    def _see_leader(self, leader: int | None) -> None:
        if leader is not None and leader != self._leader and leader != self.id:
            self._event(
                "info", "raft: node {node} follows leader {leader} (term {term})",
                node=self.id, leader=leader, term=self._term,
            )
        self._leader = leader

    def _abandon_leadership(self) -> None:
        for origin, request_id in self._reads.abandon():
            if origin == self.id:
                self._reads.failed.append(request_id)
            else:
                self._send(ReadIndexResponse(self._term, self.id, origin, request_id, None))
        self._progress.clear()
        self._transfer_to = None
        self._replication_dirty = False

    def _campaign(self, pre_vote: bool, transfer: bool = False) -> None:
        self._leader = None
        self._votes = {self.id: True}
        if pre_vote:
            self._role = Role.PRE_CANDIDATE
            term = self._term + 1
        else:
            self._role = Role.CANDIDATE
            self._term += 1
            self._voted_for = self.id
            self._hs_dirty = True
            term = self._term
        self._reset_election_timer()
        if self._is_quorum([self.id]):
            if pre_vote:
                self._campaign(pre_vote=False)
            # Otherwise this node is a quorum alone: it becomes leader in
            # advance(), once the ready carrying its term and vote is
            # durable, as a candidate that needs other votes does (they
            # answer a request sent only after that). Leading a term it
            # could forget in a crash would let it write a second, different
            # entry at the same index of the same term after a restart.
            return
        send = self._send if pre_vote else self._send_durable
        for voter in sorted(self._voters - {self.id}):
            send(VoteRequest(term, self.id, voter, self._log.last_log_id, pre_vote, transfer))

    def _become_leader(self) -> None:
        self._role = Role.LEADER
        self._leader = self.id
        self._became_leader_at = self._now
        self._event("info", "raft: node {node} became leader (term {term})", node=self.id, term=self._term)
        self._progress = {}
        self._sync_progress()
        self._heartbeat_deadline = self._now + self._cfg.heartbeat_interval
        self._quorum_deadline = self._now + self._cfg.election_timeout_min
        self._transfer_to = None
        blank = Entry(LogId(self._term, self.id, self._log.last_index + 1))
        self._append([blank])
        self._blank_index = blank.index
        self._replication_dirty = True

    def _sync_progress(self) -> None:
        if self._role is not Role.LEADER or self._membership is None:
            return
        nodes = set(self._membership.membership.nodes) - {self.id}
        for gone in set(self._progress) - nodes:
            del self._progress[gone]
            self._refused_peers.pop(gone, None)
        for new in nodes - set(self._progress):
            self._progress[new] = Progress(next=self._log.last_index + 1)
        self._replication_dirty = True

    # --- inputs: messages -------------------------------------------------------

    def receive(self, msg: Message) -> None:
        """A message from a peer arrived (any order, duplicates allowed)."""
        if self._role is Role.SHUTDOWN or msg.dst != self.id:
            return
        if isinstance(msg, Refused):
            self._on_refused(msg)
            return
        if msg.cluster is not None and self._cluster_id is not None and msg.cluster != self._cluster_id:
            self._refuse(
                msg.src,
                f"node {msg.src} belongs to cluster {msg.cluster} and node {self.id} to cluster "
                f"{self._cluster_id}: a node never joins another cluster",
            )
            return
        if msg.term > self._term:
            if isinstance(msg, VoteRequest):
                if not msg.transfer and self._in_lease():
                    return
                if not msg.pre_vote:
                    self._become_follower(msg.term, None)
            elif isinstance(msg, VoteResponse) and msg.pre_vote and msg.granted:
                pass
            else:
                leader = msg.src if isinstance(msg, _FROM_LEADER) else None
                self._become_follower(msg.term, leader)
        elif msg.term < self._term:
            self._reject_stale(msg)
            return
        handler = _HANDLERS.get(type(msg))
        if handler is not None:
            handler(self, msg)

    def _in_lease(self) -> bool:
        """A leader is known and was heard from recently (check-quorum on)."""
        if not self._cfg.check_quorum:
            return False
        if self._role is Role.LEADER:
            return True
        return (
            self._leader is not None
            and self._last_leader_contact is not None
            and self._now - self._last_leader_contact < self._cfg.election_timeout_min
        )

    def _reject_stale(self, msg: Message) -> None:
        if isinstance(msg, _FROM_LEADER):
            # Tell the stale leader about the newer term so that it steps down.
            self._send(AppendEntriesResponse(self._term, self.id, msg.src, False, 0))
        elif isinstance(msg, VoteRequest) and msg.pre_vote:
            self._send(VoteResponse(self._term, self.id, msg.src, False, True))
        elif isinstance(msg, ReadIndexRequest):
            self._send(ReadIndexResponse(self._term, self.id, msg.src, msg.request_id, None))

    # --- identity -----------------------------------------------------------------

    def _own_refusal(self) -> str | None:
        """Why this node may neither vote nor campaign (the membership pins another incarnation for it)."""
        if self._membership is None:
            return None
        pinned = self._membership.membership.incarnations.get(self.id)
        if pinned is None or pinned == self._incarnation:
            return None
        return (
            f"this data directory is incarnation {self._incarnation} but the membership pins {pinned} "
            f"for node {self.id} (a wiped or replaced disk)"
        )

    def _pinned_mismatch(self, peer: int, incarnation: str | None) -> str | None:
        """Why C{peer}, answering as C{incarnation}, is not the member the membership pinned."""
        if incarnation is None or self._membership is None:
            # No membership yet, or a peer of a version without identities.
            return None
        pinned = self._membership.membership.incarnations.get(peer)
        if pinned is None or pinned == incarnation:
            return None
        return _refusal_text(peer, incarnation, pinned)

    def _refuse(self, peer: int, reason: str) -> None:
        """Tell C{peer} why it is not counted (and log it once per reason)."""
        if self._refused_peers.get(peer) != reason:
            self._refused_peers[peer] = reason
            self._event(
                "warn", "raft: node {node} refuses node {peer}: {reason}", node=self.id, peer=peer, reason=reason
            )
        self._send(Refused(self._term, self.id, peer, reason))

    def _on_refused(self, msg: Refused) -> None:
        seen = (msg.src, msg.reason)
        if self._refused_by != seen or self._now - self._refused_by_logged >= _REFUSED_LOG_INTERVAL:
            self._refused_by_logged = self._now
            self._event(
                "warn", "raft: node {node} is refused by node {peer}: {reason}",
                node=self.id, peer=msg.src, reason=msg.reason,
            )
        self._refused_by = seen

    def _responder(self, msg: AppendEntriesResponse | HeartbeatResponse | InstallSnapshotResponse) -> Progress | None:
        """
        The leader's progress of the peer that answered, if it counts: a
        peer whose incarnation is not the one the membership pinned (or, not
        pinned yet, the one it first answered with) is refused.
        """
        pr = self._progress.get(msg.src)
        if self._role is not Role.LEADER or pr is None or self._membership is None:
            return None
        refusal = self._pinned_mismatch(msg.src, msg.incarnation)
        pinned = self._membership.membership.incarnations.get(msg.src)
        if refusal is None and msg.incarnation is not None and pinned is None:
            if pr.incarnation is None:
                pr.incarnation = msg.incarnation
            elif pr.incarnation != msg.incarnation:
                refusal = _refusal_text(msg.src, msg.incarnation, pr.incarnation)
        if refusal is not None:
            if pr.refused is None:
                # What it acknowledged may be gone: it counts for nothing.
                pr.match = 0
                pr.become_probe()
            pr.refused = refusal
            self._refuse(msg.src, refusal)
            return None
        if self._refused_peers.pop(msg.src, None) is not None:
            self._event("info", "raft: node {node} accepts node {peer} again", node=self.id, peer=msg.src)
        if not isinstance(msg, InstallSnapshotResponse):
            self._check_follower_commit(msg.src, msg.commit_id)
        return pr

    def _check_follower_commit(self, peer: int, commit_id: LogId | None) -> None:
        """A follower's committed prefix must be this leader's (Leader Completeness)."""
        if commit_id is None or commit_id.index == 0:
            return
        if commit_id.index > self._log.last_index:
            raise self._violation(
                f"node {peer} has committed {commit_id.display()} but this leader's log ends at index "
                f"{self._log.last_index}: the leader lacks committed entries",
                commit_id.index,
            )
        if commit_id.index >= self._log.base_index:
            mine = self._log.log_id_at(commit_id.index)
            if mine != commit_id:
                raise self._violation(
                    f"node {peer} has committed {commit_id.display()} but this leader holds "
                    f"{_display(mine)} at that index",
                    commit_id.index,
                )

    def _commit_id(self) -> LogId | None:
        return self._log.log_id_at(self._log.committed)

    def _maybe_pin_identities(self) -> None:
        """
        Pin the incarnations of a membership written before identities
        existed (no cluster id), once every member has answered (or an
        election timeout after this node became leader, with those that
        have): the one-time trust of an upgrade. Also gives it a cluster id.
        """
        stored = self._membership
        if stored is None or stored.membership.cluster_id is not None or self._transfer_to is not None:
            return
        if (
            self._log.committed < self._blank_index
            or stored.log_id is None
            or stored.log_id.index > self._log.committed
        ):
            return
        if stored.membership.is_joint:
            return
        waiting = [p for p, pr in self._progress.items() if pr.incarnation is None and pr.refused is None]
        if waiting and self._now - self._became_leader_at < self._cfg.election_timeout_max:
            return
        membership = stored.membership
        cluster = self._cluster_id or new_identity(self._rng)
        if self._cluster_id is None:
            self._cluster_id = cluster
            self._identity_unsaved = True
        self._append_membership(
            Membership(membership.configs, membership.nodes, membership.incarnations, cluster)
        )
        self._event(
            "warn",
            "raft: node {node} pinned the incarnations of a cluster formed before identities existed "
            "(trusted once, as first seen): cluster id {cluster}",
            node=self.id,
            cluster=cluster,
        )

    def _on_vote_request(self, msg: VoteRequest) -> None:
        last = self._log.last_log_id
        up_to_date = (msg.last_log_id.key if msg.last_log_id else (0, 0)) >= (
            last.key if last else (0, 0)
        )
        can_vote = (
            self._voted_for == msg.src
            or (self._voted_for is None and self._leader is None)
            or (msg.pre_vote and msg.term > self._term)
        )
        refusal = self._pinned_mismatch(msg.src, msg.incarnation)
        if refusal is not None:
            self._refuse(msg.src, refusal)
        # A node the membership does not recognise (another incarnation is
        # pinned for it) votes for no one. (A wiped node knows no membership;
        # its vote is discounted by the candidate, which checks the voter's
        # pinned incarnation.)
        eligible = refusal is None and self._own_refusal() is None
        granted = can_vote and up_to_date and eligible
        if msg.pre_vote:
            term = msg.term if granted else self._term
            self._send(VoteResponse(term, self.id, msg.src, granted, True))
            return
        if granted:
            self._voted_for = msg.src
            self._hs_dirty = True
            self._reset_election_timer()
        self._send_durable(VoteResponse(self._term, self.id, msg.src, granted, False))

    def _on_vote_response(self, msg: VoteResponse) -> None:
        expected = Role.PRE_CANDIDATE if msg.pre_vote else Role.CANDIDATE
        if self._role is not expected or msg.src not in self._voters:
            return
        refusal = self._pinned_mismatch(msg.src, msg.incarnation)
        if refusal is not None:
            self._refuse(msg.src, refusal)
            return
        self._votes.setdefault(msg.src, msg.granted)
        result = tally(self._membership.membership.configs, self._votes) if self._membership else VoteResult.PENDING
        if result is VoteResult.WON:
            if msg.pre_vote:
                self._campaign(pre_vote=False)
            else:
                self._become_leader()
        elif result is VoteResult.LOST:
            self._become_follower(self._term, None)

    def _follow(self, leader: int) -> None:
        """A valid message from the leader of the current term arrived."""
        if self._role is not Role.FOLLOWER or self._leader != leader:
            self._become_follower(self._term, leader)
        self._last_leader_contact = self._now
        self._reset_election_timer()

    def _on_append(self, msg: AppendEntriesRequest) -> None:
        self._follow(msg.src)
        self._refused_by = None
        prev = msg.prev_log_id
        prev_index = prev.index if prev else 0
        entries = list(msg.entries)
        if prev_index <= self._log.committed:
            # Entries up to the commit point are committed here: they must be
            # the leader's. Check them (where not purged), never rewrite them.
            if prev_index >= self._log.base_index and self._log.log_id_at(prev_index) != prev:
                raise self._violation(
                    f"leader {msg.src} sent prev_log_id {_display(prev)} but this node committed "
                    f"{_display(self._log.log_id_at(prev_index))} at that index",
                    prev_index,
                )
            skip = 0
            for entry in entries:
                if entry.index > self._log.committed:
                    break
                if entry.index >= max(self._log.base_index, 1) and self._log.log_id_at(entry.index) != entry.log_id:
                    raise self._violation(
                        f"leader {msg.src} sent entry {entry.log_id.display()} but this node committed "
                        f"{_display(self._log.log_id_at(entry.index))} at that index",
                        entry.index,
                    )
                skip += 1
            entries = entries[skip:]
            prev_index += skip
        elif not self._log.has_index(prev_index) or self._log.log_id_at(prev_index) != prev:
            self._reject_append(msg, prev_index)
            return
        for i, entry in enumerate(entries):
            if entry.index > self._log.last_index:
                self._append(entries[i:])
                break
            if self._log.log_id_at(entry.index) != entry.log_id:
                self._truncate(entry.index)
                self._append(entries[i:])
                break
        last_new = prev_index + len(entries)
        self._log.committed = max(self._log.committed, min(msg.leader_commit, last_new))
        self._send_durable(
            AppendEntriesResponse(
                self._term, self.id, msg.src, True, last_new, commit_id=self._log.commit_id()
            )
        )

    def _reject_append(self, msg: AppendEntriesRequest, prev_index: int) -> None:
        prev_term = msg.prev_log_id.term if msg.prev_log_id else 0
        hint = min(prev_index, self._log.last_index)
        while hint > self._log.committed and self._log.term_at(hint) > prev_term:
            hint -= 1
        self._send_durable(
            AppendEntriesResponse(
                self._term, self.id, msg.src, False, prev_index, hint, self._log.term_at(hint),
                commit_id=self._log.commit_id(),
            )
        )

    def _on_heartbeat(self, msg: Heartbeat) -> None:
        self._follow(msg.src)
        self._log.committed = max(self._log.committed, min(msg.commit, self._log.last_index))
        self._send_durable(
            HeartbeatResponse(self._term, self.id, msg.src, msg.read_seq, commit_id=self._log.commit_id())
        )

    def _on_install_snapshot(self, msg: InstallSnapshotRequest) -> None:
        self._follow(msg.src)
        meta = msg.meta
        snapshot_id = meta.snapshot_id

        def reply(next_offset: int, done: bool) -> None:
            response = InstallSnapshotResponse(
                self._term, self.id, msg.src, snapshot_id, next_offset, done
            )
            (self._send_durable if done else self._send)(response)

        if meta.last_log_id.index <= self._log.committed:
            index = meta.last_log_id.index
            if index >= self._log.base_index and index > 0 and self._log.log_id_at(index) != meta.last_log_id:
                raise self._violation(
                    f"leader {msg.src} sent snapshot {snapshot_id} ending at {meta.last_log_id.display()} "
                    f"but this node committed {_display(self._log.log_id_at(index))} at that index",
                    index,
                )
            self._snapshot_rx = None
            reply(0, True)
            return
        rx = self._snapshot_rx
        if msg.offset == 0:
            rx = self._snapshot_rx = (meta, bytearray())
        elif rx is None or rx[0] != meta or len(rx[1]) != msg.offset:
            reply(len(rx[1]) if rx is not None and rx[0] == meta else 0, False)
            return
        rx[1].extend(msg.data)
        if not msg.done:
            reply(len(rx[1]), False)
            return
        self._snapshot_rx = None
        self._install_snapshot(Snapshot(meta, bytes(rx[1])))
        reply(len(rx[1]), True)

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        self._log.install_snapshot(snapshot)
        self._set_membership(self._log.find_membership(self._log.last_index))
        self._event(
            "info",
            "raft: node {node} installed snapshot {id} ({size} bytes) from leader {leader}",
            node=self.id,
            id=snapshot.meta.snapshot_id,
            size=len(snapshot.data),
            leader=self._leader,
        )

    def _on_timeout_now(self, msg: TimeoutNow) -> None:
        if self._role is not Role.LEADER and self.id in self._voters:
            self._campaign(pre_vote=False, transfer=True)

    def _on_read_index_request(self, msg: ReadIndexRequest) -> None:
        if self._role is Role.LEADER:
            self._leader_read(msg.src, msg.request_id)
        else:
            self._send(ReadIndexResponse(self._term, self.id, msg.src, msg.request_id, None))

    def _on_read_index_response(self, msg: ReadIndexResponse) -> None:
        if not self._reads.remote_answered(msg.request_id):
            return
        if msg.read_index is None:
            self._reads.failed.append(msg.request_id)
        else:
            self._wait_for_apply(ReadState(msg.request_id, msg.read_index))

    # --- leader: replication ------------------------------------------------------

    def _on_append_response(self, msg: AppendEntriesResponse) -> None:
        pr = self._responder(msg)
        if pr is None:
            return
        pr.active = True
        if msg.success:
            if pr.maybe_update(msg.index):
                self._maybe_commit()
                if self._transfer_to == msg.src and pr.match == self._log.last_index:
                    self._send(TimeoutNow(self._term, self.id, msg.src))
            pr.paused = False
            self._send_append(msg.src, pr)
            return
        if not pr.rejection_counts(msg.index):
            return
        j = min(msg.hint_index, self._log.last_index)
        while j > self._log.base_index and self._log.term_at(j) > msg.hint_term:
            j -= 1
        pr.probe_from(min(j + 1, msg.index))
        self._send_append(msg.src, pr)

    def _on_heartbeat_response(self, msg: HeartbeatResponse) -> None:
        pr = self._responder(msg)
        if pr is None:
            return
        pr.active = True
        pr.read_seq = max(pr.read_seq, msg.read_seq)
        self._confirm_reads()
        if pr.match < self._log.last_index:
            self._send_append(msg.src, pr)

    def _on_snapshot_response(self, msg: InstallSnapshotResponse) -> None:
        pr = self._responder(msg)
        if pr is None or pr.mode is not Mode.SNAPSHOT:
            return
        pr.active = True
        snapshot = self._log.snapshot
        if snapshot is None or msg.snapshot_id != snapshot.meta.snapshot_id:
            pr.snapshot_offset = 0
        elif msg.done:
            pr.match = max(pr.match, snapshot.meta.last_log_id.index)
            pr.become_probe()
            self._event(
                "info", "raft: node {node} sent snapshot {id} ({size} bytes) to node {peer}",
                node=self.id, id=snapshot.meta.snapshot_id, size=len(snapshot.data), peer=msg.src,
            )
        else:
            pr.snapshot_offset = msg.next_offset
        pr.paused = False
        self._send_append(msg.src, pr)

    def _flush_replication(self) -> None:
        if self._replication_dirty:
            self._replication_dirty = False
            for peer, pr in self._progress.items():
                self._send_append(peer, pr)

    def _send_append(self, peer: int, pr: Progress) -> None:
        """Send what C{peer} needs next, within the progress' window."""
        while True:
            if pr.is_paused(self._cfg.max_inflight):
                return
            if pr.mode is not Mode.SNAPSHOT and pr.next - 1 < self._log.base_index:
                pr.become_snapshot()
            if pr.mode is Mode.SNAPSHOT:
                self._send_snapshot_chunk(peer, pr)
                return
            entries = self._batch_from(pr.next)
            if not entries and pr.mode is Mode.REPLICATE:
                return
            self._send(
                AppendEntriesRequest(
                    self._term,
                    self.id,
                    peer,
                    self._log.log_id_at(pr.next - 1),
                    tuple(entries),
                    self._log.committed,
                )
            )
            if pr.mode is Mode.PROBE:
                pr.paused = True
                return
            pr.sent_entries(entries[-1].index)

    def _batch_from(self, first: int) -> list[Entry]:
        batch: list[Entry] = []
        size = 0
        for entry in self._log.slice(first, min(self._log.last_index, first + self._cfg.max_payload_entries - 1)):
            size += len(entry.encoded)
            if batch and size > self._cfg.max_payload_bytes:
                break
            batch.append(entry)
        return batch

    def _send_snapshot_chunk(self, peer: int, pr: Progress) -> None:
        snapshot = self._log.snapshot
        if snapshot is None:
            raise AssertionError("a purged log without a snapshot")
        start = min(pr.snapshot_offset, len(snapshot.data))
        chunk = snapshot.data[start : start + self._cfg.snapshot_chunk_size]
        done = start + len(chunk) >= len(snapshot.data)
        if start == 0:
            self._event(
                "info", "raft: node {node} sending snapshot {id} ({size} bytes) to node {peer}",
                node=self.id, id=snapshot.meta.snapshot_id, size=len(snapshot.data), peer=peer,
            )
        self._send(
            InstallSnapshotRequest(self._term, self.id, peer, snapshot.meta, start, chunk, done)
        )
        pr.paused = True

    def _broadcast_heartbeat(self) -> None:
        read_seq = self._reads.heartbeat_round()
        for peer, pr in self._progress.items():
            commit = min(self._log.committed, pr.match)
            self._send(Heartbeat(self._term, self.id, peer, commit, read_seq))

    def _maybe_commit(self) -> None:
        if self._membership is None:
            return
        membership = self._membership.membership

        def matched(node: int) -> int:
            if node == self.id:
                return self._log.persisted
            pr = self._progress.get(node)
            return pr.match if pr else 0

        index = membership.quorum_index(matched)
        if index <= self._log.committed or self._log.term_at(index) != self._term:
            return
        self._log.committed = index
        self._replication_dirty = True
        self._confirm_reads()
        self._after_commit()

    def _after_commit(self) -> None:
        """Finish a joint change; hand over if this leader was removed."""
        stored = self._membership
        if stored is None or stored.log_id is None or stored.log_id.index > self._log.committed:
            return
        membership = stored.membership
        if membership.is_joint:
            self._append_membership(confchange.leave_joint(membership))
        elif self.id not in membership.voters and self._transfer_to is None:
            best = max(sorted(membership.voters), key=lambda n: self._progress[n].match)
            self._start_transfer(best)

    # --- commands -------------------------------------------------------------------

    def _leader_address(self) -> str | None:
        if self._leader is None or self._membership is None:
            return None
        return self._membership.membership.nodes.get(self._leader)

    def _check_leader(self) -> None:
        if self._role is not Role.LEADER:
            raise NotLeaderError(self._leader, self._leader_address())
        if self._transfer_to is not None:
            raise RaftError("leadership transfer in progress")

    def propose(self, request: Mapping[str, Any], ts: int, request_json: bytes | None = None) -> LogId:
        """
        Append a normal entry carrying C{request} (an opaque JSON object) and
        the leader's timestamp C{ts} (Unix ms). Returns its log id: the entry
        is committed once it comes back in L{Ready.committed_entries}; if a
        different entry is applied at that index instead, it was lost.
        Raises L{NotLeaderError} on a non-leader. C{request_json}: see
        L{Entry.normal}.
        """
        self._check_leader()
        entry = Entry.normal(LogId(self._term, self.id, self._log.last_index + 1), request, ts, request_json)
        self._append([entry])
        self._replication_dirty = True
        return entry.log_id

    def initialize(self, nodes: Mapping[int, str]) -> LogId:
        """
        Create the cluster with C{nodes} (id -> Raft address) as voters and a
        new cluster id; this node's incarnation is pinned (the others' are
        pinned by the leader when they first answer, at the next membership
        change). Only on a pristine node. A node that is the only voter
        campaigns at its next tick; otherwise after an election timeout.
        """
        if self._term or self._voted_for is not None or self._log.last_log_id or self._log.snapshot:
            last = self._log.last_log_id.display() if self._log.last_log_id else "None"
            raise RaftError(
                "not allowed to initialize due to current raft state: "
                f"last_log_id: {last} vote: T{self._term}-N{self._voted_for}"
            )
        if self.id not in nodes:
            raise RaftError(f"node {self.id} must be a member of the cluster it initializes")
        self._cluster_id = new_identity(self._rng)
        self._identity_unsaved = True
        membership = Membership([set(nodes)], nodes, {self.id: self._incarnation}, self._cluster_id)
        entry = Entry(LogId(0, self.id, 1), membership)
        self._append([entry])
        if set(nodes) == {self.id}:
            # Campaign at the next tick, not now: the entry must be durable
            # first (a crash before that leaves a node that may be
            # initialized again, not one with a term and no cluster).
            self._election_deadline = self._now
        return entry.log_id

    def _check_membership_change(self) -> StoredMembership:
        self._check_leader()
        if self._log.committed < self._blank_index:
            raise RaftError("the leader has not committed an entry of its term yet")
        stored = self._membership
        if stored is None or stored.log_id is None:
            raise AssertionError("a leader without a membership entry")
        if stored.membership.is_joint or stored.log_id.index > self._log.committed:
            raise RaftError("a membership change is in progress")
        return stored

    def _append_membership(self, membership: Membership) -> LogId:
        # Pin what this leader has seen of members not pinned yet, and itself.
        seen = {p: pr.incarnation for p, pr in self._progress.items() if pr.incarnation and pr.refused is None}
        seen[self.id] = self._incarnation
        membership = confchange.pin(membership, seen, self._cluster_id)
        entry = Entry(LogId(self._term, self.id, self._log.last_index + 1), membership)
        self._append([entry])
        self._replication_dirty = True
        return entry.log_id

    def add_learner(self, node_id: int, addr: str) -> LogId:
        """Add (or re-address) a node that receives the log but does not vote."""
        current = self._check_membership_change().membership
        return self._append_membership(confchange.with_learner(current, node_id, addr))

    def change_membership(self, voters: Iterable[int]) -> LogId:
        """
        Make C{voters} the voter set through joint consensus: this appends
        C{[old, new]}; once that commits the leader appends C{[new]} and
        drops removed voters from the membership. Every new voter must already
        be a learner. A leader that removes itself hands leadership to the most
        up-to-date remaining voter once C{[new]} commits.
        """
        new = frozenset(voters)
        stored = self._check_membership_change()
        current = stored.membership
        confchange.check_voters(current, new)
        (old,) = current.configs
        if new == old:
            # _check_membership_change refuses a membership without a log id.
            return stored.log_id  # type: ignore[return-value]
        for node in sorted(new - old):
            pr = self._progress.get(node)
            if pr is not None and pr.refused is not None:
                raise RaftError(f"node {node} is refused: {pr.refused}")
            if current.cluster_id is not None and node not in current.incarnations and node != self.id:
                if pr is None or pr.incarnation is None:
                    raise RaftError(
                        f"node {node} has not answered the leader yet, so its incarnation is unknown; "
                        "wait until it has caught up and retry"
                    )
        return self._append_membership(confchange.enter_joint(current, new))

    def remove_node(self, node_id: int) -> LogId:
        """
        Remove a member: a voter through L{change_membership} (joint
        consensus), a learner with one membership entry. Its pinned
        incarnation goes with it, so it can be added again (with a new disk)
        through L{add_learner}.
        """
        current = self._check_membership_change().membership
        if node_id not in current.nodes:
            raise RaftError(f"node {node_id} is not a member")
        if node_id in current.voters:
            return self.change_membership(current.voters - {node_id})
        return self._append_membership(confchange.without_learner(current, node_id))

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to voter C{to} (a no-op for this node itself)."""
        self._check_leader()
        if to == self.id:
            return
        if to not in self._voters:
            raise RaftError(f"node {to} is not a voter")
        self._start_transfer(to)

    def _start_transfer(self, to: int) -> None:
        self._transfer_to = to
        self._transfer_deadline = self._now + self._cfg.election_timeout_min
        pr = self._progress[to]
        if pr.match == self._log.last_index:
            self._send(TimeoutNow(self._term, self.id, to))
        else:
            self._send_append(to, pr)

    # --- reads ------------------------------------------------------------------------

    def read_index(self) -> int:
        """
        Start a linearizable read; returns its request id. It comes back in
        L{Ready.read_states} once confirmed and applied locally (read the
        state machine then), or in L{Ready.failed_reads}.
        """
        request_id = self._reads.new_request()
        if self._role is Role.LEADER:
            self._leader_read(self.id, request_id)
        elif self._leader is not None:
            self._send(ReadIndexRequest(self._term, self.id, self._leader, request_id))
            self._reads.wait_remote(request_id, self._now + self._cfg.election_timeout_max)
        else:
            self._reads.failed.append(request_id)
        return request_id

    def _leader_read(self, origin: int, request_id: int) -> None:
        index = max(self._log.committed, self._blank_index)
        self._reads.add_request(origin, request_id, index)
        if self._is_quorum([self.id]):
            self._reads.seq += 1
            self._confirm_reads()
        else:
            # One heartbeat round, sent with the next ready, confirms every
            # read registered until then.
            self._reads.round_pending = True

    def _confirm_reads(self) -> None:
        if not self._reads.to_confirm:
            return

        def acknowledged(seq: int) -> bool:
            return self._is_quorum({self.id} | {p for p, pr in self._progress.items() if pr.read_seq >= seq})

        for origin, request_id, index in self._reads.confirmed(acknowledged):
            if origin == self.id:
                self._wait_for_apply(ReadState(request_id, index))
            else:
                self._send(ReadIndexResponse(self._term, self.id, origin, request_id, index))

    def _wait_for_apply(self, state: ReadState) -> None:
        self._reads.wait_for_apply(state, self._last_applied.index if self._last_applied else 0)

    # --- state machine feedback ---------------------------------------------------

    def take_committed(self) -> tuple[Entry, ...]:
        """
        Committed entries to apply now, outside a ready: the driver may call
        it while a ready is in flight (a quorum answered during the persist),
        once it has handed the state machine the committed entries of every
        ready taken so far. Only entries durable here, and none while a
        snapshot waits to be installed (it goes first, in a ready). They are
        handed out: no ready carries them again.
        """
        if self._role is Role.SHUTDOWN or self._log.apply_snapshot is not None:
            return ()
        return self._log.take_committed()[1]

    def applied(self, log_id: LogId) -> None:
        """The state machine has applied everything up to C{log_id}."""
        if self._last_applied is None or log_id.index > self._last_applied.index:
            self._last_applied = log_id
            self._reads.release(log_id.index)

    def snapshot_built(self, last_log_id: LogId, data: bytes) -> None:
        """
        The state machine produced a snapshot (asked for by
        L{Ready.build_snapshot}) of its state up to C{last_log_id}. The core
        keeps it for followers, persists it in the next ready and purges the
        log up to C{keep_after_snapshot} entries before it.
        """
        self._building_snapshot = False
        index = last_log_id.index
        if self._log.snapshot is not None and index <= self._log.snapshot.meta.last_log_id.index:
            return
        if not self._log.has_index(index) or self._log.log_id_at(index) != last_log_id:
            raise ValueError(f"no applied entry {last_log_id.display()} in the log")
        membership = self._log.find_membership(index)
        if membership is None:
            raise ValueError("a snapshot without a membership")
        meta = SnapshotMeta(last_log_id, membership, snapshot_id_for(last_log_id))
        self._log.compact(Snapshot(meta, data), index - self._cfg.keep_after_snapshot)

    def shutdown(self) -> None:
        """Stop: ignore every later input and hand out no more readies."""
        self._role = Role.SHUTDOWN

    # --- introspection ------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._role is Role.LEADER

    @property
    def is_follower(self) -> bool:
        """A follower or a learner (not a leader, candidate or pre-candidate)."""
        return self._role is Role.FOLLOWER

    @property
    def current_term(self) -> int:
        return self._term

    @property
    def leader_id(self) -> int | None:
        return self._leader

    @property
    def membership(self) -> StoredMembership | None:
        return self._membership

    @property
    def snapshot(self) -> Snapshot | None:
        return self._log.snapshot

    def entries(self) -> list[Entry]:
        """The log entries held in memory (after the purge point)."""
        return list(self._log.entries)

    def metrics(self) -> RaftMetrics:
        if self._role is Role.FOLLOWER and self.id not in self._voters:
            state = "Learner"
        elif self._role is Role.PRE_CANDIDATE:
            state = Role.CANDIDATE.value
        else:
            state = self._role.value
        last = self._log.last_log_id
        return RaftMetrics(
            id=self.id,
            state=state,
            current_term=self._term,
            last_log_index=last.index if last else None,
            last_applied=self._last_applied,
            current_leader=self._leader,
            membership=self._membership,
            commit_index=self._log.committed,
            replication={p: pr.match for p, pr in sorted(self._progress.items())},
            snapshot=self._log.snapshot.meta.last_log_id if self._log.snapshot else None,
            last_purged=self._log.base,
            incarnation=self._incarnation,
            cluster_id=self._cluster_id,
            refused=dict(self._refused_peers),
            refused_by=self._refused_by,
        )


_REFUSED_LOG_INTERVAL = 30_000


def _display(log_id: LogId | None) -> str:
    return log_id.display() if log_id is not None else "nothing"


def _refusal_text(peer: int, incarnation: str, expected: str) -> str:
    return (
        f"node {peer} answers as data-directory incarnation {incarnation} but is known as {expected} "
        "(its disk was wiped or replaced): it takes no part in votes or commit until an operator "
        "removes it and adds it again (raft_remove_node, raft_add_learner, raft_change_membership)"
    )


_HANDLERS: dict[type, Any] = {
    VoteRequest: RaftCore._on_vote_request,
    VoteResponse: RaftCore._on_vote_response,
    AppendEntriesRequest: RaftCore._on_append,
    AppendEntriesResponse: RaftCore._on_append_response,
    Heartbeat: RaftCore._on_heartbeat,
    HeartbeatResponse: RaftCore._on_heartbeat_response,
    InstallSnapshotRequest: RaftCore._on_install_snapshot,
    InstallSnapshotResponse: RaftCore._on_snapshot_response,
    ReadIndexRequest: RaftCore._on_read_index_request,
    ReadIndexResponse: RaftCore._on_read_index_response,
    TimeoutNow: RaftCore._on_timeout_now,
}
