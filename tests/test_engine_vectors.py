"""
Vector indexes (oxidb.engine.vectors): search against a numpy reference on
random data, through inserts, updates, deletes, transactions and compact,
both exact and through the HNSW cache; the commands' errors and shapes.
"""

from __future__ import annotations

import itertools
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oxidb.config import Config
from oxidb.engine import transactions, vectors
from oxidb.engine.engine import Engine
from oxidb.engine.operations import (
    Compact,
    CreateVectorIndex,
    Delete,
    DropCollection,
    DropIndex,
    InsertMany,
    Operation,
    Update,
)
from oxidb.errors import OxiError
from oxidb.testing import MemoryServer, OxiClientProtocol, result_of

NOW = 1_700_000_000.0
METRIC_NAMES = ["cosine", "euclidean", "dot_product"]


def run(engine: Engine, op: Operation) -> Any:
    return engine.apply(op, NOW)


# --- the numpy reference ---------------------------------------------------------


def reference(model: dict[int, list[float] | None], query: list[float], metric: str) -> dict[int, float]:
    """The distance of every indexed document, in float64 from the float32 values (engine.md 10)."""
    ids = [doc_id for doc_id, vector in model.items() if vector is not None]
    if not ids:
        return {}
    q = np.asarray(query, dtype=np.float32).astype(np.float64)
    m = np.asarray([model[doc_id] for doc_id in ids], dtype=np.float32).astype(np.float64)
    if metric == "euclidean":
        dist = np.sqrt(((m - q) ** 2).sum(axis=1))
    elif metric == "dotproduct":
        dist = -(m @ q)
    else:
        norms = np.sqrt((m * m).sum(axis=1)) * np.sqrt(q @ q)
        dist = np.where(norms > 0, 1.0 - (m @ q) / np.where(norms > 0, norms, 1.0), 1.0)
    return dict(zip(ids, dist.tolist(), strict=True))


def tolerance(model: dict[int, list[float] | None], query: list[float]) -> float:
    """float32 rounding of the engine's arithmetic, scaled by the magnitudes involved."""
    values = [float(np.abs(np.asarray(v, dtype=np.float64)).max()) for v in model.values() if v]
    scale = max([1.0, *(abs(x) for x in query), *values])
    return 1e-4 * scale * scale * (len(query) + 1)


def check_against_reference(
    results: list[dict[str, Any]],
    model: dict[int, list[float] | None],
    query: list[float],
    metric: str,
    limit: int,
    *,
    exact: bool = True,
) -> None:
    expected = reference(model, query, metric)
    ranked = sorted(expected.values())
    tol = tolerance(model, query)
    ids = [doc["_id"] for doc in results]
    assert len(set(ids)) == len(ids)
    if exact:
        assert len(results) == min(limit, len(expected))
    for rank, doc in enumerate(results):
        doc_id = doc["_id"]
        assert doc_id in expected, "only indexed documents are found"
        assert doc["_distance"] == pytest.approx(expected[doc_id], abs=tol)
        assert doc["_similarity"] == pytest.approx(vectors.similarity(doc["_distance"], metric), rel=1e-9)
        if exact:
            assert doc["_distance"] == pytest.approx(ranked[rank], abs=tol)
    distances = [doc["_distance"] for doc in results]
    assert distances == sorted(distances)


# --- Hypothesis: exact search against numpy ---------------------------------------------


numbers = st.one_of(
    st.integers(-5, 5),
    st.floats(-100, 100, allow_nan=False, width=32),
)


def vector_values(dimension: int) -> st.SearchStrategy[Any]:
    """Mostly vectors of the index's length; sometimes what the index skips."""
    good = st.lists(numbers, min_size=dimension, max_size=dimension)
    bad = st.one_of(
        st.lists(numbers, min_size=0, max_size=dimension + 2).filter(lambda v: len(v) != dimension),
        st.just("text"),
        st.just([1e39] * dimension),  # beyond float32
        st.lists(st.sampled_from(["a", True, None]), min_size=dimension, max_size=dimension),
    )
    return st.one_of(good, good, good, bad)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    dimension = draw(st.integers(1, 6))
    values = vector_values(dimension)
    steps: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["insert", "update", "delete", "compact", "unset"]))
        if kind == "insert":
            steps.append(("insert", draw(st.lists(values, min_size=1, max_size=8))))
        elif kind == "update":
            steps.append(("update", draw(st.integers(0, 30)), draw(values)))
        elif kind in ("delete", "unset"):
            steps.append((kind, draw(st.integers(0, 30))))
        else:
            steps.append(("compact",))
    return {
        "dimension": dimension,
        "metric": draw(st.sampled_from(METRIC_NAMES)),
        "index_first": draw(st.booleans()),
        "steps": steps,
        "query": draw(st.lists(numbers, min_size=dimension, max_size=dimension)),
        "limit": draw(st.integers(1, 12)),
    }


def usable(value: Any, dimension: int) -> list[float] | None:
    if type(value) is not list or len(value) != dimension:
        return None
    if not all(type(x) in (int, float) for x in value):
        return None
    if not all(math.isfinite(np.float32(x)) for x in value):
        return None
    return value


def play(engine: Engine, collection: str, scenario: dict[str, Any]) -> dict[int, list[float] | None]:
    """Apply the scenario's writes; the model of what the index must hold."""
    dimension = scenario["dimension"]
    create = CreateVectorIndex(collection, "emb.v", dimension, vectors.normalize_metric(scenario["metric"]))
    if scenario["index_first"]:
        run(engine, create)
    model: dict[int, list[float] | None] = {}
    for step in scenario["steps"]:
        if step[0] == "insert":
            ids = run(engine, InsertMany(collection, [{"emb": {"v": value}} for value in step[1]]))
            model.update({doc_id: usable(value, dimension) for doc_id, value in zip(ids, step[1], strict=True)})
        elif step[0] == "update":
            run(engine, Update(collection, {"_id": step[1]}, {"$set": {"emb.v": step[2]}}))
            if step[1] in model:
                model[step[1]] = usable(step[2], dimension)
        elif step[0] == "unset":
            run(engine, Update(collection, {"_id": step[1]}, {"$unset": {"emb": ""}}))
            if step[1] in model:
                model[step[1]] = None
        elif step[0] == "delete":
            run(engine, Delete(collection, {"_id": {"$lte": step[1]}}))
            model = {k: v for k, v in model.items() if k > step[1]}
        else:
            run(engine, Compact(collection))
    if not scenario["index_first"]:
        run(engine, create)
    return model


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = Engine(str(tmp_path / "data"), synchronous="OFF")
    transactions.register_appliers(engine)
    with engine:
        yield engine


def test_exact_search_matches_numpy(engine: Engine) -> None:
    names = (f"h{n}" for n in itertools.count())

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scenario=scenarios())
    def check(scenario: dict[str, Any]) -> None:
        collection = next(names)
        model = play(engine, collection, scenario)
        metric = vectors.normalize_metric(scenario["metric"])
        results = engine.vector_search(collection, "emb.v", scenario["query"], scenario["limit"])
        check_against_reference(results, model, scenario["query"], metric, scenario["limit"])
        run(engine, DropCollection(collection))

    check()


def graph_engine(tmp_path: Path, exact_below: int, runner: vectors.Runner = vectors.inline) -> Engine:
    """An engine searching indexes of C{exact_below} vectors or more through graphs built by C{runner}."""
    return Engine(str(tmp_path / "data"), synchronous="OFF", vector_exact_below=exact_below, vector_runner=runner)


def test_graph_search_matches_numpy_on_small_indexes(tmp_path: Path) -> None:
    """Through the HNSW cache (every index is 'large'): the same answers on indexes smaller than ef."""
    names = (f"g{n}" for n in itertools.count())
    with graph_engine(tmp_path, 0) as engine:

        @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(scenario=scenarios())
        def check(scenario: dict[str, Any]) -> None:
            collection = next(names)
            model = play(engine, collection, scenario)
            metric = vectors.normalize_metric(scenario["metric"])
            query, limit = scenario["query"], scenario["limit"]
            results = engine.vector_search(collection, "emb.v", query, limit)
            # Approximate: every answer is a real one with its exact distance.
            check_against_reference(results, model, query, metric, limit, exact=False)
            run(engine, DropCollection(collection))

        check()


# --- the HNSW path at size ---------------------------------------------------------------


def recall(engine: Engine, collection: str, queries: np.ndarray, model: dict[int, list[float] | None]) -> float:
    hits = 0
    for query in queries:
        expected = reference(model, query.tolist(), "cosine")
        truth = {doc_id for doc_id, _ in sorted(expected.items(), key=lambda kv: (kv[1], kv[0]))[:10]}
        found = engine.vector_search(collection, "v", query.tolist(), 10)
        check_against_reference(found, model, query.tolist(), "cosine", 10, exact=False)
        hits += len(truth & {doc["_id"] for doc in found})
    return hits / (10 * len(queries))


def test_graph_recall_on_random_data_for_each_metric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Random vectors of varied lengths (so the three metrics rank them
    differently): the graph path finds the true top 10 at the default
    C{ef_search} for each metric, which pins the metric given to usearch,
    its float32 storage and ids as keys; C{ef_search} 1 finds fewer, which
    pins that it reaches the graph.
    """
    monkeypatch.setattr(vectors, "build_threads", lambda: 1)  # one insertion order: one graph
    monkeypatch.setattr(vectors, "EXPANSION_ADD", 64)  # a cheaper build; still near-exact at this size
    rng = np.random.default_rng(11)
    dimension, size = 32, 2000
    lengths = np.exp(rng.normal(0, 0.5, (size, 1)))
    data = (rng.standard_normal((size, dimension)) * lengths).astype(np.float32)
    queries = rng.standard_normal((10, dimension)).astype(np.float32)
    norms = np.linalg.norm(data, axis=1)
    with graph_engine(tmp_path, 0) as engine:
        for name in METRIC_NAMES:
            metric = vectors.normalize_metric(name)
            run(engine, CreateVectorIndex(name, "v", dimension, name))
            ids = np.asarray(run(engine, InsertMany(name, [{"v": row.tolist()} for row in data])))
            hits = {None: 0, 1: 0}
            for query in queries:
                if metric == vectors.METRIC_EUCLIDEAN:
                    dist = np.linalg.norm(data - query, axis=1)
                elif metric == vectors.METRIC_DOT:
                    dist = -(data @ query)
                else:
                    dist = 1 - (data @ query) / (norms * np.linalg.norm(query))
                truth = set(ids[np.argsort(dist)[:10]].tolist())
                for ef in hits:
                    found = engine.vector_search(name, "v", query.tolist(), 10, ef)
                    hits[ef] += len(truth & {doc["_id"] for doc in found})
            assert hits[None] >= 0.95 * 10 * len(queries), (name, hits)
            assert hits[1] < hits[None], (name, hits)
        assert len(engine.vector_cache) == 3


def test_graph_recall_through_writes_and_compact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vectors, "build_threads", lambda: 1)  # one insertion order: one graph, one recall
    rng = np.random.default_rng(7)
    dimension = 16
    with graph_engine(tmp_path, 500) as engine:
        data = rng.standard_normal((900, dimension)).astype(np.float32)
        run(engine, CreateVectorIndex("c", "v", dimension, "cosine"))
        ids = run(engine, InsertMany("c", [{"v": row.tolist()} for row in data]))
        model: dict[int, list[float] | None] = {i: row.tolist() for i, row in zip(ids, data, strict=True)}
        queries = rng.standard_normal((20, dimension)).astype(np.float32)
        assert recall(engine, "c", queries, model) >= 0.95
        assert len(engine.vector_cache) == 1
        # Changes after the graph was built: caught up before the next search.
        moved = rng.standard_normal((50, dimension)).astype(np.float32)
        for doc_id, row in zip(range(1, 51), moved, strict=True):
            run(engine, Update("c", {"_id": doc_id}, {"$set": {"v": row.tolist()}}))
            model[doc_id] = row.tolist()
        run(engine, Delete("c", {"_id": {"$gt": 850}}))
        model = {k: v for k, v in model.items() if k <= 850}
        run(engine, Update("c", {"_id": {"$gt": 800}}, {"$set": {"v": "gone"}}))
        model.update({k: None for k in model if k > 800})
        assert recall(engine, "c", queries, model) >= 0.95
        # A moved vector is found where it went.
        hit = engine.vector_search("c", "v", moved[0].tolist(), 1)
        assert hit[0]["_id"] == 1 and hit[0]["_distance"] == pytest.approx(0, abs=1e-5)
        run(engine, Compact("c"))
        assert recall(engine, "c", queries, model) >= 0.95
        assert len(engine.vector_cache) == 1, "the graph of the compacted table is gone"
    # Reopened: rebuilt from the table.
    with graph_engine(tmp_path, 500) as engine:
        assert len(engine.vector_cache) == 0
        assert recall(engine, "c", queries[:5], model) >= 0.95


def test_exact_answers_while_a_graph_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vectors, "CATCH_UP_MAX", 5)
    jobs: list[Callable[[], None]] = []
    rng = np.random.default_rng(3)
    with graph_engine(tmp_path, 0, jobs.append) as engine:
        run(engine, CreateVectorIndex("c", "v", 4, "euclidean"))
        data = rng.standard_normal((50, 4)).astype(np.float32)
        ids = run(engine, InsertMany("c", [{"v": row.tolist()} for row in data]))
        model: dict[int, list[float] | None] = {i: row.tolist() for i, row in zip(ids, data, strict=True)}
        query = [0.0, 0.0, 0.0, 0.0]
        # No graph yet: one build is queued and the answer is exact.
        check_against_reference(engine.vector_search("c", "v", query, 5), model, query, "euclidean", 5)
        check_against_reference(engine.vector_search("c", "v", query, 5), model, query, "euclidean", 5)
        assert len(jobs) == 1 and len(engine.vector_cache) == 0
        jobs.pop()()
        assert len(engine.vector_cache) == 1
        # A few changes: the search applies them to the graph first.
        run(engine, Update("c", {"_id": 1}, {"$set": {"v": [0, 0, 0, 0]}}))
        model[1] = [0, 0, 0, 0]
        assert engine.vector_search("c", "v", query, 1)[0]["_id"] == 1
        # Too many changes to catch up: exact answers and a rebuild.
        run(engine, Delete("c", {"_id": {"$lte": 10}}))
        model = {k: v for k, v in model.items() if k > 10}
        check_against_reference(engine.vector_search("c", "v", query, 5), model, query, "euclidean", 5)
        assert len(jobs) == 1
        jobs.pop()()
        found = engine.vector_search("c", "v", query, 5)
        check_against_reference(found, model, query, "euclidean", 5, exact=False)
        # A build that finishes after the engine reopened is dropped.
        run(engine, Compact("c"))
        engine.vector_search("c", "v", query, 5)
        engine.close()
        engine.open()
        jobs.pop()()
        assert len(engine.vector_cache) == 0


# --- transactions, backups -----------------------------------------------------------------


@pytest.fixture
def server(engine: Engine, tmp_path: Path) -> MemoryServer:
    server = MemoryServer(Config(data_dir=str(tmp_path / "data"), idle_timeout=30), engine=engine)
    server.clock.advance(NOW)
    return server


class Client:
    """One in-memory client connection."""

    def __init__(self, server: MemoryServer) -> None:
        self.client: OxiClientProtocol
        self.client, self.pump = server.connect()

    def reply(self, cmd: str, **body: Any) -> Any:
        d = self.client.request({"cmd": cmd, **body})
        self.pump.flush()
        return result_of(d)

    def ok(self, cmd: str, **body: Any) -> Any:
        reply = self.reply(cmd, **body)
        assert reply["ok"] is True, reply
        return reply["data"]

    def error(self, cmd: str, **body: Any) -> str:
        reply = self.reply(cmd, **body)
        assert reply["ok"] is False, reply
        return str(reply["error"])


def test_transactions_keep_the_index_in_step(server: MemoryServer) -> None:
    ok = Client(server).ok

    assert ok("create_vector_index", collection="c", field="v", dimension=2, metric="euclidean") == (
        "vector index created"
    )
    ok("insert_many", collection="c", docs=[{"v": [0, 0]}, {"v": [5, 5]}, {"v": [9, 9]}])
    ok("begin_tx")
    ok("insert", collection="c", doc={"v": [1, 1]})
    ok("update", collection="c", query={"_id": 2}, update={"$set": {"v": [0.5, 0.5]}})
    ok("delete", collection="c", query={"_id": 1})
    assert [d["_id"] for d in ok("vector_search", collection="c", field="v", vector=[0, 0], limit=2)] == [1, 2]
    ok("commit_tx")
    found = ok("vector_search", collection="c", field="v", vector=[0, 0], limit=5)
    assert [d["_id"] for d in found] == [2, 4, 3]
    assert found[0]["_distance"] == pytest.approx(math.sqrt(0.5), rel=1e-6)
    assert found[0]["_similarity"] == pytest.approx(1 / (1 + math.sqrt(0.5)), rel=1e-6)
    ok("begin_tx")
    ok("insert", collection="c", doc={"v": [0, 0]})
    ok("rollback_tx")
    assert [d["_id"] for d in ok("vector_search", collection="c", field="v", vector=[0, 0], limit=5)] == [2, 4, 3]


def test_a_failed_write_leaves_the_index_alone(engine: Engine) -> None:
    run(engine, CreateVectorIndex("c", "v", 2, "euclidean"))
    run(engine, InsertMany("c", [{"v": [1, 1], "k": 1}]))
    engine.apply({"CreateUniqueIndex": {"collection": "c", "field": "k"}}, NOW)
    with pytest.raises(OxiError, match="unique constraint"):
        run(engine, InsertMany("c", [{"v": [0, 0], "k": 2}, {"v": [0, 0], "k": 1}]))
    assert [d["_id"] for d in engine.vector_search("c", "v", [0, 0], 5)] == [1]


def test_backups_carry_the_vectors(engine: Engine, tmp_path: Path) -> None:
    run(engine, CreateVectorIndex("c", "v", 3, "dotproduct"))
    run(engine, InsertMany("c", [{"v": [1, 2, 3]}, {"v": [3, 2, 1]}]))
    copy = tmp_path / "copy"
    copy.mkdir()
    engine.backup(str(copy / "oxidb.sqlite3"))
    with Engine(str(copy), synchronous="OFF") as restored:
        assert restored.list_indexes("c") == engine.list_indexes("c")
        assert restored.vector_search("c", "v", [1, 0, 0], 2) == engine.vector_search("c", "v", [1, 0, 0], 2)
    shutil.rmtree(copy)


# --- shapes and errors ------------------------------------------------------------------------------


def test_index_listing_and_dropping(engine: Engine) -> None:
    engine.apply({"CreateIndex": {"collection": "c", "field": "a"}}, NOW)
    run(engine, CreateVectorIndex("c", "emb", 4, vectors.normalize_metric("dot_product")))
    run(engine, CreateVectorIndex("c", "other", 2, vectors.normalize_metric("manhattan")))
    # Idempotent: the first definition stays.
    assert run(engine, CreateVectorIndex("c", "emb", 8, "euclidean")) == "vector index created"
    assert engine.list_indexes("c") == [
        {"name": "a", "index_type": "field", "fields": ["a"], "unique": False},
        {"name": "_vec_emb", "index_type": "vector", "fields": ["emb"], "unique": False, "dimension": 4,
         "metric": "dotproduct"},
        {"name": "_vec_other", "index_type": "vector", "fields": ["other"], "unique": False, "dimension": 2,
         "metric": "cosine"},
    ]  # fmt: skip
    assert run(engine, DropIndex("c", "_vec_emb")) == "index dropped"
    assert [d["name"] for d in engine.list_indexes("c")] == ["a", "_vec_other"]
    with pytest.raises(OxiError, match="no vector index on field 'emb'"):
        engine.vector_search("c", "emb", [1, 2, 3, 4])
    with pytest.raises(OxiError, match="index not found: _vec_emb"):
        run(engine, DropIndex("c", "_vec_emb"))


def test_documents_keep_their_fields_and_get_scores(engine: Engine) -> None:
    run(engine, CreateVectorIndex("c", "v", 2, "cosine"))
    run(engine, InsertMany("c", [{"v": [1, 0], "_distance": "stored"}, {"v": [0, 0]}, {"v": [-1, 0]}]))
    found = engine.vector_search("c", "v", [1, 0])
    scored = [(d["_id"], d["_distance"], d["_similarity"]) for d in found]
    assert scored == [(1, 0.0, 1.0), (2, 1.0, 0.5), (3, 2.0, 0.0)]
    assert found[0]["_version"] == 1 and found[0]["v"] == [1, 0]
    assert engine.vector_search("c", "v", [1, 0], 0) == []


def test_similarities() -> None:
    assert vectors.similarity(0.5, "cosine") == 0.75
    assert vectors.similarity(3.0, "euclidean") == 0.25
    assert vectors.similarity(0.0, "dotproduct") == 0.5
    assert vectors.similarity(-1000.0, "dotproduct") == 1.0
    assert vectors.similarity(1000.0, "dotproduct") == 0.0


NO_INDEX = "invalid query: no vector index on field 'w'; create one with create_vector_index"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"vector": [1, 2, 3]}, "invalid query: query vector dimension mismatch: expected 2, got 3"),
        ({"vector": []}, "invalid query: query vector dimension mismatch: expected 2, got 0"),
        ({"vector": None}, "missing 'vector' array"),
        ({"vector": "1,2"}, "missing 'vector' array"),
        ({"vector": [1, "2"]}, "'vector' must be an array of numbers"),
        ({"vector": [1, True]}, "'vector' must be an array of numbers"),
        ({"vector": [1, float("nan")]}, "'vector' must hold finite numbers within the 32-bit float range"),
        ({"vector": [1, float("inf")]}, "'vector' must hold finite numbers within the 32-bit float range"),
        ({"vector": [1, 1e39]}, "'vector' must hold finite numbers within the 32-bit float range"),
        ({"vector": [1, 10**400]}, "'vector' must hold finite numbers within the 32-bit float range"),
        ({"vector": [1, 2], "limit": 10_001}, "'limit' must be an integer from 0 to 10000"),
        ({"vector": [1, 2], "limit": -1}, "'limit' must be an integer from 0 to 10000"),
        ({"vector": [1, 2], "limit": 2**70}, "'limit' must be an integer from 0 to 10000"),
        ({"vector": [1, 2], "ef_search": 0}, "'ef_search' must be an integer from 1 to 10000"),
        ({"vector": [1, 2], "ef_search": 10**9}, "'ef_search' must be an integer from 1 to 10000"),
        ({"vector": [1, 2], "field": "w"}, NO_INDEX),
        ({"vector": [1, 2], "field": 5}, "missing 'field'"),
    ],
)  # fmt: skip
def test_search_errors(engine: Engine, args: dict[str, Any], message: str) -> None:
    run(engine, CreateVectorIndex("c", "v", 2, "cosine"))
    args = {"field": "v", **args}
    with pytest.raises(OxiError) as raised:
        engine.vector_search("c", **args)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"field": "v", "dimension": 0}, "'dimension' must be an integer from 1 to 16384"),
        ({"field": "v", "dimension": 16385}, "'dimension' must be an integer from 1 to 16384"),
        ({"field": "v", "dimension": 2**80}, "'dimension' must be an integer from 1 to 16384"),
        ({"field": "v", "dimension": "3"}, "missing 'dimension'"),
        ({"field": "v", "dimension": 3.0}, "missing 'dimension'"),
        ({"field": "v"}, "missing 'dimension'"),
        ({"dimension": 3}, "missing 'field'"),
    ],
)
def test_create_errors(engine: Engine, body: dict[str, Any], message: str) -> None:
    with pytest.raises(OxiError) as raised:
        engine.apply({"CreateVectorIndex": {"collection": "c", **body}}, NOW)
    assert str(raised.value) == message
    assert engine.list_indexes("c") == []


def test_operation_round_trip(engine: Engine) -> None:
    op = CreateVectorIndex("c", "v", 3, "euclidean")
    assert op.to_json() == {"CreateVectorIndex": {"collection": "c", "field": "v", "dimension": 3,
                                                  "metric": "euclidean", "v": 1}}  # fmt: skip
    assert engine.codec.decode(op.to_json()) == op


def test_commands(server: MemoryServer) -> None:
    client = Client(server)
    assert client.error("create_vector_index", collection="c", field="v") == "missing 'dimension'"
    assert client.error("create_vector_index", collection="c", field="v", dimension="3") == "missing 'dimension'"
    assert client.error("create_vector_index", collection="c", field="v", dimension=0) == (
        "'dimension' must be an integer from 1 to 16384"
    )
    assert client.error("create_vector_index", collection="c", dimension=2) == "missing 'field'"
    assert client.error("create_vector_index", collection="_procedures", field="v", dimension=2).startswith(
        "invalid query"
    )
    assert client.ok("create_vector_index", collection="c", field="v", dimension=2, metric=7) == "vector index created"
    assert client.ok("list_indexes", collection="c")[0]["metric"] == "cosine"
    client.ok("insert_many", collection="c", docs=[{"v": [1, n]} for n in range(20)])
    search = {"collection": "c", "field": "v", "vector": [1, 0]}
    assert len(client.ok("vector_search", **search)) == 10
    # Optional numbers of the wrong type are ignored (server.md 3.2).
    assert len(client.ok("vector_search", **search, limit="many", ef_search="x")) == 10
    assert len(client.ok("vector_search", **search, limit=3, ef_search=5)) == 3
    assert client.error("vector_search", **search, limit=10**6) == "'limit' must be an integer from 0 to 10000"
    assert client.error("vector_search", collection="c", field="v") == "missing 'vector' array"
    assert client.error("vector_search", collection="c", field="v", vector=[1, "x"]) == (
        "'vector' must be an array of numbers"
    )
    assert client.error("vector_search", collection="c", field="v", vector=[1]) == (
        "invalid query: query vector dimension mismatch: expected 2, got 1"
    )
    assert client.error("vector_search", collection="c", field="v", vector=[1, 1e300]) == (
        "'vector' must hold finite numbers within the 32-bit float range"
    )
    assert client.ok("drop_index", collection="c", index="_vec_v") == "index dropped"


def test_replicas_applying_one_log_hold_the_same_vectors(tmp_path: Path) -> None:
    """The vector tables follow the replicated operations deterministically (cluster mode)."""
    log = [
        InsertMany("c", [{"v": [1, 2]}, {"v": [3, 4]}]).to_json(),
        CreateVectorIndex("c", "v", 2, "euclidean").to_json(),
        InsertMany("c", [{"v": [5, 6]}, {"v": "no"}]).to_json(),
        Update("c", {"_id": 1}, {"$set": {"v": [0.1, 0.2]}}).to_json(),
        Delete("c", {"_id": 2}).to_json(),
        Compact("c").to_json(),
    ]
    tables = []
    for name in ("a", "b"):
        with Engine(str(tmp_path / name), synchronous="OFF") as replica:
            for index, payload in enumerate(log, 1):
                replica.apply(payload, NOW, raft_index=index)
            tables.append(replica.read(lambda r: r.conn.execute("SELECT * FROM c2_v1 ORDER BY id").fetchall()))
    assert tables[0] == tables[1]
    assert [row[0] for row in tables[0]] == [1, 3]


def test_cosine_distances_of_tiny_and_huge_vectors(engine: Engine) -> None:
    """
    Squares that underflow or overflow float32 change no cosine distance:
    the float64 reference's answers, for queries and rows alike, with the
    rows' norms given or not; a zero vector is at distance 1.
    """
    matrix = np.array([[0, 0, 1], [0, 0, 1e-30], [0, 0, 0], [1e30, 0, 0], [3, 4, 0]], dtype=np.float32)
    expected = {
        (0.0, 0.0, 1.18e-38): [0, 0, 1, 1, 1],
        (0.0, 0.0, 1e30): [0, 0, 1, 1, 1],
        (1e-30, 0.0, 0.0): [1, 1, 1, 0, 0.4],
        (0.0, 0.0, 0.0): [1, 1, 1, 1, 1],
    }
    for query, distances in expected.items():
        q = np.array(query, dtype=np.float32)
        for norms in (None, vectors.row_norms(matrix)):
            found = vectors.distances(matrix, q, vectors.METRIC_COSINE, norms)
            assert found.dtype == np.float32
            assert found.tolist() == pytest.approx(distances, abs=1e-6), (query, norms)
    run(engine, CreateVectorIndex("tiny", "v", 3, "cosine"))
    run(engine, InsertMany("tiny", [{"v": [0, 0, 1]}, {"v": [0, 1, 0]}]))
    (first, second) = engine.vector_search("tiny", "v", [0, 0, 1.18e-38], 2)
    assert (first["v"], first["_distance"], second["_distance"]) == ([0, 0, 1], 0.0, 1.0)
