"""
In-process timing of engine_bench's C{$group} row: the engine alone, no
server or client, paired against another checkout in alternating rounds.

    .venv/bin/python bench/group_bench.py [--docs 20000 100000] [--rounds 5] [--baseline /work/wt-base]

Each size's database (engine_bench's documents and its 4 field indexes) is
built once in a temporary directory and shared by both trees (one file
format). Each round runs this tree, then the baseline, each in its own
process timing C{--repeats} aggregates in CPU time (the machine is shared:
wall time measures the others too); the median per tree is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PIPELINE = [{"$group": {"_id": "$city", "n": {"$sum": 1}, "avg_age": {"$avg": "$age"}}}]

#: Run inside a tree's own interpreter: time the aggregate over the database in argv[1].
_TIMER = """
import json, statistics, sys, time
from oxidb.engine.engine import Engine
pipeline = json.loads(sys.argv[3])
with Engine(sys.argv[1], synchronous="NORMAL") as engine:
    engine.aggregate("bench", pipeline)
    times = []
    for _ in range(int(sys.argv[2])):
        start = time.process_time()
        engine.aggregate("bench", pipeline)
        times.append(time.process_time() - start)
print(statistics.median(times))
"""


def build(directory: str, docs: int) -> None:
    """engine_bench's collection of C{docs} documents, in C{directory}."""
    sys.path.insert(0, HERE)
    sys.path.insert(0, ROOT)
    from engine_bench import INDEXED, make_docs

    from oxidb.engine.engine import Engine
    from oxidb.engine.operations import CreateIndex, InsertMany

    with Engine(directory, synchronous="OFF") as engine:
        for field in INDEXED:
            engine.apply(CreateIndex("bench", field), 0.0)
        data = make_docs(docs)
        for first in range(0, docs, 500):
            engine.apply(InsertMany("bench", data[first : first + 500]), 0.0)


def timed(tree: str, directory: str, repeats: int) -> float:
    import json

    python = os.path.join(tree, ".venv", "bin", "python")
    out = subprocess.run(
        [python, "-c", _TIMER, directory, str(repeats), json.dumps(PIPELINE)],
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", default="")
    args = parser.parse_args()
    trees = [ROOT] + ([args.baseline] if args.baseline else [])
    for docs in args.docs:
        directory = tempfile.mkdtemp(prefix="group-bench-")
        try:
            started = time.perf_counter()
            build(directory, docs)
            print(f"{docs} docs built in {time.perf_counter() - started:.1f} s", flush=True)
            results: dict[str, list[float]] = {tree: [] for tree in trees}
            for _ in range(args.rounds):
                for tree in trees:
                    results[tree].append(timed(tree, directory, args.repeats))
            for tree in trees:
                ms = [t * 1000 for t in results[tree]]
                print(f"  {tree}: median {statistics.median(ms):.1f} ms  rounds {' '.join(f'{m:.1f}' for m in ms)}")
            if args.baseline:
                ours, base = (statistics.median(results[t]) for t in trees)
                print(f"  ours / baseline time: {ours / base:.2f}", flush=True)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
