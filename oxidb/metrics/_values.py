"""
Values passed between the metrics package and the rest of the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

#: Raft roles as C{raft_metrics} spells them (server.md 8.2).
RAFT_STATES = ("Leader", "Follower", "Candidate", "Learner", "Shutdown")


def _raft_state(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in RAFT_STATES:
        raise ValueError(f"unknown raft state: {value!r}")


@attrs.frozen
class RaftStatus:
    """
    One node's view of its Raft group, read on the reactor thread.

    @ivar node_id: this node's id.
    @ivar state: one of L{RAFT_STATES}.
    @ivar term: the current term.
    @ivar leader_id: the leader this node knows of, or C{None}.
    @ivar last_log_index: index of the last entry in the local log.
    @ivar commit_index: the highest index this node knows to be committed.
    @ivar applied_index: the highest index applied to the local state machine.
    @ivar match_index: on the leader, peer id -> the highest index known to be
        replicated on that peer (the leader itself excluded); empty elsewhere.
    """

    node_id: int
    state: str = attrs.field(validator=_raft_state)
    term: int
    leader_id: int | None
    last_log_index: int
    commit_index: int
    applied_index: int
    match_index: Mapping[int, int] = attrs.field(factory=dict)

    @property
    def is_leader(self) -> bool:
        return self.state == "Leader"


@attrs.frozen
class ThreadPoolStats:
    """The worker pool: C{size} threads at most, C{busy} running work now."""

    size: int
    busy: int


@attrs.frozen
class StorageSample:
    """
    What a pass over the storage found (blocking to obtain).

    @ivar documents: collection name -> document count, or C{None} when no
        source is registered.
    @ivar data_dir_bytes: apparent size of the data directory's files, or
        C{None} when the server has no data directory.
    """

    documents: Mapping[str, int] | None
    data_dir_bytes: int | None


@attrs.frozen
class ProcSample:
    """
    One sample of the process (server.md 10, C{proc_status}).

    @ivar cpu_percent: CPU time used since the previous sample, as a percentage
        of one core's wall time (above 100 with several busy threads); 0.0 for
        the first sample.
    @ivar rss_bytes: resident set size.
    @ivar threads: OS threads of the process.
    @ivar uptime_s: seconds since the server started.
    """

    cpu_percent: float
    rss_bytes: int
    threads: int
    uptime_s: float

    def to_wire(self) -> dict[str, Any]:
        """The C{proc_status} reply, in upstream's key order and rounding."""
        return {
            "cpu_percent": round(self.cpu_percent, 1),
            "mem_rss_mb": round(self.rss_bytes / (1024 * 1024), 1),
            "threads": self.threads,
            "uptime_s": int(self.uptime_s),
        }


@attrs.frozen
class Probe:
    """A liveness answer: C{ok}, and why not."""

    ok: bool
    reason: str


@attrs.frozen
class Readiness:
    """
    A readiness answer.

    @ivar ready: the node should receive traffic.
    @ivar leader: the node accepts writes itself (the Raft leader, or a
        standalone server).
    @ivar reason: a short explanation, also when ready.
    """

    ready: bool
    leader: bool
    reason: str
