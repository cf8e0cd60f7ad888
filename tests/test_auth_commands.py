"""
The login and user-management commands (oxidb.commands.auth) with a fake
CommandContext: synchronous executor, task.Clock, seeded RNG.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import attrs
import pytest
from scramp import ScramClient
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from oxidb.audit.events import AuditEvent, Auditor
from oxidb.auth.manager import AuthManager
from oxidb.auth.passwords import derive_secrets
from oxidb.auth.rbac import Role
from oxidb.auth.settings import AuthSettings
from oxidb.auth.store import CreateUser, DropUser, UpdateUser, UserRecord
from oxidb.auth.throttle import ThrottlePolicy
from oxidb.commands import auth as commands
from oxidb.commands._context import CommandContext, IServices
from oxidb.errors import OxiError
from oxidb.server.session import Session


class Executor:
    """Runs reads inline and writes through the user-store appliers."""

    def __init__(self) -> None:
        self.store: Any = None
        self.ops: list[dict[str, Any]] = []  # what the Raft log would carry

    def read(self, fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        try:
            return succeed(fn(*args, **kwargs))
        except Exception as e:
            return fail(e)

    def write(self, op: CreateUser | DropUser | UpdateUser) -> Deferred[Any]:
        self.ops.append(op.to_json())
        try:
            return succeed(op.apply_to(self.store))
        except Exception as e:
            return fail(e)


class ListSink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


@attrs.define
class AuthFailureCounter:
    """The one metrics hook the login commands call."""

    failures: int = 0

    def auth_failed(self) -> None:
        self.failures += 1


@implementer(IServices)
@attrs.define
class Services:
    clock: Clock
    auth: AuthManager
    audit: Auditor
    executor: Executor
    metrics: AuthFailureCounter = attrs.field(factory=AuthFailureCounter)


@attrs.define
class World:
    services: Services
    sink: ListSink
    clock: Clock
    executor: Executor

    def ctx(self, session: Session | None = None) -> CommandContext:
        return CommandContext(session or Session(peer="127.0.0.1:5000"), self.services)

    @property
    def store(self) -> Any:
        return self.services.auth.store


SEED = random.Random(1)

#: Hashed once: Argon2id is deliberately slow.
USERS = [
    (name, role, derive_secrets(password, SEED.randbytes(16), SEED.randbytes(16), 4096))
    for name, password, role in [("root", "rootpw", Role.ADMIN), ("alice", "pencil", Role.READWRITE)]
]

POLICY = ThrottlePolicy(base_delay=0.1, max_delay=1.0, max_failures=4, window=60.0)


@pytest.fixture
def world(tmp_path: Path) -> World:
    clock = Clock()
    clock.advance(1_700_000_000)
    executor = Executor()
    settings = AuthSettings(enabled=True, throttle=POLICY)
    manager = AuthManager.open(tmp_path, settings, clock, executor.read, random.Random(0))
    executor.store = manager.store
    for name, role, secrets in USERS:
        manager.store.create(UserRecord(name, role, secrets.password_hash, secrets.verifier))
    sink = ListSink()
    return World(Services(clock, manager, Auditor(clock, [sink]), executor), sink, clock, executor)


def result_of(d: Any) -> Any:
    """The result of an already-fired Deferred (or a plain value)."""
    if not isinstance(d, Deferred):
        return d
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def error_of(d: Any) -> str:
    with pytest.raises(OxiError) as e:
        result_of(d)
    return str(e.value)


def scram_login(world: World, ctx: CommandContext, user: str, password: str) -> Any:
    """Both SCRAM steps; returns the second step's Deferred."""
    client = ScramClient(["SCRAM-SHA-256"], user, password)
    first = result_of(commands.authenticate(ctx, {"cmd": "authenticate", "payload": client.get_client_first()}))
    assert first["done"] is False
    client.set_server_first(first["payload"])
    d = commands.authenticate_continue(ctx, {"cmd": "authenticate_continue", "payload": client.get_client_final()})
    d.addCallback(lambda reply: (client.set_server_final(reply["payload"]), reply)[1])
    return d


# --- SCRAM ----------------------------------------------------------------------


def test_scram_login(world: World) -> None:
    ctx = world.ctx()
    reply = result_of(scram_login(world, ctx, "alice", "pencil"))
    assert reply["done"] is True and reply["payload"].startswith("v=")
    assert (ctx.session.user, ctx.session.role, ctx.session.auth_state) == ("alice", Role.READWRITE, None)
    # The first step is audited too (it starts the attempt), then the outcome.
    first, event = world.sink.events
    assert (first.user, first.role, first.cmd, first.result, first.detail) == (
        "alice", None, "authenticate", "ok", commands.FIRST_STEP
    )
    assert (event.user, event.role, event.cmd, event.result, event.peer) == (
        "alice",
        "readWrite",
        "authenticate",
        "ok",
        "127.0.0.1:5000",
    )


def test_wrong_password_is_delayed_audited_and_counted(world: World) -> None:
    ctx = world.ctx()
    d = scram_login(world, ctx, "alice", "wrong")
    assert not d.called  # held back without blocking anything
    world.clock.advance(0.1)
    assert error_of(d) == "authentication failed"
    assert not ctx.session.authenticated and ctx.session.failed_logins == 1
    assert world.services.metrics.failures == 1
    first, event = world.sink.events
    assert (first.user, first.result, first.detail) == ("alice", "ok", commands.FIRST_STEP)
    assert (event.user, event.role, event.cmd, event.result, event.detail) == (
        "alice",
        None,
        "authenticate",
        "denied",
        "authentication failed",
    )
    assert "wrong" not in json.dumps(attrs.asdict(event))


def test_unknown_user_fails_the_same_way(world: World) -> None:
    ctx = world.ctx()
    d = scram_login(world, ctx, "mallory", "pencil")
    assert not d.called
    world.clock.advance(0.1)
    assert error_of(d) == "authentication failed"
    assert world.sink.events[-1].user == "mallory" and world.sink.events[-1].result == "denied"


def test_unknown_user_salt_is_stable(world: World) -> None:
    def salt(name: str) -> str:
        reply = result_of(commands.authenticate(world.ctx(), {"payload": f"n,,n={name},r=abc"}))
        return str(reply["payload"].split(",")[1])

    assert salt("mallory") == salt("mallory") != salt("trudy")


def test_delays_grow_and_the_connection_is_closed(world: World) -> None:
    ctx = world.ctx()
    delays = []
    for attempt in range(POLICY.max_failures):
        d = scram_login(world, ctx, "alice", "wrong")
        [call] = world.clock.getDelayedCalls()
        delays.append(round(call.getTime() - world.clock.seconds(), 6))
        world.clock.advance(delays[-1])
        error_of(d)
        assert ctx.session.close_after_reply is (attempt == POLICY.max_failures - 1)
    assert delays == [0.1, 0.2, 0.4, 0.8]


def test_delay_follows_the_user_name_across_connections(world: World) -> None:
    for _ in range(3):
        d = scram_login(world, world.ctx(), "alice", "wrong")
        world.clock.advance(1.0)
        error_of(d)
    fresh = world.ctx()
    d = scram_login(world, fresh, "alice", "wrong")
    world.clock.advance(0.7)
    assert not d.called  # 4th failure for the name: 0.8 s, though the connection's first
    world.clock.advance(0.1)
    error_of(d)
    # Another name on another connection is not slowed down by alice's failures.
    d = scram_login(world, world.ctx(), "root", "wrong")
    world.clock.advance(0.1)
    assert d.called
    error_of(d)
    # After a quiet window the name's count is forgotten.
    world.clock.advance(POLICY.window)
    d = scram_login(world, world.ctx(), "alice", "wrong")
    world.clock.advance(0.1)
    assert d.called
    error_of(d)


def test_success_resets_the_name(world: World) -> None:
    for _ in range(2):
        d = scram_login(world, world.ctx(), "alice", "wrong")
        world.clock.advance(1.0)
        error_of(d)
    result_of(scram_login(world, world.ctx(), "alice", "pencil"))
    assert world.services.auth.throttle.name_failures("alice") == 0


def test_continue_without_authenticate(world: World) -> None:
    ctx = world.ctx()
    d = commands.authenticate_continue(ctx, {"payload": "c=biws,r=abc,p=AAAA"})
    assert error_of(d) == "no SCRAM state; send 'authenticate' first"
    assert world.sink.events[-1].result == "error"
    assert ctx.session.failed_logins == 0  # a protocol error is not a password guess


def test_state_is_consumed_whatever_the_outcome(world: World) -> None:
    ctx = world.ctx()
    client = ScramClient(["SCRAM-SHA-256"], "alice", "pencil")
    first = result_of(commands.authenticate(ctx, {"payload": client.get_client_first()}))
    client.set_server_first(first["payload"])
    final = client.get_client_final()
    bad = commands.authenticate_continue(ctx, {"payload": "c=biws,r=wrong,p=AAAA"})
    assert error_of(bad).startswith("invalid client-final: ")
    # The right message now comes too late: the exchange is gone (no replay).
    late = commands.authenticate_continue(ctx, {"payload": final})
    assert error_of(late) == "no SCRAM state; send 'authenticate' first"


def test_replayed_final_message(world: World) -> None:
    ctx = world.ctx()
    client = ScramClient(["SCRAM-SHA-256"], "alice", "pencil", c_nonce="fixedClientNonce")
    captured_first = client.get_client_first()
    first = result_of(commands.authenticate(ctx, {"payload": captured_first}))
    client.set_server_first(first["payload"])
    final = client.get_client_final()
    result_of(commands.authenticate_continue(ctx, {"payload": final}))
    # Replayed on another connection, the captured messages are useless: the
    # server's part of the nonce is new.
    other = world.ctx()
    result_of(commands.authenticate(other, {"payload": captured_first}))
    assert error_of(commands.authenticate_continue(other, {"payload": final})).startswith("invalid client-final: ")


def test_second_authenticate_replaces_the_exchange(world: World) -> None:
    ctx = world.ctx()
    old = ScramClient(["SCRAM-SHA-256"], "alice", "pencil")
    first = result_of(commands.authenticate(ctx, {"payload": old.get_client_first()}))
    old.set_server_first(first["payload"])
    result_of(commands.authenticate(ctx, {"payload": "n,,n=alice,r=newnonce"}))
    assert error_of(commands.authenticate_continue(ctx, {"payload": old.get_client_final()})).startswith(
        "invalid client-final: "
    )


@pytest.mark.parametrize(
    "request_",
    [{}, {"payload": 5}, {"payload": "x,,n=alice,r=abc"}, {"payload": "n,,n=alice,r=" + "a" * 10_000}],
)
def test_bad_client_first(world: World, request_: dict[str, Any]) -> None:
    ctx = world.ctx()
    assert error_of(commands.authenticate(ctx, request_)).startswith("invalid client-first: ")
    assert ctx.session.auth_state is None
    assert world.sink.events[-1].cmd == "authenticate" and world.sink.events[-1].result == "error"


def test_user_dropped_during_login(world: World) -> None:
    ctx = world.ctx()
    client = ScramClient(["SCRAM-SHA-256"], "alice", "pencil")
    first = result_of(commands.authenticate(ctx, {"payload": client.get_client_first()}))
    client.set_server_first(first["payload"])
    world.store.drop("alice")
    d = commands.authenticate_continue(ctx, {"payload": client.get_client_final()})
    world.clock.advance(0.1)
    assert error_of(d) == "authentication failed"


def test_login_commands_are_unknown_after_login(world: World) -> None:
    ctx = world.ctx()
    result_of(scram_login(world, ctx, "alice", "pencil"))
    for handler, name in [
        (commands.authenticate, "authenticate"),
        (commands.authenticate_continue, "authenticate_continue"),
        (commands.auth_simple, "auth_simple"),
    ]:
        assert error_of(handler(ctx, {})) == f"unknown command: {name}"
    assert ctx.session.user == "alice"


# --- auth_simple ----------------------------------------------------------------


def test_auth_simple(world: World) -> None:
    ctx = world.ctx()
    reply = result_of(commands.auth_simple(ctx, {"username": "root", "password": "rootpw"}))
    assert reply == {"role": "admin", "done": True}
    assert (ctx.session.user, ctx.session.role) == ("root", Role.ADMIN)
    assert world.sink.events[-1].cmd == "auth_simple" and world.sink.events[-1].result == "ok"


@pytest.mark.parametrize(
    "request_",
    [
        {"username": "root", "password": "nope"},
        {"username": "ghost", "password": "rootpw"},
        {},
        {"username": "root", "password": "\ud800"},
    ],
)
def test_auth_simple_failures(world: World, request_: dict[str, Any]) -> None:
    ctx = world.ctx()
    d = commands.auth_simple(ctx, request_)
    world.clock.advance(0.1)
    assert error_of(d) == "authentication failed"
    assert not ctx.session.authenticated and ctx.session.failed_logins == 1
    assert world.sink.events[-1].user == request_.get("username", "")
    assert world.sink.events[-1].result == "denied"


# --- user management --------------------------------------------------------------


def admin_ctx(world: World) -> CommandContext:
    return world.ctx(Session(peer="127.0.0.1:6000", user="root", role=Role.ADMIN))


def run_row(name: str, ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """The user command's schema, then its handler, as the dispatcher runs them."""
    (command,) = [c for c in commands.USER_COMMANDS if c.name == name]

    def run() -> Any:
        command.schema.validate(request)
        return command.handler(ctx, request)

    return maybeDeferred(run)


def test_create_user_then_log_in(world: World) -> None:
    ctx = admin_ctx(world)
    assert result_of(commands.create_user(ctx, {"username": "bob", "password": "s3cret"})) == "user created"
    [op] = world.executor.ops
    assert list(op) == ["CreateUser"] and "s3cret" not in json.dumps(op)
    assert op["CreateUser"]["role"] == "read"
    reply = result_of(commands.auth_simple(world.ctx(), {"username": "bob", "password": "s3cret"}))
    assert reply["role"] == "read"
    login = world.ctx()
    result_of(scram_login(world, login, "bob", "s3cret"))
    assert login.session.role is Role.READ


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"password": "x"}, "missing 'username'"),
        ({"username": "", "password": "x"}, "missing 'username'"),
        ({"username": 5, "password": "x"}, "missing 'username'"),
        ({"username": "bob"}, "missing 'password'"),
        ({"username": "bob", "password": ""}, "invalid password: must not be empty"),
        ({"username": "bob", "password": "x", "role": "root"}, "invalid role: root"),
        ({"username": "alice", "password": "x"}, "user 'alice' already exists"),
        ({"username": "bob\u00a0", "password": "x"}, "invalid username: 'bob\u00a0' is not in SASLprep normal form"),
        ({"username": "bob", "password": "a\u0007b"}, "invalid password: "),
    ],
)
def test_create_user_errors(world: World, request_: dict[str, Any], message: str) -> None:
    assert error_of(run_row("create_user", admin_ctx(world), request_)).startswith(message)
    assert world.executor.ops == []


def test_create_user_roles(world: World) -> None:
    ctx = admin_ctx(world)
    for name, role in [("w1", "readWrite"), ("w2", "readwrite"), ("a1", "admin"), ("r1", "read")]:
        result_of(commands.create_user(ctx, {"username": name, "password": "pw", "role": role}))
    roles = {u["username"]: u["role"] for u in result_of(commands.list_users(ctx, {}))}
    assert roles == {
        "a1": "admin",
        "alice": "readWrite",
        "r1": "read",
        "root": "admin",
        "w1": "readWrite",
        "w2": "readWrite",
    }


def test_list_users(world: World) -> None:
    assert commands.list_users(admin_ctx(world), {}) == [
        {"username": "alice", "role": "readWrite"},
        {"username": "root", "role": "admin"},
    ]


def test_update_user_password_and_role(world: World) -> None:
    ctx = admin_ctx(world)
    assert result_of(commands.update_user(ctx, {"username": "alice", "password": "new"})) == "user updated"
    assert "new" not in json.dumps(world.executor.ops)
    d = commands.auth_simple(world.ctx(), {"username": "alice", "password": "pencil"})
    world.clock.advance(1)
    assert error_of(d) == "authentication failed"
    result_of(scram_login(world, world.ctx(), "alice", "new"))
    result_of(commands.update_user(ctx, {"username": "alice", "role": "read"}))
    assert world.store.get("alice").role is Role.READ


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"password": "x"}, "missing 'username'"),
        ({"username": "alice"}, "must specify 'password' or 'role' to update"),
        ({"username": "alice", "role": 5}, "must specify 'password' or 'role' to update"),
        ({"username": "alice", "role": "root"}, "invalid role: root"),
        # Upstream silently ignores an invalid role when a password is given.
        ({"username": "alice", "role": "root", "password": "x"}, "invalid role: root"),
        ({"username": "ghost", "password": "x"}, "user 'ghost' not found"),
        ({"username": "root", "role": "read"}, "refusing to demote user 'root': it is the last admin"),
    ],
)
def test_update_user_errors(world: World, request_: dict[str, Any], message: str) -> None:
    assert error_of(run_row("update_user", admin_ctx(world), request_)) == message
    assert world.store.get("alice").role is Role.READWRITE


def test_drop_user(world: World) -> None:
    ctx = admin_ctx(world)
    assert error_of(run_row("drop_user", ctx, {})) == "missing 'username'"
    assert error_of(commands.drop_user(ctx, {"username": "ghost"})) == "user 'ghost' not found"
    assert error_of(commands.drop_user(ctx, {"username": "root"})) == (
        "refusing to drop user 'root': it is the last admin"
    )
    assert result_of(commands.drop_user(ctx, {"username": "alice"})) == "user dropped"
    assert world.store.get("alice") is None


def test_registry_rows() -> None:
    for row in commands.LOGIN_COMMANDS:
        assert row.pre_auth and not row.audited and not row.writes
    assert {row.name for row in commands.LOGIN_COMMANDS} == {"authenticate", "authenticate_continue", "auth_simple"}
    rows = {row.name: row for row in commands.USER_COMMANDS}
    assert set(rows) == {"create_user", "drop_user", "update_user", "list_users", "grant_db_role", "revoke_db_role"}
    for name, row in rows.items():
        assert not row.pre_auth and row.audited and row.audit_collection is None
        assert row.writes is (name != "list_users")
