"""
The document engine: collections of JSON documents in one SQLite database.

Blocking and thread-safe. Writes are typed operations
(L{oxidb.engine.operations}; their JSON form is the Raft log's request
payload, server.md 8.6) applied by one writer thread
with group commit (L{oxidb.engine.writer}); C{submit} returns a future that
resolves once the operation's transaction is durable. Reads run on the
calling thread with that thread's own reader connection, each in one read
transaction (a consistent WAL snapshot), concurrently with the writer and
with each other.

Reads are governed (L{oxidb.engine.governor}): each runs under a time limit
(the C{max_time_ms} limit, lowered by a request's own), enforced by the
reader connection's SQLite progress handler and by deadline checks in the
Python loops, and under the query, aggregation, search and reply limits.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar, cast

from oxidb import filemodes
from oxidb.atrest import AtRestKey
from oxidb.engine import keys, sqlite, store, textstore, vectors
from oxidb.engine.blobs import PreparedPuts
from oxidb.engine.catalog import IndexCatalog
from oxidb.engine.changes import ChangeRecorder, IChangeListener
from oxidb.engine.governor import (
    DEFAULT_LIMITS,
    Clock,
    Deadline,
    InlineDeadline,
    NotInline,
    QueryLimits,
    time_limit_ms,
)
from oxidb.engine.operations import BUILTIN, EnsureCollection, Insert, Operation, OperationCodec, Rejected
from oxidb.engine.reads import Reader, small_range_shape, small_shape, small_sorted_shape
from oxidb.engine.snapshots import Snapshots
from oxidb.engine.writer import Writer
from oxidb.engine.writes import WriteTxn
from oxidb.errors import BadRequestError, InvalidQueryError, OxiError, TimeLimitError, UnavailableError
from oxidb.limits import Limits

T = TypeVar("T")

#: SQLite virtual machine steps between two calls of a read's progress
#: handler (its deadline check): a few hundred microseconds of work.
PROGRESS_STEPS = 20_000

#: SQLite's longest string or blob on reader connections. Stored documents
#: are at most 16 MiB; longer values only arise from concatenating many rows,
#: which then proceeds row by row (see L{Reader._all_selected}) so that a
#: capped read can stop early.
READ_LENGTH_LIMIT = 64 * 1024 * 1024

#: Milliseconds of the reactor thread's CPU time a small read may use
#: (L{Engine.find_raw_inline}) before it is handed to a worker instead.
INLINE_READ_MS = 2

#: Reads of a collection and field not tried inline after one overran
#: L{INLINE_READ_MS}.
INLINE_SKIPS = 100

#: C{fn(txn, op, now) -> data}: applies one operation type on the writer
#: thread (see L{Engine.register_operation}).
Applier = Callable[[WriteTxn, Any, float], Any]


def _apply_itself(txn: WriteTxn, op: Operation, now: float) -> Any:
    return op.apply(txn, now)


class Engine:
    """
    One engine per data directory.

    @param data_dir: directory of the database file (created if missing).
    @param synchronous: SQLite's C{synchronous} for the writer (C{FULL}
        standalone: a commit is on disk when it returns; cluster mode may use
        C{NORMAL} since the Raft log is the durable record).
    @param auto_create_on_read: a read naming a missing collection creates
        it (upstream's behaviour, engine.md 1.6). Off by default and in the
        server: reads answer as for an empty collection and never write, so
        that the Read role cannot create state (docs/security.md).
    @param max_batch: most operations in one group commit.
    @param on_commit: called on the writer thread after every commit with the
        number of operations it carried (metrics, tests).
    @param limits: the server's limits (C{config.limits}); only the engine's
        rows are used. A L{QueryLimits} is taken as is. Default: every
        limit at its default.
    @param clock: a monotonic clock in seconds for read time limits
        (C{time.monotonic}; tests pass a fake one).
    @param cpu_clock: the calling thread's CPU time in seconds, for the
        inline budget of small reads (C{time.thread_time}; tests pass a
        fake one).
    @param progress_steps: SQLite steps between deadline checks inside a
        statement (L{PROGRESS_STEPS}).
    @param vector_exact_below: vector indexes with fewer vectors are
        searched exactly, larger ones through their HNSW graph
        (L{oxidb.engine.vectors.EXACT_BELOW}).
    @param vector_runner: runs the builds of HNSW graphs (a background
        thread each; L{oxidb.engine.vectors.inline} builds on the searching
        thread, for deterministic tests).
    @param vector_calibration: how each HNSW graph is calibrated on its own
        vectors (L{oxidb.engine.vectors.calibrate}).
    @param key: encryption at rest (L{oxidb.atrest}): every connection to
        the database, and every copy of it the engine makes, uses its
        database key. L{open} refuses a database the key does not open.

    @ivar codec: the L{OperationCodec} of every operation type this engine
        applies (L{BUILTIN} and those registered).
    @ivar prepared_puts: blob puts prepared off the writer thread for this
        engine's writer (L{oxidb.engine.blobs.prepare_put}).
    """

    def __init__(
        self,
        data_dir: str,
        *,
        synchronous: str = "FULL",
        auto_create_on_read: bool = False,
        max_batch: int = 512,
        on_commit: Callable[[int], None] | None = None,
        limits: Limits | QueryLimits | None = None,
        clock: Clock = time.monotonic,
        cpu_clock: Clock = time.thread_time,
        progress_steps: int = PROGRESS_STEPS,
        vector_exact_below: int = vectors.EXACT_BELOW,
        vector_runner: vectors.Runner = vectors.in_thread,
        vector_calibration: vectors.CalibrationPolicy = vectors.DEFAULT_CALIBRATION,
        key: AtRestKey | None = None,
    ) -> None:
        if synchronous not in store.SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(store.SYNCHRONOUS_MODES)}")
        self.data_dir = data_dir
        self.path = store.db_path(data_dir)
        self.synchronous = synchronous
        self.key = key
        self.auto_create_on_read = auto_create_on_read
        self._max_batch = max_batch
        self._on_commit = on_commit
        if limits is None:
            self.limits = DEFAULT_LIMITS
        elif isinstance(limits, QueryLimits):
            self.limits = limits
        else:
            self.limits = QueryLimits.from_limits(limits)
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._progress_steps = progress_steps
        # (collection, field) -> reads left before one is tried inline again
        # (reactor thread only; see _read_inline).
        self._inline_skips: dict[tuple[str, str], int] = {}
        self._vector_exact_below = vector_exact_below
        self.vector_cache = vectors.VectorCache(
            lambda: store.connect(self.path, writer=False, key=self.key), vector_runner, vector_calibration
        )
        self.codec = OperationCodec(BUILTIN)
        self._appliers: dict[type[Operation], Applier] = {op_type: _apply_itself for op_type in BUILTIN}
        self.prepared_puts = PreparedPuts()
        self._writer: Writer | None = None
        self._writer_conn: sqlite.Connection | None = None
        # The writer's index definitions; a new one at each open (the file
        # may have been replaced while closed: a Raft snapshot, a restore).
        self._catalog = IndexCatalog()
        self._recorder = ChangeRecorder()
        self._listener: IChangeListener | None = None
        self._local = threading.local()
        self._readers: list[sqlite.Connection] = []
        self._readers_lock = threading.Lock()
        #: the open snapshot reads (L{oxidb.engine.snapshots})
        self.snapshots = Snapshots(self._snapshot_conn, self.limits, clock, progress_steps)
        self._open = False

    # --- lifecycle --------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the database and start the writer thread."""
        if self._open:
            return
        self.vector_cache.clear()
        filemodes.private_dir(self.data_dir)
        sqlite.check_key(self.path, self.key)
        # SQLite gives -wal and -shm the database file's mode: a private
        # database file makes them private too (also those left behind).
        filemodes.private_file(self.path)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                filemodes.private_file(self.path + suffix)
        conn = store.connect(self.path, writer=True, synchronous=self.synchronous, key=self.key)
        try:
            conn.execute("BEGIN IMMEDIATE")
            store.init_schema(conn)
            store.migrate_layout(conn)
            _refresh_derived(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._writer_conn = conn
        self._catalog = IndexCatalog()
        self._writer = Writer(
            conn,
            self._apply_op,
            max_batch=self._max_batch,
            prepare=self._prepare_op,
            run_key=self._run_key,
            apply_run=self._apply_run,
            on_commit=self._on_commit,
            recorder=self._recorder,
            catalog=self._catalog,
        )
        listener = self._listener
        last_token = self._writer.listen(listener)
        if listener is not None:
            listener.opened(last_token)
        self._writer.start()
        self._open = True

    def close(self) -> None:
        """
        Apply what is queued, stop the writer and close every connection.
        Call it once no thread is reading any more.
        """
        if not self._open:
            return
        self._open = False
        assert self._writer is not None and self._writer_conn is not None
        self._writer.stop()
        self.snapshots.end_all()
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        self._local = threading.local()
        self._writer_conn.close()
        self._writer_conn = None
        self.vector_cache.clear()

    def __enter__(self) -> Engine:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- writes -----------------------------------------------------------

    def register_operation(self, op_type: type[Operation], applier: Applier | None = None) -> None:
        """
        Teach the engine an operation type (and its kind to L{codec}).
        C{applier(txn, op, now)} (default: C{op.apply(txn, now)}) runs on the
        writer thread inside the batch's transaction and its own savepoint
        (an exception rolls back only its changes and becomes the future's
        exception); it returns the reply data. C{txn} is a L{WriteTxn}: the
        engine's write primitives, reads that see the batch's uncommitted
        changes, C{txn.conn} for tables of the caller's own and
        C{txn.savepoint()} for nested all-or-nothing blocks. It must be
        deterministic given the database state, C{op} and C{now}.
        """
        self.codec.register(op_type)
        self._appliers[op_type] = _apply_itself if applier is None else applier

    def operation_of(self, payload: object) -> Operation:
        """
        The operation of a log payload (L{codec}); one that does not decode
        becomes a L{Rejected} operation, which fails when applied.
        """
        try:
            return self.codec.decode(payload)
        except OxiError as e:
            return Rejected(e)

    def submit(self, op: Operation | dict[str, Any], now: float, raft_index: int | None = None) -> Future[Any]:
        """
        Queue a write. The future resolves with the reply data, or fails with
        an L{oxidb.errors.OxiError}, after the transaction carrying it has
        committed. With C{raft_index}, the index is stored as
        L{last_applied} in that transaction; an operation whose index is not
        above L{last_applied} is skipped (its result is C{None}). A dict is
        an operation's JSON form (L{operation_of}).
        """
        if not isinstance(op, Operation):
            op = self.operation_of(op)
        if self._writer is None or not self._open:
            future: Future[Any] = Future()
            future.set_exception(UnavailableError("engine is closed"))
            return future
        return self._writer.submit(op, now, raft_index)

    def submit_many(self, items: list[tuple[Operation, float, int | None]]) -> Future[list[tuple[bool, Any]]]:
        """
        Queue C{(op, now, raft_index)} writes in this order, completed
        together (L{Writer.submit_many}): the future gets one C{(True, data)}
        or C{(False, exception)} per write once the last has committed.
        """
        if self._writer is None or not self._open:
            future: Future[list[tuple[bool, Any]]] = Future()
            future.set_exception(UnavailableError("engine is closed"))
            return future
        return self._writer.submit_many(items)

    def submit_call(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """
        Run a blocking C{fn(*args)} on the writer thread in line with the
        writes queued around it, outside their transactions (L{Writer.submit_call}).
        """
        if self._writer is None or not self._open:
            failed: Future[Any] = Future()
            failed.set_exception(UnavailableError("engine is closed"))
            return failed
        return self._writer.submit_call(fn, *args)

    def apply(self, op: Operation | dict[str, Any], now: float, raft_index: int | None = None) -> Any:
        """L{submit} and wait. Never call it from an applier (the writer thread)."""
        if self._writer is not None and self._writer.on_writer_thread():
            raise RuntimeError("Engine.apply called on the writer thread")
        return self.submit(op, now, raft_index).result()

    def last_applied(self) -> int:
        """The highest Raft index applied and committed (0 if none)."""
        if self._writer is None or not self._open:
            raise UnavailableError("engine is closed")
        return self._writer.last_applied

    def listen(self, listener: IChangeListener | None) -> int:
        """
        Send the document changes of every commit from now on to
        C{listener} (L{oxidb.engine.changes}; None: stop), also after the
        engine reopens; the last token committed before (0 while closed).
        """
        self._listener = listener
        if self._writer is None or not self._open:
            return 0
        return self._writer.listen(listener)

    def last_change_token(self) -> int:
        """The resume token of the last document change committed (0 if none)."""
        if self._writer is None or not self._open:
            raise UnavailableError("engine is closed")
        return self._writer.last_token

    @property
    def commits(self) -> int:
        """Transactions committed by the writer since L{open}."""
        return 0 if self._writer is None else self._writer.commits

    def _prepare_op(self, op: Operation) -> bool:
        """Create the collection C{op} names if missing; whether anything was written (L{Writer})."""
        name = op.auto_create()
        if name is None:
            return False
        conn = self._writer_conn
        assert conn is not None
        if store.get_collection(conn, name) is not None:
            return False
        txn = WriteTxn(conn, 0.0, catalog=self._catalog)
        try:
            txn.ensure_collection(name)
        except InvalidQueryError:
            pass  # an invalid name: the operation itself reports it
        return True

    def _run_key(self, op: Operation) -> str | None:
        """
        The collection of a plain L{Insert} (consecutive ones into one
        collection are applied together: L{_apply_run}); None for any other
        operation.
        """
        if type(op) is Insert and self._appliers.get(Insert) is _apply_itself:
            return op.collection
        return None

    def _apply_run(self, ops: list[Operation], each: Callable[[int], None]) -> list[tuple[bool, Any]] | None:
        """
        Apply consecutive L{Insert}s into one collection as if one by one
        (L{WriteTxn.insert_each}), creating the collection first if missing
        as the first insert would; None (nothing done) when they must go one
        by one.
        """
        conn = self._writer_conn
        assert conn is not None
        name = cast(Insert, ops[0]).collection
        txn = WriteTxn(conn, 0.0, self._recorder, self._catalog)
        info = store.get_collection(conn, name)
        if info is None:
            try:
                info = txn.ensure_collection(name)
            except OxiError:
                return None  # an invalid name, a missing database: each insert reports it
        outcomes = txn.insert_each(info, [cast(Insert, op).document for op in ops], each)
        if outcomes is None:
            return None
        return [(True, {"id": value}) if ok else (False, value) for ok, value in outcomes]

    def _apply_op(self, op: Operation, now: float) -> Any:
        applier = self._appliers.get(type(op))
        if applier is None:
            if isinstance(op, Rejected):
                raise op.error
            if isinstance(op, Operation):
                raise BadRequestError(f"unknown operation: {op.KIND}")
            raise BadRequestError("malformed operation")
        assert self._writer_conn is not None
        return applier(WriteTxn(self._writer_conn, now, self._recorder, self._catalog), op, now)

    # --- reads ------------------------------------------------------------

    def _reader_conn(self) -> sqlite.Connection:
        if not self._open:
            raise UnavailableError("engine is closed")
        conn: sqlite.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = store.connect(self.path, writer=False, key=self.key)
            conn.limit(sqlite.LIMIT_LENGTH, READ_LENGTH_LIMIT)
            self._local.conn = conn
            self._local.reader = None
            self._local.columns = {}
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _snapshot_conn(self) -> sqlite.Connection:
        if not self._open:
            raise UnavailableError("engine is closed")
        conn = store.connect(self.path, writer=False, key=self.key)
        conn.limit(sqlite.LIMIT_LENGTH, READ_LENGTH_LIMIT)
        return conn

    def _auto_create(self, name: str) -> None:
        if self.auto_create_on_read:
            self.apply(EnsureCollection(name), 0.0)

    def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """
        Run C{fn(reader, *args, **kwargs)} with this thread's L{Reader} in one
        read transaction (one consistent snapshot), under the server's time
        limit.
        """
        return self.read_within(None, fn, *args, **kwargs)

    def read_within(self, max_time_ms: object, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """
        L{read} under the time limit a request asked for: C{max_time_ms}
        (C{None} or C{0}: the server's; a larger value than the server's
        counts as the server's; anything but a non-negative integer is a
        L{BadRequestError}). Past it, the read stops with
        L{oxidb.errors.TimeLimitError}. A read nested in another keeps the
        outer one's reader and deadline.
        """
        limit_ms = time_limit_ms(max_time_ms, self.limits.max_time_ms)
        conn = self._reader_conn()
        if conn.in_transaction:  # a read nested in a read on this thread
            outer: Reader | None = self._local.reader
            if outer is None:
                outer = Reader(conn, self._auto_create, self._local.columns, limits=self.limits)
            return fn(outer, *args, **kwargs)
        inline_ms: int | None = getattr(self._local, "inline_ms", None)
        deadline: Deadline
        if inline_ms is None:
            deadline = Deadline(limit_ms, self._clock)
        else:
            deadline = InlineDeadline(limit_ms, self._clock, inline_ms, self._cpu_clock)
        reader = Reader(conn, self._auto_create, self._local.columns, limits=self.limits, deadline=deadline)
        conn.execute("BEGIN")
        conn.set_progress_handler(lambda: bool(deadline.progress()), self._progress_steps)
        self._local.reader = reader
        try:
            return fn(reader, *args, **kwargs)
        except TimeLimitError:
            if deadline.overran:
                raise NotInline(overran=True) from None
            raise
        except sqlite.Error:
            if deadline.expired:
                raise (NotInline(overran=True) if deadline.overran else deadline.error()) from None
            raise
        finally:
            self._local.reader = None
            conn.set_progress_handler(None, 0)
            if sqlite.in_transaction(conn):  # SQLite ends it itself after some errors
                conn.execute("COMMIT")

    def find(
        self,
        collection: str,
        query: object = None,
        sort: object = None,
        skip: object = None,
        limit: object = None,
        max_time_ms: object = None,
    ) -> list[dict[str, Any]]:
        """Matching documents: filter, sort, skip, limit (engine.md 2.5)."""
        return self.read_within(max_time_ms, Reader.find, collection, query, sort, skip, limit)

    def find_one(self, collection: str, query: object = None, max_time_ms: object = None) -> dict[str, Any] | None:
        """The matching document with the lowest C{_id}, or None."""
        return self.read_within(max_time_ms, Reader.find_one, collection, query)

    def find_raw(
        self,
        collection: str,
        query: object = None,
        sort: object = None,
        skip: object = None,
        limit: object = None,
        max_time_ms: object = None,
    ) -> str:
        """
        L{find}'s documents as one JSON array text made of the stored
        document texts (for replies: no parsing, no re-encoding).
        """
        return self.read_within(max_time_ms, Reader.find_raw, collection, query, sort, skip, limit)

    def find_raw_inline(
        self,
        collection: str,
        query: object = None,
        sort: object = None,
        skip: object = None,
        limit: object = None,
        max_time_ms: object = None,
    ) -> str:
        """
        L{find_raw} on the calling thread (the reactor's: no worker round
        trip) when the read is small (L{Reader.is_small} or
        L{Reader.small_range}, L{Reader.is_small_sorted} with a sort) and finishes
        within L{INLINE_READ_MS} of the thread's CPU time (the request's own
        time limit stays wall-clock time, L{InlineDeadline}); else
        L{NotInline}, having used at most that budget, and the caller runs
        L{find_raw} on a worker.
        """
        # The shape checks run before any transaction: most reads are not small.
        if sort is None:
            if not small_shape(query, limit) and not small_range_shape(query, limit):
                raise NotInline()
            assert isinstance(query, dict)
            field = next(iter(query))
        else:
            # Sorted on an index with a small limit (sort + limit 10): the
            # field a read is skipped by is the sort's, marked as such.
            path = small_sorted_shape(query, sort, skip, limit)
            if path is None:
                raise NotInline()
            field = "$sort " + path
        return self._read_inline(field, max_time_ms, Reader.find_raw_small, collection, query, sort, skip, limit)

    def find_one_raw_inline(self, collection: str, query: object = None, max_time_ms: object = None) -> str | None:
        """L{find_one_raw} as L{find_raw_inline} runs L{find_raw}."""
        if not small_shape(query, 1):
            raise NotInline()
        assert isinstance(query, dict)
        return self._read_inline(next(iter(query)), max_time_ms, Reader.find_one_raw_small, collection, query)

    def _read_inline(
        self, field: str, max_time_ms: object, fn: Callable[..., T], collection: object, query: object, *args: Any
    ) -> T:
        """
        C{fn(reader, collection, query, *args)} under the inline budget. A
        read that overran it is not tried inline again for the next
        L{INLINE_SKIPS} reads of the same collection and C{field} (the
        query's, or the sort's), so that a shape that turns out large costs
        the reactor the budget only once in a while.
        """
        if getattr(self._local, "reader", None) is not None:
            raise NotInline()  # never inside another read
        if type(collection) is not str:
            raise NotInline()
        shape = (collection, field)
        skips = self._inline_skips.get(shape)
        if skips is not None:
            if skips <= 1:
                del self._inline_skips[shape]
            else:
                self._inline_skips[shape] = skips - 1
            raise NotInline()
        self._local.inline_ms = INLINE_READ_MS
        try:
            return self.read_within(max_time_ms, fn, collection, query, *args)
        except NotInline as e:
            if e.overran:
                if len(self._inline_skips) >= 4096:
                    self._inline_skips.clear()
                self._inline_skips[shape] = INLINE_SKIPS
            raise
        finally:
            self._local.inline_ms = None

    def find_one_raw(self, collection: str, query: object = None, max_time_ms: object = None) -> str | None:
        """L{find_one}'s document as its stored JSON text, or None."""
        return self.read_within(max_time_ms, Reader.find_one_raw, collection, query)

    def count(self, collection: str, query: object = None, max_time_ms: object = None) -> int:
        """The number of matching documents."""
        return self.read_within(max_time_ms, Reader.count, collection, query)

    def list_collections(self) -> list[str]:
        """Every collection name, sorted."""
        return self.read(Reader.list_collections)

    def list_indexes(self, collection: str) -> list[dict[str, Any]]:
        """The collection's index descriptors (engine.md 4.6), large vector indexes with their calibration."""
        return self.read(vectors.list_indexes, self.vector_cache, self._vector_exact_below, collection)

    def list_databases(self) -> list[str]:
        """Every database, the default one first (L{oxidb.engine.databases})."""
        return self.read(Reader.list_databases)

    def database_collections(self, database: str) -> list[str]:
        """A database's collections by their bare names; it must exist."""
        return self.read(Reader.database_collections, database)

    def collection_counts(self) -> dict[str, int]:
        """Documents per collection (for metrics)."""
        return self.read(Reader.collection_counts)

    def text_search(
        self, collection: str, query: str, limit: int = 10, max_time_ms: object = None
    ) -> list[dict[str, Any]]:
        """Documents ranked by TF-IDF, each with C{_score} (engine.md 8.3)."""
        return self.read_within(max_time_ms, Reader.text_search, collection, query, limit)

    def vector_search(
        self,
        collection: str,
        field: object,
        vector: object,
        limit: object = vectors.DEFAULT_LIMIT,
        ef_search: object = None,
        max_time_ms: object = None,
    ) -> list[dict[str, Any]]:
        """The nearest documents, each with C{_distance} and C{_similarity} (engine.md 10)."""
        return self.read_within(
            max_time_ms,
            vectors.search,
            self.vector_cache,
            self._vector_exact_below,
            self.limits.vector_max_limit,
            collection,
            field,
            vector,
            limit,
            ef_search,
        )

    def aggregate(self, collection: str, pipeline: object, max_time_ms: object = None) -> list[dict[str, Any]]:
        """Run an aggregation pipeline (engine.md 5)."""
        return self.read_within(max_time_ms, Reader.aggregate, collection, pipeline)

    def version_of(self, collection: str, doc_id: int) -> int:
        """A document's committed C{_version} (0 if missing), for OCC."""
        return self.read(Reader.version_of, collection, doc_id)

    def backup(self, path: str) -> None:
        """Write a consistent copy of the database to C{path} (online)."""
        source = self._reader_conn()
        filemodes.private_file(path)
        target = sqlite.open_connection(path, self.key)
        try:
            sqlite.copy_database(source, target)
        finally:
            target.close()


def _refresh_derived(conn: sqlite.Connection) -> None:
    """
    Recompute what depends on code that changed since it was stored: the
    key encoding (key columns, and so their indexes) and the tokenizer (text
    postings). Fingerprints of both are kept in C{oxi_meta}.
    """
    key_format = keys.fingerprint()
    stored = store.get_meta(conn, "key_format")
    if stored is not None and stored != key_format:
        for info in store.list_collections(conn):
            for index in store.list_index_defs(conn, info.name):
                if index.kind in store.KEYED_KINDS:
                    store.fill_key_columns(conn, info.tbl, index)
    store.set_meta(conn, "key_format", key_format)
    text_format = textstore.fingerprint()
    stored = store.get_meta(conn, "text_format")
    if stored is not None and stored != text_format:
        for info in store.list_collections(conn):
            for index in store.list_index_defs(conn, info.name):
                if index.kind == store.INDEX_TEXT:
                    textstore.rebuild(conn, info.tbl, index.fields)
    store.set_meta(conn, "text_format", text_format)


__all__ = ["Applier", "Engine", "Operation", "WriteTxn"]
