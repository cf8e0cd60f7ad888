"""
The replicated state machine: the document engine and the user store.

* Applying: every committed entry becomes one engine operation submitted
  with its Raft index: a normal entry's payload is decoded by the engine's
  operation codec (a payload that does not decode becomes an operation that
  fails, so its index is recorded all the same; L{Engine.operation_of}),
  blank and membership entries become a L{RaftNoop}. So the
  engine stores C{last_applied} in the same SQLite transaction as the writes
  and skips entries it applied before a restart. A batch is submitted at
  once, as one run of the writer (L{oxidb.engine.writer.Writer.submit_many}:
  one queue put and one completion for the batch), and shares its group
  commit; the outcomes come when the last operation's transaction has
  committed.
* Snapshots are the data itself: an SQLite online backup of the database
  (documents, indexes, blobs, procedures, schedules) plus C{_auth/users.json},
  packed as a tar archive (L{pack_snapshot}). The state is pinned by opening
  a read transaction (and reading the user file) before the driver moves on;
  the backup then copies that WAL snapshot while new entries are applied.
* Installing closes the engine, swaps the database file atomically, reopens
  it and brings the user store to the snapshot's users. Reads are held back
  by the L{ReadGate} meanwhile, so none sees a half-installed state.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ClassVar

import attrs
import orjson
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from oxidb import filemodes
from oxidb._threads import ReactorQueue, fire_from_thread
from oxidb.atrest import AtRestKeyError, EncryptedError, NotEncryptedError
from oxidb.auth.store import USERS_FILE, UserRecord, UserStore
from oxidb.engine import sqlite, store
from oxidb.engine.operations import Operation
from oxidb.logs import Logger
from oxidb.raft.messages import Entry
from oxidb.raft.node import IStateMachine, Outcome, SnapshotBuild


@attrs.frozen
class RaftNoop(Operation):
    """The engine operation of a blank or membership entry: it records the entry's index, nothing else."""

    KIND: ClassVar[str] = "RaftNoop"

    def apply(self, txn: Any, now: float) -> None:
        return None


#: Snapshot archive members.
MANIFEST = "snapshot.json"
DATABASE = "oxidb.sqlite3"
USERS = "users.json"
SNAPSHOT_FORMAT = 1
#: Suffix of files being written; stale ones are removed at start-up.
_TMP = ".tmp"


class SnapshotError(Exception):
    """A snapshot archive is malformed or its database is damaged."""


class ReadGate:
    """
    Lets reads run concurrently, except while the state is being replaced:
    L{close} waits for the reads in flight and holds new ones back until
    L{open}.
    """

    def __init__(self) -> None:
        self._active = 0
        self._closed = False
        self._drained: Deferred[None] | None = None
        self._held: list[tuple[Callable[[], Deferred[Any]], Deferred[Any]]] = []

    @property
    def closed(self) -> bool:
        """The state is being replaced: reads wait."""
        return self._closed

    def run(self, start: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        """C{start()} now, or once the gate opens; its result."""
        if self._closed:
            d: Deferred[Any] = Deferred()
            self._held.append((start, d))
            return d
        return self._start(start)

    def _start(self, start: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        self._active += 1
        return start().addBoth(self._finished)

    def _finished(self, result: Any) -> Any:
        self._active -= 1
        if self._active == 0 and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)
        return result

    def close(self) -> Deferred[None]:
        """Fires once no read runs; reads started from now on wait."""
        if self._closed:
            raise RuntimeError("the read gate is closed already")
        self._closed = True
        d: Deferred[None] = Deferred()
        if self._active == 0:
            d.callback(None)
        else:
            self._drained = d
        return d

    def open(self) -> None:
        self._closed = False
        held, self._held = self._held, []
        for start, d in held:
            self._start(start).chainDeferred(d)


def pack_snapshot(database: bytes, users: bytes | None) -> bytes:
    """The snapshot archive (tar) of a database file and the user file."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        members = [(MANIFEST, orjson.dumps({"format": SNAPSHOT_FORMAT})), (DATABASE, database)]
        if users is not None:
            members.append((USERS, users))
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def unpack_snapshot(data: bytes) -> tuple[bytes, bytes | None]:
    """The database and user file bytes of a snapshot archive; raises L{SnapshotError}."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar.getmembers():
                if member.name not in (MANIFEST, DATABASE, USERS) or not member.isfile():
                    raise SnapshotError(f"unexpected snapshot member {member.name!r}")
                if member.name in found:
                    raise SnapshotError(f"snapshot member {member.name!r} appears twice")
                source = tar.extractfile(member)
                assert source is not None
                found[member.name] = source.read()
    except tarfile.TarError as e:
        raise SnapshotError(f"not a snapshot archive: {e}") from None
    try:
        manifest = orjson.loads(found.get(MANIFEST, b"null"))
    except orjson.JSONDecodeError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError("the snapshot has no manifest of a known format")
    if DATABASE not in found:
        raise SnapshotError("the snapshot has no database")
    return found[DATABASE], found.get(USERS)


def _key_mismatch(error: AtRestKeyError) -> str:
    """The one-line cause of a snapshot database that does not open with this node's key."""
    if isinstance(error, EncryptedError):
        return (
            "the snapshot's database is encrypted (or is not an OxiDB database) and this node has no "
            "OXIDB_ENCRYPTION_KEY: every node of a cluster needs the same key file"
        )
    if isinstance(error, NotEncryptedError):
        return (
            "the snapshot's database is not encrypted but this node has OXIDB_ENCRYPTION_KEY set: "
            "every node of a cluster needs the same key file"
        )
    return (
        "the snapshot's database is encrypted with a different key than this node's OXIDB_ENCRYPTION_KEY "
        "(or is not an OxiDB database): every node of a cluster needs the same key file"
    )


def parse_users(data: bytes) -> list[UserRecord]:
    """The records of a C{users.json}; raises L{SnapshotError}."""
    try:
        items = orjson.loads(data)
        if not isinstance(items, list):
            raise ValueError("expected an array of user records")
        return [UserRecord.from_json(item) for item in items]
    except (orjson.JSONDecodeError, ValueError) as e:
        raise SnapshotError(f"the snapshot's user file is malformed: {e}") from None


@implementer(IStateMachine)
class EngineStateMachine:
    """
    @param engine: the opened L{oxidb.engine.engine.Engine}.
    @param reactor: for C{callFromThread}.
    @param threadpool: where snapshots are built (the server's pool).
    @param run_io: runs blocking work on the Raft I/O thread (installs).
    @param gate: the L{ReadGate} every engine read passes.
    @param users: the user store, or C{None} when authentication is off.
    """

    _log = Logger()

    def __init__(
        self,
        engine: Any,
        *,
        reactor: Any,
        threadpool: Any,
        run_io: Callable[..., Deferred[Any]],
        gate: ReadGate,
        users: Callable[[], UserStore | None],
    ) -> None:
        self._engine = engine
        self._reactor = reactor
        self._threadpool = threadpool
        self._run_io = run_io
        self._gate = gate
        self._users = users
        self._building: Deferred[Any] | None = None
        # The writer thread's results (applies, persists run in line with
        # them): results completing together share one reactor wakeup.
        self._to_reactor = ReactorQueue(reactor)
        engine.register_operation(RaftNoop)

    @property
    def _users_path(self) -> Path:
        return Path(self._engine.data_dir) / "_auth" / USERS_FILE

    # --- applying ----------------------------------------------------------------

    def apply(self, entries: Sequence[Entry]) -> Deferred[list[Outcome]]:
        # One completion for the whole run: the writer commits it (in one
        # transaction, or several for a long run) and then resolves it.
        future = self.submit_entries(entries)
        return self._to_reactor.deferred(future).addBoth(self._outcomes, entries)

    def run_in_writer(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        Run a blocking C{fn(*args)} on the engine's writer thread, after the
        entries submitted before it are applied and before those submitted
        after it (L{oxidb.engine.engine.Engine.submit_call}): how the driver
        persists a follower's log batch in line with its applies, without a
        hand-off to the Raft I/O thread and back.
        """
        return self._to_reactor.deferred(self._engine.submit_call(fn, *args))

    def submit_entries(self, entries: Sequence[Entry]) -> Future[list[tuple[bool, Any]]]:
        """Queue C{entries}' operations on the engine's writer as one run (L{Engine.submit_many})."""
        engine = self._engine
        items: list[tuple[Operation, float, int | None]] = []
        for entry in entries:
            if entry.membership is None and entry.payload is not None:
                op = engine.operation_of(entry.payload)
            else:
                op = RaftNoop()
            items.append((op, (entry.ts or 0) / 1000.0, entry.index))
        future: Future[list[tuple[bool, Any]]] = engine.submit_many(items)
        return future

    def _outcomes(self, result: Any, entries: Sequence[Entry]) -> list[Outcome]:
        applied = self._engine.last_applied()
        if isinstance(result, Failure) or applied < entries[-1].index:
            error = result.value if isinstance(result, Failure) else None
            raise RuntimeError(f"the engine did not apply entries up to {entries[-1].index}: {error}")
        outcomes = []
        for entry, (ok, value) in zip(entries, result, strict=True):
            if not ok:
                outcomes.append(Outcome(False, value))
            elif entry.membership is not None:
                outcomes.append(Outcome(True, "membership updated"))
            else:
                outcomes.append(Outcome(True, value))
        return outcomes

    # --- building a snapshot --------------------------------------------------------

    def build_snapshot(self) -> SnapshotBuild:
        pinned: Deferred[None] = Deferred()

        def pin() -> None:
            fire_from_thread(self._reactor, pinned, None)

        data = deferToThreadPool(self._reactor, self._threadpool, self._build, pin)

        def failed(failure: Any) -> Any:
            if not pinned.called:
                pinned.errback(failure)
            return failure

        data.addErrback(failed)
        self._building = data
        data.addBoth(self._built)
        return SnapshotBuild(pinned, data)

    def _built(self, result: Any) -> Any:
        self._building = None
        return result

    def _build(self, pin: Callable[[], None]) -> bytes:
        """Blocking: pin the state, then back it up and pack it."""
        engine = self._engine
        target = engine.path + ".snapshot" + _TMP
        conn = store.connect(engine.path, writer=False, key=engine.key)
        try:
            conn.execute("BEGIN")
            # The first read fixes the WAL snapshot the backup copies.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            try:
                users: bytes | None = self._users_path.read_bytes()
            except FileNotFoundError:
                users = None
            pin()
            filemodes.private_file(target)
            out = sqlite.open_connection(target, engine.key)
            try:
                sqlite.copy_database(conn, out)
            finally:
                out.close()
            conn.execute("COMMIT")
            with open(target, "rb") as f:
                database = f.read()
        finally:
            conn.close()
            if os.path.exists(target):
                os.remove(target)
        return pack_snapshot(database, users)

    # --- installing a snapshot ---------------------------------------------------------

    @inlineCallbacks
    def install_snapshot(self, data: bytes) -> Any:
        staged = self._engine.path + ".install" + _TMP
        users = yield self._run_io(self._stage, data, staged)
        if self._building is not None:
            # The engine's file must not change under a backup in progress.
            yield self._building.addErrback(lambda _: None)
        yield self._gate.close()
        try:
            yield self._run_io(self._swap, staged, users)
        finally:
            self._gate.open()

    def _stage(self, data: bytes, staged: str) -> list[UserRecord] | None:
        """Blocking: write the snapshot's database beside the live one and check it."""
        database, users = unpack_snapshot(data)
        records = None if users is None else parse_users(users)
        with filemodes.open_private(staged) as f:
            f.write(database)
            f.flush()
            os.fsync(f.fileno())
        try:
            try:
                sqlite.check_key(staged, self._engine.key)
            except AtRestKeyError as e:
                raise SnapshotError(_key_mismatch(e)) from None
            conn = store.connect(staged, writer=False, key=self._engine.key)
            try:
                result = conn.execute("PRAGMA quick_check").fetchone()
                applied = store.get_meta(conn, "last_applied", 0)
            finally:
                conn.close()
            if result is None or result[0] != "ok":
                raise SnapshotError(f"the snapshot's database is damaged: {result}")
        except sqlite.Error as e:
            os.remove(staged)
            raise SnapshotError(f"the snapshot's database is damaged: {e}") from None
        except SnapshotError:
            os.remove(staged)
            raise
        self._log.info("raft: snapshot database staged (last applied index {index})", index=applied)
        return records

    def _swap(self, staged: str, users: list[UserRecord] | None) -> None:
        """Blocking, with no reads running: replace the database and the users."""
        engine = self._engine
        engine.close()
        for suffix in ("-wal", "-shm"):
            try:
                os.remove(engine.path + suffix)
            except FileNotFoundError:
                pass
        os.replace(staged, engine.path)
        fd = os.open(os.path.dirname(engine.path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        engine.open()
        user_store = self._users()
        if user_store is not None and users is not None:
            user_store.replace_all(users)


__all__ = [
    "EngineStateMachine",
    "RaftNoop",
    "ReadGate",
    "SnapshotError",
    "pack_snapshot",
    "parse_users",
    "unpack_snapshot",
]
