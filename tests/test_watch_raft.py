"""
Change tokens in a Raft group (simulated network, real Raft nodes, a real
engine per node): every node numbers the same changes with the same tokens,
because tokens come from the log index of the applied entry; a watcher that
followed one node resumes on another after a leader crash with no gap and
no duplicate.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from raft_node_harness import Harness
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from oxidb.engine.changes import Change, IChangeListener, OperationChanges
from oxidb.engine.engine import Engine
from oxidb.engine.operations import Delete, Insert, InsertMany, Update
from oxidb.raft.messages import Entry
from oxidb.raft.node import IStateMachine, Outcome, SnapshotBuild
from oxidb.raft.statemachine import RaftNoop
from oxidb.server.changefeed import ChangeFeed


class Recorder:
    """A watcher that reads everything."""

    paused = False

    def __init__(self) -> None:
        self.events: list[Change] = []

    def send_change(self, change: Change) -> None:
        self.events.append(change)

    def send_overflow(self, dropped: int) -> None:
        raise AssertionError(f"overflow: {dropped}")

    def feed_reset(self) -> None:
        raise AssertionError("feed reset")


@implementer(IChangeListener)
class Inline:
    """Hands commits straight to the feed (the test's single thread stands in for the reactor)."""

    def __init__(self, feed: ChangeFeed) -> None:
        self.feed = feed

    def opened(self, last_token: int) -> None:
        self.feed.reset(last_token)

    def committed(self, operations: list[OperationChanges]) -> None:
        self.feed.publish(operations)


@implementer(IStateMachine)
class EngineSM:
    """The engine applying entries with their Raft index, synchronously."""

    def __init__(self, path: Path) -> None:
        self.engine = Engine(str(path), synchronous="OFF")
        self.engine.register_operation(RaftNoop)
        self.engine.open()
        self.feed = ChangeFeed(accept_ahead=True)
        self.feed.reset(self.engine.listen(Inline(self.feed)))
        self.all: list[Change] = []
        self.feed.subscribe(self, None, None).start()

    paused = False

    def send_change(self, change: Change) -> None:
        self.all.append(change)

    def send_overflow(self, dropped: int) -> None:
        raise AssertionError("overflow")

    def feed_reset(self) -> None:
        raise AssertionError("reset")

    @property
    def last(self) -> int:
        return self.engine.last_applied()

    def apply(self, entries: Sequence[Entry]) -> Deferred[list[Outcome]]:
        outcomes = []
        for entry in entries:
            op = RaftNoop() if entry.membership is not None or entry.payload is None else entry.payload
            try:
                outcomes.append(Outcome(True, self.engine.apply(op, (entry.ts or 0) / 1000.0, entry.index)))
            except Exception as e:  # noqa: BLE001
                outcomes.append(Outcome(False, e))
        return succeed(outcomes)

    def install_snapshot(self, data: bytes) -> Deferred[None]:
        raise AssertionError("no snapshots in this test")

    def build_snapshot(self) -> SnapshotBuild:
        raise AssertionError("no snapshots in this test")


@pytest.fixture
def group(tmp_path: Path) -> Iterator[tuple[Harness, dict[int, EngineSM]]]:
    harness = Harness([])
    sms = {i: EngineSM(tmp_path / f"n{i}") for i in (1, 2, 3)}
    harness.sms.update(sms)  # type: ignore[arg-type]
    for i in (1, 2, 3):
        harness.start(i)
    harness.bootstrap([1, 2, 3])
    yield harness, sms
    for sm in sms.values():
        sm.engine.close()


def shape(changes: list[Change]) -> list[tuple[Any, ...]]:
    return [(c.token, c.operation, c.collection, c.doc_id, c.document) for c in changes]


def test_tokens_match_across_nodes_and_resume_after_failover(group: tuple[Harness, dict[int, EngineSM]]) -> None:
    h, sms = group
    leader = h.leaders()[0]
    write = h.nodes[leader].write
    h.result(write(InsertMany("c", [{"n": 1}, {"n": 2}]).to_json()))
    h.result(write(Update("c", {}, {"$inc": {"n": 10}}).to_json()))
    # A watcher follows the leader.
    watcher = Recorder()
    subscription = sms[leader].feed.subscribe(watcher, "c", None)
    subscription.start()
    h.result(write(Insert("c", {"n": 3}).to_json()))
    h.result(write(Insert("other", {"n": 4}).to_json()))
    h.run_until(lambda: all(len(sm.all) == len(sms[leader].all) for sm in sms.values()))
    last_seen = watcher.events[-1].token
    # Tokens are (log index << 20) | position: the same on every node.
    assert shape(sms[1].all) == shape(sms[2].all) == shape(sms[3].all)
    assert [c.token & 0xFFFFF for c in sms[1].all[:4]] == [0, 1, 0, 1]

    # The leader crashes mid-stream; writes go on through the new leader.
    subscription.cancel()
    h.crash(leader)
    h.run_until(lambda: bool(h.leaders()) and h.leaders()[0] != leader)
    new = h.leaders()[0]
    h.result(h.nodes[new].write(Delete("c", {"n": 11}).to_json()))
    h.result(h.nodes[new].write(Insert("c", {"n": 5}).to_json()))
    other = next(i for i in (1, 2, 3) if i not in (leader, new))
    # A watcher resuming on a node still catching up gets the rest as it applies.
    late = Recorder()
    sms[other].feed.subscribe(late, "c", last_seen).start()
    h.run_until(lambda: len(sms[other].all) == len(sms[new].all))
    resumed = Recorder()
    sms[new].feed.subscribe(resumed, "c", last_seen).start()
    for got in (resumed, late):
        assert [(c.operation, c.doc_id) for c in got.events] == [("delete", 1), ("insert", 4)]
        assert all(c.token > last_seen for c in got.events)
    assert shape(sms[new].all) == shape(sms[other].all)
    assert shape(sms[new].all[: len(sms[leader].all)]) == shape(sms[leader].all)
