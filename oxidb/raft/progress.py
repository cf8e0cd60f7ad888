"""
L{Progress}: the leader's view of one follower or learner (etcd-io/raft's
C{tracker/progress.go}, C{tracker/state.go} and C{tracker/inflights.go}).

Each peer's progress is in one of three modes: L{Mode.PROBE} (one append at
a time until the leader finds where the logs match), L{Mode.REPLICATE}
(appends pipelined, up to C{max_inflight} of them unacknowledged, each
remembered by its last index) or L{Mode.SNAPSHOT} (sending a snapshot in
chunks). The leader in L{oxidb.raft.core} keeps one per peer and sends what
they say; the transitions between the modes live here.
"""

from __future__ import annotations

import enum
from collections import deque

import attrs


class Mode(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@attrs.define
class Progress:
    """The leader's view of one follower or learner."""

    next: int
    match: int = 0
    mode: Mode = Mode.PROBE
    paused: bool = False
    inflight: deque[int] = attrs.Factory(deque)
    match_at_heartbeat: int = 0
    snapshot_offset: int = 0
    read_seq: int = 0
    active: bool = False
    #: The incarnation this leader saw the peer answer with first (while the
    #: membership has none pinned for it).
    incarnation: str | None = None
    #: Why the peer is refused (it is neither counted nor replicated to).
    refused: str | None = None

    def become_probe(self) -> None:
        self.mode = Mode.PROBE
        self.next = self.match + 1
        self.paused = False
        self.inflight.clear()

    def become_snapshot(self) -> None:
        """The entries the peer needs are purged: send the snapshot from its start."""
        self.mode = Mode.SNAPSHOT
        self.snapshot_offset = 0

    def maybe_update(self, index: int) -> bool:
        """
        The peer acknowledged its log up to C{index}: move the match forward
        (and a probe to replication); says whether the match moved.
        """
        if index <= self.match:
            return False
        self.match = index
        self.next = max(self.next, self.match + 1)
        while self.inflight and self.inflight[0] <= self.match:
            self.inflight.popleft()
        if self.mode is Mode.PROBE:
            self.mode = Mode.REPLICATE
            self.next = self.match + 1
            self.inflight.clear()
        return True

    def rejection_counts(self, index: int) -> bool:
        """
        The peer refused an append after C{index}: whether that answers the
        append in flight (not a stale or duplicate refusal).
        """
        if self.mode is Mode.SNAPSHOT or index <= self.match:
            return False
        return not (self.mode is Mode.PROBE and index != self.next - 1)

    def probe_from(self, next_index: int) -> None:
        """Go back to probing, from C{next_index} (never below the match)."""
        self.become_probe()
        self.next = max(self.match + 1, next_index)

    def is_paused(self, max_inflight: int) -> bool:
        """No more may be sent now (a probe or snapshot chunk waits, or the window is full)."""
        if self.paused or self.refused is not None:
            return True
        return self.mode is Mode.REPLICATE and len(self.inflight) >= max_inflight

    def sent_entries(self, last: int) -> None:
        """An append up to C{last} went out in replication mode."""
        self.next = last + 1
        self.inflight.append(last)

    def heartbeat_elapsed(self) -> None:
        """
        A heartbeat interval passed: appends still unacknowledged since the
        last one were lost (resend from the match); a paused peer may be
        sent to again.
        """
        if self.mode is Mode.REPLICATE and self.inflight and self.match == self.match_at_heartbeat:
            self.become_probe()  # appends were lost: resend from the match
        self.match_at_heartbeat = self.match
        self.paused = False
