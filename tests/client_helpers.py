"""
In-memory sockets for the blocking client: each connects to a
L{MemoryServer}'s protocol directly, so that requests run inline on the
test's thread (the server's work runs through its synchronous executor).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twisted.internet.testing import StringTransport

from oxidb.auth.settings import AuthSettings
from oxidb.client.url import ConnectOptions
from oxidb.config import Config
from oxidb.engine import blobs, procedures, transactions
from oxidb.engine.engine import Engine
from oxidb.testing import MemoryServer


class MemorySocket:
    """A socket whose peer is a server protocol; C{recv} advances the server's clock when nothing is ready."""

    def __init__(self, server: MemoryServer) -> None:
        self.server = server
        self.transport = StringTransport()
        self.protocol = server.factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        self.closed = False
        #: set to make the next sendall deliver the request, then break the connection before the reply
        self.drop_after_send = False

    def sendall(self, data: bytes) -> None:
        if self.closed or self.transport.disconnecting:
            raise ConnectionResetError("connection reset")
        self.protocol.dataReceived(data)
        if self.drop_after_send:
            self.transport.clear()
            self.close()

    def recv(self, n: int) -> bytes:
        for _ in range(100):
            data = self.transport.value()
            if data:
                self.transport.clear()
                return data[:n] if len(data) <= n else self._keep(data, n)
            if self.closed or self.transport.disconnecting:
                return b""
            self.server.clock.advance(0.5)
        raise TimeoutError("timed out")

    def _keep(self, data: bytes, n: int) -> bytes:
        self.transport.write(data[n:])
        return data[:n]

    def peer_closed(self) -> bool:
        return self.closed or bool(self.transport.disconnecting)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connectionLost(None)  # type: ignore[arg-type]

    def fileno(self) -> int:
        return -1


def memory_connector(servers: dict[tuple[str, int], MemoryServer]) -> Callable[[str, int, ConnectOptions], Any]:
    """A connector reaching C{servers} by address; others refuse."""
    sockets: list[MemorySocket] = []

    def connector(host: str, port: int, options: ConnectOptions) -> MemorySocket:
        server = servers.get((host, port))
        if server is None:
            raise ConnectionRefusedError(f"{host}:{port} refused")
        sock = MemorySocket(server)
        sockets.append(sock)
        return sock

    connector.sockets = sockets  # type: ignore[attr-defined]
    return connector


@contextmanager
def memory_server(tmp_path: Path, auth: bool = False) -> Iterator[tuple[MemoryServer, str | None]]:
    """A server in memory on an engine in C{tmp_path}, and the admin password when C{auth}."""
    data = str(tmp_path / "data")
    with Engine(data, synchronous="OFF", auto_create_on_read=False) as engine:
        transactions.register_appliers(engine)
        procedures.register_appliers(engine)
        blobs.register_appliers(engine)
        config = Config(data_dir=data, auth=AuthSettings(enabled=True) if auth else AuthSettings())
        server = MemoryServer(config, engine=engine)
        password = None
        if auth:
            banner = io.StringIO()
            server.services.auth.ensure_default_admin(banner)
            password = banner.getvalue().split("password: ")[1].split("\n")[0]
        yield server, password
