"""NodeHealth: the answers behind /health and /ready."""

from __future__ import annotations

from typing import Any

import pytest
from zope.interface.verify import verifyObject

from oxidb.metrics import IHealth, NodeHealth, Probe, RaftStatus, Readiness


def raft(**changes: Any) -> RaftStatus:
    fields: dict[str, Any] = dict(
        node_id=2, state="Follower", term=7, leader_id=1, last_log_index=50, commit_index=40, applied_index=40
    )
    fields.update(changes)
    return RaftStatus(**fields)


def test_provides_the_interface() -> None:
    assert verifyObject(IHealth, NodeHealth(lambda: True))


def test_standalone_serving_is_live_ready_and_the_writer() -> None:
    health = NodeHealth(lambda: True)
    assert health.liveness() == Probe(True, "serving")
    assert health.readiness() == Readiness(True, True, "standalone")


def test_not_serving_is_neither_live_nor_ready() -> None:
    health = NodeHealth(lambda: False, raft=lambda: raft(state="Leader", leader_id=2))
    assert health.liveness() == Probe(False, "not serving requests")
    assert health.readiness() == Readiness(False, False, "not serving requests")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (raft(), Readiness(True, False, "following leader 1")),
        (raft(applied_index=45, commit_index=45), Readiness(True, False, "following leader 1")),
        (raft(state="Learner"), Readiness(True, False, "following leader 1")),
        (
            raft(applied_index=39),
            Readiness(False, False, "applied index 39 behind commit index 40"),
        ),
        (raft(leader_id=None), Readiness(False, False, "no known leader")),
        (raft(state="Candidate", leader_id=None), Readiness(False, False, "no known leader")),
        (raft(state="Leader", leader_id=2), Readiness(True, True, "leader")),
        (
            raft(state="Leader", leader_id=2, applied_index=38),
            Readiness(False, True, "applied index 38 behind commit index 40"),
        ),
        (raft(state="Shutdown"), Readiness(False, False, "raft is shut down")),
    ],
)
def test_cluster_readiness(status: RaftStatus, expected: Readiness) -> None:
    health = NodeHealth(lambda: True, raft=lambda: status)
    assert health.readiness() == expected
    assert health.liveness().ok
