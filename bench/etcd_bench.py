"""
Durable replicated writes: our 3-node cluster against a 3-node etcd (Debian's
``etcd-server``), both on loopback, same value size, same concurrency, same
load generator.

    python bench/etcd_bench.py [--seconds 8] [--connections 16,64] [--value-bytes 100] [--repeats 3]

Each run is one write per request and one request in flight per connection:
an ``insert`` of ``{"k": <key>, "v": <value>}`` on our leader, a ``PUT`` of
the same key and value through etcd's JSON gateway (``/v3/kv/put``) on its
leader. Both fsync every commit on a quorum (etcd always does; ours is the
Raft log's default). The two clusters are measured alternately, REPEATS
times, and the medians are compared.

etcd is driven through its JSON gateway, which is what a load generator
without gRPC can speak; the gateway costs etcd some CPU that its gRPC
clients would not pay, so the ratio flatters us a little, never the
reverse.

The load generator is one Python process on the same machine. Its ceiling
for each protocol is measured first, against a server that answers every
request at once and does nothing else (``--null``): a ratio is only
meaningful while both rates stay well below their ceilings, and the table
says how far below they are.

etcd is looked up on PATH; when it is missing and we are root on a Debian
machine, ``apt-get install etcd-server`` installs it (CI never needs it).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import selectors
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from procstat import cpu_seconds, memory_mib  # noqa: E402

from oxidb._harness import LocalCluster, free_port, wait_until  # noqa: E402

KEY = {"OXIDB_CLUSTER_KEY": "etcd bench shared secret, 32+ characters"}


# --- the load generator: N connections, one request in flight each ---------------


def framed_replies(buf: bytearray) -> int:
    """Complete length-prefixed frames at the start of C{buf}; removes them."""
    count = offset = 0
    while len(buf) - offset >= 4:
        (n,) = struct.unpack_from("<I", buf, offset)
        if len(buf) - offset < 4 + n:
            break
        offset += 4 + n
        count += 1
    del buf[:offset]
    return count


def _http_message(buf: bytearray) -> tuple[bytes, int] | None:
    """The head of the first complete HTTP message in C{buf} and its whole length, or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    at = head.find(b"content-length:")
    length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
    if len(buf) < end + 4 + length:
        return None
    return head, end + 4 + length


def http_replies(buf: bytearray) -> int:
    """Complete HTTP/1.1 responses at the start of C{buf}; removes them. A non-200 stops the bench."""
    count = 0
    while (message := _http_message(buf)) is not None:
        head, size = message
        if not head.startswith(b"http/1.1 200"):
            raise RuntimeError(f"request failed: {bytes(buf[:size])!r}")
        del buf[:size]
        count += 1
    return count


def drive(port: int, connections: int, seconds: float, request: bytes, replies: Callable[[bytearray], int]) -> float:
    """Requests answered per second: each connection re-sends C{request} as soon as its reply is complete."""
    selector = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytearray] = {}
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffers[sock] = bytearray()
        sock.sendall(request)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while (now := time.perf_counter()) < deadline:
        for key, _ in selector.select(timeout=deadline - now):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf = buffers[sock]
            buf += chunk
            answered = replies(buf)
            if answered:
                done += answered
                sock.setblocking(True)
                sock.sendall(request * answered)
                sock.setblocking(False)
    elapsed = time.perf_counter() - started
    for sock in buffers:
        sock.close()
    return done / elapsed


def oxidb_request(value_bytes: int) -> bytes:
    payload = json.dumps({"cmd": "insert", "collection": "kv", "doc": {"k": "bench-key", "v": "x" * value_bytes}})
    return struct.pack("<I", len(payload)) + payload.encode()


def etcd_request(port: int, value_bytes: int) -> bytes:
    body = json.dumps(
        {"key": base64.b64encode(b"bench-key").decode(), "value": base64.b64encode(b"x" * value_bytes).decode()}
    ).encode()
    head = (
        f"POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# --- a server that does nothing: the load generator's ceiling ----------------------


def null_server(kind: str) -> None:
    """Answer every request at once: C{framed} with a fixed frame, C{http} with a fixed 200."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    frame_reply = b'{"ok":true,"data":{"id":1}}'
    framed_answer = struct.pack("<I", len(frame_reply)) + frame_reply
    body = b'{"header":{"revision":"1"}}'
    http_answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )

    class Null(Protocol):
        def connectionMade(self) -> None:
            self.buf = bytearray()
            self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]

        def dataReceived(self, data: bytes) -> None:
            self.buf += data
            count = framed_replies(self.buf) if kind == "framed" else http_requests(self.buf)
            if count:
                self.transport.write((framed_answer if kind == "framed" else http_answer) * count)  # type: ignore[union-attr]

    port = reactor.listenTCP(0, Factory.forProtocol(Null), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(port.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


def http_requests(buf: bytearray) -> int:
    """Complete HTTP requests at the start of C{buf}; removes them."""
    count = 0
    while (message := _http_message(buf)) is not None:
        del buf[: message[1]]
        count += 1
    return count


def ceiling(kind: str, request: bytes, replies: Callable[[bytearray], int], connections: int, seconds: float) -> float:
    proc = subprocess.Popen([sys.executable, __file__, "--null", kind], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        return drive(port, connections, seconds, request, replies)
    finally:
        proc.kill()
        proc.wait()


# --- etcd ----------------------------------------------------------------------------


def find_etcd() -> str:
    path = shutil.which("etcd")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("etcd not found: apt-get install etcd-server", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "etcd-server"], check=True, stdout=subprocess.DEVNULL)
        path = shutil.which("etcd")
        if path:
            return path
    raise SystemExit("etcd not found; install Debian's etcd-server (apt-get install etcd-server)")


class EtcdCluster:
    """Three etcd members on loopback, each in its own data directory."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.client_ports = [free_port() for _ in range(3)]
        self.peer_ports = [free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, etcd: str) -> None:
        initial = ",".join(f"n{i}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))
        for i in range(3):
            log = open(os.path.join(self.root, f"etcd{i}.log"), "wb")
            args = [
                etcd,
                f"--name=n{i}",
                f"--data-dir={os.path.join(self.root, f'etcd{i}')}",
                f"--listen-client-urls=http://127.0.0.1:{self.client_ports[i]}",
                f"--advertise-client-urls=http://127.0.0.1:{self.client_ports[i]}",
                f"--listen-peer-urls=http://127.0.0.1:{self.peer_ports[i]}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{self.peer_ports[i]}",
                f"--initial-cluster={initial}",
                "--initial-cluster-state=new",
                "--initial-cluster-token=bench",
            ]
            self.procs.append(subprocess.Popen(args, stdout=log, stderr=log))
        wait_until(lambda: all(self._healthy(p) for p in self.client_ports), 60, interval=0.2)

    def _post(self, port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            reply: dict[str, Any] = json.loads(conn.getresponse().read())
            return reply
        finally:
            conn.close()

    def _healthy(self, port: int) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            return bool(json.loads(conn.getresponse().read()).get("health") == "true")
        except OSError:
            return False

    def leader_port(self) -> int:
        for port in self.client_ports:
            status = self._post(port, "/v3/maintenance/status", {})
            if status.get("leader") == status["header"]["member_id"]:
                return port
        raise RuntimeError("no etcd leader")

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


CPU_ROLES = ("ours leader", "ours follower", "etcd leader", "etcd follower")


def measured(
    pids: list[int], port: int, connections: int, seconds: float, request: bytes, replies: Callable[[bytearray], int]
) -> tuple[float, list[float]]:
    """L{drive}'s rate, and the CPU microseconds per write of each process of C{pids} meanwhile."""
    before = [cpu_seconds(pid) for pid in pids]
    rate = drive(port, connections, seconds, request, replies)
    writes = max(rate * seconds, 1.0)
    return rate, [(cpu_seconds(pid) - b) / writes * 1e6 for pid, b in zip(pids, before, strict=True)]


def rss_mib(pids: list[int]) -> float:
    return sum(memory_mib(pid) for pid in pids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", default="16,64")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--null", choices=["framed", "http"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.null:
        null_server(args.null)
        return
    levels = [int(c) for c in args.connections.split(",")]
    etcd = find_etcd()
    version = subprocess.run([etcd, "--version"], capture_output=True, text=True).stdout.split("\n")[0]

    with tempfile.TemporaryDirectory(prefix="etcd-bench-") as root:
        ours = LocalCluster(os.path.join(root, "oxidb"), env=KEY)
        theirs = EtcdCluster(root)
        try:
            for node in (1, 2, 3):
                ours.start(node)
            ours.bootstrap([1, 2, 3])
            our_port = ours.nodes[ours.leader()].port or 0
            theirs.start(etcd)
            their_port = theirs.leader_port()
            our_request = oxidb_request(args.value_bytes)
            their_request = etcd_request(their_port, args.value_bytes)
            # Leader first, then the followers.
            leader = ours.leader()
            our_pids = [ours.nodes[n].process.pid for n in sorted((1, 2, 3), key=lambda n: n != leader)]
            their_index = theirs.client_ports.index(their_port)
            their_pids = [p.pid for p in sorted(theirs.procs, key=lambda p: theirs.procs.index(p) != their_index)]

            rows = []
            for connections in levels:
                limits = {
                    "ours": ceiling("framed", our_request, framed_replies, connections, args.seconds / 2),
                    "etcd": ceiling("http", their_request, http_replies, connections, args.seconds / 2),
                }
                rates: dict[str, list[float]] = {"ours": [], "etcd": []}
                cpu: dict[str, list[float]] = {role: [] for role in CPU_ROLES}
                for _ in range(args.repeats):
                    rate, per_write = measured(
                        their_pids, their_port, connections, args.seconds, their_request, http_replies
                    )
                    rates["etcd"].append(rate)
                    cpu["etcd leader"].append(per_write[0])
                    cpu["etcd follower"].append(statistics.mean(per_write[1:]))
                    rate, per_write = measured(
                        our_pids, our_port, connections, args.seconds, our_request, framed_replies
                    )
                    rates["ours"].append(rate)
                    cpu["ours leader"].append(per_write[0])
                    cpu["ours follower"].append(statistics.mean(per_write[1:]))
                median = {k: statistics.median(v) for k, v in rates.items()}
                spread = {k: (min(v), max(v)) for k, v in rates.items()}
                rows.append((connections, median, spread, limits, {k: statistics.median(v) for k, v in cpu.items()}))
                print(f"  {connections} connections: ours {rates['ours']}, etcd {rates['etcd']}", flush=True)

            our_rss = rss_mib([ours.nodes[n].process.pid for n in (1, 2, 3)])
            their_rss = rss_mib([p.pid for p in theirs.procs])
        finally:
            theirs.stop()
            ours.stop()

    print(f"\n3-node clusters on loopback, durable, {args.value_bytes}-byte values, one request in flight")
    print(f"per connection, medians of {args.repeats} alternating runs of {args.seconds:g} s; {version}\n")
    print("| connections | etcd writes/s | ours writes/s | ours / etcd | loadgen ceiling ours / etcd |")
    print("|---|---|---|---|---|")
    for connections, median, spread, limits, _ in rows:
        print(
            f"| {connections} | {median['etcd']:,.0f} ({spread['etcd'][0]:,.0f}-{spread['etcd'][1]:,.0f})"
            f" | {median['ours']:,.0f} ({spread['ours'][0]:,.0f}-{spread['ours'][1]:,.0f})"
            f" | {median['ours'] / median['etcd']:.2f}x | {limits['ours']:,.0f} / {limits['etcd']:,.0f} |"
        )
    print("\nCPU per write (user + system, µs; medians; a follower is the mean of both)\n")
    print("| connections | " + " | ".join(CPU_ROLES) + " |")
    print("|---|" + "---|" * len(CPU_ROLES))
    for connections, *_, cpu in rows:
        print(f"| {connections} | " + " | ".join(f"{cpu[role]:.0f}" for role in CPU_ROLES) + " |")
    print(f"\nRSS at the end: ours {our_rss:.0f} MiB (3 nodes), etcd {their_rss:.0f} MiB (3 members)")


if __name__ == "__main__":
    main()
