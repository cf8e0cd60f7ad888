"""
Logins, RBAC and audit through the real protocol and dispatcher, on a
MemoryReactorClock with iosim connections, wired the way the service wires
them when OXIDB_AUTH is on (see the fixture).
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest
from scramp import ScramClient
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim

from oxidb.audit.events import AuditEvent, Auditor
from oxidb.auth.manager import AuthManager
from oxidb.auth.settings import AuthSettings
from oxidb.auth.store import CreateUser, DropUser, UpdateUser
from oxidb.auth.throttle import ThrottlePolicy
from oxidb.commands import build_registry
from oxidb.compose import Lifecycle, Services
from oxidb.config import Config
from oxidb.server.dispatch import Dispatcher
from oxidb.server.protocol import OxiServerFactory
from oxidb.testing import OxiClientProtocol, SynchronousExecutor


class UserEngine:
    """Only the user operations: what C{register_appliers} adds to the engine."""

    def __init__(self, auth: AuthManager) -> None:
        self.auth = auth

    def apply(self, op: CreateUser | DropUser | UpdateUser, now: float) -> Any:
        return op.apply_to(self.auth.store)


class Server:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = MemoryReactorClock()
        registry = build_registry(auth=True)
        lifecycle = Lifecycle()
        executor = SynchronousExecutor(lifecycle, self.clock)
        settings = AuthSettings(enabled=True, throttle=ThrottlePolicy(base_delay=0.5, max_delay=2.0, max_failures=3))
        auth = AuthManager.open(tmp_path / "_auth", settings, self.clock, executor.read, random.Random(3))
        banner = io.StringIO()
        auth.ensure_default_admin(banner)
        self.admin_password = banner.getvalue().split("password: ")[1].split("\n")[0]
        self.events: list[AuditEvent] = []
        audit = Auditor(self.clock, [self])
        lifecycle.engine = UserEngine(auth)
        dispatcher = Dispatcher(registry, auth_enabled=True, audit=audit)
        services = Services(
            config=Config(data_dir=str(tmp_path)),
            clock=self.clock,
            data_dir=str(tmp_path),
            registry=registry,
            lifecycle=lifecycle,
            executor=executor,
            dispatcher=dispatcher,
            audit=audit,
            auth=auth,
        )
        self.factory = OxiServerFactory(services, dispatcher, self.clock)

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)

    def connect(self) -> Connection:
        client = OxiClientProtocol()
        server_protocol = self.factory.buildProtocol(None)
        _, _, pump = iosim.connectedServerAndClient(
            lambda: server_protocol, lambda: client, greet=True, clock=self.clock
        )
        return Connection(self, client, pump)


class Connection:
    def __init__(self, server: Server, client: OxiClientProtocol, pump: Any) -> None:
        self.server, self.client, self.pump = server, client, pump

    def call(self, request: dict[str, Any], wait: float = 0.0) -> Any:
        d = self.client.request(request)
        self.pump.flush()
        if wait:
            self.server.clock.advance(wait)
            self.pump.flush()
        box: list[Any] = []
        d.addBoth(box.append)
        assert box, "no reply"
        return box[0]

    def scram(self, user: str, password: str) -> Any:
        client = ScramClient(["SCRAM-SHA-256"], user, password)
        first = self.call({"cmd": "authenticate", "payload": client.get_client_first()})
        assert first["ok"], first
        client.set_server_first(first["data"]["payload"])
        reply = self.call({"cmd": "authenticate_continue", "payload": client.get_client_final()}, wait=3.0)
        if reply["ok"]:
            client.set_server_final(reply["data"]["payload"])
        return reply


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return Server(tmp_path)


def test_gate_login_and_roles(server: Server) -> None:
    conn = server.connect()
    assert conn.call({"cmd": "ping"}) == {"ok": True, "data": "pong"}
    assert conn.call({"cmd": "list_users"}) == {"ok": False, "error": "authentication required"}
    reply = conn.scram("admin", server.admin_password)  # the client checks the server's signature
    assert reply["ok"] and reply["data"]["done"] is True
    assert conn.call({"cmd": "create_user", "username": "bob", "password": "pw", "role": "read"}) == {
        "ok": True,
        "data": "user created",
    }
    assert conn.call({"cmd": "list_users"})["data"] == [
        {"username": "admin", "role": "admin"},
        {"username": "bob", "role": "read"},
    ]
    assert conn.call({"cmd": "authenticate", "payload": "n,,n=admin,r=x"}) == {
        "ok": False,
        "error": "unknown command: authenticate",
    }

    bob = server.connect()
    assert bob.call({"cmd": "auth_simple", "username": "bob", "password": "pw"}) == {
        "ok": True,
        "data": {"role": "read", "done": True},
    }
    assert bob.call({"cmd": "create_user", "username": "eve", "password": "x"}) == {
        "ok": False,
        "error": "permission denied: role 'read' cannot execute 'create_user'",
    }
    assert bob.call({"cmd": "auth_simple", "username": "bob", "password": "pw"}) == {
        "ok": False,
        "error": "permission denied: role 'read' cannot execute 'auth_simple'",
    }
    results = [(e.user, e.cmd, e.result) for e in server.events]
    assert ("admin", "authenticate", "ok") in results
    assert ("admin", "create_user", "ok") in results
    assert ("bob", "auth_simple", "ok") in results
    assert ("bob", "create_user", "denied") in results


def test_wrong_passwords_close_the_connection(server: Server) -> None:
    conn = server.connect()
    for _ in range(3):
        reply = conn.scram("admin", "wrong")
        assert reply == {"ok": False, "error": "authentication failed"}
    server.clock.advance(1)
    conn.pump.flush()
    assert conn.client.lost_d.called
    denied = [e for e in server.events if e.result == "denied"]
    assert [(e.user, e.cmd) for e in denied] == [("admin", "authenticate")] * 3
    # Another connection still logs in.
    assert server.connect().scram("admin", server.admin_password)["ok"]


def test_unknown_user_looks_like_a_wrong_password(server: Server) -> None:
    replies = [server.connect().scram(name, "guess") for name in ("admin", "nobody")]
    assert replies[0] == replies[1] == {"ok": False, "error": "authentication failed"}
