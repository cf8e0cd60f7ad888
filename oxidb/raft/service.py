"""
L{RaftService}: the cluster-mode parts of a server, as one Twisted service.

It holds the durable Raft storage in C{OXIDB_DATA}, the engine-backed state
machine, the peer transport on C{OXIDB_RAFT_ADDR} and the L{RaftNode}
driving them, plus what the rest of the server plugs in: the
L{ClusterExecutor}, the L{LinearizableDispatcher} wrapper and the Raft
status for metrics and health. L{oxidb.service.OxiService} adds it as a
child; it starts after the engine has opened and stops before it closes.

Start-up (blocking, before the reactor serves anything): load the Raft
files (L{oxidb.raft.storage.StorageCorruptError} stops the server), find the
log id of the state machine's C{last_applied} so that nothing is applied
twice, bind the Raft port and start the node. A node restarted on its data
rejoins by itself: the term, vote, log and membership are on disk.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from oxidb.atrest import LogCipher
from oxidb.auth.store import UserStore
from oxidb.commands._context import IClusterControl
from oxidb.config import Config
from oxidb.errors import ConfigError
from oxidb.logs import Logger
from oxidb.metrics import RaftStatus
from oxidb.raft.core import new_identity
from oxidb.raft.disk import OsDisk
from oxidb.raft.executor import ClusterExecutor, LinearizableDispatcher
from oxidb.raft.forward import MemberGate
from oxidb.raft.messages import HardState, LogId, PersistBatch
from oxidb.raft.node import RaftNode
from oxidb.raft.settings import ClusterSettings
from oxidb.raft.statemachine import EngineStateMachine, ReadGate
from oxidb.raft.storage import DurableState, RaftStorage
from oxidb.raft.transport import PeerTransport
from oxidb.workers import WorkerPool


def applied_log_id(state: DurableState, index: int) -> LogId | None:
    """
    The log id of the entry the state machine applied last (C{index}), for
    the core's C{applied=}; C{None} when the state machine must start over
    from the snapshot (its index lies in the purged part of the log).

    @raise ConfigError: the state machine is ahead of the Raft log (the Raft
        files were removed or replaced).
    """
    if index == 0:
        return None
    entries = state.entries
    if entries and entries[0].index <= index <= entries[-1].index:
        return entries[index - entries[0].index].log_id
    snapshot = state.snapshot
    if snapshot is not None and snapshot.meta.last_log_id.index == index:
        return snapshot.meta.last_log_id
    last = entries[-1].index if entries else (snapshot.meta.last_log_id.index if snapshot else 0)
    if index > last:
        raise ConfigError(
            f"the database has applied Raft index {index} but the Raft log ends at {last}: "
            "raft_meta.json/raft_log.jsonl were removed or replaced; restore them, or start this node "
            "on an empty data directory and add it to the cluster again"
        )
    return None


@implementer(IClusterControl)
class RaftService(Service):
    """
    The cluster part of a server: the Raft node, its peer port, storage and
    state machine. As L{IClusterControl} it is what the management commands
    drive (each action is the node's).

    @param config: the server configuration (C{node_id} set).
    @param reactor: the reactor.
    @param engine: the server's engine (opened before this service starts).
    @param threadpool: the server's thread pool (reads, snapshot backups).
    @param users: the user store, or C{None} when authentication is off
        (asked when a snapshot is installed).
    @param on_fatal: called after the node stopped itself on a storage or
        apply failure (the server stops).
    @raise ConfigError: see L{ClusterSettings.from_config}.
    """

    _log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        engine: Any,
        threadpool: Any,
        users: Callable[[], UserStore | None],
        on_fatal: Callable[[Failure], None],
        rng: random.Random | None = None,
        audit: Callable[[], Any] = lambda: None,
    ) -> None:
        self.settings = settings = ClusterSettings.from_config(config)
        self.reactor = reactor
        self.engine = engine
        rng = rng if rng is not None else random.SystemRandom()
        self._rng = rng
        self.io_pool = WorkerPool(reactor, 1, name="oxidb-raft-io")
        self.gate = ReadGate()
        key = getattr(engine, "key", None)
        self.storage = RaftStorage(OsDisk(engine.data_dir), None if key is None else LogCipher(key.log))
        self.state_machine = EngineStateMachine(
            engine, reactor=reactor, threadpool=threadpool, run_io=self.run_io, gate=self.gate, users=users
        )
        self.node: RaftNode = RaftNode(
            settings.node_id,
            clock=reactor,
            config=settings.raft,
            storage=self.storage,
            state_machine=self.state_machine,
            rng=rng,
            run_io=self.run_io,
            peers=settings.peers,
            forward_writes=settings.forward_writes,
            on_fatal=on_fatal,
            run_persist=self.state_machine.run_in_writer,
        )
        host, port = settings.listen
        self.member_gate = MemberGate(self.node, self._members, audit, reactor)
        self.transport = PeerTransport(
            settings.node_id,
            clock=reactor,
            authenticator=settings.authenticator,
            handler=self.member_gate,
            address_of=self.node.address_of,
            rng=rng,
            listen=(reactor, host, port, settings.tls),
            handshake_timeout=float(config.limits.raft_handshake_secs),
            inbound_per_address=config.limits.raft_inbound_per_address,
        )
        self.node.transport = self.transport
        self.executor = ClusterExecutor(reactor, threadpool, self.node, self.gate)
        self.published_address: str | None = None

    def _members(self) -> frozenset[int] | None:
        """The current configuration's nodes (voters and learners), or None before the first."""
        core = self.node.core
        if core is None or core.membership is None:
            return None
        return frozenset(core.membership.membership.nodes)

    def run_io(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run blocking Raft I/O on the single Raft I/O thread."""
        return self.io_pool.defer(fn, *args)

    # IClusterControl: the management commands' view of the node.

    def initialize(self, addr: str) -> Deferred[Any]:
        result: Deferred[Any] = self.node.initialize(addr)
        return result

    def add_learner(self, node_id: int, addr: str) -> Deferred[Any]:
        result: Deferred[Any] = self.node.add_learner(node_id, addr)
        return result

    def change_membership(self, voters: set[int]) -> Deferred[Any]:
        result: Deferred[Any] = self.node.change_membership(voters)
        return result

    def remove_node(self, node_id: int) -> Deferred[Any]:
        result: Deferred[Any] = self.node.remove_node(node_id)
        return result

    def transfer_leadership(self, to: int) -> Deferred[Any]:
        result: Deferred[Any] = self.node.transfer_leadership(to)
        return result

    def metrics(self) -> Any:
        return self.node.metrics()

    def wrap_dispatcher(self, dispatcher: Any) -> LinearizableDispatcher:
        return LinearizableDispatcher(dispatcher, self.node)

    def status(self) -> RaftStatus:
        return self.node.status()

    def privilegedStartService(self) -> None:
        self.transport.privilegedStartService()
        super().privilegedStartService()

    def startService(self) -> None:
        self.io_pool.start()
        state = self.ensure_incarnation(self.storage.load())
        applied = applied_log_id(state, self.engine.last_applied())
        self.transport.startService()
        bound = self.transport.port.getHost()
        self.published_address = self.settings.published_address(bound.port)
        self.node.start(state, applied)
        self._log.info(
            "raft: node {node_id} listening on {host}:{port} (published as {addr}, peer authentication: {auth})",
            node_id=self.settings.node_id,
            host=bound.host,
            port=bound.port,
            addr=self.published_address,
            auth="mutual TLS" if self.settings.tls is not None else type(self.settings.authenticator).__name__,
        )
        super().startService()

    def ensure_incarnation(self, state: DurableState) -> DurableState:
        """
        Give a data directory without one its incarnation id, durably, before
        the node starts: at its first start, or once when it was written by a
        version without identities (the leader then pins it on first contact).
        """
        hard = state.hard_state
        if hard.incarnation is not None:
            return state
        incarnation = new_identity(self._rng)
        hard = HardState(hard.term, hard.voted_for, incarnation, hard.cluster_id)
        self.storage.save(PersistBatch(hard_state=hard))
        fresh = hard.term == 0 and not state.entries and state.snapshot is None
        self._log.info(
            "raft: node {node_id} data directory incarnation {incarnation} ({why})",
            node_id=self.settings.node_id,
            incarnation=incarnation,
            why="first start" if fresh else "assigned once to Raft state written by an earlier version",
        )
        return attrs.evolve(state, hard_state=hard)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.node.stop()
        stopped = self.transport.stopService()
        self.io_pool.stop()
        # A follower's last batch may still be persisting on the engine's
        # writer (L{RaftNode}'s run_persist): let it finish first.
        self.engine.submit_call(_nothing).exception()
        self.storage.close()
        return stopped


def _nothing() -> None:
    """A call that only waits its turn on the engine's writer."""
