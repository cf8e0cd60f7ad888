"""
The Raft driver with the real core and storage on a MemoryReactorClock:
bootstrap, writes and their results, forwarding, waiting for a leader,
linearizable reads, lost proposals, restarts without double applies,
snapshots, fatal storage errors, and peers that fail authentication.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from raft_node_harness import FAST, DictStateMachine, FailingDisk, Harness, slow_io, sync_io
from raft_wire import MemoryWire
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from oxidb.errors import ConfigError, LeaderError, NotLeaderError, RaftError, TooLargeError, UnavailableError
from oxidb.raft.auth import ClusterKeyAuthenticator
from oxidb.raft.core import RaftConfig
from oxidb.raft.messages import Entry, LogId, VoteRequest, encode_message
from oxidb.raft.node import RaftNode
from oxidb.raft.service import applied_log_id
from oxidb.raft.storage import DurableState, RaftStorage
from oxidb.raft.transport import PeerTransport
from oxidb.wire.framing import MAX_FRAME


def set_op(k: str, v: Any) -> dict[str, Any]:
    return {"Set": {"k": k, "v": v}}


def three_nodes(**kwargs: Any) -> Harness:
    h = Harness([1, 2, 3], **kwargs)
    h.bootstrap([1, 2, 3])
    return h


def test_a_single_node_initializes_leads_and_applies() -> None:
    h = Harness([1])
    node = h.nodes[1]
    assert node.metrics().state == "Learner" and node.metrics().current_leader is None
    log_id = h.result(node.initialize("n1"))
    assert log_id == LogId(0, 1, 1)
    h.run_until(lambda: node.is_leader)
    assert h.result(node.write(set_op("a", 1))) == {"set": "a"}
    assert h.sms[1].data == {"a": 1}
    with pytest.raises(RaftError, match="not allowed to initialize"):
        h.result(node.initialize("n1"))
    metrics = node.metrics().upstream_json()
    assert metrics["state"] == "Leader" and metrics["current_leader"] == 1
    status = node.status()
    assert status.is_leader and status.applied_index == status.commit_index == status.last_log_index


def test_upstream_bootstrap_sequence_and_replication() -> None:
    h = three_nodes()
    assert h.leaders() == [1]
    membership = h.nodes[1].metrics().membership
    assert membership is not None and membership.membership.configs == (frozenset({1, 2, 3}),)
    ids = [h.result(h.nodes[1].write({"Insert": {}}))["id"] for _ in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    h.run(0.5)
    for i in (1, 2, 3):
        assert h.sms[i].inserts == 5
    assert {h.nodes[i].metrics().state for i in (2, 3)} == {"Follower"}
    assert h.net.retained[1] == {2, 3}


def test_add_learner_waits_for_the_learner_to_catch_up() -> None:
    h = Harness([1, 2])
    h.result(h.nodes[1].initialize("n1"))
    h.run_until(lambda: h.nodes[1].is_leader)
    for n in range(20):
        h.result(h.nodes[1].write(set_op(f"k{n}", n)))
    log_id, membership = h.result(h.nodes[1].add_learner(2, "n2"))
    # It returned only once node 2 had the log up to the change.
    assert h.sms[2].data == h.sms[1].data and len(h.sms[2].data) == 20
    assert membership.membership.learners == {2}
    assert h.nodes[2].metrics().state == "Learner"
    assert log_id.index == membership.log_id.index


def test_membership_changes_wait_for_a_new_leader_to_commit_its_first_entry() -> None:
    h = Harness([1, 2])
    h.nodes[1].stop()
    h.start(1, run_io=slow_io(h.clock, 0.2))
    init = h.nodes[1].initialize("n1")
    # Sent at once: node 1 has neither elected itself nor made its blank
    # entry durable yet. The change waits for both instead of failing.
    added = h.nodes[1].add_learner(2, "n2")
    assert not h.nodes[1].is_leader
    h.result(init)
    log_id, _ = h.result(added)
    assert log_id.index == 3


def test_add_learner_gives_up_on_an_unreachable_node() -> None:
    h = Harness([1], catch_up_timeout=3.0)
    h.result(h.nodes[1].initialize("n1"))
    h.run_until(lambda: h.nodes[1].is_leader)
    with pytest.raises(RaftError, match="node 4 has not caught up within 3s; it keeps replicating"):
        h.result(h.nodes[1].add_learner(4, "n4"))


def test_management_commands_need_the_leader() -> None:
    h = three_nodes()
    with pytest.raises(NotLeaderError) as info:
        h.result(h.nodes[2].add_learner(4, "n4"))
    assert str(info.value) == 'raft error: has to forward request to: Some(1), Some(BasicNode { addr: "n1" })'
    with pytest.raises(RaftError, match="not a learner"):
        h.result(h.nodes[1].change_membership({1, 2, 3, 9}))


def test_change_membership_removes_a_voter_and_fires_after_the_final_config() -> None:
    h = three_nodes()
    log_id, stored = h.result(h.nodes[1].change_membership({1, 2}))
    assert stored.membership.configs == (frozenset({1, 2}),) and 3 not in stored.membership.nodes
    assert log_id == stored.log_id
    assert h.result(h.nodes[1].write(set_op("x", 1))) == {"set": "x"}
    # No change: answered at once with the current membership.
    assert h.result(h.nodes[1].change_membership({1, 2}))[0] == log_id


def test_a_follower_forwards_writes_to_the_leader() -> None:
    h = three_nodes()
    assert h.result(h.nodes[2].write({"Insert": {}})) == {"id": 1}
    assert h.result(h.nodes[3].write({"Insert": {}})) == {"id": 2}
    # The leader's error text comes back unchanged.
    with pytest.raises(LeaderError, match="failed on purpose"):
        h.result(h.nodes[3].write({"Fail": {}}))
    h.run(0.3)
    assert [h.sms[i].inserts for i in (1, 2, 3)] == [2, 2, 2]


def test_without_forwarding_a_follower_answers_upstreams_error() -> None:
    h = three_nodes(forward_writes=False)
    with pytest.raises(NotLeaderError) as info:
        h.result(h.nodes[2].write(set_op("a", 1)))
    assert str(info.value) == 'raft error: has to forward request to: Some(1), Some(BasicNode { addr: "n1" })'
    assert h.result(h.nodes[1].write(set_op("a", 1))) == {"set": "a"}


def test_without_a_leader_a_write_waits_then_fails_clearly() -> None:
    h = three_nodes()
    h.crash(1)
    h.crash(2)
    h.run_until(lambda: h.nodes[3].metrics().current_leader is None)
    # Node 3 alone cannot elect anyone; the write waits the bounded time.
    started = h.clock.seconds()
    with pytest.raises(RaftError) as info:
        h.result(h.nodes[3].write(set_op("a", 1)), timeout=20)
    assert str(info.value) == "raft error: no leader elected within 5s; retry"
    assert 5.0 <= h.clock.seconds() - started < 5.2


def test_a_write_forwarded_to_a_leader_that_dies_fails_fast() -> None:
    h = three_nodes()
    h.crash(1)
    started = h.clock.seconds()
    with pytest.raises(RaftError, match=r"leader \(node 1\) changed before it answered .* outcome is unknown"):
        h.result(h.nodes[2].write(set_op("a", 1)))
    assert h.clock.seconds() - started < 1.0  # an election timeout, not the write timeout


def test_a_forward_for_an_old_term_is_refused() -> None:
    h = three_nodes()
    request = {"type": "forward", "id": 7, "term": 0, "op": set_op("stale", 1)}
    answers: list[bytes] = []

    class Channel:
        def send(self, payload: bytes) -> None:
            answers.append(payload)

    h.nodes[1].frame_received(2, request, Channel())
    assert orjson.loads(answers[0]) == {
        "type": "forward_result", "id": 7, "ok": False, "error": "not the leader of that term", "redirect": True,
    }
    h.run(0.5)
    assert "stale" not in h.sms[1].data


def test_a_write_during_an_election_succeeds_once_a_leader_is_elected() -> None:
    h = three_nodes()
    h.crash(1)
    h.run_until(lambda: all(h.nodes[i].metrics().current_leader != 1 for i in (2, 3)))
    d = h.nodes[2].write(set_op("during", "election"))
    assert h.result(d) == {"set": "during"}
    assert h.leaders() in ([2], [3])


def test_a_write_without_quorum_times_out_with_an_unknown_outcome() -> None:
    h = three_nodes(write_timeout=2.0)
    h.net.isolate(1, [2, 3])
    d = h.nodes[1].propose(set_op("lonely", 1))
    with pytest.raises(RaftError, match="not committed within 2s; its outcome is unknown"):
        h.result(d)


def test_each_proposal_expires_at_its_own_deadline_and_settled_ones_leave_no_timer() -> None:
    h = three_nodes(write_timeout=2.0)
    leader = h.nodes[1]
    assert h.result(leader.write(set_op("ok", 1))) == {"set": "ok"}
    assert leader._expiry is None and not leader._deadlines
    h.net.isolate(1, [2, 3])
    first = leader.propose(set_op("a", 1))
    h.clock.advance(0.5)
    second = leader.propose(set_op("b", 2))
    failures: list[tuple[str, float]] = []
    for name, d in (("first", first), ("second", second)):
        d.addErrback(lambda f, name=name: failures.append((name, h.clock.seconds())))
    start = h.clock.seconds() - 0.5
    h.clock.advance(1.49)
    assert failures == []
    h.clock.advance(0.02)
    assert [name for name, _ in failures] == ["first"]
    h.clock.advance(0.49)
    assert [name for name, _ in failures] == ["first", "second"]
    assert failures[0][1] - start == pytest.approx(2.01) and failures[1][1] - start == pytest.approx(2.5)
    assert leader._expiry is None and not leader._proposals


def test_writes_made_in_one_reactor_turn_share_one_append_and_one_fsync() -> None:
    h = three_nodes()
    h.run(1)
    appends: list[dict[str, Any]] = []
    deliver = h.net.deliver_later

    def spy(src: int, dst: int, payload: bytes) -> None:
        frame = orjson.loads(payload)
        if frame.get("type") == "append_entries" and frame["entries"]:
            appends.append(frame)
        deliver(src, dst, payload)

    h.net.deliver_later = spy  # type: ignore[method-assign]
    syncs = h.disks[1].syncs
    writes = [h.nodes[1].write(set_op(f"k{n}", n)) for n in range(5)]
    assert appends == [] and h.disks[1].syncs == syncs  # nothing happens before the turn ends
    assert [h.result(d) for d in writes] == [{"set": f"k{n}"} for n in range(5)]
    assert sorted(frame["to"] for frame in appends) == [2, 3]
    assert all(len(frame["entries"]) == 5 for frame in appends)
    assert h.disks[1].syncs == syncs + 1


def test_an_entry_committed_during_a_persist_is_applied_without_waiting_for_it() -> None:
    h = three_nodes()
    h.run(1)
    # Slow disks from now on: the leader's fsync takes 0.2 s, the followers' 0.3 s.
    for i, delay in ((1, 0.2), (2, 0.3), (3, 0.3)):
        h.nodes[i]._run_io = slow_io(h.clock, delay)
    start = h.clock.seconds()
    first = h.nodes[1].write(set_op("first", 1))
    h.run(0.1)
    # Proposed while the leader persists the first: its own persist runs 0.2-0.4 s.
    second = h.nodes[1].write(set_op("second", 2))
    # The followers' answers commit the first at 0.3 s, in the middle of that
    # persist; it is applied then, not once the persist is over.
    h.run_until(lambda: first.called, timeout=0.38 - (h.clock.seconds() - start))
    assert h.result(first) == {"set": "first"}
    assert not second.called and h.sms[1].data == {"first": 1}
    assert h.nodes[1]._persisting is not None  # the second's batch is still being made durable
    assert h.result(second) == {"set": "second"}
    h.run(1)
    assert all(sm.data == {"first": 1, "second": 2} for sm in h.sms.values())
    assert h.fatal == {}


def test_a_proposal_overwritten_by_a_new_leader_is_lost() -> None:
    h = three_nodes(write_timeout=60.0)
    h.net.isolate(1, [2, 3])
    lost = h.nodes[1].propose(set_op("lost", 1))
    h.run_until(lambda: any(h.nodes[i].is_leader for i in (2, 3)), timeout=20)
    new_leader = h.leaders()[-1]
    for n in range(3):
        h.result(h.nodes[new_leader].write(set_op(f"new{n}", n)))
    h.net.heal()
    with pytest.raises(RaftError, match="lost in a leader change; retry"):
        h.result(lost, timeout=20)
    h.run(1)
    for i in (1, 2, 3):
        assert "lost" not in h.sms[i].data and h.sms[i].data["new2"] == 2


def test_a_linearizable_read_on_a_follower_sees_committed_writes() -> None:
    h = three_nodes()
    # Node 3 hears nothing for a while: it misses the commit.
    h.net.isolate(3, [1, 2])
    h.result(h.nodes[1].write(set_op("fresh", 1)))
    assert "fresh" not in h.sms[3].data
    h.net.heal()
    h.result(h.nodes[3].read_barrier())
    assert h.sms[3].data["fresh"] == 1


def test_a_linearizable_read_fails_without_a_leader() -> None:
    h = three_nodes()
    h.crash(1)
    h.crash(2)
    with pytest.raises(RaftError, match="linearizable read|no leader elected"):
        h.result(h.nodes[3].read_barrier(), timeout=20)


def test_a_restarted_node_rejoins_and_never_applies_twice() -> None:
    h = three_nodes()
    for n in range(10):
        h.result(h.nodes[1].write(set_op(f"k{n}", n)))
    h.run(0.5)
    before = list(h.sms[2].applied)
    h.crash(2)
    for n in range(10, 15):
        h.result(h.nodes[1].write(set_op(f"k{n}", n)))
    h.start(2)
    h.run_until(lambda: h.sms[2].data == h.sms[1].data)
    # The state machine saw every index once (DictStateMachine asserts it too).
    applied = h.sms[2].applied
    assert applied[: len(before)] == before and len(applied) == len(set(applied))
    assert h.nodes[2].metrics().state == "Follower" and h.nodes[2].metrics().current_leader == 1


def test_a_lagging_node_catches_up_through_a_snapshot() -> None:
    config = RaftConfig(
        heartbeat_interval=100, election_timeout_min=300, election_timeout_max=600,
        snapshot_threshold=10, keep_after_snapshot=2,
    )
    h = Harness([1, 2, 3], config=config)
    h.bootstrap([1, 2, 3])
    h.net.isolate(3, [1, 2])
    for n in range(40):
        h.result(h.nodes[1].write(set_op(f"k{n}", n)))
    h.run(0.5)
    metrics = h.nodes[1].metrics()
    assert metrics.snapshot is not None and metrics.last_purged is not None
    assert metrics.last_purged.index > h.sms[3].last  # node 3 cannot get entries any more
    h.net.heal()
    h.run_until(lambda: h.sms[3].data == h.sms[1].data)
    assert h.sms[3].installs == 1


def test_entries_after_a_slow_snapshot_install_wait_for_it() -> None:
    config = RaftConfig(
        heartbeat_interval=100, election_timeout_min=300, election_timeout_max=600,
        snapshot_threshold=10, keep_after_snapshot=2,
    )
    h = Harness([1, 2, 3], config=config)
    h.bootstrap([1, 2, 3])
    h.net.isolate(3, [1, 2])
    for n in range(30):
        h.result(h.nodes[1].write(set_op(f"k{n}", n)))
    sm = h.sms[3]
    events: list[tuple[str, int]] = []
    install, apply = sm.install_snapshot, sm.apply

    def slow_install(data: bytes) -> Any:
        later: Deferred[None] = Deferred()

        def done() -> None:
            install(data)
            events.append(("installed", sm.last))
            later.callback(None)

        h.clock.callLater(0.5, done)
        return later

    def recording_apply(entries: Any) -> Any:
        events.append(("apply", entries[0].index))
        return apply(entries)

    sm.install_snapshot = slow_install  # type: ignore[method-assign]
    sm.apply = recording_apply  # type: ignore[method-assign]
    h.net.heal()
    # Writes keep coming while node 3 installs.
    for n in range(30, 40):
        h.result(h.nodes[1].write(set_op(f"k{n}", n)))
    h.run_until(lambda: sm.data == h.sms[1].data)
    (at,) = [i for i, (kind, _) in enumerate(events) if kind == "installed"]
    snapshot_index = events[at][1]
    # Entries node 3 already held may be applied before the snapshot; every
    # entry after it waited for the install (none was applied meanwhile).
    assert all(index <= snapshot_index for _, index in events[:at])
    assert [kind for kind, _ in events[at + 1:]] and all(index > snapshot_index for _, index in events[at + 1:])


def test_a_storage_failure_stops_the_node() -> None:
    h = three_nodes()
    h.disks[1].broken = True
    with capturedLogs():
        d = h.nodes[1].write(set_op("a", 1))
        with pytest.raises(UnavailableError, match="raft node stopped after a storage failure"):
            h.result(d)
    assert isinstance(h.fatal[1].value, OSError)
    assert h.nodes[1].metrics().state == "Shutdown"
    with pytest.raises(UnavailableError):
        h.result(h.nodes[1].write(set_op("b", 1)))
    # The others elect a new leader and go on.
    h.run_until(lambda: any(h.nodes[i].is_leader for i in (2, 3)), timeout=20)


def test_a_slow_state_machine_does_not_hold_up_replication() -> None:
    h = three_nodes()
    sm = h.sms[1]
    fast_apply = sm.apply

    def slow_apply(entries: Any) -> Any:
        d = fast_apply(entries)
        later: Deferred[Any] = Deferred()
        h.clock.callLater(1.0, lambda: d.chainDeferred(later))
        return later

    sm.apply = slow_apply  # type: ignore[method-assign]
    first = h.nodes[1].write(set_op("first", 1))
    h.run(0.1)
    second = h.nodes[1].write(set_op("second", 2))
    h.run(0.1)
    # Both are durable and committed on a quorum while the first still applies.
    metrics = h.nodes[1].metrics()
    assert not first.called and not second.called
    assert metrics.commit_index == metrics.last_log_index and h.nodes[1]._durable_index == metrics.last_log_index
    # The followers learn the commit with the next heartbeat (at most one
    # interval later, whatever its phase), long before the first apply ends.
    h.run_until(lambda: h.sms[2].data == {"first": 1, "second": 2}, timeout=FAST.heartbeat_interval / 1000 + 0.05)
    assert not first.called and not second.called
    assert h.result(first) == {"set": "first"} and h.result(second) == {"set": "second"}


def test_an_oversize_operation_is_refused_before_proposing() -> None:
    h = Harness([1])
    h.result(h.nodes[1].initialize("n1"))
    h.run_until(lambda: h.nodes[1].is_leader)
    with pytest.raises(TooLargeError, match="exceeds the Raft frame limit"):
        h.result(h.nodes[1].write(set_op("big", "x" * MAX_FRAME)))


def test_a_peer_sending_for_another_node_is_refused() -> None:
    h = three_nodes()
    forged = VoteRequest(term=50, src=3, dst=1, last_log_id=None)
    from oxidb.raft.transport import PeerProtocolError

    with pytest.raises(PeerProtocolError):
        h.nodes[1].frame_received(2, orjson.loads(encode_message(forged)), channel=None)
    assert h.nodes[1].metrics().current_term == 1


def test_applied_log_id_finds_the_state_machines_position() -> None:
    entries = tuple(Entry(LogId(1, 1, i)) for i in range(5, 9))
    state = DurableState(entries=entries, last_purged=LogId(1, 1, 4))
    assert applied_log_id(state, 0) is None
    assert applied_log_id(state, 6) == LogId(1, 1, 6)
    assert applied_log_id(state, 3) is None  # purged: start again from the snapshot
    with pytest.raises(ConfigError, match="applied Raft index 12 but the Raft log ends at 8"):
        applied_log_id(state, 12)


# --- authentication between real transports ------------------------------------------


def test_a_peer_that_fails_authentication_changes_nothing() -> None:
    clock = MemoryReactorClock()
    wire = MemoryWire(clock)
    key = ClusterKeyAuthenticator(b"the cluster's real key")
    storage = RaftStorage(FailingDisk())
    node = RaftNode(
        2, clock=clock, config=FAST, storage=storage, state_machine=DictStateMachine(),
        rng=random.Random(2), run_io=sync_io,
    )
    transport = PeerTransport(
        2, clock=clock, authenticator=key, handler=node, address_of=lambda n: None,
        rng=random.Random(2), connector=wire.connector,
    )
    node.transport = transport
    transport.startService()
    wire.listen("10.0.0.2:4445", transport)
    node.start(storage.load(), None)

    class Attacker:
        frames: list[Any] = []

        def frame_received(self, peer: int, frame: Any, channel: Any) -> None:
            self.frames.append(frame)

    attacker = PeerTransport(
        1, clock=clock, authenticator=ClusterKeyAuthenticator(b"a guessed key"), handler=Attacker(),
        address_of=lambda n: "10.0.0.2:4445", rng=random.Random(1), connector=wire.connector,
    )
    attacker.startService()
    before = node.metrics()
    with capturedLogs():
        for term in (5, 50, 500):
            vote = VoteRequest(term=term, src=1, dst=2, last_log_id=LogId(term, 1, 1000))
            attacker.send(2, encode_message(vote))
            wire.flush()
            clock.advance(3)
            wire.flush()
    after = node.metrics()
    assert after.current_term == before.current_term == 0
    assert after.last_log_index is None and after.current_leader is None
    reloaded = RaftStorage(storage.disk).load()
    assert reloaded.hard_state.term == 0 and reloaded.hard_state.voted_for is None
    assert reloaded.entries == ()
    assert not transport.inbound
    assert Attacker.frames == []


def test_a_safety_violation_stops_the_node_with_the_node_term_and_index() -> None:
    from oxidb.raft.core import SafetyViolationError
    from oxidb.raft.messages import AppendEntriesRequest, message_to_json

    h = three_nodes()
    h.result(h.nodes[1].write(set_op("a", 1)))
    h.run(0.5)
    follower = h.nodes[2]
    commit = follower.metrics().commit_index
    term = follower.metrics().current_term + 1
    entries = follower.core.entries() if follower.core is not None else []
    prev = entries[commit - 2].log_id
    # A leader of a later term sends another entry at a committed index.
    forged = AppendEntriesRequest(term, 3, 2, prev, (Entry(LogId(term, 3, commit), set_op("a", 2), 0),), commit)
    with capturedLogs() as events:
        follower.frame_received(3, message_to_json(forged), object())  # type: ignore[arg-type]
    assert isinstance(h.fatal[2].value, SafetyViolationError)
    assert f"raft safety violation on node 2 (term {term}, index {commit})" in str(h.fatal[2].value)
    assert follower.metrics().state == "Shutdown"
    assert any(e.get("log_level").name == "critical" for e in events)
    # The data is untouched.
    assert h.sms[2].data == {"a": 1}


def test_leadership_and_membership_changes_are_logged_at_info() -> None:
    from twisted.logger import LogLevel, formatEvent

    h = Harness([1, 2])
    with capturedLogs() as events:
        h.result(h.nodes[1].initialize("n1"))
        assert h.nodes[1].is_leader  # raft_init returns with the node leading
        h.result(h.nodes[1].add_learner(2, "n2"))
    lines = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.info]
    assert "raft: node 1 became leader (term 1)" in lines
    assert any(line.startswith("raft: node 1 membership is now") for line in lines)
    assert "raft: node 2 follows leader 1 (term 1)" in lines
    assert any(line.startswith("raft: node 2 joined cluster ") for line in lines)


def _recording(name: str, calls: list[tuple[str, int]], node_id: int) -> Callable[..., Deferred[Any]]:
    """A C{run_io} / C{run_persist} that records which node ran its storage work where."""

    def run(fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        calls.append((name, node_id))
        return maybeDeferred(fn, *args)

    return run


def test_followers_persist_in_line_with_their_applies_and_the_leader_on_its_io_thread() -> None:
    calls: list[tuple[str, int]] = []
    h = Harness([])
    for i in (1, 2, 3):
        h.start(i, run_io=_recording("io", calls, i), run_persist=_recording("in line", calls, i))
    h.bootstrap([1, 2, 3])
    leader = h.leaders()[0]
    del calls[:]
    for n in range(20):
        h.result(h.nodes[leader].write(set_op(f"k{n}", n)))
    h.run(0.5)
    assert all(sm.data == {f"k{n}": n for n in range(20)} for sm in h.sms.values())
    followers = {i for i in (1, 2, 3) if i != leader}
    assert {i for where, i in calls if where == "in line"} == followers
    assert {i for where, i in calls if where == "io"} == {leader}
    assert h.fatal == {}


def test_a_follower_persists_a_snapshot_and_what_follows_its_install_on_its_io_thread() -> None:
    config = RaftConfig(
        heartbeat_interval=100, election_timeout_min=300, election_timeout_max=600,
        snapshot_threshold=10, keep_after_snapshot=2,
    )
    calls: list[tuple[str, int]] = []
    h = Harness([], config=config)
    for i in (1, 2, 3):
        h.start(i, run_io=_recording("io", calls, i), run_persist=_recording("in line", calls, i))
    h.bootstrap([1, 2, 3])
    h.run_until(lambda: h.nodes[1].is_leader, timeout=5)
    h.net.isolate(3, [1, 2])
    for n in range(40):
        h.result(h.nodes[1].write(set_op(f"k{n}", n)))
    h.run(0.5)
    sm = h.sms[3]
    install = sm.install_snapshot
    installing: list[int] = []

    def slow_install(data: bytes) -> Any:
        later: Deferred[None] = Deferred()
        installing.append(len(calls))

        def done() -> None:
            install(data)
            installing.append(len(calls))
            later.callback(None)

        h.clock.callLater(0.5, done)
        return later

    sm.install_snapshot = slow_install  # type: ignore[method-assign]
    del calls[:]
    h.net.heal()
    h.run_until(lambda: len(installing) == 1, timeout=10)
    for n in range(40, 45):  # committed by nodes 1 and 2 while node 3 installs
        h.result(h.nodes[1].write(set_op(f"k{n}", n)))
    h.run_until(lambda: len(installing) == 2, timeout=10)
    for n in range(45, 50):
        h.result(h.nodes[1].write(set_op(f"k{n}", n)))
    h.run_until(lambda: sm.data == h.sms[1].data)
    assert sm.installs == 1
    start, end = installing
    # Its snapshot batch, and what it persisted while the install ran, went
    # to its I/O thread; its batches are in line again once it is installed.
    assert [where for where, i in calls[:start] if i == 3][-1] == "io"
    during = [where for where, i in calls[start:end] if i == 3]
    assert during and set(during) == {"io"}
    assert [where for where, i in calls[end:] if i == 3][-1] == "in line"
    assert h.fatal == {}


def test_a_follower_behind_on_its_applies_persists_on_its_io_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("oxidb.raft.node.IN_LINE_BACKLOG", 2)
    calls: list[tuple[str, int]] = []
    h = Harness([])
    for i in (1, 2, 3):
        h.start(i, run_io=_recording("io", calls, i), run_persist=_recording("in line", calls, i))
    h.bootstrap([1, 2, 3])
    h.run_until(lambda: h.nodes[1].is_leader, timeout=5)
    sm = h.sms[2]
    apply = sm.apply
    slow = [True]

    def slow_apply(entries: Any) -> Any:
        if not slow[0]:
            return apply(entries)
        later: Deferred[Any] = Deferred()
        h.clock.callLater(1.0, lambda: apply(entries).chainDeferred(later))
        return later

    sm.apply = slow_apply  # type: ignore[method-assign]
    del calls[:]
    writes = [h.nodes[1].write(set_op(f"k{n}", n)) for n in range(3)]
    h.run(0.3)
    writes += [h.nodes[1].write(set_op(f"k{n}", n)) for n in range(3, 6)]
    h.run(0.3)
    behind = [where for where, i in calls if i == 2]
    # In line while its backlog was small, then on the I/O thread.
    assert behind[0] == "in line" and behind[-1] == "io"
    slow[0] = False
    assert [h.result(d) for d in writes] == [{"set": f"k{n}"} for n in range(6)]
    h.run_until(lambda: sm.data == h.sms[1].data)
    del calls[:]
    h.result(h.nodes[1].write(set_op("k6", 6)))
    h.run(0.3)
    assert [where for where, i in calls if i == 2] == ["in line"]
    assert h.fatal == {}
