"""
The subprocess harness for end-to-end tests and benches (private: not part
of L{oxidb.testing}, and free to change with the test suite).

 - L{ServerProcess} and L{BlockingClient}: a real C{twistd -n oxidb} child
   process and a plain-socket client.
 - L{LocalCluster}: cluster nodes as real processes on loopback.
 - L{FaultProxyProcess}: a fault-injecting proxy for the Raft links between
   such nodes (partitions, one-way cuts, delays; L{oxidb._faultproxy}).
 - L{free_port}, L{wait_for_port}, L{wait_until}, L{partition_links}: the
   small blocking utilities they share.

Everything here blocks on real processes and sockets; the deterministic
in-memory helpers are in L{oxidb.testing}.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from oxidb.wire.framing import encode_frame


class ServerProcess:
    """
    A real C{twistd -n oxidb} child process on loopback, for the few
    end-to-end tests. Blocking API (plain sockets, no reactor): start it,
    read the port it bound from its log, stop it with a signal.

    @param data_dir: its C{OXIDB_DATA}.
    @param env: extra environment variables (C{OXIDB_*}).
    @param args: extra twistd plugin options.
    """

    def __init__(
        self,
        data_dir: str,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        twistd_args: list[str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.env = dict(env or {})
        self.args = list(args or [])
        self.twistd_args = list(twistd_args or [])
        self.process: Any = None
        self.port: int | None = None
        self.log_path = os.path.join(data_dir, "..", f"{os.path.basename(data_dir)}.twistd.log")
        self.stderr_path = self.log_path + ".stderr"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        os.makedirs(self.data_dir, exist_ok=True)
        env = dict(os.environ)
        # Run the code under test: the tree this module was imported from
        # (which also holds twisted/plugins/oxidb_plugin.py).
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        env.update({"OXIDB_DATA": self.data_dir, "OXIDB_ADDR": "127.0.0.1:0"})
        # A hung process dumps every thread's stack on SIGABRT (see stop()).
        env["PYTHONFAULTHANDLER"] = "1"
        env.update(self.env)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        logging = self.twistd_args or [f"--logfile={self.log_path}"]
        command = [twistd, "-n", "--pidfile=", *logging, "oxidb", *self.args]
        if os.path.exists(self.log_path) and os.path.getsize(self.log_path):
            # A restart on the same data: keep the earlier runs' logs (.1 is the latest).
            for path in (self.log_path, self.stderr_path):
                _rotate(path)
        with open(self.log_path, "w"):
            pass
        self._stderr = open(self.stderr_path, "wb")
        # With custom twistd logging options, stdout goes to the log file.
        stdout = open(self.log_path, "wb") if self.twistd_args else subprocess.DEVNULL
        self.process = subprocess.Popen(command, env=env, stdout=stdout, stderr=self._stderr)
        self.port = self._wait_for_port(timeout)
        return self

    def _wait_for_port(self, timeout: float) -> int:
        pattern = re.compile(r"listening on 127\.0\.0\.1:(\d+)|\"addr\": \"127\.0\.0\.1:(\d+)\"")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(self.log())
            if match:
                return int(match.group(1) or match.group(2))
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}\n{self.stderr()}")
            time.sleep(0.02)
        # Never leave a half-started server behind a failed test.
        self.process.kill()
        self.process.wait()
        raise RuntimeError(f"server did not start within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stderr(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        code: int = self.process.wait(timeout)
        self._stderr.close()
        return code

    def stop(self, timeout: float = 75.0) -> int:
        """
        SIGTERM, and the exit status. A process still running after
        C{timeout} seconds (longer than the server's own shutdown deadline)
        is aborted with a dump of its threads' stacks, and the error carries
        that dump and the end of its log.
        """
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGABRT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self._stderr.close()
            log_tail = "\n".join(self.log().splitlines()[-40:])
            raise AssertionError(
                f"server did not stop within {timeout}s of SIGTERM; its threads:\n{self.stderr()}\n"
                f"--- end of its log ---\n{log_tail}"
            ) from None

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything."""
        self.process.kill()
        self.wait()

    def client(self, timeout: float = 10.0, ssl_context: Any = None) -> BlockingClient:
        assert self.port is not None
        return BlockingClient("127.0.0.1", self.port, timeout=timeout, ssl_context=ssl_context)


class BlockingClient:
    """A minimal blocking JSON client (for end-to-end tests and benches)."""

    def __init__(self, host: str, port: int, timeout: float = 10.0, ssl_context: Any = None) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ssl_context.wrap_socket(sock, server_hostname=host) if ssl_context is not None else sock

    def send_raw(self, payload: bytes) -> None:
        self.sock.sendall(encode_frame(payload))

    def recv_raw(self) -> bytes:
        (length,) = struct.unpack("<I", self._exactly(4))
        return self._exactly(length)

    def _exactly(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(n)
            if not chunk:
                raise ConnectionError("connection closed by server")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def request(self, obj: Any) -> Any:
        self.send_raw(json.dumps(obj).encode())
        return json.loads(self.recv_raw())

    def close(self) -> None:
        self.sock.close()


def _rotate(path: str) -> None:
    """C{path} becomes C{path.1}, C{path.1} becomes C{path.2}, and so on."""
    if not os.path.exists(path):
        return
    last = 1
    while os.path.exists(f"{path}.{last}"):
        last += 1
    for n in range(last, 1, -1):
        os.replace(f"{path}.{n - 1}", f"{path}.{n}")
    os.replace(path, f"{path}.1")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for settings that need a fixed port)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    """Wait until something accepts TCP connections on C{host:port}."""

    def accepting() -> bool:
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_until(accepting, timeout, interval=0.05)


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Poll C{condition} until it returns something true; that value. Raises after C{timeout}."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class LocalCluster:
    """
    Cluster nodes as real C{twistd -n oxidb} processes on loopback, for
    end-to-end tests and benches. Raft ports are fixed per node id so that a
    node restarted on its data keeps its address.

    @param root: a directory for the nodes' data directories and logs.
    @param env: extra environment for every node (C{OXIDB_*}). Cluster mode
        needs peer authentication: without C{OXIDB_CLUSTER_KEY} (or mutual
        TLS) in C{env}, every node gets the same fresh random cluster key.
    """

    def __init__(self, root: str, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.env = dict(env or {})
        if "OXIDB_CLUSTER_KEY" not in self.env and "OXIDB_RAFT_TLS_CERT" not in self.env:
            self.env["OXIDB_CLUSTER_KEY"] = base64.b64encode(os.urandom(32)).decode("ascii")
        self.raft_ports: dict[int, int] = {}
        self.nodes: dict[int, ServerProcess] = {}
        self._clients: dict[int, BlockingClient] = {}
        self._used: dict[int, float] = {}

    def raft_addr(self, node_id: int) -> str:
        if node_id not in self.raft_ports:
            self.raft_ports[node_id] = free_port()
        return f"127.0.0.1:{self.raft_ports[node_id]}"

    def start(self, node_id: int, **env: str) -> ServerProcess:
        """Start (or restart on its data) node C{node_id}."""
        node_env = {
            "OXIDB_NODE_ID": str(node_id),
            "OXIDB_RAFT_ADDR": self.raft_addr(node_id),
            **self.env,
            **env,
        }
        self._clients.pop(node_id, None)
        node = self.nodes[node_id] = ServerProcess(os.path.join(self.root, f"node{node_id}"), env=node_env).start()
        return node

    #: A cached connection unused for this long is replaced before its next
    #: request: the server closes connections idle for OXIDB_IDLE_TIMEOUT
    #: (30 s by default), which a slow test on a loaded machine can reach.
    MAX_IDLE = 10.0

    def client(self, node_id: int) -> BlockingClient:
        client = self._clients.get(node_id)
        now = time.monotonic()
        if client is not None and now - self._used.get(node_id, now) > self.MAX_IDLE:
            client.close()
            client = None
        if client is None:
            client = self._clients[node_id] = self.nodes[node_id].client(timeout=30.0)
        self._used[node_id] = now
        return client

    def request(self, node_id: int, obj: Any) -> Any:
        return self.client(node_id).request(obj)

    def metrics(self, node_id: int) -> dict[str, Any]:
        reply = self.request(node_id, {"cmd": "raft_metrics"})
        if not reply.get("ok"):
            raise AssertionError(f"raft_metrics on node {node_id}: {reply}")
        metrics: dict[str, Any] = reply["data"]
        return metrics

    def leader(self, among: Any = None, timeout: float = 15.0) -> int:
        """Wait until one of C{among} (default: every running node) reports itself leader."""
        ids = list(self.nodes) if among is None else list(among)
        return int(wait_until(lambda: next((i for i in ids if self.metrics(i)["state"] == "Leader"), 0), timeout))

    def bootstrap(self, ids: list[int], addresses: dict[int, str] | None = None) -> None:
        """
        Upstream's sequence: raft_init on the first, raft_add_learner for the
        others, raft_change_membership. C{addresses}: the Raft address each
        node is to be known by (default: its own; the first node publishes its
        C{OXIDB_RAFT_ADVERTISE} or listen address).
        """
        addresses = addresses or {}
        first = ids[0]
        reply = self.request(first, {"cmd": "raft_init"})
        if not reply.get("ok"):
            raise AssertionError(f"raft_init: {reply}")
        self.leader([first])
        for node_id in ids[1:]:
            addr = addresses.get(node_id) or self.raft_addr(node_id)
            reply = self.request(first, {"cmd": "raft_add_learner", "node_id": node_id, "addr": addr})
            if not reply.get("ok"):
                raise AssertionError(f"raft_add_learner {node_id}: {reply}")
        reply = self.request(first, {"cmd": "raft_change_membership", "members": ids})
        if not reply.get("ok"):
            raise AssertionError(f"raft_change_membership: {reply}")

    def kill(self, node_id: int) -> None:
        """SIGKILL the node."""
        client = self._clients.pop(node_id, None)
        if client is not None:
            client.close()
        self.nodes[node_id].kill()

    def stop(self) -> None:
        """
        Stop every running node; each must exit cleanly (status 0), or the
        error shows what the failed ones wrote to stderr (a server stuck in
        its shutdown dumps its threads' stacks there).
        """
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        failed = []
        for node_id, node in self.nodes.items():
            if node.process.poll() is None:
                code = node.stop()
                if code != 0:
                    failed.append(f"node {node_id} exited with {code} on SIGTERM:\n{node.stderr()[-20000:]}")
        if failed:
            raise AssertionError("\n".join(failed))


def partition_links(groups: Any, nodes: Any) -> list[tuple[int, int]]:
    """
    The directed links a partition cuts: between two nodes that share no
    group. C{[[1], [2, 3]]} isolates node 1; C{[[1, 2], [2, 3]]} is a bridge
    (node 2 talks to both sides, 1 and 3 do not talk).
    """
    member = {n: {i for i, group in enumerate(groups) if n in group} for n in nodes}
    return sorted((a, b) for a in nodes for b in nodes if a != b and not member[a] & member[b])


class FaultProxyProcess:
    """
    The fault-injecting Raft link proxy (L{oxidb._faultproxy}) as a child
    process on loopback, controlled over its standard input and output.
    Blocking API, like L{LocalCluster}.

    Register every node with L{add_node} (its real Raft address) before the
    cluster forms, and give the cluster the returned front ports as the
    nodes' addresses (C{raft_init}/C{raft_add_learner} C{addr}, and
    C{OXIDB_RAFT_PEERS}): then every Raft connection goes through the proxy,
    and L{set_links} cuts, delays or holds single directed links.
    """

    def __init__(self) -> None:
        self.process: Any = None
        self.fronts: dict[int, int] = {}
        self.links: dict[tuple[int, int], int] = {}

    def start(self) -> FaultProxyProcess:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "oxidb._faultproxy", "127.0.0.1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=root,
        )
        return self

    def command(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}).encode() + b"\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fault proxy exited ({self.process.poll()})")
        reply: dict[str, Any] = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"fault proxy: {op}: {reply['error']}")
        return reply

    def add_node(self, node: int, target: str) -> int:
        """Proxy C{node} (real Raft address C{target}); the port it is to be known by."""
        ports = self.command("add_node", node=node, target=target)
        self.fronts = {int(n): p for n, p in ports["fronts"].items()}
        self.links = {(int(k.split("-")[0]), int(k.split("-")[1])): p for k, p in ports["links"].items()}
        return self.fronts[node]

    def address(self, node: int) -> str:
        return f"127.0.0.1:{self.fronts[node]}"

    def link_port(self, src: int, dst: int) -> int:
        """The port of node C{src}'s own view of node C{dst} (for C{OXIDB_RAFT_PEERS})."""
        return self.links[(src, dst)]

    def set_links(self, links: Any, mode: str, delay_ms: int = 0, reset: bool = False) -> None:
        """Put the directed links C{[(src, dst), ...]} in C{mode} (see L{oxidb._faultproxy})."""
        self.command("modes", links=[[s, d, mode, delay_ms] for s, d in links], reset=reset)

    def partition(self, groups: Any, mode: str = "blackhole") -> list[tuple[int, int]]:
        """Cut every link between nodes that share no group (see L{partition_links}); the links cut."""
        cut = partition_links(groups, sorted(self.fronts))
        self.set_links(cut, mode)
        return cut

    def heal(self, reset: bool = False) -> None:
        """Every link passes again; with C{reset} held connections are aborted instead of let through."""
        self.command("heal", reset=reset)

    def stats(self) -> list[dict[str, Any]]:
        stats: list[dict[str, Any]] = self.command("stats")["links"]
        return stats

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.command("quit")
        except (RuntimeError, OSError, ValueError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
