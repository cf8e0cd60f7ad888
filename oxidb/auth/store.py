"""
The user store: C{<data>/_auth/users.json} (server.md 4.2) held in memory.

Readers (logins, C{list_users}) run on the reactor and see an immutable
snapshot; changes come through the appliers at the bottom of this module
(standalone: the engine's writer thread; cluster: the Raft state machine on
every node) and rewrite the file atomically: temp file, fsync, rename,
directory fsync, mode 0600. The file holds salts, SCRAM verifiers and Argon2id
hashes, never a password.

Blocking: L{UserStore.open}, the appliers and L{ensure_default_admin} do disk
I/O (and the last one hashes); call them off the reactor or before it runs.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, ClassVar

import attrs

from oxidb.auth.passwords import SALT_LENGTH, PasswordSecrets, derive_secrets
from oxidb.auth.rbac import Role
from oxidb.auth.scram import ScramVerifier
from oxidb.engine.operations import Operation
from oxidb.errors import (
    BadRequestError,
    ConfigError,
    LastAdminError,
    NoDbRoleError,
    UserExistsError,
    UserNotFoundError,
)
from oxidb.logs import Logger

_log = Logger(namespace="oxidb.auth.store")

USERS_FILE = "users.json"
SECRET_FILE = "scram_mock_secret"
SECRET_LENGTH = 32

#: Upstream [N] also stores C{authenticated}, which has the rights of C{read}.
_STORED_ROLES = {"admin": Role.ADMIN, "readwrite": Role.READWRITE, "read": Role.READ, "authenticated": Role.READ}


@attrs.frozen
class UserRecord:
    """One user as stored; C{scram} is None for records without a verifier."""

    username: str
    role: Role
    password_hash: str
    scram: ScramVerifier | None = None
    db_roles: dict[str, str] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record in the C{users.json} shape (key order as server.md 4.2)."""
        out: dict[str, Any] = {"username": self.username, "password_hash": self.password_hash, "role": self.role.stored}
        if self.db_roles:
            out["db_roles"] = dict(self.db_roles)
        if self.scram is not None:
            out.update(self.scram.to_fields())
        return out

    @classmethod
    def from_json(cls, obj: Any) -> UserRecord:
        """
        Parse a stored record (or a replicated C{CreateUser} body).

        @raise ValueError: the record is malformed.
        """
        if not isinstance(obj, dict):
            raise ValueError("a user record must be a JSON object")
        username, password_hash, role = obj.get("username"), obj.get("password_hash"), obj.get("role")
        if not isinstance(username, str) or not username:
            raise ValueError("a user record needs a non-empty 'username'")
        if not isinstance(password_hash, str):
            raise ValueError(f"user {username!r} has no 'password_hash'")
        if role not in _STORED_ROLES:
            raise ValueError(f"user {username!r} has an unknown role {role!r}")
        db_roles = obj.get("db_roles") or {}
        if not isinstance(db_roles, dict) or not all(isinstance(v, str) for v in db_roles.values()):
            raise ValueError(f"user {username!r} has malformed 'db_roles'")
        return cls(username, _STORED_ROLES[role], password_hash, ScramVerifier.from_fields(obj), dict(db_roles))

    def with_password(self, secrets: PasswordSecrets) -> UserRecord:
        return attrs.evolve(self, password_hash=secrets.password_hash, scram=secrets.verifier)


class UserStore:
    """
    The users, keyed by name. Construct with L{open}; tests may pass a
    directory that does not exist yet.
    """

    _log = Logger()

    def __init__(self, directory: Path, users: Iterable[UserRecord] = ()) -> None:
        self.directory = directory
        self._users: dict[str, UserRecord] = {u.username: u for u in users}
        self._write_lock = threading.Lock()

    @classmethod
    def open(cls, directory: Path) -> UserStore:
        """
        Read C{<directory>/users.json} (a missing file is an empty store).

        @raise ConfigError: the file cannot be read or is malformed.
        """
        path = directory / USERS_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(directory)
        except OSError as e:
            raise ConfigError(f"cannot read user store {path}: {e.strerror}") from None
        try:
            items = json.loads(raw)
            if not isinstance(items, list):
                raise ValueError("expected a JSON array of user records")
            records = [UserRecord.from_json(item) for item in items]
        except ValueError as e:
            raise ConfigError(f"malformed user store {path}: {e}") from None
        names = [r.username for r in records]
        if len(set(names)) != len(names):
            raise ConfigError(f"malformed user store {path}: a user name appears twice")
        store = cls(directory, records)
        for record in records:
            if record.scram is None:
                cls._log.warn(
                    "user {user} has no SCRAM verifier and can only use auth_simple; "
                    "set its password with update_user to enable SCRAM",
                    user=record.username,
                )
        return store

    # --- reads (any thread) -------------------------------------------------

    def get(self, username: str) -> UserRecord | None:
        return self._users.get(username)

    def users(self) -> list[UserRecord]:
        """All users, sorted by name."""
        return sorted(self._users.values(), key=lambda u: u.username)

    def __len__(self) -> int:
        return len(self._users)

    def verifier(self, username: str) -> ScramVerifier | None:
        """The user's SCRAM verifier, or None (unknown user, or none stored)."""
        record = self._users.get(username)
        return None if record is None else record.scram

    # --- changes (one writer at a time; blocking) ---------------------------

    def create(self, record: UserRecord) -> None:
        with self._write_lock:
            existing = self._users.get(record.username)
            if existing is not None:
                if existing == record:
                    return  # the same entry applied again after a restart
                raise UserExistsError(record.username)
            self._commit({**self._users, record.username: record})

    def drop(self, username: str) -> None:
        with self._write_lock:
            record = self._require(username)
            if record.role is Role.ADMIN and self._admins() == 1:
                raise LastAdminError("drop", username)
            users = dict(self._users)
            del users[username]
            self._commit(users)

    def update(self, username: str, role: Role | None, secrets: PasswordSecrets | None) -> None:
        with self._write_lock:
            record = self._require(username)
            if record.role is Role.ADMIN and role not in (None, Role.ADMIN) and self._admins() == 1:
                raise LastAdminError("demote", username)
            if role is not None:
                record = attrs.evolve(record, role=role)
            if secrets is not None:
                record = record.with_password(secrets)
            self._commit({**self._users, username: record})

    def set_db_role(self, username: str, database: str, role: Role | None) -> None:
        """
        Give C{username} C{role} on C{database} (C{grant_db_role}), or take
        the override away with C{None} (C{revoke_db_role}:
        L{NoDbRoleError} if there is none).
        """
        with self._write_lock:
            record = self._require(username)
            db_roles = dict(record.db_roles)
            if role is None:
                if database not in db_roles:
                    raise NoDbRoleError(username, database)
                del db_roles[database]
            else:
                db_roles[database] = role.stored
            self._commit({**self._users, username: attrs.evolve(record, db_roles=db_roles)})

    def db_role(self, username: str, database: str) -> Role | None:
        """The role C{username} holds on C{database} by a grant, or None."""
        record = self._users.get(username)
        if record is None:
            return None
        stored = record.db_roles.get(database)
        return None if stored is None else _STORED_ROLES.get(stored)

    def seed(self, record: UserRecord) -> None:
        """Create C{record}, or replace the user of that name with it (L{SeedAdmin})."""
        with self._write_lock:
            self._commit({**self._users, record.username: record})

    def replace_all(self, records: Iterable[UserRecord]) -> None:
        """
        Make the store hold exactly C{records} (a Raft snapshot's users). No
        per-user rules apply: the snapshot is the replicated truth.
        """
        users = {r.username: r for r in records}
        with self._write_lock:
            self._commit(users)

    def _require(self, username: str) -> UserRecord:
        record = self._users.get(username)
        if record is None:
            raise UserNotFoundError(username)
        return record

    def _admins(self) -> int:
        return sum(1 for u in self._users.values() if u.role is Role.ADMIN)

    def _commit(self, users: dict[str, UserRecord]) -> None:
        records = sorted(users.values(), key=lambda u: u.username)
        text = json.dumps([r.to_json() for r in records], indent=2, ensure_ascii=False) + "\n"
        write_private_file(self.directory / USERS_FILE, text.encode("utf-8"))
        self._users = users


def write_private_file(path: Path, data: bytes) -> None:
    """
    Replace C{path} with C{data} atomically and durably, readable by the owner
    only: temp file (0600), write, fsync, rename, fsync of the directory.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_or_create_secret(directory: Path, rng: random.Random) -> bytes:
    """
    The server secret from which fake SCRAM salts for unknown users are
    derived. It must outlive restarts (a fake salt that changed at every
    restart, unlike real ones, would give unknown users away), so it is kept
    in C{<directory>/scram_mock_secret} and created on first use (blocking).
    """
    path = directory / SECRET_FILE
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = b""
    if len(secret) != SECRET_LENGTH:
        secret = rng.randbytes(SECRET_LENGTH)
        write_private_file(path, secret)
    return secret


# --- replicated operations ---------------------------------------------------
#
# The user commands reach the store as operations: L{CreateUser},
# L{DropUser}, L{UpdateUser} (JSON: C{{"CreateUser": <record>}}, ...).
# Bodies carry hashes and verifiers, never a password. Applying one
# (C{apply_to(store)}) is deterministic given the prior state; an operation
# applied twice (replay after a crash) gives the same state. Each returns the
# reply's data or raises an OxiError.


def _username_of(body: dict[str, Any], kind: str) -> str:
    username = body.get("username")
    if not isinstance(username, str):
        raise BadRequestError(f"malformed {kind} operation: missing 'username'")
    return username


@attrs.frozen
class CreateUser(Operation):
    """Add a user: C{"user created"}. The body is the record's C{users.json} shape."""

    KIND: ClassVar[str] = "CreateUser"

    record: UserRecord

    def to_body(self) -> dict[str, Any]:
        return self.record.to_json()

    @classmethod
    def from_body(cls, body: dict[str, Any], version: int) -> CreateUser:
        try:
            return cls(UserRecord.from_json(body))
        except ValueError as e:
            raise BadRequestError(f"malformed CreateUser operation: {e}") from None

    def apply_to(self, store: UserStore) -> str:
        store.create(self.record)
        return "user created"


@attrs.frozen
class DropUser(Operation):
    KIND: ClassVar[str] = "DropUser"

    username: str

    @classmethod
    def from_body(cls, body: dict[str, Any], version: int) -> DropUser:
        return cls(_username_of(body, cls.KIND))

    def apply_to(self, store: UserStore) -> str:
        store.drop(self.username)
        return "user dropped"


@attrs.frozen
class UpdateUser(Operation):
    """Change a user's role, password secrets, or both (C{None}: unchanged)."""

    KIND: ClassVar[str] = "UpdateUser"

    username: str
    role: Role | None = None
    secrets: PasswordSecrets | None = None

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"username": self.username}
        if self.role is not None:
            body["role"] = self.role.stored
        if self.secrets is not None:
            body.update(self.secrets.to_fields())
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any], version: int) -> UpdateUser:
        username = _username_of(body, cls.KIND)
        role = None
        if "role" in body:
            role = _STORED_ROLES.get(body["role"]) if isinstance(body["role"], str) else None
            if role is None:
                raise BadRequestError(f"malformed UpdateUser operation: unknown role {body['role']!r}")
        secrets = None
        if "password_hash" in body:
            verifier = ScramVerifier.from_fields(body)
            if not isinstance(body["password_hash"], str) or verifier is None:
                raise BadRequestError("malformed UpdateUser operation: bad password fields")
            secrets = PasswordSecrets(body["password_hash"], verifier)
        return cls(username, role, secrets)

    def apply_to(self, store: UserStore) -> str:
        store.update(self.username, self.role, self.secrets)
        return "user updated"


@attrs.frozen
class SeedAdmin(Operation):
    """
    The cluster's first admin, replicated: the node where C{raft_init} ran
    proposes its local C{admin} record right after the bootstrap, and every
    node makes its C{admin} exactly that record (created or replaced). A
    node whose own first admin differed drops its stale generated password
    file (L{ADMIN_PASSWORD_FILE}), which no longer logs anyone in.
    """

    KIND: ClassVar[str] = "SeedAdmin"

    record: UserRecord

    def to_body(self) -> dict[str, Any]:
        return self.record.to_json()

    @classmethod
    def from_body(cls, body: dict[str, Any], version: int) -> SeedAdmin:
        try:
            record = UserRecord.from_json(body)
        except ValueError as e:
            raise BadRequestError(f"malformed SeedAdmin operation: {e}") from None
        if record.role is not Role.ADMIN:
            raise BadRequestError("malformed SeedAdmin operation: the record is not an admin")
        return cls(record)

    def apply_to(self, store: UserStore) -> str:
        previous = store.get(self.record.username)
        store.seed(self.record)
        stale = store.directory.parent / ADMIN_PASSWORD_FILE
        if previous is not None and previous != self.record and stale.exists():
            stale.unlink(missing_ok=True)
            _log.info(
                "the cluster's first admin replaced this node's own; {path} (its generated password) "
                "was removed: the password is in that file on the node where raft_init ran",
                path=str(stale),
            )
        return "admin seeded"


def _database_of(body: dict[str, Any], kind: str) -> str:
    database = body.get("database")
    if not isinstance(database, str):
        raise BadRequestError(f"malformed {kind} operation: missing 'database'")
    return database


@attrs.frozen
class GrantDbRole(Operation):
    """Give a user a role on one database (server.md 4.9), replacing any earlier grant there."""

    KIND: ClassVar[str] = "GrantDbRole"

    username: str
    database: str
    role: Role

    def to_body(self) -> dict[str, Any]:
        return {"username": self.username, "database": self.database, "role": self.role.stored}

    @classmethod
    def from_body(cls, body: dict[str, Any], version: int) -> GrantDbRole:
        role = _STORED_ROLES.get(body["role"]) if isinstance(body.get("role"), str) else None
        if role is None:
            raise BadRequestError(f"malformed GrantDbRole operation: unknown role {body.get('role')!r}")
        return cls(_username_of(body, cls.KIND), _database_of(body, cls.KIND), role)

    def apply_to(self, store: UserStore) -> str:
        store.set_db_role(self.username, self.database, self.role)
        return f"granted role '{self.role.wire}' on database '{self.database}' to user '{self.username}'"


@attrs.frozen
class RevokeDbRole(Operation):
    """Take a user's role on one database away; its global role applies there again."""

    KIND: ClassVar[str] = "RevokeDbRole"

    username: str
    database: str

    @classmethod
    def from_body(cls, body: dict[str, Any], version: int) -> RevokeDbRole:
        return cls(_username_of(body, cls.KIND), _database_of(body, cls.KIND))

    def apply_to(self, store: UserStore) -> str:
        store.set_db_role(self.username, self.database, None)
        return f"revoked database role on '{self.database}' from user '{self.username}'"


UserOperation = CreateUser | DropUser | UpdateUser | SeedAdmin | GrantDbRole | RevokeDbRole

#: The user operation types.
OPERATIONS: tuple[type[UserOperation], ...] = (
    CreateUser,
    DropUser,
    UpdateUser,
    SeedAdmin,
    GrantDbRole,
    RevokeDbRole,
)


def create_user_op(username: str, role: Role, secrets: PasswordSecrets) -> CreateUser:
    return CreateUser(UserRecord(username, role, secrets.password_hash, secrets.verifier))


def update_user_op(username: str, role: Role | None, secrets: PasswordSecrets | None) -> UpdateUser:
    return UpdateUser(username, role, secrets)


def drop_user_op(username: str) -> DropUser:
    return DropUser(username)


def register_appliers(engine: Any, store: UserStore) -> None:
    """
    Teach the storage engine the user operations, applied to C{store}. They
    run on its writer thread, standalone and when Raft applies a committed
    entry, so every node rewrites its own C{users.json}.
    """
    for op_type in OPERATIONS:
        engine.register_operation(op_type, functools.partial(_apply_to, store))


def _apply_to(store: UserStore, txn: Any, op: UserOperation, now: float) -> str:
    return op.apply_to(store)


# --- first start --------------------------------------------------------------

BANNER = (
    "=== FIRST STARTUP: default admin user created ===\n"
    "  username: admin\n"
    "  password: {password}\n"
    "  CHANGE THIS PASSWORD IMMEDIATELY\n"
    "================================================\n"
)


def new_admin_password(rng: random.Random) -> str:
    """32 characters: unpadded standard base64 of 24 random bytes (4.3)."""
    return base64.b64encode(rng.randbytes(24)).decode("ascii")


#: The file in the data directory holding a generated first admin password
#: (mode 0600): the log names it, never the password.
ADMIN_PASSWORD_FILE = "initial-admin-password"

#: The first admin's user name.
ADMIN_USER = "admin"


@attrs.frozen
class FirstAdmin:
    """
    What L{ensure_first_admin} did.

    @ivar password_file: where the generated password was written, or
        C{None} when the password was given (C{OXIDB_ADMIN_PASSWORD[_FILE]}).
    """

    username: str
    password_file: Path | None


def ensure_first_admin(
    store: UserStore,
    rng: random.Random,
    iterations: int,
    *,
    password: str | None = None,
    password_file: Path | None = None,
    stream: IO[str] | None = None,
) -> FirstAdmin | None:
    """
    On a first start (no users) create C{admin}; otherwise do nothing and
    return C{None}. Blocking (hashing, file writes).

    @param password: the operator's password; C{None} generates one
        (L{new_admin_password}).
    @param password_file: where a generated password is written (mode
        0600) before the user is created, so that a crash in between never
        leaves an admin nobody knows the password of.
    @param stream: a generated password is also printed here in the banner
        of server.md 4.3. Pass the process's real stderr, never a stream that
        feeds the log: the password must never reach a log, the audit trail
        or GELF.
    @raise BadRequestError: the given password is empty or SASLprep refuses it.
    """
    if len(store):
        return None
    generated = password is None
    if password is None:
        password = new_admin_password(rng)
    secrets = derive_secrets(password, rng.randbytes(SALT_LENGTH), rng.randbytes(SALT_LENGTH), iterations)
    written = None
    if generated and password_file is not None:
        write_private_file(password_file, (password + "\n").encode("ascii"))
        written = password_file
    store.create(UserRecord(ADMIN_USER, Role.ADMIN, secrets.password_hash, secrets.verifier))
    if generated and stream is not None:
        stream.write(BANNER.format(password=password))
        stream.flush()
    return FirstAdmin(ADMIN_USER, written)


def ensure_default_admin(store: UserStore, stream: IO[str], rng: random.Random, iterations: int) -> bool:
    """
    On a first start (no users) create C{admin} with a random password and
    print it once to C{stream} in the banner of server.md 4.3 (see
    L{ensure_first_admin}, which the server uses). Returns whether the admin
    was created.
    """
    return ensure_first_admin(store, rng, iterations, stream=stream) is not None
