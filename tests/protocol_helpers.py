"""
In-memory client-port helpers shared by the protocol tests
(test_server_limits.py, test_server_lifecycle.py): frames, replies, a
L{MemoryServer} with a password-free login, StringTransport connections
and a command that answers only when the test says so.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from oxidb.auth.rbac import Role
from oxidb.commands._registry import Command
from oxidb.config import Config
from oxidb.testing import MemoryServer
from oxidb.wire.framing import encode_frame


def frame(obj: Any) -> bytes:
    return encode_frame(json.dumps(obj).encode())


def replies(data: bytes) -> list[Any]:
    """The JSON replies in C{data}, a stream of frames."""
    out = []
    while data:
        (n,) = struct.unpack_from("<I", data)
        out.append(json.loads(data[4 : 4 + n]))
        data = data[4 + n :]
    return out


def fake_login(ctx: Any, request: Any) -> str:
    """A stand-in for a completed login, so that no password hashing runs."""
    ctx.session.login.machine.succeeded("admin", Role.ADMIN)
    return "logged in"


def make_server(tmp_path: Any, auth: bool = False, **env: str) -> MemoryServer:
    """A server on C{tmp_path} with C{env}, and the C{fake_login} command."""
    environ = {"OXIDB_DATA": str(tmp_path), **env}
    if auth:
        environ["OXIDB_AUTH"] = "true"
    server = MemoryServer(Config.from_sources(environ))
    server.add_command(Command("fake_login", fake_login, pre_auth=True, audited=False))
    return server


def connect(server: MemoryServer, host: str = "10.0.0.1", transport: Any = None) -> tuple[Any, Any]:
    transport = StringTransport() if transport is None else transport
    protocol = server.factory.buildProtocol(IPv4Address("TCP", host, 40000))
    protocol.makeConnection(transport)
    return protocol, transport


def add_slow(server: MemoryServer, **kw: Any) -> list[Deferred[Any]]:
    """A C{slow} command whose replies wait on the returned Deferreds."""
    pending: list[Deferred[Any]] = []

    def slow(ctx: Any, request: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        pending.append(d)
        return d

    server.add_command(Command("slow", slow, **kw))
    return pending
