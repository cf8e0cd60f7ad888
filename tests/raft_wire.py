"""
An in-memory network for L{oxidb.raft.transport.PeerTransport}s: dialling
an address builds the listening transport's inbound protocol and connects
the two with an iosim pump (no sockets); L{MemoryWire.flush} moves bytes on
every connection until all are quiet.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory
from twisted.test import iosim

from oxidb.raft.transport import PeerTransport


class MemoryWire:
    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.listeners: dict[str, PeerTransport] = {}
        self.pumps: list[iosim.IOPump] = []
        self.refused: set[str] = set()
        self.dials: list[str] = []

    def listen(self, address: str, transport: PeerTransport) -> None:
        self.listeners[address] = transport

    def connector(self, host: str, port: int, factory: IProtocolFactory) -> Deferred[Any]:
        address = f"{host}:{port}"
        self.dials.append(address)
        target = self.listeners.get(address)
        if target is None or address in self.refused or not target.running:
            return fail(ConnectionRefusedError(address))
        server = target.build_inbound()
        client = factory.buildProtocol(None)
        assert server is not None and client is not None
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, isServer=True),
            client,
            iosim.FakeTransport(client, isServer=False),
            greet=False,
            clock=self.clock,
        )
        self.pumps.append(pump)
        return succeed(client)

    def flush(self, rounds: int = 1000) -> None:
        """Pump every connection until no bytes move (and drop closed ones)."""
        for _ in range(rounds):
            moved = False
            for pump in list(self.pumps):
                if pump.pump(advanceClock=False):
                    moved = True
            self.pumps = [p for p in self.pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)]
            self.clock.advance(0)
            if not moved:
                return
        raise AssertionError("the network did not go quiet")
