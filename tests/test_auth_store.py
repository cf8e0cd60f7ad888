"""
The user store (oxidb.auth.store): file shape and permissions, atomic
rewrite, the last-admin rule, replicated-operation appliers, the first-start
admin and the server secret.
"""

from __future__ import annotations

import base64
import io
import json
import random
import stat
from pathlib import Path
from typing import Any

import pytest

from oxidb.auth.passwords import derive_secrets, verify_password
from oxidb.auth.rbac import Role
from oxidb.auth.scram import ScramVerifier
from oxidb.auth.store import (
    OPERATIONS,
    CreateUser,
    DropUser,
    GrantDbRole,
    RevokeDbRole,
    SeedAdmin,
    UpdateUser,
    UserRecord,
    UserStore,
    create_user_op,
    drop_user_op,
    ensure_default_admin,
    load_or_create_secret,
    register_appliers,
    update_user_op,
)
from oxidb.engine.operations import OperationCodec
from oxidb.errors import BadRequestError, ConfigError, LastAdminError, UserExistsError, UserNotFoundError

SECRETS = derive_secrets("hunter2", b"a" * 16, b"b" * 16, 4096)
OTHER_SECRETS = derive_secrets("correct horse", b"c" * 16, b"d" * 16, 4096)


CODEC = OperationCodec(OPERATIONS)


def apply(store: UserStore, kind: str, body: Any) -> str:
    """Decode C{{kind: body}} as the state machine does and apply it to C{store}."""
    op = CODEC.decode({kind: body})
    assert isinstance(op, (CreateUser, DropUser, UpdateUser))
    return op.apply_to(store)


def record(name: str, role: Role = Role.READ) -> UserRecord:
    return UserRecord(name, role, SECRETS.password_hash, SECRETS.verifier)


def test_missing_file_is_an_empty_store(tmp_path: Path) -> None:
    store = UserStore.open(tmp_path / "_auth")
    assert len(store) == 0 and store.users() == []


def test_file_shape_and_mode(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "_auth")
    store.create(record("bob", Role.READWRITE))
    path = tmp_path / "_auth" / "users.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (tmp_path / "_auth" / "users.json.tmp").exists()
    text = path.read_text()
    assert text.startswith('[\n  {\n    "username": "bob",')  # pretty-printed, 2 spaces
    [stored] = json.loads(text)
    assert list(stored) == [
        "username",
        "password_hash",
        "role",
        "scram_salt",
        "scram_iter_count",
        "scram_stored_key",
        "scram_server_key",
    ]
    assert stored["role"] == "readwrite"
    assert stored["password_hash"].startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert len(base64.b64decode(stored["scram_salt"])) == 16
    assert len(base64.b64decode(stored["scram_stored_key"])) == 32
    assert "hunter2" not in text


def test_reopen_round_trip(tmp_path: Path) -> None:
    store = UserStore(tmp_path)
    store.create(record("bob", Role.READWRITE))
    store.create(record("alice", Role.ADMIN))
    again = UserStore.open(tmp_path)
    assert again.users() == store.users()
    assert [u.username for u in again.users()] == ["alice", "bob"]
    assert again.verifier("bob") == SECRETS.verifier
    assert again.verifier("nobody") is None


def test_upstream_records_load(tmp_path: Path) -> None:
    """[B] records have no verifier; [N] may have db_roles and 'authenticated'."""
    records = [
        {"username": "old", "password_hash": SECRETS.password_hash, "role": "admin"},
        {
            "username": "new",
            "password_hash": SECRETS.password_hash,
            "role": "authenticated",
            "db_roles": {"crm": "read"},
        },
    ]
    (tmp_path / "users.json").write_text(json.dumps(records))
    store = UserStore.open(tmp_path)
    old, new = store.get("old"), store.get("new")
    assert old is not None and old.scram is None and old.role is Role.ADMIN
    assert new is not None and new.role is Role.READ and new.db_roles == {"crm": "read"}
    assert new.to_json()["db_roles"] == {"crm": "read"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "malformed user store"),
        ('{"username": "x"}', "expected a JSON array"),
        ('[{"username": "x", "password_hash": "h", "role": "root"}]', "unknown role"),
        ('[{"password_hash": "h", "role": "read"}]', "non-empty 'username'"),
        ('[{"username": "x", "role": "read"}]', "no 'password_hash'"),
        (
            '[{"username": "x", "password_hash": "h", "role": "read"},'
            ' {"username": "x", "password_hash": "h", "role": "admin"}]',
            "appears twice",
        ),
    ],
)
def test_malformed_store_stops_startup(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "users.json").write_text(content)
    with pytest.raises(ConfigError, match=message) as e:
        UserStore.open(tmp_path)
    assert str(tmp_path / "users.json") in str(e.value)


def test_create_existing_user(tmp_path: Path) -> None:
    store = UserStore(tmp_path)
    store.create(record("bob"))
    store.create(record("bob"))  # the same operation again (replay) is a no-op
    with pytest.raises(UserExistsError, match="user 'bob' already exists"):
        store.create(record("bob", Role.ADMIN))


def test_last_admin_cannot_be_dropped_or_demoted(tmp_path: Path) -> None:
    store = UserStore(tmp_path)
    store.create(record("root", Role.ADMIN))
    with pytest.raises(LastAdminError) as e:
        store.drop("root")
    assert str(e.value) == "refusing to drop user 'root': it is the last admin"
    with pytest.raises(LastAdminError, match="refusing to demote user 'root'"):
        store.update("root", Role.READ, None)
    store.update("root", Role.ADMIN, OTHER_SECRETS)  # staying admin is fine
    store.create(record("second", Role.ADMIN))
    store.update("root", Role.READWRITE, None)
    with pytest.raises(LastAdminError):
        store.drop("second")
    store.drop("root")
    assert [u.username for u in UserStore.open(tmp_path).users()] == ["second"]


def test_unknown_user_changes(tmp_path: Path) -> None:
    store = UserStore(tmp_path)
    with pytest.raises(UserNotFoundError, match="user 'ghost' not found"):
        store.drop("ghost")
    with pytest.raises(UserNotFoundError):
        store.update("ghost", Role.READ, None)


def test_ops_and_appliers(tmp_path: Path) -> None:
    store = UserStore(tmp_path)
    [(kind, body)] = create_user_op("carol", Role.READWRITE, SECRETS).to_json().items()
    assert kind == "CreateUser" and "hunter2" not in json.dumps(body)
    assert apply(store, kind, body) == "user created"
    carol = store.get("carol")
    assert carol is not None and carol.role is Role.READWRITE

    [(kind, body)] = update_user_op("carol", None, OTHER_SECRETS).to_json().items()
    assert kind == "UpdateUser" and set(body) == {
        "v",
        "username",
        "password_hash",
        "scram_salt",
        "scram_iter_count",
        "scram_stored_key",
        "scram_server_key",
    }
    assert apply(store, kind, body) == "user updated"
    carol = store.get("carol")
    assert carol is not None and verify_password(carol.password_hash, "correct horse")
    assert carol.scram == OTHER_SECRETS.verifier and carol.role is Role.READWRITE

    [(kind, body)] = update_user_op("carol", Role.ADMIN, None).to_json().items()
    assert body == {"username": "carol", "role": "admin", "v": 1}
    apply(store, kind, body)
    carol = store.get("carol")
    assert carol is not None and carol.role is Role.ADMIN and carol.scram == OTHER_SECRETS.verifier

    store.create(record("dave", Role.ADMIN))
    [(kind, body)] = drop_user_op("carol").to_json().items()
    assert (kind, body) == ("DropUser", {"username": "carol", "v": 1})
    assert apply(store, kind, body) == "user dropped"
    assert store.get("carol") is None


@pytest.mark.parametrize(
    "kind, body",
    [
        ("CreateUser", {"username": "x"}),
        ("CreateUser", {"username": "x", "password_hash": "h", "role": "superuser"}),
        ("DropUser", {}),
        ("DropUser", ["x"]),
        ("CreateUser", None),
        ("UpdateUser", "x"),
        ("UpdateUser", {"username": 5}),
        ("UpdateUser", {"username": "x", "role": "superuser"}),
        ("UpdateUser", {"username": "x", "password_hash": "h"}),
    ],
)
def test_malformed_operations(tmp_path: Path, kind: str, body: Any) -> None:
    store = UserStore(tmp_path)
    store.create(record("x"))
    with pytest.raises(BadRequestError, match="malformed"):
        apply(store, kind, body)


def test_register_appliers_with_the_engine(tmp_path: Path) -> None:
    """The engine calls C{fn(txn, op, now)} on its writer thread."""

    class Engine:
        def __init__(self) -> None:
            self.appliers: dict[type, Any] = {}

        def register_operation(self, op_type: type, fn: Any) -> None:
            self.appliers[op_type] = fn

    engine, store = Engine(), UserStore(tmp_path)
    register_appliers(engine, store)
    assert set(engine.appliers) == {CreateUser, DropUser, UpdateUser, SeedAdmin, GrantDbRole, RevokeDbRole}
    op = create_user_op("eve", Role.ADMIN, SECRETS)
    assert engine.appliers[CreateUser](object(), op, 0.0) == "user created"
    assert store.get("eve") is not None


def test_default_admin_banner(tmp_path: Path) -> None:
    store = UserStore(tmp_path)
    out = io.StringIO()
    assert ensure_default_admin(store, out, random.Random(7), 4096)
    lines = out.getvalue().split("\n")
    assert lines[0] == "=== FIRST STARTUP: default admin user created ==="
    assert lines[1] == "  username: admin"
    assert lines[2].startswith("  password: ")
    assert lines[3:] == ["  CHANGE THIS PASSWORD IMMEDIATELY", "================================================", ""]
    password = lines[2][len("  password: ") :]
    assert len(password) == 32 and len(base64.b64decode(password)) == 24
    admin = UserStore.open(tmp_path).get("admin")
    assert admin is not None and admin.role is Role.ADMIN
    assert verify_password(admin.password_hash, password)
    assert admin.scram is not None and admin.scram == ScramVerifier.derive(password, admin.scram.salt, 4096)
    assert password not in (tmp_path / "users.json").read_text()
    # Next start: nothing printed, nothing changed.
    out = io.StringIO()
    assert not ensure_default_admin(UserStore.open(tmp_path), out, random.Random(8), 4096)
    assert out.getvalue() == ""


def test_secret_is_created_once(tmp_path: Path) -> None:
    secret = load_or_create_secret(tmp_path / "_auth", random.Random(1))
    assert len(secret) == 32
    path = tmp_path / "_auth" / "scram_mock_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(tmp_path / "_auth", random.Random(2)) == secret


def test_replace_all_installs_exactly_the_given_users(tmp_path: Path) -> None:
    """A Raft snapshot's users replace the node's, whatever they were."""
    store = UserStore(tmp_path)
    local_admin = UserRecord("admin", Role.ADMIN, "$argon2id$local")
    store.create(local_admin)
    store.create(UserRecord("bob", Role.READ, "$argon2id$bob"))
    snapshot = [UserRecord("carol", Role.ADMIN, "$argon2id$carol"), UserRecord("dave", Role.READWRITE, "$argon2id$d")]
    store.replace_all(snapshot)
    assert store.users() == snapshot
    assert UserStore.open(tmp_path).users() == snapshot
