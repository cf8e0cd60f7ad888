"""
Event-list tests of the sans-IO Raft core: give inputs, assert the outputs.
"""

from __future__ import annotations

import random

import attrs
import pytest
from raft_harness import CONFIG, Cluster, Node, bootstrap

from oxidb.errors import NotLeaderError, RaftError
from oxidb.raft.core import RaftConfig, RaftCore
from oxidb.raft.messages import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    Entry,
    HardState,
    Heartbeat,
    InstallSnapshotRequest,
    LogId,
    Membership,
    PersistBatch,
    ReadIndexRequest,
    Snapshot,
    SnapshotMeta,
    StoredMembership,
    TimeoutNow,
    VoteRequest,
)
from oxidb.raft.storage import DurableState, RaftStorage
from oxidb.testing import CrashingDisk, DiskCrashed


def put(key: str, value: str) -> dict:
    return {"Put": {"key": key, "value": value}}


def test_bootstrap_elects_and_commits_a_blank_entry() -> None:
    cluster = bootstrap()
    leader = cluster[1]
    metrics = leader.core.metrics()
    assert (metrics.state, metrics.current_term, metrics.current_leader) == ("Leader", 1, 1)
    assert leader.log_ids() == [(0, 1), (1, 2)]
    assert leader.core.entries()[1].is_blank
    for node in (cluster[2], cluster[3]):
        assert node.state == "Follower"
        assert node.commit == 2
        assert node.core.metrics().current_leader == 1
    assert metrics.replication == {2: 2, 3: 2}
    assert metrics.last_applied == LogId(1, 1, 2)


def test_initialize_only_once_and_only_with_self() -> None:
    cluster = bootstrap()
    with pytest.raises(RaftError, match="not allowed to initialize due to current raft state"):
        cluster[1].core.initialize({1: "n1"})
    lonely = Node(9)
    with pytest.raises(RaftError, match="must be a member"):
        lonely.core.initialize({1: "n1"})


def test_pristine_node_is_a_learner_and_never_campaigns() -> None:
    node = Node(1)
    for now in range(0, 5000, 50):
        node.core.tick(now)
        assert node.process() == []
    metrics = node.core.metrics()
    assert (metrics.state, metrics.current_term, metrics.last_log_index) == ("Learner", 0, None)
    assert metrics.last_applied is None and metrics.membership is None


def test_follower_propose_names_the_leader() -> None:
    cluster = bootstrap()
    with pytest.raises(NotLeaderError) as e:
        cluster[2].core.propose(put("a", "1"), ts=0)
    assert str(e.value) == (
        'raft error: has to forward request to: Some(1), Some(BasicNode { addr: "n1" })'
    )


def test_proposals_replicate_commit_and_carry_the_leader_timestamp() -> None:
    cluster = bootstrap()
    log_ids = [cluster[1].core.propose(put("k", str(i)), ts=1_700_000_000_000 + i) for i in range(5)]
    cluster.flush()
    appends = [m for m in cluster.queue if isinstance(m, AppendEntriesRequest)]
    # The five proposals travel together: one append per follower.
    assert sorted(m.dst for m in appends) == [2, 3]
    assert all(len(m.entries) == 5 for m in appends)
    cluster.run(100)
    for node in cluster.nodes.values():
        assert [e.log_id for e in node.applied_entries[-5:]] == log_ids
        assert [e.ts for e in node.applied_entries[-5:]] == [1_700_000_000_000 + i for i in range(5)]
        assert node.sm.data == {"k": "4"}


def test_batches_are_bounded_by_entries_and_bytes() -> None:
    config = attrs.evolve(CONFIG, max_payload_entries=3, max_payload_bytes=10_000, max_inflight=100)
    cluster = bootstrap(config=config)
    for i in range(7):
        cluster[1].core.propose(put("k", str(i)), ts=0)
    cluster.flush()
    sizes = [len(m.entries) for m in cluster.queue if isinstance(m, AppendEntriesRequest) and m.dst == 2]
    assert sizes == [3, 3, 1]  # pipelined: three appends in flight at once
    cluster.stabilize()
    big = "x" * 4000
    for _ in range(3):
        cluster[1].core.propose(put("k", big), ts=0)
    cluster.flush()
    sizes = [len(m.entries) for m in cluster.queue if isinstance(m, AppendEntriesRequest) and m.dst == 2]
    assert sizes == [2, 1]


def test_single_voter_commits_only_after_its_own_fsync() -> None:
    # etcd #14370: a single-voter cluster must not report an entry committed
    # before it is durable.
    node = Node(1)
    node.core.initialize({1: "n1"})
    node.process()
    for now in range(0, 1000, 50):
        node.core.tick(now)
        node.process()
    assert node.state == "Leader"
    log_id = node.core.propose(put("a", "1"), ts=0)
    ready = node.core.ready()
    assert [e.log_id for e in ready.persist.entries] == [log_id]
    assert log_id not in [e.log_id for e in ready.committed_entries]
    node.storage.save(ready.persist)
    node.core.advance(ready)
    ready = node.core.ready()
    assert [e.log_id for e in ready.committed_entries] == [log_id]


def test_a_single_voter_leads_only_a_term_it_has_made_durable() -> None:
    # Found by the simulator (seeds 1388 and 2005): a lone voter that took
    # term 1, became leader and appended entries in the same ready crashed
    # before the save; restarted at term 0, it led term 1 again and wrote a
    # different entry 1-1-3. It must not act as leader of a term it could
    # forget: its own vote counts once durable, as a peer's vote does.
    node = Node(1)
    node.core.initialize({1: "n1"})
    node.process()
    node.core.tick(CONFIG.election_timeout_max)
    ready = node.core.ready()
    assert ready.persist.hard_state is not None
    assert (ready.persist.hard_state.term, ready.persist.hard_state.voted_for) == (1, 1)
    assert ready.persist.entries == () and node.state == "Candidate"
    with pytest.raises(NotLeaderError):
        node.core.propose(put("a", "1"), ts=0)
    # A crash before the save: the term is forgotten, and nothing was led.
    node.disk.crash()
    node = Node(1, disk=node.disk)
    assert (node.term, node.log_ids()) == (0, [(0, 1)])
    node.core.tick(CONFIG.election_timeout_max)
    ready = node.core.ready()
    assert ready.persist.entries == () and node.state == "Candidate"
    node.storage.save(ready.persist)
    node.core.advance(ready)
    assert node.state == "Leader" and node.term == 1
    node.process()
    assert node.log_ids() == [(0, 1), (1, 2)]


def test_pre_vote_keeps_a_partitioned_node_from_bumping_the_term() -> None:
    cluster = bootstrap()
    term = cluster[1].term
    cluster.cut = {3}
    cluster.run(3000)
    assert cluster[3].term == term  # it asked, nobody answered, the term stayed
    assert cluster[3].state == "Candidate"
    cluster.cut = set()
    cluster.run(1000)
    assert cluster.leaders() == [1]
    assert {n.term for n in cluster.nodes.values()} == {term}
    assert cluster[3].state == "Follower"


def test_without_pre_vote_a_rejoining_node_disrupts_the_leader() -> None:
    config = attrs.evolve(CONFIG, pre_vote=False)
    cluster = bootstrap(config=config)
    term = cluster[1].term
    cluster.cut = {3}
    cluster.run(3000)
    assert cluster[3].term > term + 2
    cluster.cut = set()
    cluster.run(2000)
    # The leader learned the inflated term and had to step down.
    assert cluster[1].term > term + 2


def test_check_quorum_steps_an_isolated_leader_down() -> None:
    cluster = bootstrap()
    cluster.cut = {1}
    cluster.tick(2 * CONFIG.election_timeout_min + 20, only=[1])
    assert cluster[1].state == "Follower"
    assert cluster[1].core.metrics().current_leader is None
    with pytest.raises(NotLeaderError, match="None, None"):
        cluster[1].core.propose(put("a", "1"), ts=0)


def test_without_check_quorum_an_isolated_leader_stays() -> None:
    cluster = bootstrap(config=attrs.evolve(CONFIG, check_quorum=False))
    cluster.cut = {1}
    cluster.tick(3000, only=[1])
    assert cluster[1].state == "Leader"


def test_a_follower_in_its_lease_ignores_vote_requests() -> None:
    cluster = bootstrap()
    cluster.queue.clear()
    cluster.deliver(VoteRequest(9, 3, 2, LogId(9, 3, 100)))
    assert cluster[2].term == 1  # ignored: the leader was heard from recently
    assert cluster.queue == []


def test_a_stale_leader_append_is_rejected_and_it_steps_down() -> None:
    cluster = bootstrap()
    cluster.cut = {1}
    cluster.run(2000)  # 2 or 3 takes over in a later term
    (new_leader,) = [i for i in cluster.leaders() if i != 1]
    new_term = cluster[new_leader].term
    follower = ({2, 3} - {new_leader}).pop()
    stale = AppendEntriesRequest(1, 1, follower, LogId(1, 1, 2), (Entry(LogId(1, 1, 3), put("x", "1"), 0),), 2)
    before = cluster[follower].log_ids()
    cluster[follower].core.receive(stale)
    (reply,) = cluster[follower].process()
    assert cluster[follower].log_ids() == before
    assert reply == AppendEntriesResponse(new_term, follower, 1, False, 0)
    cluster[1].core.receive(reply)
    assert cluster[1].state == "Follower" and cluster[1].term == new_term


def crafted(term: int, entries: list[tuple[int, int, dict | None]], voted_for: int | None = None) -> DurableState:
    """A durable state with entries given as (term, index, payload)."""
    members = Membership([{1, 2, 3}], {1: "n1", 2: "n2", 3: "n3"}, cluster_id="crafted")
    log = [Entry(LogId(0, 1, 1), members)]
    for t, i, payload in entries:
        log.append(Entry(LogId(t, t % 3 + 1, i), payload, 0 if payload else None))
    return DurableState(hard_state=HardState(term, voted_for), entries=tuple(log))


def test_log_conflict_truncates_the_follower_suffix_durably() -> None:
    follower = Node(2, state=crafted(2, [(1, 2, None), (2, 3, put("a", "lost")), (2, 4, put("b", "lost"))]))
    assert follower.log_ids() == [(0, 1), (1, 2), (2, 3), (2, 4)]
    winner = Entry(LogId(3, 1, 3), put("a", "kept"), 5)
    follower.core.receive(AppendEntriesRequest(3, 1, 2, LogId(1, 2, 2), (winner,), 2))
    out = follower.process()
    assert out == [AppendEntriesResponse(3, 2, 1, True, 3)]
    assert follower.log_ids() == [(0, 1), (1, 2), (3, 3)]
    assert follower.commit == 2
    reopened = Node(2, disk=follower.disk)
    assert reopened.log_ids() == [(0, 1), (1, 2), (3, 3)]
    assert reopened.core.metrics().current_term == 3


def test_a_crash_mid_save_never_leaves_a_commit_point_over_a_stale_entry() -> None:
    # Found by the simulator (seed 107): a follower holds uncommitted term-1
    # entries 3 and 4; the term-2 leader's first append cuts them and commits
    # its own 3 and 4. That ready rewrites the meta file (the term changed)
    # before the log is cut and appended. A crash between the two left a meta
    # file whose commit point named 2-1-3 over a log still holding 1-2-3,
    # and the restarted node applied the stale entry. Every crash point must
    # leave a commit point over the leader's entries only.
    stale = [(1, 2, None), (1, 3, put("a", "stale")), (1, 4, put("b", "stale"))]
    new = (Entry(LogId(2, 1, 3), None), Entry(LogId(2, 1, 4), put("a", "kept"), 5))
    leader_log = {1: LogId(0, 1, 1), 2: LogId(1, 2, 2), 3: new[0].log_id, 4: new[1].log_id}
    crashed_between = False
    for boundary in range(1, 10):
        follower = Node(3, state=crafted(1, stale))
        follower.core.receive(Heartbeat(1, 2, 3, 2, 0))
        follower.process()
        assert follower.commit == 2
        follower.core.receive(AppendEntriesRequest(2, 1, 3, LogId(1, 2, 2), new, 4))
        ready = follower.core.ready()
        assert ready.persist.truncate_from == 3 and ready.persist.hard_state is not None
        follower.disk.crash_at_sync = follower.disk.syncs + boundary
        try:
            follower.storage.save(ready.persist)
        except DiskCrashed:
            pass
        else:
            break
        restarted = Node(3, disk=follower.disk)
        log = {e.index: e.log_id for e in restarted.core.entries()}
        crashed_between = crashed_between or (restarted.term == 2 and log[3] == LogId(1, 2, 3))
        assert all(log[i] == leader_log[i] for i in range(1, restarted.commit + 1))
        restarted.process()
        assert all(leader_log[e.index] == e.log_id for e in restarted.applied_entries)
    assert crashed_between  # the crash point of the bug was reached


def test_a_commit_point_saved_over_a_stale_entry_is_ignored_on_restart() -> None:
    # Meta files of versions before the fix above may name a commit point
    # that the log does not hold (a crash cut the save short): the restarted
    # node must not apply the stale entry the log holds there.
    disk = CrashingDisk()
    storage = RaftStorage(disk)
    state = crafted(2, [(1, 2, None), (1, 3, put("a", "stale"))])
    storage.save(PersistBatch(hard_state=state.hard_state, entries=state.entries, committed=LogId(2, 1, 3)))
    restarted = Node(3, disk=disk)
    assert restarted.commit == 0
    ready = restarted.core.ready()
    assert ready.committed_entries == ()
    (event,) = [e for e in ready.events if "ignores the commit point" in e.text]
    assert event.fields["committed"] == "T2-N1-3" and event.fields["held"] == "T1-N2-3"
    # A commit point the log does hold is kept.
    disk = CrashingDisk()
    RaftStorage(disk).save(PersistBatch(hard_state=state.hard_state, entries=state.entries, committed=LogId(1, 2, 2)))
    assert Node(3, disk=disk).commit == 2


def test_append_with_a_mismatched_prev_is_rejected_with_a_hint() -> None:
    follower = Node(2, state=crafted(2, [(1, 2, None), (2, 3, None), (2, 4, None)]))
    follower.core.receive(AppendEntriesRequest(3, 1, 2, LogId(3, 1, 6), (), 1))
    (reply,) = follower.process()
    assert reply == AppendEntriesResponse(3, 2, 1, False, 6, hint_index=4, hint_term=2)
    follower.core.receive(AppendEntriesRequest(3, 1, 2, LogId(3, 1, 4), (), 1))
    (reply,) = follower.process()
    # Entries of terms above 3's predecessor cannot match: skip back past them.
    assert reply.success is False and reply.hint_index == 4 and reply.hint_term == 2


def test_only_current_term_entries_commit_by_counting() -> None:
    # Raft figure 8: leader 1 of term 3 holds an entry of term 2 that no one
    # else has. Replicating it to a majority must not commit it; only the
    # term-3 blank entry after it, once on a majority, commits both.
    config = attrs.evolve(CONFIG, max_payload_entries=1)
    cluster = Cluster(config=config)
    cluster.nodes[1] = Node(1, config, state=crafted(2, [(2, 2, put("x", "t2"))], voted_for=1))
    cluster.nodes[2] = Node(2, config, state=crafted(2, []))
    cluster.nodes[3] = Node(3, config, state=crafted(2, []))
    cluster.tick(CONFIG.election_timeout_max, only=[1])
    leader = cluster[1]
    saw_prior_term_on_majority = False
    for _ in range(1000):
        if not cluster.queue:
            break
        cluster.deliver(cluster.queue.pop(0))
        replication = leader.core.metrics().replication
        if sum(m >= 2 for m in replication.values()) >= 1 and min(replication.values()) < 3:
            saw_prior_term_on_majority = saw_prior_term_on_majority or leader.commit < 3
        assert leader.commit != 2, "a term-2 entry was committed by counting replicas"
    assert leader.term == 3 and leader.log_ids() == [(0, 1), (2, 2), (3, 3)]
    assert saw_prior_term_on_majority
    assert leader.commit == 3
    cluster.run(200)
    assert [e.index for e in cluster[2].applied_entries] == [1, 2, 3]


def add_node(cluster: Cluster, node_id: int) -> None:
    cluster.nodes[node_id] = Node(node_id, cluster.config, now=cluster.now)


def test_learner_gets_the_log_but_neither_votes_nor_counts() -> None:
    cluster = bootstrap()
    add_node(cluster, 4)
    log_id = cluster[1].core.add_learner(4, "n4")
    cluster.run(300)
    assert cluster[4].state == "Learner"
    assert cluster[4].core.metrics().last_log_index == cluster[1].core.metrics().last_log_index
    assert cluster[1].core.membership.log_id == log_id
    assert cluster[1].core.membership.membership.learners == {4}
    # Two voters down: leader plus learner are no quorum.
    cluster.cut = {2, 3}
    commit = cluster[1].commit
    cluster[1].core.propose(put("a", "1"), ts=0)
    cluster.run(200)
    assert cluster[1].commit == commit
    # The learner never campaigns and is never asked for a vote.
    cluster.cut = {1}
    cluster.queue.clear()
    cluster.tick(3000, only=[2, 3, 4])
    votes = [m for m in cluster.queue if isinstance(m, VoteRequest)]
    assert votes and all(m.dst != 4 and m.src != 4 for m in votes)
    assert cluster[4].state == "Learner"


def test_joint_membership_change_needs_both_majorities() -> None:
    cluster = bootstrap()
    for i in (4, 5):
        add_node(cluster, i)
        cluster[1].core.add_learner(i, f"n{i}")
        cluster.run(200)
    with pytest.raises(RaftError, match="not a learner"):
        cluster[1].core.change_membership({1, 2, 6})
    joint = cluster[1].core.change_membership({1, 4, 5})
    assert cluster[1].core.membership.membership.configs == ({1, 2, 3}, {1, 4, 5})
    with pytest.raises(RaftError, match="membership change is in progress"):
        cluster[1].core.add_learner(6, "n6")
    # Old majority {1,2,3} alone cannot commit the joint entry: the new set is cut.
    cluster.cut = {4, 5}
    cluster.run(300)
    assert cluster[1].commit < joint.index
    cluster.cut = set()
    cluster.run(500)
    final = cluster[1].core.membership
    assert final.log_id.index == joint.index + 1  # the leader appended the uniform config
    assert final.membership.configs == ({1, 4, 5},)
    assert set(final.membership.nodes) == {1, 4, 5}  # removed voters are dropped
    assert cluster[1].commit >= final.log_id.index
    log_id = cluster[1].core.propose(put("a", "1"), ts=0)
    cluster.cut = {2, 3}
    cluster.run(200)
    assert cluster[4].sm.data == {"a": "1"} and cluster[4].sm.applied == log_id


def test_membership_change_waits_for_the_leaders_first_commit() -> None:
    cluster = bootstrap()
    cluster.cut = {1}
    cluster.run(2000)
    (leader,) = [i for i in cluster.leaders() if i != 1]
    cluster.cut = set()
    # A fresh leader whose blank entry is not committed yet refuses changes.
    cluster.nodes[leader].core._commit = 0  # noqa: SLF001 - force the window open
    with pytest.raises(RaftError, match="not committed an entry of its term"):
        cluster[leader].core.add_learner(4, "n4")


def test_removing_the_leader_hands_leadership_over() -> None:
    cluster = bootstrap()
    add_node(cluster, 4)
    cluster[1].core.add_learner(4, "n4")
    cluster.run(200)
    cluster[1].core.change_membership({2, 3, 4})
    cluster.run(1000)
    leaders = cluster.leaders()
    assert len(leaders) == 1 and leaders[0] in {2, 3, 4}
    assert cluster[1].state == "Learner"
    new = cluster[leaders[0]]
    assert set(new.core.membership.membership.nodes) == {2, 3, 4}
    new.core.propose(put("after", "1"), ts=0)
    cluster.run(200)
    assert all(cluster[i].sm.data.get("after") == "1" for i in (2, 3, 4))


def test_leadership_transfer() -> None:
    cluster = bootstrap()
    term = cluster[1].term
    cluster[1].core.propose(put("a", "1"), ts=0)
    cluster[1].core.transfer_leadership(3)
    with pytest.raises(RaftError, match="transfer in progress"):
        cluster[1].core.propose(put("a", "2"), ts=0)
    cluster.flush()
    # Node 3 gets the new entry first, then the order to campaign.
    sent = []
    while cluster.queue:
        msg = cluster.queue.pop(0)
        sent.append(type(msg).__name__)
        cluster.deliver(msg)
    assert "TimeoutNow" in sent
    assert cluster.leaders() == [3]
    assert cluster[3].term == term + 1
    with pytest.raises(RaftError, match="not a voter"):
        cluster[3].core.transfer_leadership(7)


def test_transfer_to_an_unreachable_node_times_out() -> None:
    cluster = bootstrap()
    cluster.cut = {3}
    cluster[1].core.transfer_leadership(3)
    cluster.run(CONFIG.election_timeout_min + 100)
    assert cluster.leaders() == [1]
    cluster[1].core.propose(put("a", "1"), ts=0)  # accepted again


def test_timeout_now_skips_pre_vote_and_the_lease() -> None:
    cluster = bootstrap()
    cluster.queue.clear()
    cluster.deliver(TimeoutNow(1, 1, 2))
    votes = [m for m in cluster.queue if isinstance(m, VoteRequest)]
    assert votes and all(m.transfer and not m.pre_vote and m.term == 2 for m in votes)


def test_snapshot_compaction_and_install_replace_the_log() -> None:
    config = attrs.evolve(CONFIG, snapshot_threshold=20, keep_after_snapshot=5, snapshot_chunk_size=8)
    cluster = bootstrap(config=config)
    cluster.cut = {3}
    for i in range(30):
        cluster[1].core.propose(put(f"k{i % 4}", str(i)), ts=0)
        cluster.run(20)
    leader = cluster[1].core.metrics()
    assert leader.snapshot is not None and leader.last_purged is not None
    assert leader.last_purged.index == leader.snapshot.index - 5
    assert cluster[1].core.entries()[0].index == leader.last_purged.index + 1
    cluster.cut = set()
    cluster.queue.clear()
    cluster.tick(CONFIG.heartbeat_interval)
    chunks = []
    for _ in range(2000):
        if not cluster.queue:
            break
        msg = cluster.queue.pop(0)
        if isinstance(msg, InstallSnapshotRequest):
            chunks.append((msg.offset, len(msg.data), msg.done))
        cluster.deliver(msg)
    cluster.run(300)
    assert len(chunks) > 1 and chunks[-1][2] and chunks[0][0] == 0
    follower = cluster[3]
    assert follower.sm.data == cluster[1].sm.data
    assert follower.core.metrics().snapshot == leader.snapshot or follower.core.snapshot is not None
    assert follower.core.entries()[0].index > 1
    reopened = Node(3, config, disk=follower.disk)
    assert reopened.core.snapshot is not None
    assert reopened.core.snapshot.data == follower.core.snapshot.data
    assert reopened.log_ids() == follower.log_ids()


def test_read_index_on_the_leader_needs_a_quorum_round() -> None:
    cluster = bootstrap()
    leader = cluster[1]
    request = leader.core.read_index()
    cluster.flush()
    beats = cluster.take(lambda m: isinstance(m, Heartbeat))
    assert sorted(b.dst for b in beats) == [2, 3]
    assert request not in leader.read_states
    cluster.deliver(beats[0])
    cluster.stabilize()
    assert leader.read_states == [request]  # one follower plus the leader: a quorum


def test_read_index_fails_when_the_leader_cannot_confirm() -> None:
    cluster = bootstrap()
    cluster.cut = {1}
    request = cluster[1].core.read_index()
    cluster.tick(2 * CONFIG.election_timeout_min + 20, only=[1])
    assert request not in cluster[1].read_states
    assert request in cluster[1].failed_reads


def test_read_index_from_a_follower_waits_for_apply() -> None:
    cluster = bootstrap()
    log_id = cluster[1].core.propose(put("a", "1"), ts=0)
    cluster.flush()
    to_follower = cluster.take(lambda m: m.dst == 2)
    request = cluster[2].core.read_index()
    cluster.flush(2)
    (ask,) = cluster.take(lambda m: isinstance(m, ReadIndexRequest))
    cluster.stabilize(drop=lambda m: m.dst == 2)  # 3 makes the write committed
    cluster.deliver(ask)
    cluster.stabilize(drop=lambda m: m.dst == 2 and not hasattr(m, "read_index"))
    # The leader answered with an index the follower has not applied yet.
    assert request not in cluster[2].read_states
    for msg in to_follower:
        cluster.deliver(msg)
    cluster.run(200)
    assert request in cluster[2].read_states
    assert cluster[2].sm.applied.index >= log_id.index


def test_read_index_without_a_leader_fails_at_once() -> None:
    node = Node(1)
    request = node.core.read_index()
    node.process()
    assert node.failed_reads == [request]


def test_restart_keeps_term_vote_log_and_membership() -> None:
    cluster = bootstrap()
    for i in range(3):
        cluster[1].core.propose(put("a", str(i)), ts=0)
    cluster.run(200)
    before = cluster[2].core.metrics()
    cluster[2].disk.crash()
    restarted = Node(2, disk=cluster[2].disk)
    after = restarted.core.metrics()
    assert after.current_term == before.current_term
    assert after.last_log_index == before.last_log_index
    assert after.membership == before.membership
    assert after.state == "Follower"
    hard_state = restarted.storage.load().hard_state
    assert (hard_state.term, hard_state.voted_for) == (1, 1)
    # The identity survives the restart too.
    assert (hard_state.incarnation, hard_state.cluster_id) == (before.incarnation, before.cluster_id)
    assert before.incarnation and before.cluster_id


def test_metrics_of_a_leader() -> None:
    cluster = bootstrap()
    metrics = cluster[1].core.metrics()
    assert metrics.id == 1
    assert metrics.membership.membership.debug_text() == (
        'Membership { configs: [{1, 2, 3}], nodes: {1: BasicNode { addr: "n1" }, '
        '2: BasicNode { addr: "n2" }, 3: BasicNode { addr: "n3" }} }'
    )
    assert metrics.last_applied.display() == "T1-N1-2"
    upstream = metrics.upstream_json()
    assert list(upstream) == [
        "id", "state", "current_term", "last_log_index", "last_applied", "current_leader", "membership_config",
    ]
    assert upstream["state"] == "Leader" and upstream["last_applied"] == "T1-N1-2"
    assert upstream["membership_config"].startswith("StoredMembership { log_id: Some(T0-N1-1), ")
    follower = cluster[2].core.metrics().upstream_json()
    assert (follower["state"], follower["current_leader"]) == ("Follower", 1)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        RaftConfig(heartbeat_interval=2000)
    with pytest.raises(ValueError, match="election_timeout_max"):
        RaftConfig(election_timeout_min=1000, election_timeout_max=1000)
    with pytest.raises(ValueError, match="positive"):
        RaftConfig(max_inflight=0)


def test_ready_protocol_is_enforced() -> None:
    core = RaftCore(1, config=CONFIG, rng=random.Random(1), state=DurableState(), now=0)
    with pytest.raises(RuntimeError, match="no ready"):
        core.ready()
    core.initialize({1: "n1"})
    ready = core.ready()
    assert not core.has_ready()
    with pytest.raises(RuntimeError, match="in flight"):
        core.advance(attrs.evolve(ready))
    core.advance(ready)


def test_shutdown_ignores_inputs() -> None:
    cluster = bootstrap()
    cluster[2].core.shutdown()
    cluster[2].core.receive(Heartbeat(1, 1, 2, 2, 0))
    cluster[2].core.tick(10_000)
    assert not cluster[2].core.has_ready()
    assert cluster[2].state == "Shutdown"


def test_the_core_imports_no_reactor_clock_or_global_randomness() -> None:
    import subprocess
    import sys

    code = (
        "import sys, oxidb.raft.core, oxidb.raft.messages;"
        "print(sorted(m for m in sys.modules if m.startswith('twisted.internet')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    import inspect

    import oxidb.raft.core as core

    source = inspect.getsource(core)
    assert "import time" not in source and "random.random(" not in source


def test_committed_entries_taken_outside_a_ready_are_not_handed_out_again() -> None:
    members = Membership([{1}], {1: "n1"}, cluster_id="c")
    snapshot = Snapshot(SnapshotMeta(LogId(1, 1, 5), StoredMembership(LogId(0, 1, 1), members), "s"), b"state")
    state = DurableState(
        hard_state=HardState(1, 1),
        committed=LogId(1, 1, 7),
        last_purged=LogId(1, 1, 5),
        snapshot=snapshot,
        entries=tuple(Entry(LogId(1, 1, i), put("k", str(i)), 0) for i in (6, 7)),
    )
    # The state machine is behind the snapshot: it must be installed first,
    # in a ready, so nothing is taken before.
    behind = RaftCore(1, config=CONFIG, rng=random.Random(1), state=state, now=0, applied=None)
    assert behind.take_committed() == ()
    ready = behind.ready()
    assert ready.apply_snapshot == snapshot
    assert [e.index for e in ready.committed_entries] == [6, 7]
    # At the snapshot already: the committed entries may be taken at once,
    # also while a ready is in flight, and no ready carries them again.
    caught_up = RaftCore(1, config=CONFIG, rng=random.Random(1), state=state, now=0, applied=LogId(1, 1, 5))
    in_flight = caught_up.ready()
    assert in_flight.apply_snapshot is None
    assert [e.index for e in in_flight.committed_entries] == [6, 7]
    assert caught_up.take_committed() == ()
    caught_up.advance(in_flight)
    again = RaftCore(1, config=CONFIG, rng=random.Random(1), state=state, now=0, applied=LogId(1, 1, 5))
    assert again.has_ready()  # only for the entries to apply
    assert [e.index for e in again.take_committed()] == [6, 7]
    assert again.take_committed() == ()
    assert not again.has_ready()
