"""
Snapshot reads (server.md 3.4 C{snapshot_begin}/C{find}/C{count}/
C{aggregate}/C{end}): a read transaction held open across requests, so that
many reads see the database as it was at one point, whatever is written
meanwhile (a consistent dump reads every collection inside one).

Each snapshot is its own reader connection with an open SQLite read
transaction. While it is open SQLite cannot checkpoint the WAL past it, so
the WAL grows with every write: a snapshot is therefore bounded. At most
C{snapshot_max_open} are open at once (more is L{ServerBusyError}), and one
is ended C{snapshot_max_secs} after it began whatever its owner does (the
server also ends a connection's snapshots when it closes). Ids are random
63-bit numbers; a snapshot answers only the owner it was begun for.

Thread-safe: reads of one snapshot are serialized on its lock. Ending a
snapshot never waits (the reactor ends them): one being read is closed by
its reader when the read ends.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from oxidb.engine import sqlite
from oxidb.engine.governor import Clock, Deadline, QueryLimits, time_limit_ms
from oxidb.engine.reads import Reader
from oxidb.errors import ServerBusyError, SnapshotNotFoundError

__all__ = ["Snapshot", "Snapshots"]

T = TypeVar("T")


@attrs.define(eq=False)
class Snapshot:
    """One open snapshot: its connection (inside a read transaction), owner and end time."""

    id: int
    owner: object
    conn: sqlite.Connection | None
    expires: float
    columns: dict[str, Any] = attrs.field(factory=dict)
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    #: ended: the next holder of C{lock} closes C{conn}
    doomed: bool = False
    closed: bool = False


@attrs.define(eq=False)
class Snapshots:
    """
    The open snapshots of one engine.

    @param connect: opens a reader connection to the engine's database.
    @param limits: C{snapshot_max_open}, C{snapshot_max_secs} and the read limits.
    @param clock: monotonic seconds (the limit on a snapshot's life and on each read).
    @param progress_steps: SQLite steps between deadline checks.
    """

    connect: Callable[[], sqlite.Connection]
    limits: QueryLimits
    clock: Clock
    progress_steps: int = 20_000
    _open: dict[int, Snapshot] = attrs.field(init=False, factory=dict)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    def begin(self, owner: object) -> Snapshot:
        """
        Open a snapshot of the database as it is now, for C{owner}.

        @raise ServerBusyError: C{snapshot_max_open} are open already.
        """
        self.expire()
        with self._lock:
            if len(self._open) >= self.limits.snapshot_max_open:
                raise ServerBusyError("too many open snapshots (OXIDB_SNAPSHOT_MAX_OPEN)")
            snap_id = secrets.randbits(63) or 1
            while snap_id in self._open:
                snap_id = secrets.randbits(63) or 1
            # Reserve the slot before the (slower) connect, under the lock.
            snapshot = Snapshot(snap_id, owner, None, self.clock() + self.limits.snapshot_max_secs)
            self._open[snap_id] = snapshot
        try:
            conn = self.connect()
            try:
                conn.execute("BEGIN")
                # The read transaction (the WAL snapshot) starts at the first read.
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except BaseException:
                conn.close()
                raise
        except BaseException:
            with self._lock:
                self._open.pop(snap_id, None)
            raise
        with self._lock:
            if self._open.get(snap_id) is snapshot:
                snapshot.conn = conn
                return snapshot
        conn.close()  # ended while it opened (the engine is closing)
        raise SnapshotNotFoundError(snap_id)

    def read(self, snap_id: object, owner: object, max_time_ms: object, fn: Callable[..., T], *args: Any) -> T:
        """
        C{fn(reader, *args)} inside snapshot C{snap_id}, under the read time limit.

        @raise SnapshotNotFoundError: no such open snapshot for C{owner}.
        """
        limit_ms = time_limit_ms(max_time_ms, self.limits.max_time_ms)
        snapshot = self._get(snap_id, owner)
        try:
            with snapshot.lock:
                conn = snapshot.conn
                if snapshot.doomed or snapshot.closed or conn is None:
                    raise SnapshotNotFoundError(snap_id)
                deadline = Deadline(limit_ms, self.clock)
                reader = Reader(conn, None, snapshot.columns, limits=self.limits, deadline=deadline)
                conn.set_progress_handler(lambda: bool(deadline.progress()), self.progress_steps)
                try:
                    return fn(reader, *args)
                except sqlite.Error:
                    if deadline.expired:
                        raise deadline.error() from None
                    raise
                finally:
                    conn.set_progress_handler(None, 0)
                    if not sqlite.in_transaction(conn):
                        # SQLite ended the read transaction after an error: the snapshot is gone.
                        snapshot.doomed = True
        finally:
            if snapshot.doomed:
                self._close(snapshot)

    def end(self, snap_id: object, owner: object) -> None:
        """
        End snapshot C{snap_id}.

        @raise SnapshotNotFoundError: no such open snapshot for C{owner}.
        """
        self._close(self._get(snap_id, owner))

    def drop(self, snap_id: int) -> None:
        """End snapshot C{snap_id} if it is still open (its time is up); never blocks."""
        with self._lock:
            snapshot = self._open.get(snap_id)
        if snapshot is not None:
            self._close(snapshot)

    def end_all(self, owner: object | None = None) -> int:
        """End every snapshot (of C{owner} if given); how many. Never blocks."""
        with self._lock:
            chosen = [s for s in self._open.values() if owner is None or s.owner is owner]
        for snapshot in chosen:
            self._close(snapshot)
        return len(chosen)

    def expire(self) -> int:
        """End the snapshots whose time is up; how many."""
        now = self.clock()
        with self._lock:
            expired = [s for s in self._open.values() if s.expires <= now and s.conn is not None]
        for snapshot in expired:
            self._close(snapshot)
        return len(expired)

    @property
    def count(self) -> int:
        """Snapshots open now."""
        with self._lock:
            return len(self._open)

    def _get(self, snap_id: object, owner: object) -> Snapshot:
        self.expire()
        with self._lock:
            snapshot = self._open.get(snap_id) if isinstance(snap_id, int) else None
        if snapshot is None or snapshot.owner is not owner or snapshot.conn is None:
            raise SnapshotNotFoundError(snap_id)
        return snapshot

    def _close(self, snapshot: Snapshot) -> None:
        """
        End C{snapshot} without waiting: closed now, or by the read in
        progress when it ends (never blocks, so the reactor may call it).
        """
        with self._lock:
            if self._open.get(snapshot.id) is snapshot:
                del self._open[snapshot.id]
            snapshot.doomed = True
        if not snapshot.lock.acquire(blocking=False):
            return  # its holder sees C{doomed} after releasing the lock and comes back here
        try:
            conn = snapshot.conn
            if snapshot.closed or conn is None:
                return
            snapshot.closed = True
            try:
                if sqlite.in_transaction(conn):
                    conn.execute("ROLLBACK")
            finally:
                conn.close()
        finally:
            snapshot.lock.release()
