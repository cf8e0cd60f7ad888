"""
Calibration of vector indexes (oxidb.engine.vectors.calibrate): on data
where the graph is poor the index answers exactly, on clustered data it
searches the graph at the ef_search it chose, an explicit ef_search wins,
and heavy change brings a new calibration. Small, seeded data; one build
thread, so one graph per seed.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest

from oxidb.engine import store, vectors
from oxidb.engine.engine import Engine
from oxidb.engine.operations import CreateVectorIndex, Delete, InsertMany, Operation, Update

NOW = 1_700_000_000.0
DIM = 64
#: Cost left out: at these sizes exact search is always the cheaper one, so
#: only the recall decides (the cost rule has a test of its own).
RECALL_ONLY = vectors.CalibrationPolicy(max_cost_ratio=math.inf, ladder=(16, 32, 64))

Model = dict[int, np.ndarray]


@pytest.fixture(autouse=True)
def one_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vectors, "build_threads", lambda: 1)  # one insertion order: one graph
    monkeypatch.setattr(vectors, "EXPANSION_ADD", 64)  # a cheaper build


def run(engine: Engine, op: Operation) -> Any:
    return engine.apply(op, NOW)


def open_engine(tmp_path: Path, policy: vectors.CalibrationPolicy, runner: vectors.Runner = vectors.inline) -> Engine:
    return Engine(
        str(tmp_path / "data"),
        synchronous="OFF",
        vector_exact_below=1000,
        vector_runner=runner,
        vector_calibration=policy,
    )


def random_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    """No structure at all: the graph's worst case."""
    return rng.standard_normal((count, DIM)).astype(np.float32)


def clustered_vectors(rng: np.random.Generator, mapping: np.ndarray, count: int) -> np.ndarray:
    """Like embeddings: a 4-dimensional latent vector mapped to DIM, plus noise."""
    noise = 0.1 * rng.standard_normal((count, DIM))
    return (rng.standard_normal((count, mapping.shape[0])) @ mapping + noise).astype(np.float32)


def insert(engine: Engine, model: Model, data: np.ndarray) -> None:
    ids = run(engine, InsertMany("c", [{"v": row.tolist()} for row in data]))
    model.update(zip(ids, data, strict=True))


def top(model: Model, query: np.ndarray, k: int = 10) -> tuple[list[int], np.ndarray]:
    """The numpy reference: the k nearest ids by cosine distance, and every distance sorted."""
    ids = np.asarray(list(model), dtype=np.int64)
    matrix = np.asarray([model[i] for i in ids.tolist()], dtype=np.float64)
    q = query.astype(np.float64)
    dist = 1 - (matrix @ q) / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q))
    order = np.lexsort((ids, dist))
    return ids[order[:k]].tolist(), dist[order]


def recall(engine: Engine, model: Model, queries: np.ndarray, ef: int | None = None) -> float:
    hits = 0
    for query in queries:
        truth, _ = top(model, query)
        found = engine.vector_search("c", "v", query.tolist(), 10, ef)
        hits += len(set(truth) & {doc["_id"] for doc in found})
    return hits / (10 * len(queries))


def assert_exact(engine: Engine, model: Model, queries: np.ndarray) -> None:
    """The same documents and distances as the reference, in its order."""
    for query in queries:
        truth, dist = top(model, query)
        found = engine.vector_search("c", "v", query.tolist(), 10)
        assert [doc["_id"] for doc in found] == truth
        assert [doc["_distance"] for doc in found] == pytest.approx(dist[:10].tolist(), abs=1e-5)


def search_info(engine: Engine) -> dict[str, Any]:
    (descriptor,) = [d for d in engine.list_indexes("c") if d["index_type"] == "vector"]
    info: dict[str, Any] = descriptor["search"]
    return info


def test_random_data_answers_exactly_unless_ef_search_is_given(tmp_path: Path) -> None:
    """
    Random 64-dimensional vectors: no ef_search of the ladder reaches the
    target, so the index answers exactly from its vectors in memory, and
    they follow updates, deletes and inserts; a request's ef_search still
    searches the graph.
    """
    rng = np.random.default_rng(5)
    model: Model = {}
    with open_engine(tmp_path, RECALL_ONLY) as engine:
        run(engine, CreateVectorIndex("c", "v", DIM, "cosine"))
        insert(engine, model, random_vectors(rng, 3000))
        assert search_info(engine) == {"mode": "pending"}
        queries = random_vectors(rng, 20)
        assert_exact(engine, model, queries)
        info = search_info(engine)
        assert info["mode"] == "exact" and info["ef_search"] is None
        assert info["calibrated_vectors"] == 3000 and info["calibration_queries"] == 100
        assert info["exact_ms"] > 0 and info["graph_ms"] > 0
        # A request's ef_search wins: the graph at that size (finding less).
        assert recall(engine, model, queries[:10]) == 1.0
        low = recall(engine, model, queries[:10], ef=10)
        assert low < 0.9
        assert recall(engine, model, queries[:10], ef=3000) > low
        # Writes since: the vectors in memory are caught up before each search.
        moved = random_vectors(rng, 30)
        for doc_id, row in zip(range(1, 31), moved, strict=True):
            run(engine, Update("c", {"_id": doc_id}, {"$set": {"v": row.tolist()}}))
            model[doc_id] = row
        run(engine, Delete("c", {"_id": {"$gt": 2950}}))
        run(engine, Update("c", {"_id": {"$gt": 2900}}, {"$set": {"v": "not a vector"}}))
        model = {k: v for k, v in model.items() if k <= 2900}
        insert(engine, model, random_vectors(rng, 20))
        assert_exact(engine, model, np.concatenate([queries[:5], moved[:3]]))
        assert search_info(engine)["calibrated_vectors"] == 3000


def test_random_data_meets_the_target_at_the_default_policy(tmp_path: Path) -> None:
    """Whatever the default policy chooses on random data, recall@10 is at least 0.95."""
    rng = np.random.default_rng(6)
    model: Model = {}
    with open_engine(tmp_path, vectors.DEFAULT_CALIBRATION) as engine:
        run(engine, CreateVectorIndex("c", "v", DIM, "cosine"))
        insert(engine, model, random_vectors(rng, 3000))
        assert recall(engine, model, random_vectors(rng, 30)) >= 0.95
        info = search_info(engine)
        assert info["mode"] == "exact" or info["recall_estimate"] >= 0.95


def test_clustered_data_searches_the_graph(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    mapping = rng.standard_normal((4, DIM))
    model: Model = {}
    with open_engine(tmp_path, RECALL_ONLY) as engine:
        run(engine, CreateVectorIndex("c", "v", DIM, "cosine"))
        insert(engine, model, clustered_vectors(rng, mapping, 3000))
        queries = clustered_vectors(rng, mapping, 30)
        assert recall(engine, model, queries) >= 0.95
        info = search_info(engine)
        assert info["mode"] == "graph" and info["ef_search"] in (16, 32, 64), info
        assert 0.95 <= info["recall_estimate"] <= 1


def test_the_graph_must_be_cheaper_than_exact_search(tmp_path: Path) -> None:
    """With the cost rule on, a graph that costs more per query than exact search is not used."""
    rng = np.random.default_rng(8)
    mapping = rng.standard_normal((4, DIM))
    model: Model = {}
    never_cheaper = vectors.CalibrationPolicy(max_cost_ratio=0.0)
    with open_engine(tmp_path, never_cheaper) as engine:
        run(engine, CreateVectorIndex("c", "v", DIM, "cosine"))
        insert(engine, model, clustered_vectors(rng, mapping, 1500))
        assert_exact(engine, model, clustered_vectors(rng, mapping, 5))
        info = search_info(engine)
        assert info["mode"] == "exact"
        assert info["graph_ms"] is not None, "one ef_search was measured, then the ladder stopped"


def test_a_calibration_is_redone_after_heavy_change(tmp_path: Path) -> None:
    """
    After a fifth of the vectors changed, a rebuild and a new calibration
    start in the background while the current graph keeps answering.
    """
    rng = np.random.default_rng(9)
    mapping = rng.standard_normal((4, DIM))
    jobs: list[Callable[[], None]] = []
    policy = attrs.evolve(RECALL_ONLY, recalibrate_after=0.2)
    model: Model = {}
    with open_engine(tmp_path, policy, jobs.append) as engine:
        run(engine, CreateVectorIndex("c", "v", DIM, "cosine"))
        insert(engine, model, clustered_vectors(rng, mapping, 1500))
        query = clustered_vectors(rng, mapping, 1)
        engine.vector_search("c", "v", query[0].tolist())
        jobs.pop()()
        assert search_info(engine)["mode"] == "graph"
        # 200 changes of 1500: below the fifth, no new calibration.
        insert(engine, model, random_vectors(rng, 200))
        engine.vector_search("c", "v", query[0].tolist())
        assert jobs == []
        # 400 more (600 > 300): a rebuild is queued, the graph still answers.
        insert(engine, model, random_vectors(rng, 400))
        queries = clustered_vectors(rng, mapping, 20)
        assert recall(engine, model, queries) >= 0.9
        assert len(jobs) == 1 and search_info(engine)["calibrated_vectors"] == 1500
        assert len(engine.vector_cache) == 1
        jobs.pop()()
        info = search_info(engine)
        assert info["calibrated_vectors"] == 2100 and info["mode"] in ("graph", "exact")
        assert recall(engine, model, queries) >= 0.95
        # Caught up since: nothing changed, no further calibration.
        engine.vector_search("c", "v", query[0].tolist())
        assert jobs == []


def vector_table(engine: Engine) -> str:
    def name(reader: Any) -> str:
        info = reader.collection("c")
        index = vectors.find_index(reader, info, "v")
        assert index is not None
        return store.vector_table(info.tbl, index)

    return engine.read(name)


def test_a_snapshot_older_than_the_vectors_in_memory_reads_the_table(tmp_path: Path) -> None:
    """Exact mode answers from memory only for the snapshot the vectors are at."""
    rng = np.random.default_rng(5)
    model: Model = {}
    with open_engine(tmp_path, attrs.evolve(RECALL_ONLY, ladder=(16,))) as engine:
        run(engine, CreateVectorIndex("c", "v", DIM, "cosine"))
        insert(engine, model, random_vectors(rng, 1000))
        query = random_vectors(rng, 1)[0]
        engine.vector_search("c", "v", query.tolist())
        assert search_info(engine)["mode"] == "exact"
        vt = vector_table(engine)
        old = store.connect(engine.path, writer=False)
        try:
            old.execute("BEGIN")
            old.execute(f"SELECT count(*) FROM {vt}").fetchone()
            insert(engine, model, random_vectors(rng, 10))
            assert_exact(engine, model, query[None])  # catches the vectors in memory up
            cache = engine.vector_cache
            assert cache.nearest(old, vt, DIM, "cosine", query, 10, None, lambda: None) is None
            old.execute("COMMIT")
            found = cache.nearest(old, vt, DIM, "cosine", query, 10, None, lambda: None)
            assert isinstance(found, list) and [i for i, _ in found] == top(model, query)[0]
        finally:
            old.close()


def test_tiny_graphs_are_not_calibrated() -> None:
    """Fewer than 5 vectors: none to hold out, exact mode without queries."""
    from usearch.index import Index

    matrix = np.eye(4, DIM, dtype=np.float32)
    ids = np.arange(1, 5, dtype=np.uint64)
    held = vectors.held_out(len(ids))
    assert len(held) == 0
    index = Index(ndim=DIM, metric="cos", dtype="f32")
    index.add(ids, matrix)
    calibration = vectors.calibrate(index, ids, matrix, held, vectors.METRIC_COSINE)
    assert (calibration.mode, calibration.queries, calibration.ef_search) == ("exact", 0, None)
    assert len(vectors.held_out(1000)) == 100 and len(vectors.held_out(200)) == 40


class _Threads:
    """Searches on threads of their own, each on its own read connection, with a deadline on every wait."""

    def __init__(self, engine: Engine, vt: str) -> None:
        self.engine, self.vt = engine, vt
        self.results: dict[str, Any] = {}
        self.threads: list[threading.Thread] = []

    def search(self, name: str, query: np.ndarray, check: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            conn = store.connect(self.engine.path, writer=False)
            try:
                found = self.engine.vector_cache.nearest(conn, self.vt, DIM, "cosine", query, 10, None, check)
                self.results[name] = [doc_id for doc_id, _ in found]
            finally:
                conn.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    def held(self, name: str, query: np.ndarray) -> tuple[threading.Thread, threading.Event]:
        """A search held inside its scan (at its first deadline check) until the event returned is set."""
        scanning, release = threading.Event(), threading.Event()

        def check() -> None:
            scanning.set()
            assert release.wait(30)

        thread = self.search(name, query, check)
        assert scanning.wait(30)
        return thread, release


def exact_index(engine: Engine, model: Model) -> tuple[str, np.ndarray]:
    """An index that answers exactly from memory: its vector table, and a query."""
    rng = np.random.default_rng(11)
    run(engine, CreateVectorIndex("c", "v", DIM, "cosine"))
    insert(engine, model, random_vectors(rng, 1000))
    query = random_vectors(rng, 1)[0]
    engine.vector_search("c", "v", query.tolist())
    assert search_info(engine)["mode"] == "exact"
    return vector_table(engine), query


def test_exact_scans_of_one_index_run_side_by_side(tmp_path: Path) -> None:
    """A second search of an index in exact mode completes while the first is still scanning."""
    model: Model = {}
    with open_engine(tmp_path, attrs.evolve(RECALL_ONLY, ladder=(16,))) as engine:
        vt, query = exact_index(engine, model)
        searches = _Threads(engine, vt)
        first, release = searches.held("first", query)
        second = searches.search("second", query, lambda: None)
        second.join(30)
        done_while_first_scans = not second.is_alive()
        release.set()
        first.join(30)
        assert done_while_first_scans
        assert searches.results == {"first": top(model, query)[0], "second": top(model, query)[0]}


def test_a_catch_up_waits_for_the_exact_scans_reading_the_vectors(tmp_path: Path) -> None:
    """
    New vectors reach memory only after the scan running on the old ones
    ends: that scan answers for its snapshot, the next one for the new.
    """
    model: Model = {}
    with open_engine(tmp_path, attrs.evolve(RECALL_ONLY, ladder=(16,))) as engine:
        vt, query = exact_index(engine, model)
        before = top(model, query)[0]
        cache = engine.vector_cache
        waiting = threading.Event()

        class Watched(threading.Condition):
            def wait(self, timeout: float | None = None) -> bool:
                waiting.set()
                return super().wait(timeout)

        cache._idle = Watched(cache._lock)
        searches = _Threads(engine, vt)
        first, release = searches.held("first", query)
        noise = np.random.default_rng(12).standard_normal((10, DIM)).astype(np.float32)
        steps = np.arange(1, 11, dtype=np.float32)[:, None] / 20  # distances far apart in float32
        insert(engine, model, query[None] + steps * noise * np.linalg.norm(query) / np.sqrt(DIM))  # the new nearest ten
        second = searches.search("second", query, lambda: None)
        assert waiting.wait(30)
        release.set()
        first.join(30)
        second.join(30)
        assert searches.results == {"first": before, "second": top(model, query)[0]}
        assert set(searches.results["second"]).isdisjoint(before)
