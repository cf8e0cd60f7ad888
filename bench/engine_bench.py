"""
Document engine bench: our server (a real C{twistd -n oxidb} child, driven
by PyPI's official C{oxidb} 0.18.0 client) against PostgreSQL 15 JSONB with
equivalent expression indexes (psycopg), plus the same bulk insert done
in-process with raw C{sqlite3}. Prints one table of ratios.

    .venv/bin/python bench/engine_bench.py [--docs 100000] [--seconds 3] [--runs 3] [--inserts-only]

With C{--inserts-only} only the bulk insert rows against raw SQLite are
measured (no PostgreSQL, no reads). With C{--runs N} the whole bench (fresh databases each time) runs N times
and a last table gives the median of every figure and ratio: the machine is
small (2 cores) and shared, so single runs vary by 20% or more.

Workload: bulk insert of N documents of 20 fields in batches of 500 with 4
field indexes (age, city, score, f1); indexed equality finds (city) and
indexed range finds (score, about 50 documents each) with 1 and 16
connections (16 client processes); an unindexed scan; sort + limit 10 on an
indexed field; a count over an indexed range; C{$group} by city with
C{$sum}/C{$avg}.

Baselines run in the same process tree on the same machine:
  - raw SQLite (the engine's own, through APSW): one table C{(id, doc
    TEXT)}, four C{json_extract} expression indexes, WAL, C{synchronous=FULL}, one transaction per batch,
    and the engine's own page size and cache size (so that the ratio shows
    what the server and the engine add to the SQLite they use);
  - PostgreSQL 15 (Debian package): its own cluster made with C{initdb} in a
    temp directory, on a loopback port, stopped afterwards, with
    C{shared_buffers=256MB}; table C{(id bigserial, doc jsonb)}, four
    C{(doc->'field')} expression indexes, default durability (fsync,
    synchronous_commit on), one transaction per batch through psycopg's
    pipelined C{executemany}.

What each figure includes:
  - bulk insert, oxidb: the client's C{json.dumps} of each request, the
    loopback round trip, decoding, the insert, the commit and its fsync,
    the reply (the new ids) and the client's C{json.loads} of it; the
    official client has one batch in flight at a time, so these steps add
    up for every batch. The row "oxidb client pipelined" is the same load
    through this package's client (C{Client.insert_stream}, two batches in
    flight on one connection, in OxiWire, whose encoding costs the client a
    tenth of C{json.dumps}'s): the server decodes and commits one batch
    while the next is encoded and on its way. It loads its own collection
    (same indexes), dropped afterwards;
    PostgreSQL: C{json.dumps} of each document, psycopg's pipelined
    statements, jsonb parsing, the commit and its WAL fsync; raw sqlite3:
    C{json.dumps} of each document, the insert and the commit, in process.
  - reads: one request and the whole reply decoded by the client: oxidb's
    official client C{json.loads} the reply (documents with C{_id} and
    C{_version}); psycopg C{json.loads} each returned jsonb document (its
    default loader). Both decode the same documents with the standard
    library. With 16 connections the 16 client processes share the 2 cores
    with the server, so client CPU per operation counts on both sides.

The client's ceiling: for the indexed finds, the same client processes
also run against C{bench/canned_server.py}, which answers every request at
once with a real reply of that workload (taken from our server), so the
table shows the most any server could score with this client; a goal above
the ceiling's ratio cannot be met by the server alone.

Needs C{psycopg} (C{pip install -e '.[bench]'}) and the C{postgresql}
Debian package; when run as root the cluster runs as the C{postgres} user.

Goals (issue 3): bulk insert >= 0.5x in-process SQLite and >= 1.5x
PostgreSQL; indexed finds >= 1.0x PostgreSQL.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # the raw sqlite3 baseline reads the engine's settings

from procstat import memory_mib  # noqa: E402

from oxidb._harness import free_port, wait_for_port  # noqa: E402

PYTHON = sys.executable
TWISTD = os.path.join(os.path.dirname(PYTHON), "twistd")
OFFICIAL_CLIENT = "oxidb==0.18.0"
CLIENT_DIR = os.path.join(ROOT, "tests", ".official_client")
PG_BIN = "/usr/lib/postgresql/15/bin"
BATCH = 500
INDEXED = ("age", "city", "score", "f1")


# --- data -------------------------------------------------------------------------


def make_docs(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        doc: dict[str, Any] = {
            f"f{j}": rng.randint(0, 1000) if j % 3 else f"s{rng.randint(0, 10_000)}" for j in range(1, 17)
        }
        doc.update(
            {
                "age": rng.randint(0, 99),
                "city": f"c{rng.randint(0, 999)}",
                "score": rng.random(),
                "name": f"user{i}",
            }
        )
        docs.append(doc)
    return docs


# --- targets --------------------------------------------------------------------------


def official_client() -> ModuleType:
    """PyPI's client module (its name clashes with ours: load it as oxidb_official)."""
    path = os.path.join(CLIENT_DIR, "oxidb.py")
    if not os.path.exists(path):
        subprocess.run(
            [PYTHON, "-m", "pip", "install", "-q", "--no-deps", "--target", CLIENT_DIR, OFFICIAL_CLIENT], check=True
        )
    spec = importlib.util.spec_from_file_location("oxidb_official", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class OxiTarget:
    name = "oxidb"

    def __init__(self, port: int) -> None:
        self.port = port
        self.client = official_client().OxiDbClient("127.0.0.1", port, timeout=120)

    def setup(self) -> None:
        for field in INDEXED:
            self.client.create_index("bench", field)

    def insert_batch(self, docs: list[dict[str, Any]]) -> None:
        self.client.insert_many("bench", docs)

    def ops(self) -> dict[str, Callable[[random.Random], Any]]:
        c = self.client
        return {
            "eq": lambda rng: c.find("bench", {"city": f"c{rng.randint(0, 999)}"}),
            "range": lambda rng: c.find("bench", _score_range(rng)),
            "scan": lambda rng: c.find("bench", {"f5": rng.randint(0, 1000)}),
            "sort_limit": lambda rng: c.find("bench", {}, sort={"score": -1}, limit=10),
            "count": lambda rng: c.count("bench", {"age": {"$gte": rng.randint(0, 99)}}),
            "group": lambda rng: c.aggregate(
                "bench", [{"$group": {"_id": "$city", "n": {"$sum": 1}, "avg_age": {"$avg": "$age"}}}]
            ),
        }

    def close(self) -> None:
        self.client.close()


def _score_range(rng: random.Random) -> dict[str, Any]:
    low = rng.random() * 0.999
    return {"score": {"$gte": low, "$lt": low + 0.0005}}


class PipelinedTarget:
    """The same bulk insert through this package's client, several batches in flight on one connection."""

    name = "oxidb pipelined"
    collection = "bench_pipelined"

    def __init__(self, port: int, in_flight: int = 2, fmt: str = "oxiwire") -> None:
        from oxidb.client import Client

        self.client = Client(f"oxidb://127.0.0.1:{port}?timeout=120&format={fmt}")
        self.in_flight = in_flight

    def setup(self) -> None:
        for field in INDEXED:
            self.client.create_index(self.collection, field)

    def load(self, docs: list[dict[str, Any]]) -> None:
        self.client.insert_stream(self.collection, docs, batch_size=BATCH, in_flight=self.in_flight)

    def close(self) -> None:
        self.client.drop_collection(self.collection)
        self.client.close()


def pipelined_insert(port: int, docs: list[dict[str, Any]]) -> float:
    """The bulk insert through L{PipelinedTarget}; seconds (its collection is dropped afterwards)."""
    target = PipelinedTarget(port)
    target.setup()
    started = time.perf_counter()
    target.load(docs)
    elapsed = time.perf_counter() - started
    target.close()
    return elapsed


class PgTarget:
    name = "postgres"

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True)

    def setup(self) -> None:
        self.conn.execute("DROP TABLE IF EXISTS bench")
        self.conn.execute("CREATE TABLE bench (id bigserial PRIMARY KEY, doc jsonb NOT NULL)")
        for field in INDEXED:
            self.conn.execute(f"CREATE INDEX ON bench ((doc->'{field}'))")

    def insert_batch(self, docs: list[dict[str, Any]]) -> None:
        with self.conn.transaction():
            with self.conn.cursor() as cur:
                cur.executemany("INSERT INTO bench (doc) VALUES (%s::jsonb)", [(json.dumps(d),) for d in docs])

    def ops(self) -> dict[str, Callable[[random.Random], Any]]:
        conn = self.conn

        def q(sql: str, *params: Any) -> list[Any]:
            return conn.execute(sql, params).fetchall()

        return {
            "eq": lambda rng: q(
                "SELECT doc FROM bench WHERE doc->'city' = %s::jsonb", json.dumps(f"c{rng.randint(0, 999)}")
            ),
            "range": lambda rng: _pg_range(q, rng),
            "scan": lambda rng: q("SELECT doc FROM bench WHERE doc->'f5' = %s::jsonb", str(rng.randint(0, 1000))),
            "sort_limit": lambda rng: q("SELECT doc FROM bench ORDER BY doc->'score' DESC LIMIT 10"),
            "count": lambda rng: q("SELECT count(*) FROM bench WHERE doc->'age' >= %s::jsonb", str(rng.randint(0, 99))),
            "group": lambda rng: q(
                "SELECT doc->'city', count(*), avg((doc->>'age')::numeric) FROM bench GROUP BY doc->'city'"
            ),
        }

    def close(self) -> None:
        self.conn.close()


def _pg_range(q: Callable[..., list[Any]], rng: random.Random) -> list[Any]:
    low = rng.random() * 0.999
    return q(
        "SELECT doc FROM bench WHERE doc->'score' >= %s::jsonb AND doc->'score' < %s::jsonb",
        json.dumps(low),
        json.dumps(low + 0.0005),
    )


def sqlite_insert(docs: list[dict[str, Any]], directory: str) -> float:
    """The same bulk insert in-process with raw sqlite3; seconds."""
    from oxidb.engine import sqlite, store

    conn = sqlite.open_connection(os.path.join(directory, "raw.sqlite3"))
    conn.execute(f"PRAGMA page_size={store.PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("CREATE TABLE bench (id INTEGER PRIMARY KEY, doc TEXT NOT NULL)")
    for field in INDEXED:
        conn.execute(f"CREATE INDEX bench_{field} ON bench (json_extract(doc, '$.{field}'))")
    started = time.perf_counter()
    for start in range(0, len(docs), BATCH):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO bench (doc) VALUES (?)", [(json.dumps(d),) for d in docs[start : start + BATCH]])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


# --- servers ------------------------------------------------------------------------


def start_oxidb(port: int, data_dir: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=ROOT, OXIDB_ADDR=f"127.0.0.1:{port}", OXIDB_DATA=data_dir, OXIDB_IDLE_TIMEOUT="0")
    log = os.path.join(os.path.dirname(data_dir), "twistd.log")
    return subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", f"--logfile={log}", "oxidb"], env=env, stdout=subprocess.DEVNULL
    )


class Postgres:
    """A throw-away PostgreSQL 15 cluster on a loopback port."""

    def __init__(self, directory: str, port: int) -> None:
        self.directory = directory
        self.port = port
        self.data = os.path.join(directory, "pgdata")
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(directory, "postgres")

    def _run(self, *args: str) -> None:
        subprocess.run(self.as_user + list(args), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> str:
        self._run(os.path.join(PG_BIN, "initdb"), "-D", self.data, "-U", "bench", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c shared_buffers=256MB"
        self._run(
            os.path.join(PG_BIN, "pg_ctl"),
            "-D",
            self.data,
            "-o",
            options,
            "-l",
            os.path.join(self.directory, "pg.log"),
            "-w",
            "start",
        )
        return f"host=127.0.0.1 port={self.port} user=bench dbname=postgres"

    def stop(self) -> None:
        self._run(os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")


# --- measuring ----------------------------------------------------------------------


def bulk_insert(target: Any, docs: list[dict[str, Any]]) -> float:
    target.setup()
    started = time.perf_counter()
    for start in range(0, len(docs), BATCH):
        target.insert_batch(docs[start : start + BATCH])
    return time.perf_counter() - started


def start_canned(port: int, reply: bytes, directory: str) -> subprocess.Popen[bytes]:
    """bench/canned_server.py on C{port}, answering every request with C{reply}."""
    path = os.path.join(directory, f"reply-{port}.json")
    with open(path, "wb") as f:
        f.write(reply)
    env = dict(os.environ, PYTHONPATH=ROOT)
    server = os.path.join(HERE, "canned_server.py")
    return subprocess.Popen([PYTHON, server, str(port), path], env=env, stdout=subprocess.DEVNULL)


def _worker(kind: str, address: Any, op: str, seconds: float, seed: int, out: Any) -> None:
    target = PgTarget(address) if kind == "postgres" else OxiTarget(address)
    fn = target.ops()[op]
    rng = random.Random(seed)
    fn(rng)  # warm up
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        fn(rng)
        done += 1
    target.close()
    out.put(done)


def throughput(kind: str, address: Any, op: str, connections: int, seconds: float) -> float:
    """Operations per second over C{connections} client processes."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(kind, address, op, seconds, i, out)) for i in range(connections)]
    for p in procs:
        p.start()
    total = sum(out.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


#: C{(label, workload, connections, goal)}: issue 17's goal against PostgreSQL.
READS = [
    ("indexed eq find, 1 conn", "eq", 1, ">= 1.5"),
    ("indexed eq find, 16 conns", "eq", 16, ">= 1.2"),
    ("indexed range find, 1 conn", "range", 1, ">= 1.5"),
    ("indexed range find, 16 conns", "range", 16, ">= 1.2"),
    ("unindexed scan, 1 conn", "scan", 1, ">= 1.0"),
    ("sort + limit 10 (indexed)", "sort_limit", 1, ">= 1.0"),
    ("count (indexed range)", "count", 1, ""),
    ("$group $sum/$avg", "group", 1, ">= 1.0"),
]

#: Issue 17's goal for bulk insert against raw SQLite in-process. The
#: official client has one batch in flight; ours keeps two (the goal's row).
SQLITE_INSERT_GOAL = ">= 0.8"


Row = tuple[str, str, float, float, str]


def run_inserts(docs: list[dict[str, Any]]) -> tuple[list[Row], tuple[float, float]]:
    """Only the bulk insert rows against raw SQLite, on fresh databases (C{--inserts-only})."""
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_s = sqlite_insert(docs, tmp)
        ox_port = free_port()
        ox = start_oxidb(ox_port, os.path.join(tmp, "data"))
        try:
            wait_for_port(ox_port)
            oxt = OxiTarget(ox_port)
            ox_s = bulk_insert(oxt, docs)
            oxt.close()
            piped_s = pipelined_insert(ox_port, docs)
            memory = memory_mib(ox.pid), memory_mib(ox.pid, "VmHWM")
        finally:
            ox.terminate()
            ox.wait()
    n = len(docs)
    rows: list[Row] = [
        ("bulk insert (docs/s)", "sqlite3 in-process", n / sqlite_s, n / ox_s, ""),
        (
            "bulk insert, oxidb client pipelined (docs/s)",
            "sqlite3 in-process",
            n / sqlite_s,
            n / piped_s,
            SQLITE_INSERT_GOAL,
        ),
    ]
    return rows, memory


def run_once(docs: list[dict[str, Any]], seconds: float) -> tuple[list[Row], tuple[float, float]]:
    """
    One whole bench on fresh databases: C{(workload, baseline, b, o, goal)}
    rows, and the server's resident and peak memory (MiB) at the end.
    """
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_s = sqlite_insert(docs, tmp)
        pg_dir = tempfile.mkdtemp(prefix="oxidb-bench-pg-")  # outside tmp: another user reads it
        pg = Postgres(pg_dir, free_port())
        ox_port = free_port()
        ox = start_oxidb(ox_port, os.path.join(tmp, "data"))
        dsn = pg.start()
        try:
            wait_for_port(ox_port)
            oxt, pgt = OxiTarget(ox_port), PgTarget(dsn)
            ox_s = bulk_insert(oxt, docs)
            piped_s = pipelined_insert(ox_port, docs)
            pg_s = bulk_insert(pgt, docs)
            pgt.conn.execute("VACUUM ANALYZE bench")
            n = len(docs)
            rows.append(("bulk insert (docs/s)", "sqlite3 in-process", n / sqlite_s, n / ox_s, ""))
            rows.append(
                (
                    "bulk insert, oxidb client pipelined (docs/s)",
                    "sqlite3 in-process",
                    n / sqlite_s,
                    n / piped_s,
                    SQLITE_INSERT_GOAL,
                )
            )
            rows.append(("bulk insert (docs/s)", "postgres", n / pg_s, n / ox_s, ">= 1.5"))
            oxt.close()
            pgt.close()
            found: dict[str, float] = {}
            for label, op, connections, goal in READS:
                p = throughput("postgres", dsn, op, connections, seconds)
                o = throughput("oxidb", ox_port, op, connections, seconds)
                rows.append((label + " (ops/s)", "postgres", p, o, goal))
                found[f"{op}/{connections}"] = p
            rows.extend(client_ceiling(ox_port, found, seconds, tmp))
            memory = memory_mib(ox.pid), memory_mib(ox.pid, "VmHWM")
        finally:
            ox.terminate()
            ox.wait()
            pg.stop()
            shutil.rmtree(pg_dir, ignore_errors=True)
    return rows, memory


def client_ceiling(ox_port: int, pg: dict[str, float], seconds: float, directory: str) -> list[Row]:
    """
    Rows of the client's ceiling for the indexed finds: the official client
    against a server answering at once with a reply our server gave to that
    workload, beside PostgreSQL's rate measured just before.
    """
    rows: list[Row] = []
    client = official_client().OxiDbClient("127.0.0.1", ox_port, timeout=120)
    try:
        ops = {"eq": {"city": "c1"}, "range": _score_range(random.Random(3))}
        replies = {op: json.dumps({"ok": True, "data": client.find("bench", q)}).encode() for op, q in ops.items()}
    finally:
        client.close()
    for label, op, connections, _ in READS:
        if op not in replies:
            continue
        port = free_port()
        canned = start_canned(port, replies[op], directory)
        try:
            wait_for_port(port)
            ceiling = throughput("canned", port, op, connections, seconds)
        finally:
            canned.terminate()
            canned.wait()
        rows.append((f"client ceiling: {label}", "postgres", pg[f"{op}/{connections}"], ceiling, ""))
    return rows


def print_table(title: str, rows: list[Row], ratios: list[float] | None = None) -> None:
    print(title)
    print(f"{'workload':44} {'baseline':20} {'baseline':>11} {'oxidb':>11} {'ratio':>7} {'goal':>7}")
    for i, (label, baseline, b, o, goal) in enumerate(rows):
        ratio = o / b if ratios is None else ratios[i]
        print(f"{label:44} {baseline:20} {b:11.1f} {o:11.1f} {ratio:7.2f} {goal:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--inserts-only", action="store_true", help="only the bulk insert rows against raw SQLite")
    args = parser.parse_args()
    docs = make_docs(args.docs)
    title = f"engine bench: {args.docs} documents of 20 fields, 4 field indexes, batches of {BATCH}"
    runs = []
    for number in range(args.runs):
        rows, (rss, peak) = run_inserts(docs) if args.inserts_only else run_once(docs, args.seconds)
        runs.append(rows)
        print_table(title + (f" (run {number + 1} of {args.runs})" if args.runs > 1 else ""), rows)
        print(f"server memory at the end: {rss:.0f} MiB resident, {peak:.0f} MiB peak (goal: < 300 MB at 100k docs)")
        sys.stdout.flush()
    if args.runs > 1:
        medians = [
            (label, baseline, statistics.median(r[i][2] for r in runs), statistics.median(r[i][3] for r in runs), goal)
            for i, (label, baseline, _, _, goal) in enumerate(runs[0])
        ]
        ratios = [statistics.median(r[i][3] / r[i][2] for r in runs) for i in range(len(runs[0]))]
        print()
        print_table(f"medians of {args.runs} runs (ratio: median of the runs' ratios)", medians, ratios)


if __name__ == "__main__":
    main()
