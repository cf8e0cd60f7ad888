"""
Vector search bench (issue 13): the engine's C{vector_search} against numpy
brute force, in process, in the same run. Prints one table of figures and
ratios, and the process's RSS.

    .venv/bin/python bench/vector_bench.py [--docs 100000] [--dim 128] [--queries 200] [--metric cosine]

Workload: C{--docs} documents C{{"n": i, "emb": [dim floats]}} inserted in
batches of 1000 into a collection with a vector index, then top-10 queries
(other seeded vectors of the same distribution). C{--data}:

  - C{embedding} (default): like real embeddings, vectors of low intrinsic
    dimension: a 24-dimensional standard normal latent vector through a
    fixed random linear map to C{dim} dimensions, plus 10% noise;
  - C{random}: standard normal in all C{dim} dimensions, the worst case of
    HNSW (no structure at all; recall at a given C{ef_search} is far lower).

  - numpy brute force: the vectors as one float32 matrix in memory, one
    matrix-vector product and an C{argpartition} per query (the ground
    truth for recall);
  - engine, as calibrated: C{Engine.vector_search} without C{ef_search}
    (the graph is built and calibrated on the first query, timed
    separately): through the HNSW graph at the C{ef_search} the
    calibration chose, or exactly over the vectors in memory if no
    C{ef_search} reached recall@10 0.95 at a cost below exact search;
    then with each C{--ef} given (the graph at that value); figures
    include reading the documents (and, through the graph, the
    candidates' vectors) from SQLite and decoding them;
  - engine, exact: the same call on an engine whose threshold sends every
    search to the exact path (numpy over the vectors read from SQLite).

"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from typing import Any

import attrs
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from procstat import memory_mib  # noqa: E402

from oxidb.engine import vectors  # noqa: E402
from oxidb.engine.engine import Engine  # noqa: E402
from oxidb.engine.governor import DEFAULT_LIMITS  # noqa: E402
from oxidb.engine.operations import CreateVectorIndex, InsertMany  # noqa: E402


def numpy_top(matrix: np.ndarray, norms: np.ndarray, query: np.ndarray, metric: str, k: int) -> np.ndarray:
    """Row indexes of the k nearest rows (brute force)."""
    if metric == "euclidean":
        dist = np.einsum("ij,ij->i", matrix - query, matrix - query)
    elif metric == "dotproduct":
        dist = -(matrix @ query)
    else:
        dist = 1 - (matrix @ query) / (norms * np.linalg.norm(query))
    top = np.argpartition(dist, k)[:k]
    return top[np.argsort(dist[top])]


def timed_queries(fn: Any, queries: np.ndarray) -> tuple[float, list[Any]]:
    start = time.perf_counter()
    results = [fn(q) for q in queries]
    return len(queries) / (time.perf_counter() - start), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=20)
    parser.add_argument("--metric", default="cosine", choices=["cosine", "euclidean", "dot_product"])
    parser.add_argument("--ef", type=int, action="append", default=[], help="extra ef_search values to measure")
    parser.add_argument("--data", default="embedding", choices=["embedding", "random"])
    args = parser.parse_args()
    metric = vectors.normalize_metric(args.metric)
    k = 10
    rng = np.random.default_rng(42)
    if args.data == "random":
        data = rng.standard_normal((args.docs, args.dim)).astype(np.float32)
        queries = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    else:
        latent = 24
        mapping = rng.standard_normal((latent, args.dim)) / np.sqrt(latent)

        def embeddings(n: int) -> np.ndarray:
            noise = 0.1 * rng.standard_normal((n, args.dim))
            return (rng.standard_normal((n, latent)) @ mapping + noise).astype(np.float32)

        data = embeddings(args.docs)
        queries = embeddings(args.queries)
    rows: list[tuple[str, str, str]] = []
    shape = f"{args.docs} {args.data} vectors x {args.dim} dims, metric {metric}"
    print(f"{shape}, top-{k}, {args.queries} queries", flush=True)
    print(f"RSS at start: {memory_mib():.0f} MiB", flush=True)

    # numpy brute force: the ground truth.
    norms = np.linalg.norm(data, axis=1)
    numpy_qps, truth = timed_queries(lambda q: numpy_top(data, norms, q, metric, k), queries)
    truth_ids = [set((t + 1).tolist()) for t in truth]  # document ids are row + 1

    directory = tempfile.mkdtemp(prefix="vector-bench-")
    try:
        # Builds on the first search (instead of in the background), which
        # may take longer than the default time limit of a read.
        limits = attrs.evolve(DEFAULT_LIMITS, max_time_ms=24 * 3600 * 1000)
        with Engine(directory, synchronous="NORMAL", vector_runner=vectors.inline, limits=limits) as engine:
            engine.apply(CreateVectorIndex("bench", "emb", args.dim, metric), 0.0)
            start = time.perf_counter()
            for first in range(0, args.docs, 1000):
                batch = [{"n": first + i, "emb": row.tolist()} for i, row in enumerate(data[first : first + 1000])]
                engine.apply(InsertMany("bench", batch), 0.0)
            insert_rate = args.docs / (time.perf_counter() - start)
            print(f"insert with the vector index: {insert_rate:,.0f} docs/s", flush=True)
            rss_before_graph = memory_mib()
            start, cpu = time.perf_counter(), time.process_time()
            engine.vector_search("bench", "emb", queries[0].tolist(), k)
            build, build_cpu = time.perf_counter() - start, time.process_time() - cpu
            rss_after_graph = memory_mib()
            (descriptor,) = [d for d in engine.list_indexes("bench") if d["index_type"] == "vector"]
            calibration = descriptor["search"]
            print(f"calibration: {calibration}", flush=True)
            # CPU seconds of every thread: on a busy machine wall time mostly measures the others.
            print(
                f"HNSW build and calibration on first search: {build:.1f} s wall, {build_cpu:.1f} s CPU"
                f" ({vectors.build_threads()} threads)",
                flush=True,
            )

            def approximate(ef: int | None) -> tuple[float, float]:
                qps, results = timed_queries(
                    lambda q: engine.vector_search("bench", "emb", q.tolist(), k, ef), queries
                )
                hits = sum(len(t & {d["_id"] for d in r}) for t, r in zip(truth_ids, results, strict=True))
                return qps, hits / (k * len(queries))

            for ef in [None, *args.ef]:
                qps, recall = approximate(ef)
                if ef is not None:
                    label = f"engine HNSW (explicit ef_search {ef})"
                elif calibration["mode"] == vectors.MODE_GRAPH:
                    label = f"engine as calibrated: HNSW (ef_search {calibration['ef_search']})"
                else:
                    label = "engine as calibrated: exact (vectors in memory)"
                rows.append((label, f"{qps:,.0f}", f"{recall:.3f}"))
                print(f"{label}: {qps:,.0f} q/s, recall@10 {recall:.3f}", flush=True)
        with Engine(directory, synchronous="NORMAL", vector_exact_below=args.docs + 1, limits=limits) as engine:
            subset = queries[: args.exact_queries]
            qps, results = timed_queries(lambda q: engine.vector_search("bench", "emb", q.tolist(), k), subset)
            hits = sum(len(t & {d["_id"] for d in r}) for t, r in zip(truth_ids, results, strict=False))
            rows.append(("engine exact (numpy over SQLite)", f"{qps:,.1f}", f"{hits / (k * len(subset)):.3f}"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    rows.insert(0, ("numpy brute force (in memory)", f"{numpy_qps:,.0f}", "1.000"))

    print()
    print("| search | queries/s | recall@10 | vs numpy |")
    print("|---|---|---|---|")
    for label, qps, recall in rows:
        ratio = float(qps.replace(",", "")) / numpy_qps
        print(f"| {label} | {qps} | {recall} | {ratio:.2f}x |")
    print()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"RSS: {rss_before_graph:.0f} MiB before the graph, {rss_after_graph:.0f} MiB after it, peak {peak:.0f} MiB")


if __name__ == "__main__":
    main()
