"""
Unit tests of the parts the Raft core steps over: the log
(L{oxidb.raft.log}), a peer's progress (L{oxidb.raft.progress}), quorums
(L{oxidb.raft.quorum}), membership changes (L{oxidb.raft.confchange}) and
ReadIndex reads (L{oxidb.raft.readonly}). The core's own tests drive them
through whole clusters; these pin each part's contract on its own.
"""

from __future__ import annotations

import pytest

from oxidb.errors import RaftError
from oxidb.raft import confchange
from oxidb.raft.log import RaftLog
from oxidb.raft.messages import Entry, LogId, Membership, Snapshot, SnapshotMeta, StoredMembership
from oxidb.raft.progress import Mode, Progress
from oxidb.raft.quorum import VoteResult, is_quorum, quorum_index, tally
from oxidb.raft.readonly import ReadOnly, ReadState
from oxidb.raft.storage import DurableState

THREE = Membership([{1, 2, 3}], {1: "n1", 2: "n2", 3: "n3"})


def entries(first: int, last: int, term: int = 1) -> tuple[Entry, ...]:
    return tuple(Entry(LogId(term, 1, i)) for i in range(first, last + 1))


def snapshot_at(log_id: LogId) -> Snapshot:
    meta = SnapshotMeta(log_id, StoredMembership(LogId(1, 1, 1), THREE), f"snap-{log_id.index}")
    return Snapshot(meta, b"state")


# --- quorum ---------------------------------------------------------------------


def test_a_joint_quorum_needs_a_majority_of_both_sets() -> None:
    old, new = frozenset({1, 2, 3}), frozenset({3, 4, 5})
    assert is_quorum([old], [1, 2])
    assert not is_quorum([old, new], [1, 2, 3])
    assert is_quorum([old, new], [1, 3, 4])


def test_the_quorum_index_is_the_lowest_majority_of_the_sets() -> None:
    matched = {1: 9, 2: 7, 3: 5, 4: 2, 5: 1}.__getitem__
    assert quorum_index([frozenset({1, 2, 3})], matched) == 7
    assert quorum_index([frozenset({1, 2, 3}), frozenset({3, 4, 5})], matched) == 2
    assert quorum_index([], matched) == 0


def test_tally_wins_loses_or_waits() -> None:
    voters = [frozenset({1, 2, 3})]
    assert tally(voters, {1: True}) is VoteResult.PENDING
    assert tally(voters, {1: True, 2: True}) is VoteResult.WON
    assert tally(voters, {1: True, 2: False, 3: False}) is VoteResult.LOST


# --- confchange -------------------------------------------------------------------


def test_a_joint_change_keeps_pins_and_drops_removed_voters_when_it_ends() -> None:
    current = Membership([{1, 2, 3}], {1: "n1", 2: "n2", 3: "n3", 4: "n4"}, {1: "i1", 3: "i3"}, "c")
    joint = confchange.enter_joint(current, frozenset({1, 2, 4}))
    assert joint.configs == (frozenset({1, 2, 3}), frozenset({1, 2, 4}))
    assert set(joint.nodes) == {1, 2, 3, 4} and joint.cluster_id == "c"
    final = confchange.leave_joint(joint)
    assert final.configs == (frozenset({1, 2, 4}),)
    assert set(final.nodes) == {1, 2, 4}
    assert dict(final.incarnations) == {1: "i1"}  # node 3's pin left with it


def test_learners_come_and_go_with_one_membership() -> None:
    added = confchange.with_learner(THREE, 4, "n4")
    assert added.learners == {4} and added.configs == THREE.configs
    assert confchange.without_learner(added, 4) == THREE


def test_a_new_voter_set_must_be_members() -> None:
    with pytest.raises(RaftError, match="must not be empty"):
        confchange.check_voters(THREE, frozenset())
    with pytest.raises(RaftError, match="node 4 is not a learner"):
        confchange.check_voters(THREE, frozenset({1, 4}))
    confchange.check_voters(THREE, frozenset({1, 2}))


def test_pin_adds_what_was_seen_without_overriding_pins_or_the_cluster() -> None:
    current = Membership([{1, 2}], {1: "n1", 2: "n2"}, {1: "old"}, "c")
    pinned = confchange.pin(current, {1: "new", 2: "i2", 9: "stranger"}, "other")
    assert dict(pinned.incarnations) == {1: "old", 2: "i2"}
    assert pinned.cluster_id == "c"
    assert confchange.pin(Membership([{1}], {1: "n1"}), {}, "fresh").cluster_id == "fresh"


# --- the log ------------------------------------------------------------------------


def test_a_restored_log_starts_after_its_purge_point() -> None:
    log = RaftLog.restore(DurableState(last_purged=LogId(1, 1, 4), entries=entries(5, 7)))
    assert (log.base_index, log.last_index, log.persisted, log.unstable_from) == (4, 7, 7, 8)
    assert log.term_at(4) == 1 and log.log_id_at(6) == LogId(1, 1, 6)
    with pytest.raises(IndexError):
        log.log_id_at(3)
    with pytest.raises(ValueError, match="purge point"):
        RaftLog.restore(DurableState(last_purged=LogId(1, 1, 2), entries=entries(5, 7)))


def test_truncating_stored_entries_tells_storage_to_cut_them() -> None:
    log = RaftLog.restore(DurableState(entries=entries(1, 5)))
    log.committed = 2
    log.truncate(4)
    assert (log.last_index, log.persisted, log.pending_truncate, log.unstable_from) == (3, 3, 4, 4)
    assert log.append(entries(4, 4, term=2)) is False
    persist = log.take_persist(None)
    assert persist.truncate_from == 4 and [e.log_id for e in persist.entries] == [LogId(2, 1, 4)]
    assert (log.unstable_from, log.pending_truncate) == (5, None)  # handed out
    with pytest.raises(AssertionError):
        log.truncate(2)


def test_the_commit_point_saved_never_names_an_entry_of_its_own_batch() -> None:
    log = RaftLog.restore(DurableState(entries=entries(1, 2)))
    log.append(entries(3, 4))
    log.committed = 4
    persist = log.take_persist(None)
    assert persist.committed == LogId(1, 1, 2)
    assert log.take_committed() == (None, entries(1, 2))  # only durable entries are applied
    log.stable_to(persist)
    assert log.persisted == 4
    assert log.take_committed() == (None, entries(3, 4))


def test_a_snapshot_keeps_the_entries_after_it_when_the_log_matches() -> None:
    log = RaftLog.restore(DurableState(entries=entries(1, 6)))
    log.install_snapshot(snapshot_at(LogId(1, 1, 4)))
    assert (log.base_index, log.last_index, log.committed) == (4, 6, 4)
    assert log.pending_purge == LogId(1, 1, 4) and log.pending_truncate is None
    other = RaftLog.restore(DurableState(entries=entries(1, 6)))
    other.install_snapshot(snapshot_at(LogId(2, 1, 4)))
    assert (other.last_index, other.persisted, other.pending_truncate) == (4, 4, 5)


def test_compaction_keeps_the_snapshot_and_purges_before_it() -> None:
    log = RaftLog.restore(DurableState(entries=entries(1, 6)))
    snapshot = snapshot_at(LogId(1, 1, 5))
    log.compact(snapshot, 3)
    assert log.snapshot is snapshot and log.pending_snapshot is snapshot
    assert (log.base_index, log.pending_purge) == (3, LogId(1, 1, 3))
    log.compact(snapshot, 0)
    assert log.base_index == 3


# --- progress -------------------------------------------------------------------------


def test_a_probe_becomes_replication_when_the_peer_acknowledges() -> None:
    pr = Progress(next=5)
    assert pr.is_paused(2) is False
    pr.paused = True
    assert pr.maybe_update(4) and pr.mode is Mode.REPLICATE and pr.next == 5
    assert not pr.maybe_update(3)
    pr.paused = False
    pr.sent_entries(6)
    pr.sent_entries(8)
    assert pr.is_paused(2) and list(pr.inflight) == [6, 8]
    assert pr.maybe_update(6) and list(pr.inflight) == [8] and not pr.is_paused(2)


def test_only_the_answer_to_the_probe_in_flight_moves_it_back() -> None:
    pr = Progress(next=5, match=2)
    assert not pr.rejection_counts(2)  # at or below the match: stale
    assert not pr.rejection_counts(3)  # not the probe in flight (prev index 4)
    assert pr.rejection_counts(4)
    pr.probe_from(1)
    assert pr.next == 3  # never below the match
    pr.become_snapshot()
    assert not pr.rejection_counts(4)


def test_appends_unacknowledged_for_a_heartbeat_interval_are_resent() -> None:
    pr = Progress(next=5, match=4, mode=Mode.REPLICATE)
    pr.sent_entries(7)
    pr.heartbeat_elapsed()  # the match moved since the last interval (from 0)
    assert pr.mode is Mode.REPLICATE
    pr.heartbeat_elapsed()
    assert (pr.mode, pr.next, list(pr.inflight)) == (Mode.PROBE, 5, [])


# --- reads --------------------------------------------------------------------------------


def test_leader_reads_are_confirmed_by_a_later_round_in_order() -> None:
    reads = ReadOnly()
    first, second = reads.new_request(), reads.new_request()
    reads.add_request(1, first, 10)
    reads.round_pending = True
    assert reads.heartbeat_round() == 1
    reads.add_request(2, second, 11)  # waits for round 2
    acked = {1}
    assert list(reads.confirmed(acked.__contains__)) == [(1, first, 10)]
    assert list(reads.confirmed(lambda seq: True)) == []  # round 2 not sent yet
    reads.round_pending = True
    reads.heartbeat_round()
    assert reads.abandon() == [(2, second)]
    assert not reads.to_confirm and not reads.round_pending


def test_reads_wait_for_the_state_machine_and_remote_ones_expire() -> None:
    reads = ReadOnly()
    reads.wait_for_apply(ReadState(1, 5), applied=4)
    assert not reads.has_answers()
    reads.release(5)
    reads.wait_remote(2, deadline=100)
    reads.wait_remote(3, deadline=200)
    reads.expire(150)
    assert reads.remote_answered(3) and not reads.remote_answered(2)
    assert reads.take_answers() == ((ReadState(1, 5),), (2,))
    assert reads.take_answers() == ((), ())
