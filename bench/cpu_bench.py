"""
Server CPU per request: this tree's server against a baseline tree's (an older
checkout, e.g. a git worktree), both driven by the same client in this process.

Throughput on a shared 2-core machine swings with whatever else runs; the CPU
time the server process spends per request (from /proc) barely does, so this
is the bench for "did this change make the server slower". For each request
shape it sends COUNT requests (scaled per shape) over 4 connections, 32 in flight each, reads
the server's user+system CPU before and after, and prints microseconds per
request and the ratio ours/baseline (below 1 is cheaper), plus each server's
peak RSS. Servers run one at a time and the shapes alternate between them.

    .venv/bin/python bench/cpu_bench.py --baseline /work/wt-before [--count 20000] [--rounds 3] [--only ping,find]

The baseline tree needs its own venv (``.venv``) with its C extension built.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from procstat import memory_mib  # noqa: E402

from oxidb._harness import free_port, wait_for_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
CONNECTIONS = 4
DEPTH = 32


def _frame(request: dict[str, object]) -> bytes:
    payload = json.dumps(request).encode()
    return struct.pack("<I", len(payload)) + payload


# (label, frame, share of COUNT): expensive shapes send fewer requests.
SHAPES: list[tuple[str, bytes, float]] = [
    ("ping", _frame({"cmd": "ping"}), 4),
    ("find by indexed field", _frame({"cmd": "find", "collection": "people", "query": {"n": 77}}), 1),
    ("find by _id", _frame({"cmd": "find", "collection": "people", "query": {"_id": 77}}), 1),
    ("find range (~20 docs)",
     _frame({"cmd": "find", "collection": "people", "query": {"n": {"$gte": 100, "$lt": 120}}}), 1),
    ("sort + limit 10 (indexed)",
     _frame({"cmd": "find", "collection": "people", "query": {}, "sort": {"n": -1}, "limit": 10}), 1),
    ("count unindexed", _frame({"cmd": "count", "collection": "people", "query": {"city": "c3"}}), 0.2),
    ("insert one", _frame({"cmd": "insert", "collection": "writes", "doc": {"a": 1, "b": "x" * 50}}), 1),
    ("insert_many x100",
     _frame({"cmd": "insert_many", "collection": "writes",
             "docs": [{"name": "bench", "n": 1, "tags": ["a", "b"], "nested": {"x": 1.5}}] * 100}), 0.1),
]


def server_cpu(pid: int) -> float:
    """User + system CPU seconds of process C{pid}."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def drive(port: int, frame: bytes, count: int) -> None:
    """Send C{count} copies of C{frame}, DEPTH in flight per connection; read every reply."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
    per = count // CONNECTIONS
    try:
        for s in socks:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = dict.fromkeys(socks, 0)
        sent = dict.fromkeys(socks, 0)
        buffers = {s: bytearray() for s in socks}
        for s in socks:
            n = min(DEPTH, per)
            s.sendall(frame * n)
            sent[s] = pending[s] = n
        live = [s for s in socks if pending[s]]
        while live:
            for s in list(live):
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                buf = buffers[s]
                buf += chunk
                offset = replies = 0
                while len(buf) - offset >= 4:
                    (n,) = struct.unpack_from("<I", buf, offset)
                    if len(buf) - offset < 4 + n:
                        break
                    if replies == 0 and b'"ok":false' in bytes(buf[offset + 4 : offset + 4 + n]).replace(b" ", b""):
                        raise RuntimeError(bytes(buf[offset + 4 : offset + 4 + n]).decode())
                    offset += 4 + n
                    replies += 1
                del buf[:offset]
                pending[s] -= replies
                more = min(replies, per - sent[s])
                if more:
                    s.sendall(frame * more)
                    sent[s] += more
                    pending[s] += more
                if not pending[s]:
                    live.remove(s)
    finally:
        for s in socks:
            s.close()


def seed(port: int) -> None:
    """1,000 people with an index on n, so the find shapes have work to do."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        docs = [{"n": i, "city": f"c{i % 7}", "name": f"person {i}"} for i in range(1000)]
        for request in (
            {"cmd": "insert_many", "collection": "people", "docs": docs},
            {"cmd": "create_index", "collection": "people", "field": "n"},
        ):
            s.sendall(_frame(request))
            (n,) = struct.unpack("<I", s.recv(4, socket.MSG_WAITALL))
            reply = json.loads(s.recv(n, socket.MSG_WAITALL))
            if not reply.get("ok"):
                raise RuntimeError(f"{request['cmd']}: {reply}")


class Server:
    def __init__(self, root: str, tmp: str, name: str) -> None:
        venv = os.path.join(root, ".venv", "bin")
        twistd = os.path.join(venv, "twistd") if os.path.exists(os.path.join(venv, "twistd")) else "twistd"
        self.port = free_port()
        data = os.path.join(tmp, name)
        env = dict(os.environ, PYTHONPATH=root, OXIDB_ADDR=f"127.0.0.1:{self.port}", OXIDB_DATA=data,
                   OXIDB_IDLE_TIMEOUT="0")
        self.process = subprocess.Popen(
            [twistd, "-n", "--pidfile=", f"--logfile={os.path.join(tmp, name + '.log')}", "oxidb"],
            env=env, stdout=subprocess.DEVNULL, cwd=root,
        )
        wait_for_port(self.port)
        seed(self.port)

    def cpu_per_request(self, frame: bytes, count: int) -> float:
        before = server_cpu(self.process.pid)
        drive(self.port, frame, count)
        return (server_cpu(self.process.pid) - before) / count * 1e6

    def stop(self) -> float:
        rss = memory_mib(self.process.pid, "VmHWM")
        self.process.terminate()
        self.process.wait()
        return rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="root of the baseline tree (with its own .venv)")
    parser.add_argument("--count", type=int, default=20000, help="requests per shape and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table shows medians")
    parser.add_argument("--only", default="", help="only shapes whose label contains one of these (comma-separated)")
    args = parser.parse_args()
    shapes = [shape for shape in SHAPES if any(text in shape[0] for text in args.only.split(","))]
    ours: dict[str, list[float]] = {label: [] for label, _, _ in shapes}
    base: dict[str, list[float]] = {label: [] for label, _, _ in shapes}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {"ours": Server(ROOT, tmp, "ours"), "base": Server(os.path.abspath(args.baseline), tmp, "base")}
        try:
            for _ in range(args.rounds):
                for label, frame, share in shapes:
                    count = int(args.count * share)
                    # Alternate so drift of the machine falls on both alike.
                    ours[label].append(servers["ours"].cpu_per_request(frame, count))
                    base[label].append(servers["base"].cpu_per_request(frame, count))
        finally:
            rss = {name: server.stop() for name, server in servers.items()}
    print(f"server CPU per request, median of {args.rounds} rounds (4 conns, {DEPTH} in flight)")
    print(f"{'request':26} {'baseline us':>12} {'ours us':>9} {'ours/base':>10}")
    for label, _, _ in shapes:
        b, o = statistics.median(base[label]), statistics.median(ours[label])
        print(f"{label:26} {b:12.1f} {o:9.1f} {o / b:10.2f}")
    print(f"peak RSS MB: baseline {rss['base']:.0f}, ours {rss['ours']:.0f}")


if __name__ == "__main__":
    main()
