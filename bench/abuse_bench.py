"""
Abuse bench: each attack of the hardening issue against a live server (auth
and audit on), while a second client keeps pinging and an Admin keeps
running a small indexed find. Prints, per attack, the bystanders' p99
latency, the server's peak RSS during the attack, and what the attacker got.

    .venv/bin/python bench/abuse_bench.py [--only NAME ...] [--seconds 3]

Goal (issue 11): ping p99 < 50 ms and peak RSS < 512 MB for every attack.
The baseline row ("quiet") is the same two bystanders with no attack, in the
same run. Each bystander is a process of its own, so that the attacker's
work in this process does not delay it. Peak RSS is the kernel's high-water mark (VmHWM), reset before
each attack.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import msgpack  # noqa: E402
from procstat import memory_mib  # noqa: E402
from scramp import ScramClient  # noqa: E402

from oxidb._harness import ServerProcess  # noqa: E402

MiB = 1024 * 1024


class Conn:
    """A blocking framed connection (JSON unless told otherwise)."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack("<I", len(payload)) + payload)

    def recv(self) -> bytes:
        (n,) = struct.unpack("<I", self._exactly(4))
        return self._exactly(n)

    def _exactly(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            chunk = self.sock.recv(min(n - got, 1 << 20))
            if not chunk:
                raise ConnectionError("closed by server")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def request(self, obj: Any) -> Any:
        self.send(json.dumps(obj).encode())
        return json.loads(self.recv())

    def login(self, user: str, password: str) -> None:
        scram = ScramClient(["SCRAM-SHA-256"], user, password)
        first = self.request({"cmd": "authenticate", "payload": scram.get_client_first()})
        scram.set_server_first(first["data"]["payload"])
        final = self.request({"cmd": "authenticate_continue", "payload": scram.get_client_final()})
        assert final.get("ok"), final

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def outcome(fn: Callable[[], Any]) -> str:
    """What the attacker saw, in a few words."""
    try:
        reply = fn()
    except (ConnectionError, OSError) as e:
        return f"connection closed ({type(e).__name__})"
    if isinstance(reply, str):
        return reply
    if isinstance(reply, dict):
        if reply.get("ok"):
            data = reply.get("data")
            size = len(data) if isinstance(data, (list, dict)) else data
            return f"ok ({size})"
        return f"error: {str(reply.get('error'))[:70]}"
    return repr(reply)[:70]


def _bystander(port: int, password: str, kind: str, pipe: Any) -> None:
    """
    One bystander, in its own process so that the attacks (which run in
    the bench's process and hold its GIL while they build frames) never
    delay it: ping without login, or an Admin's small indexed find.
    Answers each message on C{pipe} with the latencies measured since the
    last one; stops on C{None}.
    """

    def connect() -> Conn:
        conn = Conn(port, timeout=120)
        if kind == "find":
            conn.login("admin", password)
        return conn

    conn = connect()
    request = {"cmd": "ping"} if kind == "ping" else {"cmd": "find", "collection": "small", "query": {"k": 7}}
    samples: list[float] = []
    while True:
        if pipe.poll():
            if pipe.recv() is None:
                return
            pipe.send(samples)
            samples = []
        started = time.perf_counter()
        try:
            conn.request(request)
        except (ConnectionError, OSError):
            conn = connect()
            continue
        samples.append(time.perf_counter() - started)
        time.sleep(0.005)


class Bystanders:
    """A pinging client and an Admin running a small find, timing each."""

    def __init__(self, port: int, password: str) -> None:
        self.pipes: dict[str, Any] = {}
        self.processes = []
        for kind in ("ping", "find"):
            ours, theirs = multiprocessing.Pipe()
            self.pipes[kind] = ours
            self.processes.append(
                multiprocessing.Process(target=_bystander, args=(port, password, kind, theirs), daemon=True)
            )

    def start(self) -> None:
        for p in self.processes:
            p.start()

    def take(self) -> dict[str, list[float]]:
        for pipe in self.pipes.values():
            pipe.send("take")
        return {kind: pipe.recv() for kind, pipe in self.pipes.items()}

    def stop(self) -> None:
        for pipe in self.pipes.values():
            pipe.send(None)
        for p in self.processes:
            p.join(10)


def p99(samples: list[float]) -> str:
    if not samples:
        return "no reply"
    ordered = sorted(samples)
    return f"{ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000:.1f}"


def rss_reset(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


# --- the attacks ---------------------------------------------------------------


def attack_quiet(ctx: Context) -> str:
    time.sleep(ctx.seconds)
    return "-"


def attack_pipeline_flood(ctx: Context) -> str:
    conn = Conn(ctx.port)
    items = b"[" + b",".join([b"{}"] * (6 * MiB // 3)) + b"]"
    conn.send(b'{"cmd":"pipeline","requests":' + items + b"}")
    result = outcome(lambda: json.loads(conn.recv()))
    conn.close()
    return result


def attack_msgpack_frames(ctx: Context) -> str:
    results = []
    payload = msgpack.packb({"cmd": "ping", "pad": [0] * (16 * MiB - 64)})
    assert len(payload) <= 16 * MiB, len(payload)
    for _ in range(3):
        conn = Conn(ctx.port)
        try:
            conn.send(payload)
            results.append(outcome(lambda conn=conn: msgpack.unpackb(conn.recv())))
        except OSError as e:
            results.append(f"connection closed ({type(e).__name__})")
        conn.close()
    return "; ".join(sorted(set(results)))


def attack_regex(ctx: Context) -> str:
    conn = ctx.user_conn("reader")
    result = outcome(lambda: conn.request(
        {"cmd": "find", "collection": "strings", "query": {"s": {"$regex": "(a|a)*Q"}}}
    ))
    conn.close()
    return result


def attack_lookup(ctx: Context) -> str:
    conn = ctx.user_conn("reader")
    pipeline = [
        {"$lookup": {"from": "join", "localField": "g", "foreignField": "g", "as": "a"}},
        {"$unwind": "$a"},
        {"$lookup": {"from": "join", "localField": "g", "foreignField": "g", "as": "b"}},
        {"$unwind": "$b"},
    ]
    result = outcome(lambda: conn.request({"cmd": "aggregate", "collection": "join", "pipeline": pipeline}))
    conn.close()
    return result


def attack_text_search(ctx: Context) -> str:
    results: list[str] = []

    def one() -> None:
        conn = ctx.user_conn("reader")
        results.append(outcome(lambda: conn.request(
            {"cmd": "text_search", "collection": "texts", "query": "hello " * 18000, "limit": 10}
        )))
        conn.close()

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return "; ".join(sorted(set(results)))


def attack_auth_simple_flood(ctx: Context) -> str:
    deadline = time.monotonic() + ctx.seconds
    sent = 0
    conns = []
    while time.monotonic() < deadline:
        conn = Conn(ctx.port)
        for _ in range(20):
            conn.send(json.dumps({"cmd": "auth_simple", "username": "admin", "password": f"guess{sent}"}).encode())
            sent += 1
        conns.append(conn)
        if len(conns) > 50:
            conns.pop(0).close()
    for conn in conns:
        conn.close()
    return f"{sent} attempts sent, connections dropped"


def attack_ping_audit(ctx: Context) -> str:
    audit = os.path.join(ctx.data_dir, "_audit", "audit.log")
    before = os.path.getsize(audit) if os.path.exists(audit) else 0
    conn = Conn(ctx.port)
    frame = struct.pack("<I", 15) + b'{"cmd":"ping"}' + b" "
    deadline = time.monotonic() + ctx.seconds
    sent = 0
    try:
        while time.monotonic() < deadline:
            conn.sock.sendall(frame * 1000)
            sent += 1000
            conn.sock.setblocking(False)
            try:
                while conn.sock.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
            conn.sock.setblocking(True)
    except OSError:
        pass
    conn.close()
    after = os.path.getsize(audit) if os.path.exists(audit) else 0
    return f"{sent} pings ({sent * len(frame) / MiB:.1f} MB) -> audit.log +{(after - before) / MiB:.1f} MB"


def attack_non_readers(ctx: Context) -> str:
    conns = []
    for _ in range(8):
        conn = ctx.user_conn("reader")
        conn.send(json.dumps({"cmd": "find", "collection": "big", "query": {}}).encode())
        conns.append(conn)
    time.sleep(ctx.seconds)
    first = outcome(lambda: json.loads(conns[0].recv()))
    for conn in conns:
        conn.close()
    return first[:70]


def attack_guess_per_connection(ctx: Context) -> str:
    deadline = time.monotonic() + ctx.seconds
    guesses = refused = 0
    while time.monotonic() < deadline:
        conn = Conn(ctx.port)
        scram = ScramClient(["SCRAM-SHA-256"], "reader", f"wrong{guesses}")
        try:
            first = conn.request({"cmd": "authenticate", "payload": scram.get_client_first()})
            if not first.get("ok"):
                refused += 1
            else:
                scram.set_server_first(first["data"]["payload"])
                conn.send(json.dumps({"cmd": "authenticate_continue", "payload": scram.get_client_final()}).encode())
            guesses += 1
        except OSError:
            refused += 1
        conn.close()
    return f"{guesses / ctx.seconds:.0f} attempts/s, {refused} refused at the first step"


def attack_collection_spam(ctx: Context) -> str:
    conn = ctx.user_conn("reader")
    for i in range(500):
        conn.request({"cmd": "find", "collection": f"spam{i}", "query": {}})
    admin = ctx.user_conn("admin")
    names = admin.request({"cmd": "list_collections"})["data"]
    admin.close()
    conn.close()
    return f"{sum(1 for n in names if str(n).startswith('spam'))} collections created by a Read user"


def attack_connection_flood(ctx: Context) -> str:
    conns = []
    failed = 0
    for _ in range(3000):
        try:
            conns.append(Conn(ctx.port, timeout=5))
        except OSError:
            failed += 1
    served = refused = 0
    for conn in conns:
        try:
            reply = conn.request({"cmd": "ping"})
            if reply.get("ok"):
                served += 1
            else:
                refused += 1
        except (OSError, ValueError):
            refused += 1
        conn.close()
    return f"{served} served, {refused} refused or closed, {failed} connects failed"


ATTACKS: list[tuple[str, Callable[[Context], str]]] = [
    ("quiet", attack_quiet),
    ("pipeline 6 MB of {} (no login)", attack_pipeline_flood),
    ("3 x 16 MiB MessagePack (no login)", attack_msgpack_frames),
    ("$regex (a|a)*Q (Read)", attack_regex),
    ("$lookup+$unwind x2 (Read)", attack_lookup),
    ("4 x text_search hello x18000 (Read)", attack_text_search),
    ("auth_simple flood (no login)", attack_auth_simple_flood),
    ("ping flood vs audit (no login)", attack_ping_audit),
    ("8 non-reading 50 MB finds (Read)", attack_non_readers),
    ("SCRAM guess per connection", attack_guess_per_connection),
    ("500 finds on new names (Read)", attack_collection_spam),
    ("3000 connections (no login)", attack_connection_flood),
]


class Context:
    def __init__(self, port: int, data_dir: str, password: str, seconds: float) -> None:
        self.port = port
        self.data_dir = data_dir
        self.password = password
        self.seconds = seconds

    def user_conn(self, user: str) -> Conn:
        conn = Conn(self.port, timeout=120)
        conn.login(user, self.password if user == "admin" else "reader-password-1")
        return conn


def seed(ctx: Context) -> None:
    conn = ctx.user_conn("admin")

    class Checked:
        def request(self, obj: Any) -> Any:
            reply = conn.request(obj)
            assert reply.get("ok"), (obj.get("cmd"), reply)
            return reply

        def close(self) -> None:
            conn.close()

    admin = Checked()
    admin.request({"cmd": "create_user", "username": "reader", "password": "reader-password-1", "role": "read"})
    admin.request({"cmd": "insert_many", "collection": "small", "docs": [{"k": i} for i in range(100)]})
    admin.request({"cmd": "create_index", "collection": "small", "field": "k"})
    admin.request({"cmd": "insert_many", "collection": "strings", "docs": [{"s": "a" * 26} for _ in range(3)]})
    admin.request({"cmd": "insert_many", "collection": "join", "docs": [{"g": 1, "i": i} for i in range(150)]})
    admin.request({"cmd": "insert_many", "collection": "texts", "docs": [
        {"t": f"hello world number {i} " * 20} for i in range(2000)
    ]})
    admin.request({"cmd": "create_text_index", "collection": "texts", "fields": ["t"]})
    blob = "x" * 100_000
    for start in range(0, 500, 50):
        admin.request({"cmd": "insert_many", "collection": "big", "docs": [
            {"i": i, "pad": blob} for i in range(start, start + 50)
        ]})
    admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the timed attacks")
    parser.add_argument("--only", nargs="*", help="run only attacks whose label contains one of these")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        server = ServerProcess(
            data, env={"OXIDB_AUTH": "true", "OXIDB_AUDIT": "true", "OXIDB_IDLE_TIMEOUT": "0"}
        ).start()
        try:
            password = re.search(r"^  password: (\S+)$", server.stderr(), re.M).group(1)  # type: ignore[union-attr]
            assert server.port is not None
            ctx = Context(server.port, data, password, args.seconds)
            seed(ctx)
            bystanders = Bystanders(server.port, password)
            bystanders.start()
            time.sleep(0.5)
            rows = []
            for label, attack in ATTACKS:
                if args.only and label != "quiet" and not any(o in label for o in args.only):
                    continue
                bystanders.take()
                rss_reset(server.process.pid)
                started = time.monotonic()
                try:
                    result = attack(ctx)
                except Exception as e:  # the bench reports, it does not stop
                    result = f"attack failed: {type(e).__name__}: {e}"[:80]
                # Let the effect of the attack show up in the bystanders.
                time.sleep(0.5)
                took = time.monotonic() - started
                samples = bystanders.take()
                if server.process.poll() is not None:
                    rows.append((label, "-", "-", "-", f"{took:.1f}", "SERVER DIED"))
                    break
                rows.append((label, p99(samples["ping"]), p99(samples["find"]),
                             f"{memory_mib(server.process.pid, 'VmHWM'):.0f}", f"{took:.1f}", result))
                print(f"  done: {label}", file=sys.stderr)
            bystanders.stop()
        finally:
            try:
                server.stop(timeout=20)
            except Exception:  # still busy with an attack's work
                server.kill()
    header = ("attack", "ping p99 ms", "admin find p99 ms", "peak RSS MB", "attack s", "attacker got")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    print("\ngoal: ping p99 < 50 ms and peak RSS < 512 MB for every attack")


if __name__ == "__main__":
    main()
