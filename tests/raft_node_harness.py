"""
A cluster of real L{RaftNode}s (the real core and storage on in-memory
disks) on one L{MemoryReactorClock}, with a direct in-memory network that
can cut links, and a small dictionary state machine that refuses to apply
an index twice.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from oxidb.errors import BadRequestError
from oxidb.raft.core import RaftConfig
from oxidb.raft.messages import Entry, LogId
from oxidb.raft.node import IStateMachine, Outcome, RaftNode, SnapshotBuild
from oxidb.raft.service import applied_log_id
from oxidb.raft.storage import RaftStorage
from oxidb.raft.transport import IRaftTransport
from oxidb.testing import CrashingDisk

FAST = RaftConfig(heartbeat_interval=100, election_timeout_min=300, election_timeout_max=600)


class FailingDisk(CrashingDisk):
    """A disk whose fsync fails with EIO once L{broken}."""

    broken = False

    def fsync(self, name: str) -> None:
        if self.broken:
            raise OSError(errno.EIO, "Input/output error")
        super().fsync(name)


@implementer(IStateMachine)
class DictStateMachine:
    """
    Operations: C{{"Set": {"k", "v"}}} -> C{{"set": k}};
    C{{"Insert": {}}} -> C{{"id": n}} with n counting inserts (like document
    ids); C{{"Fail": {}}} -> an error outcome. Applying an index twice is a
    test failure.
    """

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.inserts = 0
        self.last = 0
        self.applied: list[int] = []
        self.installs = 0

    def apply(self, entries: Sequence[Entry]) -> Deferred[list[Outcome]]:
        outcomes = []
        for entry in entries:
            if entry.index <= self.last:
                raise AssertionError(f"index {entry.index} applied twice")
            self.last = entry.index
            self.applied.append(entry.index)
            op = entry.payload
            if not isinstance(op, dict) or entry.membership is not None:
                outcomes.append(Outcome(True, None))
            elif "Set" in op:
                self.data[op["Set"]["k"]] = op["Set"]["v"]
                outcomes.append(Outcome(True, {"set": op["Set"]["k"]}))
            elif "Insert" in op:
                self.inserts += 1
                outcomes.append(Outcome(True, {"id": self.inserts}))
            else:
                outcomes.append(Outcome(False, BadRequestError("failed on purpose")))
        return succeed(outcomes)

    def snapshot_bytes(self) -> bytes:
        return orjson.dumps({"data": self.data, "inserts": self.inserts, "last": self.last})

    def install_snapshot(self, data: bytes) -> Deferred[None]:
        state = orjson.loads(data)
        self.data, self.inserts, self.last = state["data"], state["inserts"], state["last"]
        self.installs += 1
        return succeed(None)

    def build_snapshot(self) -> SnapshotBuild:
        return SnapshotBuild(succeed(None), succeed(self.snapshot_bytes()))


class _Channel:
    def __init__(self, net: DirectNet, src: int, dst: int) -> None:
        self._net, self._src, self._dst = net, src, dst

    def send(self, payload: bytes) -> None:
        self._net.deliver_later(self._src, self._dst, payload)


@implementer(IRaftTransport)
class _Endpoint:
    def __init__(self, net: DirectNet, node_id: int) -> None:
        self._net, self._id = net, node_id

    def send(self, peer: int, payload: bytes) -> None:
        self._net.deliver_later(self._id, peer, payload)

    def retain(self, peers: set[int]) -> None:
        self._net.retained[self._id] = set(peers)


class DirectNet:
    """Frames travel after C{callLater(0)}; C{cut} pairs lose them."""

    def __init__(self, clock: MemoryReactorClock) -> None:
        self.clock = clock
        self.nodes: dict[int, RaftNode] = {}
        self.cut: set[frozenset[int]] = set()
        self.retained: dict[int, set[int]] = {}
        self.sent = 0

    def endpoint(self, node_id: int) -> _Endpoint:
        return _Endpoint(self, node_id)

    def deliver_later(self, src: int, dst: int, payload: bytes) -> None:
        self.sent += 1
        self.clock.callLater(0, self._deliver, src, dst, payload)

    def _deliver(self, src: int, dst: int, payload: bytes) -> None:
        node = self.nodes.get(dst)
        if node is None or frozenset((src, dst)) in self.cut:
            return
        node.frame_received(src, orjson.loads(payload), _Channel(self, dst, src))

    def isolate(self, node_id: int, others: Iterable[int]) -> None:
        self.cut |= {frozenset((node_id, o)) for o in others if o != node_id}

    def heal(self) -> None:
        self.cut.clear()


def sync_io(fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return maybeDeferred(fn, *args)


def slow_io(clock: MemoryReactorClock, delay: float) -> Callable[..., Deferred[Any]]:
    """Storage work that completes C{delay} seconds later (a slow fsync)."""

    def run(fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        clock.callLater(delay, lambda: maybeDeferred(fn, *args).chainDeferred(d))
        return d

    return run


class Harness:
    def __init__(self, ids: Iterable[int], config: RaftConfig = FAST, **node_kwargs: Any) -> None:
        self.clock = MemoryReactorClock()
        self.net = DirectNet(self.clock)
        self.config = config
        self.node_kwargs = node_kwargs
        self.disks: dict[int, FailingDisk] = {}
        self.sms: dict[int, DictStateMachine] = {}
        self.nodes = self.net.nodes
        self.fatal: dict[int, Failure] = {}
        for i in ids:
            self.start(i)

    def start(self, i: int, **overrides: Any) -> RaftNode:
        disk = self.disks.setdefault(i, FailingDisk())
        sm = self.sms.setdefault(i, DictStateMachine())
        storage = RaftStorage(disk)
        state = storage.load()
        kwargs = {"run_io": sync_io, **self.node_kwargs, **overrides}
        node = RaftNode(
            i,
            clock=self.clock,
            config=self.config,
            storage=storage,
            state_machine=sm,
            transport=self.net.endpoint(i),
            rng=random.Random(i),
            peers={j: f"n{j}" for j in range(1, 10)},
            on_fatal=lambda failure: self.fatal.__setitem__(i, failure),
            **kwargs,
        )
        self.nodes[i] = node
        node.start(state, applied_log_id(state, sm.last))
        return node

    def crash(self, i: int) -> None:
        """Stop the node; its disk keeps what was durable, the state machine all it applied."""
        self.nodes.pop(i).stop()
        self.disks[i].crash()

    def run(self, seconds: float, step: float = 0.01) -> None:
        for _ in range(int(seconds / step)):
            self.clock.advance(step)

    def run_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        end = self.clock.seconds() + timeout
        while not condition():
            if self.clock.seconds() >= end:
                raise AssertionError("condition not reached in time")
            self.clock.advance(0.01)

    def result(self, d: Deferred[Any], timeout: float = 10.0) -> Any:
        """Run the clock until C{d} fires; its result (raises its failure)."""
        box: list[Any] = []
        d.addBoth(box.append)
        self.run_until(lambda: bool(box), timeout)
        if isinstance(box[0], Failure):
            box[0].raiseException()
        return box[0]

    def leaders(self) -> list[int]:
        return sorted(i for i, n in self.nodes.items() if n.is_leader)

    def bootstrap(self, ids: Sequence[int]) -> None:
        """Upstream's sequence: init on the first node, add learners, change membership."""
        first = ids[0]
        self.result(self.nodes[first].initialize(f"n{first}"))
        self.run_until(lambda: self.leaders() == [first])
        for i in ids[1:]:
            self.result(self.nodes[first].add_learner(i, f"n{i}"))
        self.result(self.nodes[first].change_membership(set(ids)))

    def log_id(self, i: int) -> LogId | None:
        core = self.nodes[i].core
        assert core is not None
        return core.metrics().last_applied
