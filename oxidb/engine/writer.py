"""
The engine's single writer thread and its group commit.

Writes are queued with L{Writer.submit} (one operation, one future) or
L{Writer.submit_many} (a run of operations, such as the committed entries
of a Raft ready, with one future for all their outcomes: one queue put and
one completion instead of one per operation). The thread takes everything
queued (up to L{Writer.max_batch} operations; a longer run is applied
across several transactions and completes with its last), opens one
transaction, applies each operation inside its own SAVEPOINT (a failing
operation rolls back only itself and gets its error), records the highest
Raft index of the batch in the same transaction, commits once (one fsync
with C{synchronous=FULL}) and only then resolves the futures. A write is
therefore acknowledged only when it is durable, and many concurrent writers
share one fsync.

With a L{ChangeRecorder}, the document changes of each operation that
succeeded get their resume tokens (L{oxidb.engine.changes}), the last token
is stored in the batch's transaction, and after the commit the batch's
changes go to the listener (L{Writer.listen}), before the futures resolve.

With an L{IndexCatalog}, every rollback (of an operation's savepoint or of
the batch) tells it, so that index definitions cached inside what was
rolled back are read again.

An optional C{prepare(op)} runs just before an operation, in a savepoint of
its own: its effects stay even when the operation then fails (upstream
creates the collection a failing command names, engine.md 1.6). When it
returns C{False} it changed nothing, and the operation runs on in the same
savepoint (no release and new savepoint for nothing).

With C{run_key} and C{apply_run}, consecutive operations of one transaction
with the same key (not None) are applied together in one savepoint, such as
the single inserts into one collection of a Raft ready: one collection
lookup, one C{INSERT} statement and one id high-water write instead of one
of each per operation. Their outcomes, changes and C{last_applied} are those
of one by one; when the run applier declines or fails, the savepoint is
rolled back and they go one by one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import attrs

from oxidb.engine import changes, sqlite, store
from oxidb.engine.catalog import IndexCatalog
from oxidb.engine.changes import ChangeRecorder, IChangeListener, OperationChanges
from oxidb.errors import StorageIOError, UnavailableError

if TYPE_CHECKING:
    from oxidb.engine.operations import Operation

#: Applies one operation on the writer connection inside the open
#: transaction and returns the reply data: C{apply(op, now)}.
ApplyFunction = Callable[["Operation", float], Any]


#: The outcome of one operation: C{(True, data)} or C{(False, exception)}.
Outcome = tuple[bool, Any]

#: Applies consecutive operations of one C{run_key} together on the writer
#: connection, with the outcomes they would have one by one, calling
#: C{each(k)} once operation C{k}'s changes are recorded: C{apply_run(ops,
#: each)}; None when they must go one by one.
RunFunction = Callable[[list["Operation"], Callable[[int], None]], "list[Outcome] | None"]


@attrs.define
class _Pending:
    op: Operation
    now: float
    raft_index: int | None


@attrs.define(eq=False)
class _Job:
    """
    Operations queued together and completed together: one of L{Writer.submit}
    (C{single}: the future gets the data or the exception) or a run of
    L{Writer.submit_many} (the future gets the list of outcomes). C{done}
    counts the operations committed so far (a run longer than a batch spans
    transactions) and C{outcomes} holds theirs.
    """

    items: list[_Pending]
    future: Future[Any]
    single: bool
    done: int = 0
    outcomes: list[Outcome] = attrs.Factory(list)

    def resolve(self) -> None:
        if not self.single:
            self.future.set_result(self.outcomes)
        elif self.outcomes[0][0]:
            self.future.set_result(self.outcomes[0][1])
        else:
            self.future.set_exception(self.outcomes[0][1])


@attrs.define
class _Txn:
    """What the operations of one transaction have done so far."""

    last_applied: int
    last_token: int
    committed: list[OperationChanges] = attrs.Factory(list)


@attrs.define(eq=False)
class _Call:
    """A blocking call run on the writer thread in queue order, outside any transaction (L{Writer.submit_call})."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: Future[Any]

    def run(self) -> None:
        try:
            result = self.fn(*self.args)
        except BaseException as e:  # noqa: BLE001 - the caller gets it
            self.future.set_exception(e)
        else:
            self.future.set_result(result)


_STOP = object()


class Writer:
    """
    Owns the writer connection's transactions.

    @ivar commits: number of transactions committed so far.
    """

    def __init__(
        self,
        conn: sqlite.Connection,
        apply: ApplyFunction,
        *,
        max_batch: int = 512,
        prepare: Callable[[Operation], bool | None] | None = None,
        on_commit: Callable[[int], None] | None = None,
        recorder: ChangeRecorder | None = None,
        catalog: IndexCatalog | None = None,
        run_key: Callable[[Operation], object | None] | None = None,
        apply_run: RunFunction | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._conn = conn
        self._apply = apply
        self.max_batch = max_batch
        self._prepare = prepare
        if (run_key is None) != (apply_run is None):
            raise ValueError("run_key and apply_run go together")
        self._run_key = run_key
        self._apply_run = apply_run
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._last_applied = int(store.get_meta(conn, "last_applied", 0))
        self._recorder = recorder
        self._catalog = catalog
        self._last_token = int(store.get_meta(conn, changes.META_KEY, 0))
        self._listener: IChangeListener | None = None
        self._listener_lock = threading.Lock()
        self.commits = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="oxidb-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Apply everything already queued, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join()

    @property
    def last_applied(self) -> int:
        """The highest Raft index committed (0 if none)."""
        return self._last_applied

    @property
    def last_token(self) -> int:
        """The token of the last change committed (0 if none)."""
        return self._last_token

    def listen(self, listener: IChangeListener | None) -> int:
        """
        Send the changes of every commit from now on to C{listener} (None:
        stop); the last token committed before. Thread-safe: the changes of
        a commit either count in that token or go to the listener.
        """
        with self._listener_lock:
            self._listener = listener
            return self._last_token

    def on_writer_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, op: Operation, now: float, raft_index: int | None = None) -> Future[Any]:
        """Queue one operation; the future gets its data or its exception."""
        return self._queue_job([_Pending(op, now, raft_index)], single=True)

    def submit_many(self, items: list[tuple[Operation, float, int | None]]) -> Future[list[Outcome]]:
        """
        Queue C{(op, now, raft_index)} operations, applied in this order; the
        future gets one outcome per operation, C{(True, data)} or C{(False,
        exception)}, once the last has committed, or fails when a
        transaction carrying them failed (then a prefix may have committed:
        see L{last_applied}).
        """
        if not items:
            raise ValueError("submit_many needs at least one operation")
        return self._queue_job([_Pending(op, now, index) for op, now, index in items], single=False)

    def submit_call(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """
        Queue a blocking call C{fn(*args)} to run on the writer thread after
        the operations queued before it are committed and before those
        queued after it, outside any transaction (it shares none with
        them); the future gets its result or exception. The Raft driver
        persists a follower's log batch this way, in line with the apply of
        its committed entries, instead of on a thread of its own.
        """
        future: Future[Any] = Future()
        self._put(_Call(fn, args, future), future)
        return future

    def _queue_job(self, items: list[_Pending], *, single: bool) -> Future[Any]:
        future: Future[Any] = Future()
        self._put(_Job(items, future, single), future)
        return future

    def _put(self, item: _Job | _Call, future: Future[Any]) -> None:
        with self._lock:
            if self._closed:
                future.set_exception(UnavailableError("engine is closed"))
                return
            self._queue.put(item)

    # --- the thread -------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        carry: _Job | None = None  # a run partly committed: it goes first
        call: _Call | None = None  # taken from the queue behind a batch: it goes next
        while True:
            if carry is not None:
                job, carry = carry, None
            elif call is not None:
                queued_call: _Call = call
                call = None
                queued_call.run()
                continue
            elif stopping:
                break
            else:
                item = self._queue.get()
                if item is _STOP:
                    break
                if type(item) is _Call:
                    item.run()
                    continue
                job = item
            batch = [job]
            size = len(job.items) - job.done
            while size < self.max_batch and not stopping and call is None:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                if type(item) is _Call:
                    call = item  # after this batch: nothing queued behind it joins the batch
                    break
                batch.append(item)
                size += len(item.items)
            carry = self._run_batch(batch)
        # Anything submitted after stop() began is refused; nothing can be
        # queued behind _STOP because submit() checks _closed under the lock.

    def _run_batch(self, batch: list[_Job]) -> _Job | None:
        """
        Apply the jobs of C{batch} in one transaction. L{_run} collects them
        so that only the last can hold more operations than L{max_batch}
        leaves room for: it is cut there, and returned (with the operations
        taken counted in C{done}) to go first in the next transaction.
        """
        conn = self._conn
        # The operations of this transaction, per job.
        taken: list[tuple[_Job, list[_Pending]]] = []
        room = self.max_batch
        for job in batch:
            items = job.items[job.done :] if job.done else job.items
            if len(items) > room:
                items = items[:room]
            taken.append((job, items))
            room -= len(items)
        outcomes: list[Outcome] = []
        recorder = self._recorder
        txn = _Txn(self._last_applied, self._last_token)
        pendings = [pending for _job, items in taken for pending in items]
        run_key = self._run_key
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite.Error as e:
            self._fail_all(batch, e)
            return None
        try:
            at = 0
            # A run the applier declined or failed goes one by one to its end
            # (not tried again from each of its later operations).
            single_until = 0
            while at < len(pendings):
                pending = pendings[at]
                if pending.raft_index is not None and pending.raft_index <= txn.last_applied:
                    # Already applied before a restart: replaying it is a no-op.
                    outcomes.append((True, None))
                    at += 1
                    continue
                if run_key is not None and at >= single_until:
                    end = self._run_end(pendings, at)
                    if end - at > 1:
                        run = self._apply_run_of(pendings[at:end], txn)
                        if run is not None:
                            outcomes.extend(run)
                            at = end
                            continue
                        single_until = end
                if recorder is not None:
                    recorder.begin()
                outcome = self._apply_one(pending)
                outcomes.append(outcome)
                if outcome[0]:
                    self._finish_changes(pending, txn)
                if pending.raft_index is not None:
                    txn.last_applied = pending.raft_index
                at += 1
            last_applied, last_token, committed = txn.last_applied, txn.last_token, txn.committed
            if last_applied != self._last_applied:
                store.set_meta(conn, "last_applied", last_applied)
            if last_token != self._last_token:
                store.set_meta(conn, changes.META_KEY, last_token)
            conn.execute("COMMIT")
        except sqlite.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if self._catalog is not None:
                self._catalog.clear()
            if recorder is not None:
                recorder.begin()
            self._fail_all(batch, e)
            return None
        self._last_applied = last_applied
        self.commits += 1
        if committed or last_token != self._last_token:
            with self._listener_lock:
                self._last_token = last_token
                listener = self._listener
            if listener is not None and committed:
                try:
                    listener.committed(committed)
                except Exception:  # noqa: BLE001 - a listener must not stop the writer
                    pass
        if self._on_commit is not None:
            try:
                self._on_commit(len(outcomes))
            except Exception:  # noqa: BLE001 - an observer must not stop the writer
                pass
        at = 0
        carry: _Job | None = None
        for job, items in taken:
            job.outcomes.extend(outcomes[at : at + len(items)])
            at += len(items)
            job.done += len(items)
            if job.done < len(job.items):
                carry = job
            else:
                job.resolve()
        return carry

    def _finish_changes(self, pending: _Pending, txn: _Txn) -> None:
        """The changes recorded for C{pending}, which succeeded, join the transaction's."""
        recorder = self._recorder
        if recorder is None or recorder.empty:
            return
        # A Raft entry's changes are numbered by its index, the same on every node.
        sequence = pending.raft_index
        if sequence is None:
            sequence = changes.sequence_of(txn.last_token) + 1
        done = recorder.finish(sequence)
        if done is not None:
            txn.committed.append(done)
            txn.last_token = done.last

    def _run_end(self, pendings: list[_Pending], at: int) -> int:
        """Where the run of operations that L{_apply_run} may apply together from C{at} ends."""
        assert self._run_key is not None
        key = self._run_key(pendings[at].op)
        end = at + 1
        if key is None:
            return end
        while end < len(pendings) and self._run_key(pendings[end].op) == key:
            end += 1
        return end

    def _apply_run_of(self, run: list[_Pending], txn: _Txn) -> list[Outcome] | None:
        """
        Apply C{run} together in one savepoint (L{_apply_run}), with the
        same outcomes, changes and C{last_applied} as one by one; None, with
        nothing changed, when they must go one by one: the applier declined,
        or failed (a fatal database error is raised, as for one operation).
        """
        assert self._apply_run is not None
        conn = self._conn
        catalog = self._catalog
        recorder = self._recorder
        generation = 0 if catalog is None else catalog.mark()
        committed, last_token = len(txn.committed), txn.last_token

        def each(k: int) -> None:
            self._finish_changes(run[k], txn)

        if recorder is not None:
            recorder.begin()
        conn.execute("SAVEPOINT run")
        try:
            outcomes = self._apply_run([pending.op for pending in run], each)
        except sqlite.Error as e:
            if sqlite.is_fatal(e):
                raise
            outcomes = None
        except Exception:  # noqa: BLE001 - applied one by one instead, each gets its own outcome
            outcomes = None
        if outcomes is None or len(outcomes) != len(run):
            conn.execute("ROLLBACK TO run")
            conn.execute("RELEASE run")
            if catalog is not None:
                catalog.rolled_back(generation)
            del txn.committed[committed:]
            txn.last_token = last_token
            if recorder is not None:
                recorder.begin()
            return None
        conn.execute("RELEASE run")
        for pending in reversed(run):
            if pending.raft_index is not None:
                txn.last_applied = pending.raft_index
                break
        return outcomes

    def _apply_one(self, pending: _Pending) -> tuple[bool, Any]:
        conn = self._conn
        catalog = self._catalog
        # Before prepare: a failing prepare rolls back too.
        generation = 0 if catalog is None else catalog.mark()
        conn.execute("SAVEPOINT op")
        try:
            if self._prepare is not None and self._prepare(pending.op) is not False:
                # Effects that outlive a failure of the operation itself.
                conn.execute("RELEASE op")
                conn.execute("SAVEPOINT op")
                generation = 0 if catalog is None else catalog.mark()
            data = self._apply(pending.op, pending.now)
        except sqlite.Error as e:
            # Disk full, I/O error...: give up on the whole batch.
            if sqlite.is_fatal(e):
                raise
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            if catalog is not None:
                catalog.rolled_back(generation)
            if isinstance(e, sqlite.DATA_ERRORS):
                return False, e
            return False, StorageIOError(str(e))
        except Exception as e:  # noqa: BLE001 - the caller gets the exception
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            if catalog is not None:
                catalog.rolled_back(generation)
            return False, e
        conn.execute("RELEASE op")
        return True, data

    def _fail_all(self, batch: list[_Job], error: sqlite.Error) -> None:
        for job in batch:
            job.future.set_exception(StorageIOError(str(error)))
