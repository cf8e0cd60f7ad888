"""
Event-list tests of the core's identity and safety rules: incarnations pinned
in the membership, refusal of a wiped disk, cluster ids, and the fatal stop
on a contradiction of committed entries.
"""

from __future__ import annotations

import pytest
from raft_harness import Cluster, Node, bootstrap

from oxidb.raft.core import SafetyViolationError
from oxidb.raft.messages import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    Entry,
    HardState,
    LogId,
    Membership,
    Refused,
    VoteRequest,
)
from oxidb.raft.storage import DurableState


def put(key: str, value: str) -> dict:
    return {"Put": {"key": key, "value": value}}


def formed(ids: tuple[int, ...] = (1, 2, 3), seed: int | None = None) -> Cluster:
    """Upstream's flow: raft_init on node 1, add the others as learners, make them voters."""
    cluster = Cluster(ids)
    if seed is not None:
        cluster.nodes = {i: Node(i, seed=seed + i) for i in ids}
    cluster[1].core.initialize({1: "n1"})
    cluster.flush()
    cluster.run(100)
    assert cluster.leaders() == [1]
    for i in ids[1:]:
        cluster[1].core.add_learner(i, f"n{i}")
        cluster.run(200)
    cluster[1].core.change_membership(set(ids))
    cluster.run(300)
    return cluster


def events(node: Node) -> list[str]:
    """The events a node's readies carried since the last call (rendered)."""
    out = []
    while node.core.has_ready():
        ready = node.core.ready()
        out += [e.text.format(**e.fields) for e in ready.events]
        node.storage.save(ready.persist)
        node.core.advance(ready)
    return out


def test_raft_init_leads_at_the_next_tick_and_pins_itself() -> None:
    node = Node(1)
    node.core.initialize({1: "n1"})
    node.process()
    node.core.tick(1)
    ready_events = events(node)
    assert node.state == "Leader"
    assert "raft: node 1 became leader (term 1)" in ready_events
    metrics = node.core.metrics()
    membership = metrics.membership.membership
    assert membership.incarnations == {1: metrics.incarnation}
    assert membership.cluster_id == metrics.cluster_id and metrics.cluster_id
    # Both are durable in raft_meta.json.
    hard = node.storage.load().hard_state
    assert (hard.incarnation, hard.cluster_id) == (metrics.incarnation, metrics.cluster_id)


def test_the_upstream_flow_pins_every_voters_incarnation() -> None:
    cluster = formed()
    membership = cluster[1].core.membership.membership
    assert membership.voters == {1, 2, 3}
    assert membership.incarnations == {i: cluster[i].core.metrics().incarnation for i in (1, 2, 3)}
    assert len(set(membership.incarnations.values())) == 3
    assert {cluster[i].core.metrics().cluster_id for i in (1, 2, 3)} == {membership.cluster_id}


def test_change_membership_needs_the_new_voters_incarnation() -> None:
    cluster = formed((1, 2))
    cluster.nodes[3] = Node(3, now=cluster.now)
    cluster.cut = {3}
    cluster[1].core.add_learner(3, "n3")
    cluster.run(200)
    with pytest.raises(Exception, match="node 3 has not answered the leader yet"):
        cluster[1].core.change_membership({1, 2, 3})


def wipe(cluster: Cluster, node_id: int) -> None:
    """The node's disk is wiped; it restarts empty under its old id (a new incarnation)."""
    cluster.nodes[node_id] = Node(node_id, now=cluster.now, seed=1000 + node_id)
    assert cluster[node_id].core.metrics().last_log_index is None


def data(node: Node) -> dict:
    return dict(node.sm.data)


def test_a_wiped_voter_neither_votes_nor_counts_until_re_added() -> None:
    # The scenario: node 2 down; writes acknowledged by 1 and 3;
    # node 3 wiped; node 1 down; node 2 back.
    cluster = formed()
    cluster.cut = {2}
    for i in range(20):
        cluster[1].core.propose(put(f"k{i}", "v"), ts=0)
    cluster.run(300)
    acked = cluster[1].commit
    assert cluster[3].commit == acked and cluster[2].commit < acked
    wipe(cluster, 3)
    old_incarnation = cluster[1].core.membership.membership.incarnations[3]
    assert cluster[3].core.metrics().incarnation != old_incarnation
    cluster.run(1000)
    # The leader refuses the wiped node's answers and tells it why: with only
    # itself counting, it loses its quorum and steps down.
    refused = cluster[1].core.metrics().refused
    assert "answers as data-directory incarnation" in refused[3]
    refused_by = cluster[3].core.metrics().refused_by
    assert refused_by is not None and refused_by[0] == 1 and "remove" in refused_by[1]
    assert cluster[1].commit == acked
    # Node 1 goes down, node 2 comes back: 2 lacks the acknowledged writes
    # and the wiped node's vote does not count, so nobody is elected.
    cluster.cut = {1}
    cluster.run(4000)
    assert cluster.leaders() == []
    assert cluster[3].core.metrics().last_log_index is None
    # Node 1 returns: it leads with node 2, and nothing acknowledged is lost.
    cluster.cut = set()
    cluster.run(4000)
    assert cluster.leaders() == [1]
    assert all(data(cluster[2]).get(f"k{i}") == "v" for i in range(20))
    assert cluster[3].core.metrics().last_log_index is None  # still refused: not replicated to
    # The operator step: remove node 3 and add it again.
    cluster[1].core.remove_node(3)
    cluster.run(500)
    assert set(cluster[1].core.membership.membership.nodes) == {1, 2}
    cluster[1].core.add_learner(3, "n3")
    cluster.run(500)
    cluster[1].core.change_membership({1, 2, 3})
    cluster.run(500)
    membership = cluster[1].core.membership.membership
    assert membership.voters == {1, 2, 3}
    assert membership.incarnations[3] == cluster[3].core.metrics().incarnation != old_incarnation
    assert cluster[1].core.metrics().refused == {}
    assert data(cluster[3]) == data(cluster[1]) == data(cluster[2])


def test_a_voter_refuses_a_candidate_whose_incarnation_differs() -> None:
    cluster = formed()
    term = cluster[2].term
    cluster[2].core.tick(cluster.now + 10_000)  # out of the leader's lease
    cluster[2].core.receive(
        VoteRequest(term + 5, 3, 2, LogId(term + 4, 3, 99), incarnation="someone-else")
    )
    out = cluster[2].process()
    refusals = [m for m in out if isinstance(m, Refused)]
    assert refusals and refusals[0].dst == 3 and "someone-else" in refusals[0].reason
    assert not any(getattr(m, "granted", False) for m in out)


def test_a_node_never_joins_another_cluster() -> None:
    cluster = formed((1, 2))
    other = formed((1, 2), seed=500)
    assert other[1].core.metrics().cluster_id != cluster[1].core.metrics().cluster_id
    before = cluster[2].core.metrics()
    # The other cluster's leader (also "node 1") reaches node 2.
    other[1].core.propose(put("x", "y"), ts=0)
    other.flush()
    foreign = [m for m in other.queue if m.dst == 2]
    assert foreign
    for msg in foreign:
        cluster[2].core.receive(msg)
    out = cluster[2].process()
    assert [type(m) for m in out] == [Refused] * len(foreign)
    assert "belongs to cluster" in out[0].reason
    after = cluster[2].core.metrics()
    assert (after.last_log_index, after.current_term) == (before.last_log_index, before.current_term)


def test_a_follower_stops_rather_than_contradict_a_committed_entry() -> None:
    cluster = bootstrap()
    for i in range(3):
        cluster[1].core.propose(put("a", str(i)), ts=0)
    cluster.run(300)
    follower = cluster[2]
    commit = follower.commit
    # A leader of a later term (one that lacks the entry: the bug of the
    # issue) sends another entry at the committed index.
    term = follower.term + 1
    rewritten = Entry(LogId(term, 3, commit), put("a", "other"), 0)
    prev = follower.core.entries()[commit - 2].log_id
    with pytest.raises(SafetyViolationError, match=rf"node 2 \(term {term}, index {commit}\)"):
        follower.core.receive(AppendEntriesRequest(term, 3, 2, prev, (rewritten,), commit))
    assert follower.state == "Shutdown"


def test_a_follower_checks_the_prev_entry_below_its_commit() -> None:
    cluster = bootstrap()
    cluster[1].core.propose(put("a", "1"), ts=0)
    cluster.run(300)
    follower = cluster[2]
    term = follower.term
    with pytest.raises(SafetyViolationError, match="committed T"):
        follower.core.receive(AppendEntriesRequest(term, 1, 2, LogId(term + 7, 1, 2), (), follower.commit))


def test_a_follower_acknowledges_only_what_it_checked() -> None:
    # The old shortcut answered "matched up to my commit" for any append
    # below the commit point, without looking at the entries.
    cluster = bootstrap()
    for i in range(5):
        cluster[1].core.propose(put("a", str(i)), ts=0)
    cluster.run(300)
    follower = cluster[2]
    entries = tuple(follower.core.entries()[1:3])
    follower.core.receive(
        AppendEntriesRequest(follower.term, 1, 2, follower.core.entries()[0].log_id, entries, follower.commit)
    )
    (reply,) = follower.process()
    assert isinstance(reply, AppendEntriesResponse) and reply.success
    assert reply.index == entries[-1].index < follower.commit
    assert reply.commit_id == follower.core.entries()[follower.commit - 1].log_id


def test_a_leader_stops_when_a_follower_committed_what_it_lacks() -> None:
    cluster = bootstrap()
    leader = cluster[1]
    last = leader.core.metrics().last_log_index
    ahead = LogId(leader.term, 1, last + 5)
    with pytest.raises(
        SafetyViolationError, match=rf"node 1 \(term {leader.term}, index {last + 5}\).*lacks committed"
    ):
        leader.core.receive(AppendEntriesResponse(leader.term, 2, 1, True, last, commit_id=ahead))


def test_a_leader_stops_when_a_follower_committed_something_else() -> None:
    cluster = bootstrap()
    leader = cluster[1]
    other = LogId(leader.term + 3, 2, 2)
    with pytest.raises(SafetyViolationError, match="node 2 has committed T"):
        leader.core.receive(AppendEntriesResponse(leader.term, 2, 1, True, 2, commit_id=other))


def test_raft_state_of_an_earlier_version_gets_identities_pinned_once() -> None:
    # Memberships without incarnations or cluster id (written before they
    # existed): the first leader pins what each member answers with.
    members = Membership([{1, 2, 3}], {1: "n1", 2: "n2", 3: "n3"})
    state = DurableState(hard_state=HardState(1, 1), entries=(Entry(LogId(0, 1, 1), members),))
    cluster = Cluster()
    for i in (1, 2, 3):
        cluster.nodes[i] = Node(i, state=state)
    cluster.elect(1)
    cluster.run(1000)
    membership = cluster[1].core.membership.membership
    assert membership.cluster_id is not None
    assert membership.incarnations == {i: cluster[i].core.metrics().incarnation for i in (1, 2, 3)}
    assert {cluster[i].core.metrics().cluster_id for i in (1, 2, 3)} == {membership.cluster_id}
