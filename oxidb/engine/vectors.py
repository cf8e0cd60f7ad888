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
  - at or above it, approximately: the L{VectorCache} graph of the index
    (built from the table on first use after the engine opens, then brought
    up to the snapshot's C{rev} from the change ranges before each search)
    proposes the candidates; their distances are then computed from the
    snapshot's stored vectors, so every returned distance is exact and every
    returned document exists in the snapshot. The graph is a cache: dropping
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

#: HNSW parameters (upstream's M and ef_construction). The default
#: C{ef_search} is above upstream's 50: on 128-dimensional random data it is
#: what keeps recall@10 at 0.95 or more (bench/vector_bench.py).
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


def distances(matrix: Matrix, query: Matrix, metric: str) -> npt.NDArray[np.float32]:
    """The distance of each row of C{matrix} to C{query} (float32)."""
    if metric == METRIC_EUCLIDEAN:
        diff = matrix - query
        return np.asarray(np.sqrt(np.einsum("ij,ij->i", diff, diff)), dtype=np.float32)
    dots = matrix @ query
    if metric == METRIC_DOT:
        return (-dots).astype(np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix)) * np.float32(np.sqrt(query @ query))
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), 0)
    out = np.where(norms > 0, 1 - cosine, 1)
    return np.asarray(out, dtype=np.float32)


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


@attrs.define
class _Graph:
    """One index's graph and the C{rev} it reflects."""

    index: Index
    rev: int
    removed: int = 0
    stale: bool = False


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
    default) on its own read connection from C{connect}; until it is ready,
    and while a rebuild after many changes runs, L{candidates} answers None
    and the search is exact. A search brings a ready graph up to its
    snapshot (at most L{CATCH_UP_MAX} changes) before searching it. One lock
    serializes catching up and searching; builds run outside it.
    """

    def __init__(self, connect: Callable[[], sqlite.Connection], runner: Runner = in_thread) -> None:
        self._connect = connect
        self._runner = runner
        self._lock = threading.Lock()
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

    def candidates(
        self, conn: sqlite.Connection, vt: str, dimension: int, metric: str, query: Matrix, count: int, ef: int
    ) -> npt.NDArray[np.int64] | None:
        """
        Up to C{count} ids the graph of C{vt} finds nearest to C{query},
        after bringing it up to the snapshot C{conn} reads (never back);
        None if the graph is not ready (a build is then under way).
        """
        rev = _max_rev(conn, vt)
        with self._lock:
            found = self._search(conn, vt, dimension, rev, query, count, ef)
            if found is not None:
                return found
            start = vt not in self._building
            self._building.add(vt)
            generation = self._generation
        if start:
            self._runner(lambda: self._build(vt, dimension, metric, generation))
        with self._lock:
            return self._search(conn, vt, dimension, rev, query, count, ef)

    def _search(
        self, conn: sqlite.Connection, vt: str, dimension: int, rev: int, query: Matrix, count: int, ef: int
    ) -> npt.NDArray[np.int64] | None:
        graph = self._graphs.get(vt)
        if graph is None or graph.stale:
            return None
        if rev > graph.rev and not self._catch_up(conn, vt, dimension, graph, rev):
            graph.stale = True
            return None
        if len(graph.index) == 0:
            return np.zeros(0, dtype=np.int64)
        # usearch types the property read-only; it has a setter.
        graph.index.expansion_search = max(ef, count)  # type: ignore[misc]
        matches = graph.index.search(query, min(count, len(graph.index)), threads=1)
        return np.asarray(matches.keys, dtype=np.int64)

    def _build(self, vt: str, dimension: int, metric: str, generation: int) -> None:
        """
        Build the graph of C{vt} from a snapshot of its table, and install
        it: the vectors are read in steps of L{BUILD_STEP} rows into one
        float32 matrix (the only copy besides the graph's own), the read
        transaction ends, and the graph takes the matrix in bulk adds on
        L{build_threads} threads (usearch releases the GIL while it adds).
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
            for start in range(0, len(ids), BUILD_STEP * threads):
                if generation != self._generation:
                    return  # the engine closed or reopened: nobody wants this graph
                end = start + BUILD_STEP * threads
                index.add(ids[start:end], matrix[start:end], threads=threads)
            del matrix
            with self._lock:
                if generation == self._generation:
                    # Graphs of tables that no longer exist (dropped, compacted) go.
                    for name in [name for name in self._graphs if name not in live]:
                        del self._graphs[name]
                    self._graphs[vt] = _Graph(index, rev)
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
        graph.rev = rev
        return True


# --- search ------------------------------------------------------------------------


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
    C{limit} and C{ef_search} are at most C{max_limit}.
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
    ids = None
    if size >= exact_below:
        ef = DEFAULT_EF_SEARCH if ef_search is None else ef_search
        ids = cache.candidates(reader.conn, vt, dimension, metric, query, limit, ef)
    if ids is None:
        ranked = _exact(reader, vt, dimension, metric, query, limit)
    else:
        ranked = _rerank(reader, vt, dimension, metric, query, ids.tolist(), limit)
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
