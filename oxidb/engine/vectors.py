"""
Vector indexes (engine.md 10): their vectors in SQLite, exact search with
numpy and an in-memory HNSW graph (usearch) for large indexes.

The source of truth is the index's table C{<tbl>_v<seq>(id, rev, vec)}
(L{oxidb.engine.store}), written by L{sync} from the engine's write
primitives in the same transaction as the documents. Every change of a
document's vector gets a C{rev} above all earlier ones; a vector that goes
away (document deleted, field no longer a vector of the right length) moves
its id to C{<tbl>_v<seq>_gone} with its C{rev}. So the changes since any
C{rev} are two indexed range reads.

Search (L{search}) runs in the reader's snapshot:

  - below L{EXACT_BELOW} vectors, exactly: every stored vector against the
    query with numpy;
  - at or above it, as the index's calibration chose (L{calibrate}): the
    L{VectorCache} graph of the index is built from the table on first use
    after the engine opens, calibrated on the index's own vectors, then
    brought up to the snapshot's C{rev} from the change ranges before each
    search. In graph mode it proposes the candidates at the C{ef_search}
    that reached recall@10 0.95 (with a margin); their distances are then
    computed from the snapshot's stored vectors, so every returned distance
    is exact and every returned document exists in the snapshot. In exact
    mode (no C{ef_search} reached it at a cost below exact search) the
    query is compared with every vector, kept in memory. A request's
    C{ef_search} always searches the graph. The graph is a cache: dropping
    it loses nothing.

Distances (engine.md 10): cosine C{1 - cos} (1.0 when either vector is all
zeros), euclidean L2, dot product C{-(a.b)}. Similarities: cosine
C{1 - d/2}, euclidean C{1/(1+d)}, dot product C{1/(1+e^d)}. Results are
sorted by distance, ties by ascending C{_id}.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import numpy.typing as npt
import orjson

from oxidb.engine import paths, sqlite, store
from oxidb.engine.governor import reply_cap
from oxidb.engine.store import CollectionInfo, IndexDef
from oxidb.errors import BadRequestError, InvalidQueryError

if TYPE_CHECKING:
    from usearch.index import Index

    from oxidb.engine.reads import Reader

Matrix = npt.NDArray[np.float32]

METRIC_COSINE = "cosine"
METRIC_EUCLIDEAN = "euclidean"
#: Listed as upstream lists it (engine.md 4.6); C{dot_product} is accepted too.
METRIC_DOT = "dotproduct"
METRICS = (METRIC_COSINE, METRIC_EUCLIDEAN, METRIC_DOT)

#: The largest dimension of a vector index (a 16384-float vector is about
#: 200 KB of JSON per document).
MAX_DIMENSION = 16384

#: Results of a C{vector_search} without C{limit}.
DEFAULT_LIMIT = 10

#: Indexes with fewer vectors are searched exactly (upstream's threshold).
EXACT_BELOW = 1000

#: HNSW parameters (upstream's M and ef_construction). Searches without
#: C{ef_search} use the one a graph's calibration chose (L{calibrate});
#: C{DEFAULT_EF_SEARCH} is only the graph's setting until then.
CONNECTIVITY = 16
EXPANSION_ADD = 200
DEFAULT_EF_SEARCH = 128

#: Rows compared per numpy step of an exact search (the deadline is checked
#: between steps).
_CHUNK = 8192

_LE_F32 = np.dtype("<f4")


def index_name(field: str) -> str:
    """The name of the vector index on C{field} (engine.md 4.5)."""
    return f"_vec_{field}"


def normalize_metric(value: object) -> str:
    """The stored metric name of a request's C{metric}: unknown ones become cosine (engine.md 10)."""
    if value == "euclidean":
        return METRIC_EUCLIDEAN
    if value in ("dot_product", "dotproduct"):
        return METRIC_DOT
    return METRIC_COSINE


def check_dimension(value: object) -> int:
    """A vector index's dimension, or L{BadRequestError}."""
    if type(value) is not int:
        raise BadRequestError("missing 'dimension'")
    if not 1 <= value <= MAX_DIMENSION:
        raise BadRequestError(f"'dimension' must be an integer from 1 to {MAX_DIMENSION}")
    return value


# --- vectors of documents ------------------------------------------------------


def _as_f32(value: object) -> Matrix | None:
    """C{value} as a float32 vector if it is a list of finite numbers that fit, else None."""
    if type(value) is not list or not all(type(x) is int or type(x) is float for x in value):
        return None
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            vector = np.asarray(value, dtype=np.float64).astype(_LE_F32)
    except (OverflowError, ValueError):
        return None
    if not np.isfinite(vector).all():
        return None
    return vector


def vector_of(doc: dict[str, Any], path: str, dimension: int) -> bytes | None:
    """
    The stored form of a document's vector at C{path}: C{dimension} numbers
    as little-endian float32; None (not indexed, engine.md 10) for anything
    else, also numbers beyond the float32 range.
    """
    found, value = paths.get_path(doc, path)
    if not found or type(value) is not list or len(value) != dimension:
        return None
    vector = _as_f32(value)
    return None if vector is None else vector.tobytes()


def query_vector(value: object) -> Matrix:
    """A request's C{vector}, or L{BadRequestError}."""
    if type(value) is not list:
        raise BadRequestError("missing 'vector' array")
    if not all(type(x) is int or type(x) is float for x in value):
        raise BadRequestError("'vector' must be an array of numbers")
    vector = _as_f32(value)
    if vector is None:
        raise BadRequestError("'vector' must hold finite numbers within the 32-bit float range")
    return vector


# --- the write path -----------------------------------------------------------


def _next_rev(conn: sqlite.Connection, vt: str) -> int:
    row = conn.execute(
        f"SELECT max(coalesce((SELECT max(rev) FROM {vt}), 0), coalesce((SELECT max(rev) FROM {vt}_gone), 0))"
    ).fetchone()
    return int(row[0]) + 1


def sync(
    conn: sqlite.Connection,
    tbl: str,
    defs: Iterable[IndexDef],
    written: Iterable[tuple[int, dict[str, Any]]] = (),
    removed: Iterable[int] = (),
    *,
    new: bool = False,
) -> None:
    """
    Keep a collection's vector indexes in step with a write, inside the
    writer's transaction: C{written} are C{(id, document)} as stored now
    (C{new}: ids not seen before), C{removed} the ids of deleted documents.
    """
    indexes = [index for index in defs if index.kind == store.INDEX_VECTOR]
    if not indexes:
        return
    written = list(written)
    removed = list(removed)
    for index in indexes:
        dimension, _ = store.get_vector_spec(conn, index)
        vt = store.vector_table(tbl, index)
        rev = _next_rev(conn, vt)
        path = index.fields[0]
        upserts: list[tuple[int, int, bytes]] = []
        gone: list[tuple[int, int]] = [(rev, doc_id) for doc_id in removed]
        for doc_id, doc in written:
            blob = vector_of(doc, path, dimension)
            if blob is not None:
                upserts.append((doc_id, rev, blob))
            elif not new:
                gone.append((rev, doc_id))
        if gone:
            conn.executemany(f"INSERT OR REPLACE INTO {vt}_gone(id, rev) SELECT id, ? FROM {vt} WHERE id = ?", gone)
            conn.executemany(f"DELETE FROM {vt} WHERE id = ?", [(doc_id,) for _, doc_id in gone])
        if upserts:
            # An unchanged vector keeps its rev: the graph has nothing to redo.
            conn.executemany(
                f"INSERT INTO {vt}(id, rev, vec) VALUES (?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET rev = excluded.rev, vec = excluded.vec WHERE vec IS NOT excluded.vec",
                upserts,
            )
            if not new:
                conn.executemany(f"DELETE FROM {vt}_gone WHERE id = ?", [(doc_id,) for doc_id, _, _ in upserts])


def fill(conn: sqlite.Connection, info: CollectionInfo, index: IndexDef) -> None:
    """Index every document of the collection (a new, empty vector index)."""
    rows = iter(conn.execute(f"SELECT _id, {store.DOC_TEXT} FROM {info.tbl} ORDER BY _id"))
    while True:
        batch = list(itertools.islice(rows, 1000))  # (no fetchmany: portable across SQLite modules)
        if not batch:
            break
        sync(conn, info.tbl, [index], ((doc_id, orjson.loads(text)) for doc_id, text in batch), new=True)


def copy_tables(conn: sqlite.Connection, old_tbl: str, new_tbl: str, index: IndexDef) -> None:
    """C{compact}: the index's vectors into fresh tables of the new collection table (no tombstones)."""
    store.create_vector_tables(conn, new_tbl, index)
    old, new = store.vector_table(old_tbl, index), store.vector_table(new_tbl, index)
    conn.execute(f"INSERT INTO {new}(id, rev, vec) SELECT id, rev, vec FROM {old} ORDER BY id")
    store.drop_vector_tables(conn, old_tbl, index)


# --- distances -------------------------------------------------------------------


def row_norms(matrix: Matrix) -> npt.NDArray[np.float32]:
    """The L2 norm of each row of C{matrix} (float32), as L{distances} computes it."""
    return np.asarray(np.sqrt(np.einsum("ij,ij->i", matrix, matrix)), dtype=np.float32)


def distances(
    matrix: Matrix, query: Matrix, metric: str, norms: npt.NDArray[np.float32] | None = None
) -> npt.NDArray[np.float32]:
    """
    The distance of each row of C{matrix} to C{query} (float32); C{norms}
    are the rows' L{row_norms} when the caller keeps them (cosine).

    The dot products are an C{einsum}, not C{matrix @ query}: OpenBLAS
    runs a matrix-vector product on several threads, and on a busy machine
    waiting for them made it 20 to 40 times slower than one thread
    (bench/vector_bench.py under load); C{einsum}'s loop is one thread and
    never waits.
    """
    if metric == METRIC_EUCLIDEAN:
        diff = matrix - query
        return np.asarray(np.sqrt(np.einsum("ij,ij->i", diff, diff)), dtype=np.float32)
    if metric == METRIC_DOT:
        dots: npt.NDArray[np.float32] = np.einsum("ij,j->i", matrix, query)
        return (-dots).astype(np.float32)
    return _cosine_distances(matrix, query, row_norms(matrix) if norms is None else norms)


#: Rows whose float32 norm is outside these bounds may have had squares
#: underflow (tiny components) or overflow: their cosine is computed again
#: in float64.
_NORM_EXACT = (1e-18, 1e18)


def _cosine_distances(matrix: Matrix, query: Matrix, norms: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """
    Cosine distances: 1 - cos, and 1 against a zero vector. The query is
    scaled to unit length in float64 (a tiny or huge query loses nothing),
    the dot products run in float32, and the rare rows whose float32 norm
    may be wrong (L{_NORM_EXACT}) are done in float64 from their values.
    """
    q64 = query.astype(np.float64)
    q_norm = float(np.sqrt(q64 @ q64))
    if q_norm == 0 or not math.isfinite(q_norm):
        return np.ones(len(matrix), dtype=np.float32)
    unit = (q64 / q_norm).astype(np.float32)
    dots = np.einsum("ij,j->i", matrix, unit)
    low, high = _NORM_EXACT
    good = (norms >= low) & (norms <= high)
    cosine = dots / np.where(good, norms, 1)
    out = np.where(good, 1 - cosine, 1).astype(np.float32)
    rows = np.flatnonzero(~good)
    if len(rows):
        m64 = matrix[rows].astype(np.float64)
        scale = np.abs(m64).max(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = m64 / np.where(scale > 0, scale, 1)[:, None]
            cos64 = (scaled @ (q64 / q_norm)) / np.sqrt(np.einsum("ij,ij->i", scaled, scaled))
        out[rows] = np.where(scale > 0, 1 - cos64, 1)
    return out


def similarity(distance: float, metric: str) -> float:
    """The C{_similarity} of a distance (engine.md 10)."""
    if metric == METRIC_EUCLIDEAN:
        return 1.0 / (1.0 + distance)
    if metric == METRIC_DOT:
        # 1 / (1 + e^d) without overflow.
        if distance >= 0:
            e = math.exp(-distance)
            return e / (1.0 + e)
        return 1.0 / (1.0 + math.exp(distance))
    return 1.0 - distance / 2.0


def _best(ids: npt.NDArray[np.int64], dist: npt.NDArray[np.float32], limit: int) -> list[tuple[int, float]]:
    """The C{limit} smallest distances, ties by ascending id."""
    if len(ids) > limit:
        cut = np.partition(dist, limit - 1)[limit - 1]
        keep = dist <= cut
        ids, dist = ids[keep], dist[keep]
    order = np.lexsort((ids, dist))[:limit]
    return [(int(ids[i]), float(dist[i])) for i in order]


# --- the HNSW cache -------------------------------------------------------------------


_USEARCH_METRIC = {METRIC_COSINE: "cos", METRIC_EUCLIDEAN: "l2sq", METRIC_DOT: "ip"}

#: Most vector changes a search applies to a graph itself before searching
#: it; past that the graph is rebuilt in the background.
CATCH_UP_MAX = 1000

#: Rows a graph build reads per step, and vectors per thread in one bulk add
#: (between adds it checks whether the graph is still wanted).
BUILD_STEP = 16384

#: C{runner(job)}: runs a graph build (L{VectorCache}).
Runner = Callable[[Callable[[], None]], None]


def in_thread(job: Callable[[], None]) -> None:
    """The default L{Runner}: a daemon thread per build."""
    threading.Thread(target=job, name="oxidb-vector-build", daemon=True).start()


def inline(job: Callable[[], None]) -> None:
    """A L{Runner} that builds at once, on the searching thread (tests, tools)."""
    job()


# --- calibration ---------------------------------------------------------------------------

#: The C{k} of the recall a calibration measures (recall@10).
RECALL_AT = 10

#: How a large index answers searches without C{ef_search} (L{Calibration}).
MODE_GRAPH = "graph"
MODE_EXACT = "exact"


@attrs.frozen
class CalibrationPolicy:
    """
    How a graph is calibrated on its own vectors after each build
    (L{calibrate}).

    @ivar target: the recall@10 against exact search to guarantee.
    @ivar margin: standard errors of the per-query recall the estimate must
        clear the target by (a one-sided bound, not a point estimate)...
    @ivar min_margin: ...and at least this much (the queries are a sample
        of the stored vectors, and a client's may differ a little).
    @ivar queries: most stored vectors sampled as queries.
    @ivar ladder: the C{ef_search} values tried, in increasing order.
    @ivar max_cost_ratio: the graph is used only if a query through it
        costs less than this times an exact query over the vectors in
        memory (1: it must be cheaper).
    @ivar budget_seconds: wall time after which no further C{ef_search} is
        tried (the index then answers exactly unless one already passed).
    @ivar recalibrate_after: the fraction of the calibrated vector count
        that may change (inserts, updates, deletes) before the graph is
        rebuilt and calibrated again in the background.
    @ivar seed: of the query sample.
    """

    target: float = 0.95
    margin: float = 3.0
    min_margin: float = 0.03
    queries: int = 100
    ladder: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    max_cost_ratio: float = 1.0
    budget_seconds: float = 60.0
    recalibrate_after: float = 0.2
    seed: int = 0


DEFAULT_CALIBRATION = CalibrationPolicy()


@attrs.frozen
class Calibration:
    """
    What a calibration measured and chose.

    @ivar mode: L{MODE_GRAPH} (searches go through the graph at
        C{ef_search}) or L{MODE_EXACT} (no C{ef_search} tried reached the
        target at a cost below exact search: searches compare every vector).
    @ivar ef_search: the chosen C{ef_search} (graph mode), else None.
    @ivar recall: the lower bound of the estimated recall@10 of the chosen
        mode (1.0 for exact).
    @ivar vectors: the vectors the graph held.
    @ivar queries: the sampled queries.
    @ivar exact_ms: milliseconds per exact query over the vectors in memory.
    @ivar graph_ms: milliseconds per graph query at the chosen (or, in exact
        mode, the last tried) C{ef_search}; None if none was tried.
    @ivar seconds: the calibration's wall time.
    @ivar tried: C{(ef_search, recall lower bound, ms per query)} of each
        step tried.
    """

    mode: str
    ef_search: int | None
    recall: float
    vectors: int
    queries: int
    exact_ms: float
    graph_ms: float | None
    seconds: float
    tried: tuple[tuple[int, float, float], ...] = ()

    def describe(self) -> dict[str, Any]:
        """The C{list_indexes} form (C{search} of a large vector index)."""
        return {
            "mode": self.mode,
            "ef_search": self.ef_search,
            "recall_estimate": round(self.recall, 4),
            "calibrated_vectors": self.vectors,
            "calibration_queries": self.queries,
            "exact_ms": round(self.exact_ms, 3),
            "graph_ms": None if self.graph_ms is None else round(self.graph_ms, 3),
            "calibration_seconds": round(self.seconds, 3),
            "tried": [[ef, round(recall, 4), round(ms, 3)] for ef, recall, ms in self.tried],
        }


def _lower_bound(recalls: npt.NDArray[np.float64], margin: float, min_margin: float) -> float:
    """The mean of per-query recalls minus C{margin} standard errors, and at least C{min_margin}."""
    error = float(recalls.std(ddof=1)) / math.sqrt(len(recalls)) if len(recalls) > 1 else 0.0
    return float(recalls.mean()) - max(margin * error, min_margin)


#: Distances this close to the 10th nearest count as ties with it (float32
#: rounding: the graph's arithmetic and numpy's may order them either way).
_TIE = 2e-6


def held_out(size: int, policy: CalibrationPolicy = DEFAULT_CALIBRATION) -> npt.NDArray[np.intp]:
    """
    The rows a build keeps out of its graph until it is calibrated, to
    query it with (seeded): up to C{policy.queries}, at most a fifth of
    the vectors.
    """
    rng = np.random.default_rng(policy.seed)
    return np.sort(rng.choice(size, size=min(policy.queries, size // 5), replace=False))


def calibrate(
    index: Index,
    ids: npt.NDArray[np.uint64],
    matrix: Matrix,
    held: npt.NDArray[np.intp],
    metric: str,
    policy: CalibrationPolicy = DEFAULT_CALIBRATION,
    clock: Callable[[], float] = time.perf_counter,
) -> Calibration:
    """
    Choose how C{index} answers: it holds the vectors C{ids}/C{matrix}
    (ids ascending) but for the rows C{held} (L{held_out}), which are the
    queries, so that they are as new to the graph as a client's query
    (a stored vector would find its own links). Each query's exact top 10
    among the graph's vectors comes from numpy (ties at the 10th distance
    all count as true), then the graph is searched at each C{ef_search} of
    the ladder until the lower bound of its recall@10 reaches the target.
    Exact mode if none does before the graph costs more per query than
    exact search, or before the time budget is spent.
    """
    started = clock()
    size = len(ids) - len(held)
    k = min(RECALL_AT, size)
    if k < 1 or not len(held):
        return Calibration(MODE_EXACT, None, 1.0, len(ids), 0, 0.0, None, clock() - started)
    norms = row_norms(matrix) if metric == METRIC_COSINE else None
    queries = matrix[held]
    # The truth, timed: what an exact query costs (the median: a busy
    # machine's pauses are not the query's; numpy's BLAS releases the GIL).
    kth = np.empty(len(held), dtype=np.float32)
    times = np.empty(len(held), dtype=np.float64)
    for n, query in enumerate(queries):
        start = clock()
        dist = distances(matrix, query, metric, norms)
        dist[held] = np.inf
        kth[n] = np.partition(dist, k - 1)[k - 1]
        times[n] = clock() - start
    exact_ms = float(np.median(times)) * 1000
    tried: list[tuple[int, float, float]] = []
    graph_ms: float | None = None
    for ef in policy.ladder:
        if clock() - started > policy.budget_seconds:
            break
        # usearch types the property read-only; it has a setter.
        index.expansion_search = max(ef, k)  # type: ignore[misc]
        recalls = np.empty(len(held), dtype=np.float64)
        for n, query in enumerate(queries):
            start = clock()
            keys = np.asarray(index.search(query, k, threads=1).keys, dtype=np.uint64)
            times[n] = clock() - start
            where = np.searchsorted(ids, keys)
            dist = distances(matrix[where], query, metric, None if norms is None else norms[where])
            recalls[n] = min(int(np.count_nonzero(dist <= kth[n] + _TIE * max(1.0, abs(float(kth[n]))))), k) / k
        graph_ms = float(np.median(times)) * 1000
        low = _lower_bound(recalls, policy.margin, policy.min_margin)
        tried.append((ef, low, graph_ms))
        if graph_ms >= policy.max_cost_ratio * exact_ms:
            break
        if low >= policy.target:
            return Calibration(
                MODE_GRAPH, ef, low, len(ids), len(held), exact_ms, graph_ms, clock() - started, tuple(tried)
            )
    return Calibration(MODE_EXACT, None, 1.0, len(ids), len(held), exact_ms, graph_ms, clock() - started, tuple(tried))


@attrs.define
class _Vectors:
    """
    An index's vectors in memory for exact search (exact mode): one float32
    matrix with spare rows, its ids and (cosine) norms; a removed row takes
    the last row's place, so the first C{size} rows are the vectors.
    """

    ids: npt.NDArray[np.int64]
    matrix: Matrix
    norms: npt.NDArray[np.float32] | None
    size: int
    rows: dict[int, int] = attrs.field(factory=dict)

    @classmethod
    def of(cls, ids: npt.NDArray[np.uint64], matrix: Matrix, metric: str) -> _Vectors:
        norms = row_norms(matrix) if metric == METRIC_COSINE else None
        vectors = cls(ids.astype(np.int64), matrix, norms, len(ids))
        vectors.rows = {doc_id: row for row, doc_id in enumerate(vectors.ids.tolist())}
        return vectors

    def put(self, doc_id: int, vector: Matrix) -> None:
        row = self.rows.get(doc_id)
        if row is None:
            row = self.size
            if row == len(self.ids):
                capacity = max(2 * row, 16)
                self.ids = np.resize(self.ids, capacity)
                self.matrix = np.resize(self.matrix, (capacity, self.matrix.shape[1]))
                if self.norms is not None:
                    self.norms = np.resize(self.norms, capacity)
            self.rows[doc_id] = row
            self.ids[row] = doc_id
            self.size += 1
        self.matrix[row] = vector
        if self.norms is not None:
            self.norms[row] = row_norms(vector.reshape(1, -1))[0]

    def drop(self, doc_id: int) -> None:
        row = self.rows.pop(doc_id, None)
        if row is None:
            return
        last = self.size - 1
        if row != last:
            self.ids[row] = self.ids[last]
            self.matrix[row] = self.matrix[last]
            if self.norms is not None:
                self.norms[row] = self.norms[last]
            self.rows[int(self.ids[row])] = row
        self.size = last

    def nearest(self, query: Matrix, metric: str, limit: int, check: Callable[[], None]) -> list[tuple[int, float]]:
        """The C{limit} nearest, exactly, L{_CHUNK} rows per numpy step (C{check} between steps)."""
        best: list[tuple[int, float]] = []
        for start in range(0, self.size, _CHUNK):
            check()
            end = min(start + _CHUNK, self.size)
            norms = None if self.norms is None else self.norms[start:end]
            ids = self.ids[start:end]
            dist = distances(self.matrix[start:end], query, metric, norms)
            if best:
                ids = np.concatenate([ids, np.fromiter((i for i, _ in best), dtype=np.int64, count=len(best))])
                dist = np.concatenate([dist, np.fromiter((d for _, d in best), dtype=np.float32, count=len(best))])
            best = _best(ids, dist, limit)
        return best


@attrs.define
class _Graph:
    """One index's graph, the C{rev} it reflects and its calibration."""

    index: Index
    rev: int
    calibration: Calibration
    #: the vectors in memory, in exact mode
    exact: _Vectors | None = None
    removed: int = 0
    #: vector changes applied since the calibration
    changed: int = 0
    stale: bool = False


#: A graph's state for a search: ready; missing or stale (to build, and
#: the table is searched meanwhile); due for a new calibration (rebuilt in
#: the background while it serves).
_READY, _MISSING, _DUE = "ready", "missing", "due"

#: What L{VectorCache.nearest} answers: the final ranking (exact mode),
#: candidate ids to rank (graph), or None (no graph: search the table).
Nearest = list[tuple[int, float]] | npt.NDArray[np.int64] | None


def _max_rev(conn: sqlite.Connection, vt: str) -> int:
    return _next_rev(conn, vt) - 1


def build_threads() -> int:
    """Threads a graph build adds vectors on: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _read_all(conn: sqlite.Connection, vt: str, dimension: int) -> tuple[npt.NDArray[np.uint64], Matrix]:
    """
    Every C{(id, vector)} of C{vt} in C{conn}'s snapshot: the ids and one
    float32 matrix, read L{BUILD_STEP} rows at a time (no row objects for
    the whole table).
    """
    (size,) = conn.execute(f"SELECT count(*) FROM {vt}").fetchone()
    ids = np.empty(size, dtype=np.uint64)
    matrix = np.empty((size, dimension), dtype=_LE_F32)
    rows = iter(conn.execute(f"SELECT id, vec FROM {vt} ORDER BY id"))
    filled = 0
    while batch := list(itertools.islice(rows, BUILD_STEP)):
        end = filled + len(batch)
        ids[filled:end] = [row[0] for row in batch]
        matrix[filled:end] = np.frombuffer(b"".join(row[1] for row in batch), dtype=_LE_F32).reshape(-1, dimension)
        filled = end
    return ids[:filled], matrix[:filled]


def _load(rows: Iterable[tuple[int, bytes]], dimension: int) -> tuple[npt.NDArray[np.int64], Matrix]:
    rows = list(rows)
    ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    matrix = np.frombuffer(b"".join(row[1] for row in rows), dtype=_LE_F32).reshape(len(rows), dimension)
    return ids, matrix


class VectorCache:
    """
    The HNSW graphs of the vector indexes searched since the engine opened,
    by vector table name (a name is never reused for other vectors: table
    names and index sequence numbers are never reused).

    A graph is built from its table by C{runner} (a background thread by
    default) on its own read connection from C{connect}, then calibrated on
    its own vectors (L{calibrate}, with C{policy}): graph mode at the chosen
    C{ef_search}, or exact mode, which keeps the vectors in memory and
    compares the query with all of them. Until a graph is ready, and while
    a rebuild after many changes runs, L{nearest} answers None and the
    search reads the table exactly. A search brings a ready graph up to its
    snapshot (at most L{CATCH_UP_MAX} changes) before searching it; after
    C{policy.recalibrate_after} of its vectors changed, a rebuild and new
    calibration start in the background while the current graph serves.
    One lock serializes catching up and graph searches; exact scans and
    builds run outside it. A catch-up that would change vectors in memory
    waits until no exact scan of that index is reading them.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite.Connection],
        runner: Runner = in_thread,
        policy: CalibrationPolicy = DEFAULT_CALIBRATION,
    ) -> None:
        self._connect = connect
        self._runner = runner
        self.policy = policy
        self._lock = threading.Lock()
        #: notified when an exact scan ends (catch-ups wait for none to run)
        self._idle = threading.Condition(self._lock)
        #: exact scans running, by vector table
        self._scans: dict[str, int] = {}
        self._graphs: dict[str, _Graph] = {}
        self._building: set[str] = set()
        self._generation = 0

    def clear(self) -> None:
        """Forget every graph, and the builds running (the engine opened or closed)."""
        with self._lock:
            self._graphs.clear()
            self._building.clear()
            self._generation += 1

    def __len__(self) -> int:
        return len(self._graphs)

    def calibration(self, vt: str) -> Calibration | None:
        """The calibration of the graph of C{vt}, if it has one now."""
        with self._lock:
            graph = self._graphs.get(vt)
            return None if graph is None else graph.calibration

    def nearest(
        self,
        conn: sqlite.Connection,
        vt: str,
        dimension: int,
        metric: str,
        query: Matrix,
        count: int,
        ef_search: int | None,
        check: Callable[[], None],
    ) -> Nearest:
        """
        The C{count} nearest to C{query} of C{vt} as the snapshot C{conn}
        reads it, after bringing its graph up to that snapshot (never back):
        in exact mode, the final ranking from the vectors in memory (only
        when they are at the snapshot; C{check} between steps); in graph
        mode, or with an explicit C{ef_search}, up to C{count} candidate ids
        from the graph; None if the graph is not ready (a build is then
        under way) or the exact vectors are ahead of the snapshot.
        """
        rev = _max_rev(conn, vt)
        with self._lock:
            found, status = self._search(conn, vt, dimension, metric, rev, query, count, ef_search, check)
            start = status != _READY and vt not in self._building
            if start:
                self._building.add(vt)
            generation = self._generation
        if start:
            self._runner(lambda: self._build(vt, dimension, metric, generation))
        if status == _MISSING:
            with self._lock:
                found = self._search(conn, vt, dimension, metric, rev, query, count, ef_search, check)[0]
        if isinstance(found, _Vectors):
            return self._scan(vt, found, query, metric, count, check)
        return found

    def _scan(
        self, vt: str, exact: _Vectors, query: Matrix, metric: str, count: int, check: Callable[[], None]
    ) -> list[tuple[int, float]]:
        """The exact ranking from C{exact}, outside the lock (L{_search} counted this scan in)."""
        try:
            return exact.nearest(query, metric, count, check)
        finally:
            with self._lock:
                left = self._scans[vt] - 1
                if left:
                    self._scans[vt] = left
                else:
                    del self._scans[vt]
                    self._idle.notify_all()

    def _search(
        self,
        conn: sqlite.Connection,
        vt: str,
        dimension: int,
        metric: str,
        rev: int,
        query: Matrix,
        count: int,
        ef_search: int | None,
        check: Callable[[], None],
    ) -> tuple[Nearest | _Vectors, str]:
        """
        L{nearest} under the lock, and the graph's state: L{_READY},
        L{_MISSING} or L{_DUE}. In exact mode the answer is the vectors in
        memory, to scan with L{_scan} once the lock is released.
        """
        while True:
            graph = self._graphs.get(vt)
            if graph is None or graph.stale:
                return None, _MISSING
            if rev > graph.rev and graph.exact is not None and self._scans.get(vt):
                self._idle.wait()  # the catch-up changes vectors an exact scan is reading
                continue
            break
        if rev > graph.rev and not self._catch_up(conn, vt, dimension, graph, rev):
            graph.stale = True
            return None, _MISSING
        state = _DUE if graph.changed > self.policy.recalibrate_after * graph.calibration.vectors else _READY
        exact = graph.exact
        if ef_search is None and exact is not None:
            if graph.rev != rev:
                return None, state  # an older snapshot than the vectors in memory
            self._scans[vt] = self._scans.get(vt, 0) + 1
            return exact, state
        if len(graph.index) == 0:
            return np.zeros(0, dtype=np.int64), state
        ef = graph.calibration.ef_search if ef_search is None else ef_search
        # usearch types the property read-only; it has a setter.
        graph.index.expansion_search = max(ef or DEFAULT_EF_SEARCH, count)  # type: ignore[misc]
        matches = graph.index.search(query, min(count, len(graph.index)), threads=1)
        return np.asarray(matches.keys, dtype=np.int64), state

    def _build(self, vt: str, dimension: int, metric: str, generation: int) -> None:
        """
        Build the graph of C{vt} from a snapshot of its table, calibrate it
        and install it: the vectors are read in steps of L{BUILD_STEP} rows
        into one float32 matrix (the only copy besides the graph's own, kept
        in exact mode), the read transaction ends, and the graph takes the
        matrix in bulk adds on L{build_threads} threads (usearch releases
        the GIL while it adds).
        """
        from usearch.index import Index

        try:
            conn = self._connect()
            try:
                conn.execute("BEGIN")
                live = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
                if vt not in live:
                    return
                rev = _max_rev(conn, vt)
                ids, matrix = _read_all(conn, vt, dimension)
                conn.execute("COMMIT")
            finally:
                conn.close()
            index = Index(
                ndim=dimension,
                metric=_USEARCH_METRIC[metric],
                dtype="f32",
                connectivity=CONNECTIVITY,
                expansion_add=EXPANSION_ADD,
                expansion_search=DEFAULT_EF_SEARCH,
            )
            threads = build_threads()
            held = held_out(len(ids), self.policy)
            graphed = np.ones(len(ids), dtype=bool)
            graphed[held] = False
            for start in range(0, len(ids), BUILD_STEP * threads):
                if generation != self._generation:
                    return  # the engine closed or reopened: nobody wants this graph
                rows = start + np.flatnonzero(graphed[start : start + BUILD_STEP * threads])
                index.add(ids[rows], matrix[rows], threads=threads)
            if generation != self._generation:
                return
            calibration = calibrate(index, ids, matrix, held, metric, self.policy)
            if len(held):
                index.add(ids[held], matrix[held], threads=threads)
            exact = _Vectors.of(ids, matrix, metric) if calibration.mode == MODE_EXACT else None
            del matrix
            with self._lock:
                if generation == self._generation:
                    # Graphs of tables that no longer exist (dropped, compacted) go.
                    for name in [name for name in self._graphs if name not in live]:
                        del self._graphs[name]
                    self._graphs[vt] = _Graph(index, rev, calibration, exact)
        finally:
            with self._lock:
                if generation == self._generation:
                    self._building.discard(vt)

    def _catch_up(self, conn: sqlite.Connection, vt: str, dimension: int, graph: _Graph, rev: int) -> bool:
        """Apply the changes up to C{rev}; False if there are too many (or too many removals so far)."""
        since = (graph.rev, CATCH_UP_MAX + 1)
        gone = [row[0] for row in conn.execute(f"SELECT id FROM {vt}_gone WHERE rev > ? LIMIT ?", since)]
        changed = conn.execute(f"SELECT id, vec FROM {vt} WHERE rev > ? LIMIT ?", since).fetchall()
        if len(gone) + len(changed) > CATCH_UP_MAX or graph.removed > max(len(graph.index), CATCH_UP_MAX):
            return False
        index = graph.index
        ids, matrix = _load(changed, dimension)
        for doc_id in [*gone, *ids.tolist()]:
            if doc_id in index:
                index.remove(doc_id)
                graph.removed += 1
        if len(ids):
            index.add(ids.astype(np.uint64), matrix, threads=1)
        if graph.exact is not None:
            for doc_id in gone:
                graph.exact.drop(doc_id)
            for doc_id, vector in zip(ids.tolist(), matrix, strict=True):
                graph.exact.put(doc_id, vector)
        graph.changed += len(gone) + len(changed)
        graph.rev = rev
        return True


# --- search ------------------------------------------------------------------------


def list_indexes(reader: Reader, cache: VectorCache, exact_below: int, collection: str) -> list[dict[str, Any]]:
    """
    The collection's index descriptors (L{Reader.list_indexes}); a vector
    index of C{exact_below} vectors or more also has C{search}: its
    L{Calibration} (C{mode} C{graph} or C{exact}, the chosen C{ef_search},
    the estimates and costs), or C{{"mode": "pending"}} before its graph
    is built and calibrated (searches are then exact).
    """
    described = reader.list_indexes(collection)
    info = reader.collection(collection)
    if info is None:
        return described
    by_name = {index.name: index for index in store.list_index_defs(reader.conn, info.name)}
    for descriptor in described:
        index = by_name.get(descriptor["name"])
        if index is None or index.kind != store.INDEX_VECTOR:
            continue
        vt = store.vector_table(info.tbl, index)
        (size,) = reader.conn.execute(f"SELECT count(*) FROM {vt}").fetchone()
        if size >= exact_below:
            calibration = cache.calibration(vt)
            descriptor["search"] = {"mode": "pending"} if calibration is None else calibration.describe()
    return described


def find_index(reader: Reader, info: CollectionInfo, field: str) -> IndexDef | None:
    name = index_name(field)
    for index in store.list_index_defs(reader.conn, info.name):
        if index.kind == store.INDEX_VECTOR and index.name == name:
            return index
    return None


def search(
    reader: Reader,
    cache: VectorCache,
    exact_below: int,
    max_limit: int,
    collection: str,
    field: object,
    vector: object,
    limit: object = DEFAULT_LIMIT,
    ef_search: object = None,
) -> list[dict[str, Any]]:
    """
    The C{limit} documents whose vectors at C{field} are nearest to
    C{vector}, each with C{_distance} and C{_similarity} (engine.md 10).
    C{limit} and C{ef_search} are at most C{max_limit}. Indexes of
    C{exact_below} vectors or more answer as their calibration chose
    (L{VectorCache}); an explicit C{ef_search} searches the graph at that
    value in either mode (and so may lower recall).
    """
    if not isinstance(field, str):
        raise BadRequestError("missing 'field'")
    query = query_vector(vector)
    if limit is None:
        limit = DEFAULT_LIMIT
    if type(limit) is not int or limit < 0 or limit > max_limit:
        raise BadRequestError(f"'limit' must be an integer from 0 to {max_limit}")
    if ef_search is not None and (type(ef_search) is not int or not 1 <= ef_search <= max_limit):
        raise BadRequestError(f"'ef_search' must be an integer from 1 to {max_limit}")
    info = reader.collection(collection)
    index = None if info is None else find_index(reader, info, field)
    if info is None or index is None:
        raise InvalidQueryError(f"no vector index on field '{field}'; create one with create_vector_index")
    dimension, metric = store.get_vector_spec(reader.conn, index)
    if len(query) != dimension:
        raise InvalidQueryError(f"query vector dimension mismatch: expected {dimension}, got {len(query)}")
    if limit == 0:
        return []
    vt = store.vector_table(info.tbl, index)
    (size,) = reader.conn.execute(f"SELECT count(*) FROM {vt}").fetchone()
    found: Nearest = None
    if size >= exact_below:
        found = cache.nearest(reader.conn, vt, dimension, metric, query, limit, ef_search, reader.deadline.check)
    if found is None:
        ranked = _exact(reader, vt, dimension, metric, query, limit)
    elif isinstance(found, list):
        ranked = found
    else:
        ranked = _rerank(reader, vt, dimension, metric, query, found.tolist(), limit)
    if not ranked:
        return []
    docs = reader._docs_by_id(info, [doc_id for doc_id, _ in ranked], reply_cap(reader.limits))
    result = []
    for doc_id, distance in ranked:
        doc = docs.get(doc_id)
        if doc is None:
            continue
        doc["_distance"] = distance
        doc["_similarity"] = similarity(distance, metric)
        result.append(doc)
    return result


def _exact(
    reader: Reader, vt: str, dimension: int, metric: str, query: Matrix, limit: int
) -> list[tuple[int, float]]:
    """Every stored vector against the query, C{_CHUNK} rows at a time."""
    best: list[tuple[int, float]] = []
    rows = iter(reader.conn.execute(f"SELECT id, vec FROM {vt}"))
    while True:
        reader.deadline.check()
        batch = list(itertools.islice(rows, _CHUNK))
        if not batch:
            break
        ids, matrix = _load(batch, dimension)
        dist = distances(matrix, query, metric)
        if best:
            ids = np.concatenate([ids, np.fromiter((i for i, _ in best), dtype=np.int64, count=len(best))])
            dist = np.concatenate([dist, np.fromiter((d for _, d in best), dtype=np.float32, count=len(best))])
        best = _best(ids, dist, limit)
    return best


def _rerank(
    reader: Reader, vt: str, dimension: int, metric: str, query: Matrix, ids: list[int], limit: int
) -> list[tuple[int, float]]:
    """The candidates' exact distances from the snapshot's vectors (candidates gone since are dropped)."""
    rows: list[tuple[int, bytes]] = []
    for start in range(0, len(ids), 500):
        reader.deadline.check()
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows.extend(reader.conn.execute(f"SELECT id, vec FROM {vt} WHERE id IN ({marks})", chunk))
    if not rows:
        return []
    found, matrix = _load(rows, dimension)
    return _best(found, distances(matrix, query, metric), limit)
