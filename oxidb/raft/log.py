"""
L{RaftLog}: a Raft node's log as the core sees it (etcd-io/raft's C{log.go}
and C{log_unstable.go}).

It owns the entries held in memory (those after the purge point C{base}),
the latest snapshot, the commit point and how far the log is durable
(C{persisted}), handed to the state machine (C{applying}) and handed to
storage (C{unstable_from} and the pending truncation, snapshot and purge of
the next L{oxidb.raft.messages.PersistBatch}). It knows terms, matching and
truncation; it does not know roles, peers or messages: the step logic in
L{oxidb.raft.core} decides, this module keeps the books.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from oxidb.raft.messages import Entry, HardState, LogId, PersistBatch, Snapshot, StoredMembership
from oxidb.raft.storage import DurableState


@attrs.define(eq=False)
class RaftLog:
    """
    The log: C{entries} hold indexes C{base.index + 1} to L{last_index}.

    @ivar snapshot: the latest snapshot (built here or received).
    @ivar committed: the commit point (an index).
    @ivar persisted: the last index known durable in this node's log.
    @ivar applying: the last index handed to the state machine.
    @ivar unstable_from: the first index not handed to storage yet.
    @ivar pending_truncate: storage must drop its entries from this index on.
    @ivar pending_snapshot: storage must save this snapshot.
    @ivar pending_purge: storage may drop its entries up to this log id.
    @ivar apply_snapshot: the state machine must install this snapshot.
    """

    entries: list[Entry]
    base: LogId | None
    snapshot: Snapshot | None
    committed: int = 0
    persisted: int = 0
    applying: int = 0
    unstable_from: int = 1
    pending_truncate: int | None = None
    pending_snapshot: Snapshot | None = None
    pending_purge: LogId | None = None
    apply_snapshot: Snapshot | None = None

    @classmethod
    def restore(cls, state: DurableState) -> RaftLog:
        """
        The log loaded from storage, all of it durable and nothing committed
        yet (the core sets the commit point and what was applied).
        """
        entries = list(state.entries)
        if entries:
            first = entries[0].index
            base = state.last_purged if first > 1 else None
            if (base.index if base else 0) != first - 1:
                raise ValueError("the log does not start after the purge point")
        else:
            snapshot_id = state.snapshot.meta.last_log_id if state.snapshot else None
            known = [c for c in (state.last_purged, snapshot_id) if c is not None]
            base = max(known, key=lambda c: c.index) if known else None
        log = cls(entries, base, state.snapshot)
        log.persisted = log.last_index
        log.unstable_from = log.last_index + 1
        return log

    # --- reading ----------------------------------------------------------------

    @property
    def base_index(self) -> int:
        return self.base.index if self.base else 0

    @property
    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.base_index

    @property
    def last_log_id(self) -> LogId | None:
        return self.entries[-1].log_id if self.entries else self.base

    def log_id_at(self, index: int) -> LogId | None:
        """The log id at C{index}, which must lie in [base, last]; 0 gives None."""
        if index == self.base_index:
            return self.base
        position = index - self.base_index - 1
        if position < 0:
            raise IndexError(f"log index {index} is purged")
        return self.entries[position].log_id

    def has_index(self, index: int) -> bool:
        return self.base_index <= index <= self.last_index

    def term_at(self, index: int) -> int:
        log_id = self.log_id_at(index)
        return log_id.term if log_id else 0

    def slice(self, first: int, last: int) -> list[Entry]:
        offset = self.base_index + 1
        return self.entries[first - offset : last - offset + 1]

    def commit_id(self) -> LogId | None:
        return self.log_id_at(self.committed)

    def find_membership(self, upto: int) -> StoredMembership | None:
        """The membership in force at index C{upto}: its last entry, or the snapshot's."""
        for entry in reversed(self.slice(self.base_index + 1, upto)):
            if entry.membership is not None:
                return StoredMembership(entry.log_id, entry.membership)
        return self.snapshot.meta.last_membership if self.snapshot else None

    # --- changing ----------------------------------------------------------------

    def append(self, entries: Iterable[Entry]) -> bool:
        """Append C{entries}; says whether one of them is a membership entry."""
        changed = False
        for entry in entries:
            self.entries.append(entry)
            changed = changed or entry.membership is not None
        return changed

    def truncate(self, index: int) -> None:
        """Drop entries from C{index} on (a follower's conflicting suffix)."""
        if index <= self.committed:
            raise AssertionError("truncating committed entries")
        del self.entries[index - self.base_index - 1 :]
        if index < self.unstable_from:
            # Some of the dropped entries went to storage already.
            self.unstable_from = index
            self.pending_truncate = min(self.pending_truncate or index, index)
        self.persisted = min(self.persisted, index - 1)

    def install_snapshot(self, snapshot: Snapshot) -> None:
        """
        Restore from a leader's C{snapshot}: keep the entries after it if the
        log holds its last entry, otherwise drop them all; commit it, save it
        and hand it to the state machine.
        """
        last = snapshot.meta.last_log_id
        if self.has_index(last.index) and self.log_id_at(last.index) == last:
            self.entries = self.slice(last.index + 1, self.last_index)
        else:
            self.entries = []
            if self.unstable_from > last.index + 1:
                # Entries after the snapshot went to storage already.
                self.pending_truncate = min(self.pending_truncate or last.index + 1, last.index + 1)
            self.persisted = min(self.persisted, last.index)
        self.unstable_from = max(self.unstable_from, last.index + 1)
        self.base = last
        self.snapshot = snapshot
        self.pending_snapshot = snapshot
        self.pending_purge = last
        self.apply_snapshot = snapshot
        self.committed = max(self.committed, last.index)

    def compact(self, snapshot: Snapshot, purge: int) -> None:
        """Keep this node's own new C{snapshot}, and purge the entries up to C{purge}."""
        self.snapshot = self.pending_snapshot = snapshot
        if purge > self.base_index:
            self.entries, self.base = (
                self.slice(purge + 1, self.last_index),
                self.log_id_at(purge),
            )
            self.pending_purge = self.base

    # --- handing out and taking back ------------------------------------------------

    def has_updates(self) -> bool:
        """Something waits for storage or for the state machine."""
        return (
            self.unstable_from <= self.last_index
            or self.pending_truncate is not None
            or self.pending_snapshot is not None
            or self.pending_purge is not None
            or self.apply_snapshot is not None
            or self.applying < min(self.committed, self.persisted)
        )

    def take_persist(self, hard_state: HardState | None) -> PersistBatch:
        """What storage must save next (with C{hard_state}); it is handed out now."""
        persist = PersistBatch(
            hard_state=hard_state,
            snapshot=self.pending_snapshot,
            truncate_from=self.pending_truncate,
            entries=tuple(self.slice(self.unstable_from, self.last_index)),
            purge_upto=self.pending_purge,
            committed=self.durable_commit_id(),
        )
        self.unstable_from = self.last_index + 1
        self.pending_truncate = self.pending_snapshot = self.pending_purge = None
        return persist

    def durable_commit_id(self) -> LogId | None:
        """
        The commit point to record in the meta file of the next batch: one
        whose entry is already durable in the log. The meta file is written
        before the batch cuts and appends the log, so the commit point may
        not name an entry of the batch itself: a crash between the two would
        leave a commit point over the stale entry the batch was replacing
        (a follower that truncates its uncommitted suffix and commits the
        new leader's entries in one append). C{persisted} counts neither
        the batch's entries nor those it cuts.
        """
        index = max(min(self.committed, self.persisted), self.base_index)
        return self.log_id_at(index)

    def take_committed(self) -> tuple[Snapshot | None, tuple[Entry, ...]]:
        """
        The snapshot to install and the committed entries to apply next
        (only durable ones); they are handed out now.
        """
        apply_snapshot = self.apply_snapshot
        if apply_snapshot is not None:
            self.applying = max(self.applying, apply_snapshot.meta.last_log_id.index)
        upto = min(self.committed, self.persisted)
        committed = tuple(self.slice(self.applying + 1, upto)) if upto > self.applying else ()
        self.applying = max(self.applying, upto)
        self.apply_snapshot = None
        return apply_snapshot, committed

    def stable_to(self, persist: PersistBatch) -> None:
        """Storage has saved C{persist} (entries it cut since then stay unstable)."""
        stable = persist.entries[-1].log_id if persist.entries else None
        if stable is not None and self.has_index(stable.index):
            if self.log_id_at(stable.index) == stable:
                self.persisted = max(self.persisted, stable.index)
        snapshot = persist.snapshot
        if snapshot is not None and self.has_index(snapshot.meta.last_log_id.index):
            self.persisted = max(self.persisted, snapshot.meta.last_log_id.index)
