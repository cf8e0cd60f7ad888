"""
L{MembershipCommands}: a node's management commands (C{raft_init},
C{raft_add_learner}, C{raft_change_membership}, C{raft_remove_node},
C{raft_transfer_leader}), each bounded: it makes its change through the
core, then waits (L{oxidb.raft.waits}) for the effect.

A mixin of L{oxidb.raft.node.RaftNode}, which provides what it names below:
the commands are the node's own methods, and need only its core, its
driver's kick, what it has applied and made durable, and its waits.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from oxidb.errors import RaftError
from oxidb.raft.core import RaftConfig, RaftCore
from oxidb.raft.messages import LogId, StoredMembership
from oxidb.raft.waits import Waits, WaitTimeout


class MembershipCommands:
    """
    The management commands of L{oxidb.raft.node.RaftNode} (see the module
    docstring).
    """

    id: int
    write_timeout: float
    leader_wait: float
    catch_up_timeout: float
    _config: RaftConfig
    _applied: LogId | None
    _durable_index: int
    _waits: Waits

    def _require_core(self) -> RaftCore:
        raise NotImplementedError

    def _kick(self) -> None:
        raise NotImplementedError

    @inlineCallbacks
    def initialize(self, addr: str) -> Any:
        """
        Create a one-member cluster of this node; fires once that is durable
        and the node leads (it campaigns at once; a bounded wait).
        """
        core = self._require_core()
        log_id = core.initialize({self.id: addr})
        self._kick()
        yield self._waits.wait(lambda: self._durable_index >= log_id.index, self.write_timeout)
        try:
            yield self._waits.wait(lambda: core.is_leader, self.leader_wait)
        except WaitTimeout:
            pass  # add_learner waits for a leader too
        return log_id

    def _settled(self, core: RaftCore) -> Deferred[None]:
        """
        Wait (up to the leader wait) until a membership change may start:
        a leader is known (right after C{raft_init}, or during an election,
        the command waits instead of failing) and, on the leader, an entry
        of its term is applied (a new leader's blank entry) and no earlier
        change is still under way. The core decides and explains afterwards
        if the wait runs out (another node leads: upstream's "has to forward
        request to").
        """

        def settled() -> bool:
            if core.leader_id is None:
                return False
            if not core.is_leader:
                return True
            applied, stored = self._applied, core.membership
            return (
                applied is not None
                and applied.term == core.current_term
                and stored is not None
                and stored.log_id is not None
                and not stored.membership.is_joint
                and stored.log_id.index <= applied.index
            )

        return self._waits.wait(settled, self.leader_wait).addErrback(lambda f: f.trap(WaitTimeout) and None)

    @inlineCallbacks
    def add_learner(self, node_id: int, addr: str) -> Any:
        """
        Add (or re-address) a learner and wait until it has replicated the
        log up to the membership change; fires with C{(log id, membership)}.
        """
        core = self._require_core()
        yield self._settled(core)
        log_id = core.add_learner(node_id, addr)
        self._kick()

        def caught_up() -> bool:
            if not core.is_leader:
                raise RaftError("leadership was lost while the learner caught up; check raft_metrics")
            applied = self._applied.index if self._applied else 0
            if applied < log_id.index:
                return False
            return node_id == self.id or core.metrics().replication.get(node_id, 0) >= log_id.index

        try:
            yield self._waits.wait(caught_up, self.catch_up_timeout)
        except WaitTimeout:
            raise RaftError(
                f"node {node_id} has not caught up within {self.catch_up_timeout:g}s; it keeps replicating"
            ) from None
        return log_id, core.membership

    @inlineCallbacks
    def change_membership(self, voters: set[int]) -> Any:
        """
        Make C{voters} the voter set (joint consensus); fires with the log id
        and membership of the final configuration once it is applied here.
        """
        core = self._require_core()
        yield self._settled(core)
        current = core.membership
        log_id = core.change_membership(voters)
        self._kick()
        if current is not None and current.log_id == log_id:
            return log_id, current

        def final() -> StoredMembership | None:
            stored = core.membership
            applied = self._applied.index if self._applied else 0
            if stored is None or stored.log_id is None or stored.membership.is_joint:
                return None
            if stored.log_id.index <= log_id.index or applied < stored.log_id.index:
                return None
            return stored

        try:
            yield self._waits.wait(lambda: final() is not None, self.catch_up_timeout)
        except WaitTimeout:
            raise RaftError(
                f"the membership change did not complete within {self.catch_up_timeout:g}s; check raft_metrics"
            ) from None
        stored = final()
        assert stored is not None and stored.log_id is not None
        return stored.log_id, stored

    @inlineCallbacks
    def remove_node(self, node_id: int) -> Any:
        """
        Remove a member (a voter through joint consensus, or a learner);
        fires with the log id and membership once the change is applied
        here.
        """
        core = self._require_core()
        yield self._settled(core)
        stored = core.membership
        if stored is not None and node_id in stored.membership.voters:
            result = yield self.change_membership(set(stored.membership.voters) - {node_id})
            return result
        log_id = core.remove_node(node_id)
        self._kick()
        try:
            yield self._waits.wait(
                lambda: (self._applied.index if self._applied else 0) >= log_id.index, self.catch_up_timeout
            )
        except WaitTimeout:
            raise RaftError(
                f"the membership change did not complete within {self.catch_up_timeout:g}s; check raft_metrics"
            ) from None
        return log_id, core.membership

    @inlineCallbacks
    def transfer_leadership(self, to: int) -> Any:
        """
        Hand leadership to voter C{to} (like C{etcdctl move-leader}); fires
        with C{(leader, term)} once C{to} leads, as this node sees it.
        """
        core = self._require_core()
        yield self._settled(core)
        core.transfer_leadership(to)
        self._kick()
        timeout = 2 * self._config.election_timeout_max / 1000

        def moved() -> bool:
            return core.leader_id == to

        try:
            yield self._waits.wait(moved, timeout)
        except WaitTimeout:
            raise RaftError(
                f"node {to} did not take over within {timeout:g}s; leader is {core.leader_id}"
            ) from None
        return to, core.current_term
