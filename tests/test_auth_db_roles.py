"""
Per-database roles (server.md 4.9, 5): C{grant_db_role} and
C{revoke_db_role}, C{db_roles} in the user store, and RBAC deciding with
the role on the request's target database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from oxidb.auth.rbac import Role
from oxidb.auth.store import GrantDbRole, RevokeDbRole, UserRecord, UserStore
from oxidb.commands import Command
from oxidb.config import Config
from oxidb.engine import transactions
from oxidb.engine.engine import Engine
from oxidb.errors import BadRequestError, NoDbRoleError
from oxidb.testing import MemoryServer
from tests.test_commands_databases import Conn


def login_as(ctx: Any, request: Any) -> str:
    """A completed login as C{request["user"]} with C{request["role"]}, without hashing."""
    role = Role.parse(request["role"])
    assert role is not None
    ctx.session.login.machine.succeeded(request["user"], role)
    return "logged in"


@pytest.fixture
def server(tmp_path: Any) -> Iterator[MemoryServer]:
    engine = Engine(str(tmp_path / "data"), synchronous="OFF")
    transactions.register_appliers(engine)
    with engine:
        config = Config.from_sources({"OXIDB_DATA": engine.data_dir, "OXIDB_AUTH": "true"})
        yield MemoryServer(
            config,
            engine=engine,
            commands=[Command("login_as", login_as, pre_auth=True, audited=False)],
        )


def session(server: MemoryServer, user: str, role: str) -> Conn:
    conn = Conn(*server.connect())
    assert conn.ok("login_as", user=user, role=role) == "logged in"
    return conn


def test_grant_and_revoke(server: MemoryServer, tmp_path: Any) -> None:
    admin = session(server, "admin", "admin")
    admin.ok("create_user", username="bob", password="pw", role="read")
    admin.ok("create_database", name="crm")
    admin.ok("insert", collection="users", doc={"a": 1})
    assert (
        admin.ok("grant_db_role", username="bob", database="crm", role="readwrite")
        == "granted role 'readWrite' on database 'crm' to user 'bob'"
    )
    assert {"username": "bob", "role": "read", "db_roles": {"crm": "readwrite"}} in admin.ok("list_users")
    stored = json.loads((tmp_path / "data" / "_auth" / "users.json").read_text())
    assert [u["db_roles"] for u in stored if u["username"] == "bob"] == [{"crm": "readwrite"}]

    bob = session(server, "bob", "read")
    denied = "permission denied: role 'read' cannot execute 'insert'"
    assert bob.err("insert", collection="users", doc={}) == denied
    assert bob.ok("insert", collection="users", doc={"b": 1}, db="crm") == {"id": 1}
    assert bob.ok("use_db", name="crm") == "switched to database 'crm'"
    assert bob.ok("insert", collection="users", doc={"b": 2}) == {"id": 2}
    assert bob.ok("find", collection="users", db="oxidb") == [{"_id": 1, "_version": 1, "a": 1}]
    assert bob.err("insert", collection="users", doc={}, db="oxidb") == denied
    # User and database commands use the global role.
    assert bob.err("create_database", name="x") == "permission denied: role 'read' cannot execute 'create_database'"
    assert bob.err("drop_database", name="crm") == "permission denied: role 'read' cannot execute 'drop_database'"

    assert (
        admin.ok("revoke_db_role", username="bob", database="crm")
        == "revoked database role on 'crm' from user 'bob'"
    )
    assert bob.err("insert", collection="users", doc={}) == denied
    assert bob.ok("count", collection="users") == {"count": 2}
    assert admin.err("revoke_db_role", username="bob", database="crm") == (
        "user 'bob' has no role override for database 'crm'"
    )


def test_transactions_use_the_role_on_their_database(server: MemoryServer) -> None:
    admin = session(server, "admin", "admin")
    admin.ok("create_user", username="bob", password="pw", role="read")
    admin.ok("create_database", name="crm")
    admin.ok("grant_db_role", username="bob", database="crm", role="readWrite")
    bob = session(server, "bob", "read")
    assert bob.err("begin_tx") == "permission denied: role 'read' cannot execute 'begin_tx'"
    bob.ok("begin_tx", db="crm")
    bob.ok("insert", collection="c", doc={"a": 1}, db="crm")
    assert bob.ok("commit_tx") == "committed"
    bob.ok("begin_tx", db="crm")
    assert bob.ok("rollback_tx") == "rolled back"
    # Without an open transaction only the global role applies.
    assert bob.err("commit_tx") == "permission denied: role 'read' cannot execute 'commit_tx'"
    assert admin.ok("count", collection="c", db="crm") == {"count": 1}


def test_a_lower_role_on_one_database(server: MemoryServer) -> None:
    admin = session(server, "admin", "admin")
    admin.ok("create_user", username="eve", password="pw", role="readWrite")
    admin.ok("create_database", name="audit")
    admin.ok("grant_db_role", username="eve", database="audit", role="read")
    eve = session(server, "eve", "readWrite")
    assert eve.ok("insert", collection="c", doc={}) == {"id": 1}
    # The denial names the global role, even though the override decided.
    assert eve.err("insert", collection="c", doc={}, db="audit") == (
        "permission denied: role 'readWrite' cannot execute 'insert'"
    )
    assert eve.ok("find", collection="c", db="audit") == []


def test_bad_input(server: MemoryServer) -> None:
    admin = session(server, "admin", "admin")
    admin.ok("create_user", username="bob", password="pw")
    g = "grant_db_role"
    assert admin.err(g, database="crm", role="read") == "missing 'username'"
    assert admin.err(g, username="bob", role="read") == "missing 'database'"
    assert admin.err(g, username="bob", database=5, role="read") == "missing 'database'"
    assert admin.err(g, username="bob", database="crm") == "missing 'role'"
    assert admin.err(g, username="bob", database="crm", role=1) == "missing 'role'"
    assert admin.err(g, username="bob", database="crm", role="owner") == "invalid role: owner"
    assert admin.err(g, username="bob", database="no way", role="read") == "invalid database name: no way"
    assert admin.err(g, username="bob", database="d" * 10_000, role="read").startswith("invalid database name: ddd")
    assert admin.err(g, username="nobody", database="crm", role="read") == "user 'nobody' not found"
    r = "revoke_db_role"
    assert admin.err(r, database="crm") == "missing 'username'"
    assert admin.err(r, username="bob") == "missing 'database'"
    assert admin.err(r, username="nobody", database="crm") == "user 'nobody' not found"
    assert admin.err(r, username="bob", database="x" * 10_000).startswith("user 'bob' has no role override")
    reader = session(server, "bob", "read")
    assert reader.err(g, username="bob", database="crm", role="admin") == (
        "permission denied: role 'read' cannot execute 'grant_db_role'"
    )


def test_store_and_operations(tmp_path: Any) -> None:
    store = UserStore(tmp_path, [UserRecord("bob", Role.READ, "hash")])
    granted = GrantDbRole("bob", "crm", Role.ADMIN).apply_to(store)
    assert granted == "granted role 'admin' on database 'crm' to user 'bob'"
    assert store.db_role("bob", "crm") is Role.ADMIN
    assert store.db_role("bob", "other") is None
    assert UserStore.open(tmp_path).db_role("bob", "crm") is Role.ADMIN
    op = GrantDbRole("bob", "crm", Role.READWRITE)
    assert op.to_json() == {"GrantDbRole": {"username": "bob", "database": "crm", "role": "readwrite", "v": 1}}
    assert GrantDbRole.from_body(op.to_body(), 1) == op
    with pytest.raises(BadRequestError):
        GrantDbRole.from_body({"username": "bob", "database": "crm", "role": "boss"}, 1)
    with pytest.raises(BadRequestError):
        RevokeDbRole.from_body({"username": "bob"}, 1)
    RevokeDbRole("bob", "crm").apply_to(store)
    assert store.db_role("bob", "crm") is None
    with pytest.raises(NoDbRoleError):
        RevokeDbRole("bob", "crm").apply_to(store)
    # A snapshot's users carry their grants (UserRecord's JSON form).
    record = UserRecord("amy", Role.READ, "hash", db_roles={"crm": "read"})
    assert UserRecord.from_json(record.to_json()) == record
