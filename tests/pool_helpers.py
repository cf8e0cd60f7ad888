"""
In-memory oxipool stacks: a L{PoolService} on a C{MemoryReactorClock}
whose backend connections reach in-memory servers (real L{MemoryServer}s
or scripted L{FakeNode}s) through iosim, and clients connected to it the
same way. L{PoolStack.run} pumps every connection and advances the clock
until a Deferred has fired.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim

from oxidb.client.twisted import OxiClientConnection
from oxidb.client.url import ConnectOptions
from oxidb.pool.config import PoolConfig
from oxidb.pool.service import PoolService
from oxidb.testing import MemoryServer
from oxidb.testing.memory import OxiClientProtocol
from oxidb.wire.framing import FrameDecoder, encode_frame


class FakeNode:
    """
    A scripted cluster member: answers C{hello}, C{raft_metrics} (its
    C{leader} flag and C{term}), C{insert} and C{find} over its own list, and
    refuses writes when it is not the leader. C{hang} leaves requests
    unanswered; C{up} false refuses connections.
    """

    def __init__(self, leader: bool = False, term: int = 1) -> None:
        self.leader = leader
        self.term = term
        self.up = True
        self.hang = False
        self.docs: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        self.protocols: list[FakeNodeProtocol] = []

    def answer(self, request: dict[str, Any]) -> dict[str, Any] | None:
        cmd = request.get("cmd")
        if cmd == "hello":
            return {"ok": True, "server": {"name": "fake"}}
        if cmd == "raft_metrics":
            return {"ok": True, "data": {"state": "Leader" if self.leader else "Follower", "current_term": self.term}}
        self.received.append(request)
        if self.hang:
            return None
        if cmd == "insert":
            if not self.leader:
                return {"ok": False, "error": 'raft error: has to forward request to: Some(9), Some("x")'}
            self.docs.append(request["doc"])
            return {"ok": True, "data": {"id": len(self.docs)}}
        if cmd == "find":
            return {"ok": True, "data": list(self.docs)}
        return {"ok": False, "error": f"unknown command: {cmd}"}

    def crash(self) -> None:
        """Down: every connection drops, new ones are refused."""
        self.up = False
        for protocol in list(self.protocols):
            protocol.transport.loseConnection()


class FakeNodeProtocol(Protocol):
    def __init__(self, node: FakeNode) -> None:
        self.node = node
        self.decoder = FrameDecoder()

    def connectionMade(self) -> None:
        self.node.protocols.append(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self in self.node.protocols:
            self.node.protocols.remove(self)

    def dataReceived(self, data: bytes) -> None:
        for payload in self.decoder.feed(data):
            reply = self.node.answer(json.loads(payload))
            if reply is not None:
                self.transport.write(encode_frame(json.dumps(reply).encode()))


class PoolStack:
    """A router in memory; C{backends} maps C{(host, port)} to a L{MemoryServer} or a L{FakeNode}."""

    def __init__(self, config: PoolConfig, backends: dict[tuple[str, int], Any]) -> None:
        self.clock = MemoryReactorClock()
        self.backends = backends
        self.pumps: list[iosim.IOPump] = []
        self.opened: list[tuple[str, int]] = []
        self.service = PoolService(config, self.clock, connector=self._connector)
        self.service.startService()

    def _connector(self, host: str, port: int, options: ConnectOptions) -> Deferred[OxiClientConnection]:
        backend = self.backends.get((host, port))
        if backend is None or (isinstance(backend, FakeNode) and not backend.up):
            return fail(ConnectionRefusedError(f"{host}:{port}"))
        self.opened.append((host, port))
        client = OxiClientConnection(options.format)
        server: Callable[[], Protocol]
        if isinstance(backend, FakeNode):
            server = lambda: FakeNodeProtocol(backend)  # noqa: E731
        else:
            server = lambda: backend.factory.buildProtocol(None)  # noqa: E731
        _, _, pump = iosim.connectedServerAndClient(server, lambda: client, greet=True, clock=self.clock)
        self.pumps.append(pump)
        return succeed(client)

    def client(self) -> tuple[OxiClientProtocol, iosim.IOPump]:
        client = OxiClientProtocol()
        protocol = self.service.factory.buildProtocol(None)
        _, _, pump = iosim.connectedServerAndClient(lambda: protocol, lambda: client, greet=True, clock=self.clock)
        self.pumps.append(pump)
        return client, pump

    def flush(self) -> None:
        for _ in range(20):
            moved = False
            for pump in list(self.pumps):
                moved = pump.pump() or moved
            if not moved:
                return

    def run(self, d: Deferred[Any], step: float = 0.05, limit: float = 120.0) -> Any:
        waited = 0.0
        while True:
            self.flush()
            if d.called:
                break
            if waited >= limit:
                raise AssertionError("the Deferred did not fire")
            self.clock.advance(step)
            for backend in self.backends.values():
                if isinstance(backend, MemoryServer):
                    backend.clock.advance(step)  # its login delays
            waited += step
        results: list[Any] = []
        d.addBoth(results.append)
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    def request(self, client: OxiClientProtocol, obj: Any) -> Any:
        return self.run(client.request(obj))

    def stop(self) -> None:
        self.service.stopService()
        self.flush()


def ok(reply: dict[str, Any]) -> Any:
    assert reply.get("ok") is True, reply
    return reply.get("data")


def server_docs(server: MemoryServer, collection: str) -> list[dict[str, Any]]:
    return ok(server.request({"cmd": "find", "collection": collection, "query": {}}))  # type: ignore[no-any-return]
