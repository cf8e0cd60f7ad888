"""
One request in flight: the latency of ping, find by C{_id}, an indexed
equality find (20 documents per reply at the default size) and sort + limit
10 on an indexed field, both directions, through the official client, with
the server's and the client's CPU per request. This is the shape where a
reply's syscalls and reactor wakeups are not shared with other requests, so
it shows costs that pipelined benches hide.

    .venv/bin/python bench/latency_bench.py [--docs 20000] [--count 2000] [--rounds 3] [--baseline TREE]

Each round starts a fresh server; the table gives the median of the rounds.
With C{--baseline} each round also runs a server started from another
checkout (with its own C{.venv}), the two alternating, and the table gives
the ratios ours / baseline of the medians (below 1.0: ours is faster or
cheaper), then each round's paired ratios (min, median, max). Single
rounds on this shared 2-core machine vary by 2x or more.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import engine_bench  # noqa: E402
from procstat import memory_mib  # noqa: E402

from oxidb._harness import free_port, wait_for_port  # noqa: E402


def start(tree: str, port: int, data_dir: str) -> subprocess.Popen[bytes]:
    """A server of the checkout C{tree}, run by that tree's own twistd."""
    env = dict(os.environ, PYTHONPATH=tree, OXIDB_ADDR=f"127.0.0.1:{port}", OXIDB_DATA=data_dir, OXIDB_IDLE_TIMEOUT="0")
    twistd = os.path.join(tree, ".venv", "bin", "twistd")
    log = os.path.join(os.path.dirname(data_dir), f"twistd-{port}.log")
    command = [twistd, "-n", "--pidfile=", f"--logfile={log}", "oxidb"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of process C{pid} (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(pid: int, fn: Callable[[], Any], count: int) -> dict[str, float]:
    """Per request: p50 and p90 wall time, server and client CPU (microseconds)."""
    fn()  # warm up
    times = []
    server, client = cpu_seconds(pid), time.process_time()
    for _ in range(count):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    server, client = cpu_seconds(pid) - server, time.process_time() - client
    times.sort()
    return {
        "p50": times[len(times) // 2] * 1e6,
        "p90": times[int(len(times) * 0.9)] * 1e6,
        "server cpu": server / count * 1e6,
        "client cpu": client / count * 1e6,
    }


def run_tree(tree: str, docs: list[dict[str, Any]], count: int) -> tuple[dict[str, dict[str, float]], float]:
    """Every shape against a fresh server of C{tree} holding C{docs}; and its resident memory at the end."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = start(tree, port, os.path.join(tmp, "data"))
        try:
            wait_for_port(port)
            target = engine_bench.OxiTarget(port)
            engine_bench.bulk_insert(target, docs)
            client = target.client
            rng = random.Random(1)
            shapes: dict[str, Callable[[], Any]] = {
                "ping": client.ping,
                "find by _id": lambda: client.find("bench", {"_id": rng.randint(1, len(docs))}),
                "eq find (indexed)": lambda: client.find("bench", {"city": f"c{rng.randint(0, 999)}"}),
                "sort desc + limit 10": lambda: client.find("bench", {}, sort={"score": -1}, limit=10),
                "sort asc + limit 10": lambda: client.find("bench", {}, sort={"score": 1}, limit=10),
            }
            results = {name: measure(server.pid, fn, count) for name, fn in shapes.items()}
            rss = memory_mib(server.pid)
            target.close()
        finally:
            server.terminate()
            server.wait()
    return results, rss


def medians(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each figure's median over the rounds."""
    return {
        shape: {key: statistics.median(run[shape][key] for run in runs) for key in runs[0][shape]} for shape in runs[0]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--count", type=int, default=2000, help="requests per shape and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", help="root of another checkout with its own .venv")
    args = parser.parse_args()
    docs = engine_bench.make_docs(args.docs)
    ours_runs, base_runs, memory = [], [], []
    for _ in range(args.rounds):
        results, rss = run_tree(ROOT, docs, args.count)
        ours_runs.append(results)
        memory.append(rss)
        if args.baseline:
            base_runs.append(run_tree(args.baseline, docs, args.count)[0])
    ours = medians(ours_runs)
    base = medians(base_runs) if base_runs else None
    rss = max(memory)
    print(
        f"one request in flight, official client, {args.docs} documents, {args.count} requests per shape,"
        f" medians of {args.rounds} rounds (µs)"
    )
    header = f"{'shape':20} {'p50':>7} {'p90':>7} {'server cpu':>11} {'client cpu':>11}"
    print(header + ("   p50 / base   server cpu / base" if base else ""))
    for name, row in ours.items():
        line = f"{name:20} {row['p50']:7.0f} {row['p90']:7.0f} {row['server cpu']:11.0f} {row['client cpu']:11.0f}"
        if base:
            b = base[name]
            line += f"   {row['p50'] / b['p50']:10.2f}   {row['server cpu'] / b['server cpu']:17.2f}"
        print(line)
    if base_runs:
        print("paired by round, ours / baseline: min  median  max")
        for name in ours:
            cells = []
            for key in ("p50", "server cpu"):
                ratios = sorted(o[name][key] / b[name][key] for o, b in zip(ours_runs, base_runs, strict=True))
                cells.append(f"{key} {ratios[0]:.2f} {statistics.median(ratios):.2f} {ratios[-1]:.2f}")
            print(f"{name:20} " + "   ".join(cells))
    print(f"server memory at the end of a round: at most {rss:.0f} MiB resident")


if __name__ == "__main__":
    main()
