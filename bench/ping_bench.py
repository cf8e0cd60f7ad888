"""
Ping throughput: our server against a bare Twisted server with the same
framing (the framework limit), driven by the same load generator in its own
process. Prints requests/s and the ratio oxidb/bare for each load shape.

    .venv/bin/python bench/ping_bench.py [--seconds 5] [--metrics]

Goal (issue 2): ping at 16 connections >= 0.85x the bare server.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from oxidb._harness import free_port, wait_for_port  # noqa: E402

PYTHON = sys.executable
TWISTD = os.path.join(os.path.dirname(PYTHON), "twistd")

SHAPES = [
    ("1 conn, 1 in flight", 1, 1),
    ("16 conns, 1 in flight each", 16, 1),
    ("16 conns, pipelined x32", 16, 32),
]


def start_bare(port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen(
        [PYTHON, os.path.join(HERE, "bare_server.py"), str(port)], env=env, stdout=subprocess.DEVNULL
    )


def start_oxidb(port: int, data_dir: str, metrics: bool) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT, OXIDB_ADDR=f"127.0.0.1:{port}", OXIDB_DATA=data_dir, OXIDB_IDLE_TIMEOUT="0")
    if metrics:
        env["OXIDB_METRICS_ADDR"] = f"127.0.0.1:{free_port()}"
    log = os.path.join(data_dir, "..", "twistd.log")
    return subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", f"--logfile={log}", "oxidb"], env=env, stdout=subprocess.DEVNULL
    )


def load(port: int, connections: int, depth: int, seconds: float) -> float:
    out = subprocess.run(
        [PYTHON, os.path.join(HERE, "loadgen.py"), str(port), str(connections), str(depth), str(seconds)],
        capture_output=True, text=True, check=True,
    ).stdout
    return float(out.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--metrics", action="store_true", help="run our server with OXIDB_METRICS_ADDR set")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        bare_port, ox_port = free_port(), free_port()
        bare = start_bare(bare_port)
        ox = start_oxidb(ox_port, os.path.join(tmp, "data"), args.metrics)
        try:
            wait_for_port(bare_port)
            wait_for_port(ox_port)
            for label, connections, depth in SHAPES:
                # Alternate to spread any drift of the machine over both.
                b = load(bare_port, connections, depth, args.seconds)
                o = load(ox_port, connections, depth, args.seconds)
                results.append((label, b, o))
        finally:
            for p in (bare, ox):
                p.terminate()
                p.wait()
    title = "ping, oxidb vs bare Twisted server" + (" (metrics on)" if args.metrics else "")
    print(title)
    print(f"{'load':32} {'bare req/s':>12} {'oxidb req/s':>12} {'ratio':>7}")
    for label, b, o in results:
        print(f"{label:32} {b:12.0f} {o:12.0f} {o / b:7.2f}")


if __name__ == "__main__":
    main()
