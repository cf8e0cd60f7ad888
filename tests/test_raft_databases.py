"""
Databases in cluster mode: C{CreateDatabase}, C{DropDatabase} and writes to
another database's collections replicate through real Raft nodes on the
simulated in-memory network (L{tests.raft_node_harness}), each node applying
to its own engine through the engine state machine, and a node that fell
behind the log gets them from a snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from oxidb.auth.store import UserStore
from oxidb.engine.engine import Engine
from oxidb.engine.operations import CreateDatabase, CreateIndex, DropDatabase, Insert, Operation
from oxidb.raft.core import RaftConfig
from oxidb.raft.messages import Entry
from oxidb.raft.node import IStateMachine, Outcome, RaftNode, SnapshotBuild
from oxidb.raft.statemachine import EngineStateMachine, ReadGate
from tests.raft_node_harness import Harness, sync_io


@implementer(IStateMachine)
class InlineEngineStateMachine:
    """
    The engine state machine, its blocking parts run inline on the test
    thread (the engine's writer thread still commits; the test waits for
    it), so that the fake clock alone drives the cluster.
    """

    def __init__(self, engine: Engine, users: UserStore) -> None:
        self.engine = engine
        self.sm = EngineStateMachine(
            engine, reactor=None, threadpool=None, run_io=sync_io, gate=ReadGate(), users=lambda: users
        )
        self.installs = 0

    @property
    def last(self) -> int:
        return self.engine.last_applied()

    def apply(self, entries: Sequence[Entry]) -> Deferred[list[Outcome]]:
        future = self.sm.submit_entries(entries)
        error = future.exception()  # waits for the writer
        result: Any = future.result() if error is None else Failure(error)
        return succeed(self.sm._outcomes(result, entries))

    def build_snapshot(self) -> SnapshotBuild:
        return SnapshotBuild(succeed(None), maybeDeferred(self.sm._build, lambda: None))

    def install_snapshot(self, data: bytes) -> Deferred[None]:
        self.installs += 1
        d: Deferred[None] = self.sm.install_snapshot(data)
        return d


class EngineHarness(Harness):
    def __init__(self, root: Path, ids: Sequence[int], config: RaftConfig) -> None:
        self.root = root
        self.engines: dict[int, Engine] = {}
        self.esms: dict[int, InlineEngineStateMachine] = {}
        super().__init__(ids, config=config)

    def start(self, i: int, **overrides: Any) -> RaftNode:
        if i not in self.esms:
            engine = Engine(str(self.root / f"n{i}"), synchronous="OFF")
            engine.open()
            self.engines[i] = engine
            self.esms[i] = InlineEngineStateMachine(engine, UserStore(self.root / f"n{i}" / "_auth"))
        self.sms[i] = self.esms[i]  # type: ignore[assignment]
        return super().start(i, **overrides)

    def write(self, op: Operation) -> Any:
        return self.result(self.nodes[self.leaders()[0]].write(op.to_json()))

    def state(self, i: int) -> tuple[list[str], dict[str, list[str]], list[Any], list[Any]]:
        engine = self.engines[i]
        databases = engine.list_databases()
        return (
            databases,
            {d: engine.database_collections(d) for d in databases},
            engine.find("crm/users", {}),
            engine.list_indexes("crm/users"),
        )

    def close(self) -> None:
        for node in list(self.nodes.values()):
            node.stop()
        for engine in self.engines.values():
            engine.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EngineHarness]:
    config = RaftConfig(
        heartbeat_interval=100, election_timeout_min=300, election_timeout_max=600,
        snapshot_threshold=10, keep_after_snapshot=2,
    )  # fmt: skip
    h = EngineHarness(tmp_path, [1, 2, 3], config)
    try:
        h.bootstrap([1, 2, 3])
        yield h
    finally:
        h.close()


def test_databases_replicate_and_survive_a_snapshot_install(cluster: EngineHarness) -> None:
    h = cluster
    assert h.write(CreateDatabase("crm")) == "database 'crm' created"
    assert h.write(Insert("crm/users", {"name": "ada"})) == {"id": 1}
    h.run_until(lambda: all(h.state(i)[0] == ["oxidb", "crm"] for i in (1, 2, 3)))

    h.net.isolate(3, [1, 2])
    h.write(CreateIndex("crm/users", "name"))
    h.write(CreateDatabase("gone"))
    h.write(Insert("gone/c", {"x": 1}))
    for n in range(20):
        h.write(Insert("crm/users", {"name": f"u{n}"}))
        h.write(Insert("users", {"n": n}))
    assert h.write(DropDatabase("gone")) == "database 'gone' dropped"
    h.run(0.5)
    leader = h.nodes[h.leaders()[0]].metrics()
    assert leader.last_purged is not None and leader.last_purged.index > h.esms[3].last

    h.net.heal()
    expected = h.state(h.leaders()[0])
    h.run_until(lambda: h.state(3) == expected)
    assert h.esms[3].installs >= 1
    databases, collections, users, indexes = expected
    assert databases == ["oxidb", "crm"] and collections == {"oxidb": ["users"], "crm": ["users"]}
    assert len(users) == 21 and [i["name"] for i in indexes] == ["name"]
    for i in (1, 2, 3):
        assert h.state(i) == expected
        assert h.engines[i].count("users") == 20
    # The node goes on applying after the install.
    h.write(CreateDatabase("after"))
    h.run_until(lambda: all("after" in h.engines[i].list_databases() for i in (1, 2, 3)))
