"""
Liveness and readiness of one node, for C{/health} and C{/ready}.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from zope.interface import implementer

from oxidb.metrics._interfaces import IHealth
from oxidb.metrics._values import Probe, RaftStatus, Readiness


@implementer(IHealth)
@attrs.frozen
class NodeHealth:
    """
    The probe answers of a standalone or cluster node (reactor thread).

    @ivar serving: whether the client listener is up and the service has not
        begun to stop.
    @ivar raft: the node's current Raft status, or C{None} in standalone mode
        (pass L{oxidb.metrics.ServerMetrics.sample_raft}, which also keeps the
        status for C{/metrics}).
    """

    serving: Callable[[], bool]
    raft: Callable[[], RaftStatus | None] = attrs.field(default=lambda: None)

    def liveness(self) -> Probe:
        if self.serving():
            return Probe(True, "serving")
        return Probe(False, "not serving requests")

    def readiness(self) -> Readiness:
        """
        Standalone: ready once serving, and always the writer. Cluster: ready
        when a leader is known and every entry known committed is applied.
        """
        if not self.serving():
            return Readiness(False, False, "not serving requests")
        status = self.raft()
        if status is None:
            return Readiness(True, True, "standalone")
        leader = status.is_leader
        if status.state == "Shutdown":
            return Readiness(False, False, "raft is shut down")
        if status.leader_id is None:
            return Readiness(False, leader, "no known leader")
        if status.applied_index < status.commit_index:
            return Readiness(
                False, leader, f"applied index {status.applied_index} behind commit index {status.commit_index}"
            )
        return Readiness(True, leader, "leader" if leader else f"following leader {status.leader_id}")
