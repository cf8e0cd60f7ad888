"""
Load generator for the benches: N connections, each keeping DEPTH requests in
flight, for SECONDS; prints the number of replies per second. Replies are
only counted by their length prefix, so the generator stays cheap.

    python bench/loadgen.py PORT CONNECTIONS DEPTH SECONDS [PAYLOAD_JSON]
"""

from __future__ import annotations

import json
import selectors
import socket
import struct
import sys
import time


def run(port: int, connections: int, depth: int, seconds: float, payload: bytes) -> float:
    frame = struct.pack("<I", len(payload)) + payload
    selector = selectors.DefaultSelector()
    state = {}
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        state[sock] = bytearray()
        selector.register(sock, selectors.EVENT_READ)
    # Prime every connection with DEPTH requests.
    for sock in state:
        sock.setblocking(True)
        sock.sendall(frame * depth)
        sock.setblocking(False)
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        now = time.perf_counter()
        if now >= deadline:
            break
        for key, _ in selector.select(timeout=deadline - now):
            sock = key.fileobj
            buf = state[sock]
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
            replies = 0
            offset = 0
            while len(buf) - offset >= 4:
                (n,) = struct.unpack_from("<I", buf, offset)
                if len(buf) - offset < 4 + n:
                    break
                offset += 4 + n
                replies += 1
            del buf[:offset]
            if replies:
                done += replies
                sock.setblocking(True)
                sock.sendall(frame * replies)
                sock.setblocking(False)
    elapsed = time.perf_counter() - started
    for sock in state:
        sock.close()
    return done / elapsed


def main() -> None:
    port, connections, depth, seconds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    payload = (sys.argv[5] if len(sys.argv) > 5 else json.dumps({"cmd": "ping"})).encode()
    print(f"{run(port, connections, depth, seconds, payload):.1f}")


if __name__ == "__main__":
    main()
