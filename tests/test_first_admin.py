"""
The first admin: its password from C{OXIDB_ADMIN_PASSWORD[_FILE]} or
generated into a 0600 file the log names; the cluster's replicated first
admin (L{SeedAdmin}); the offline reset of its password.
"""

from __future__ import annotations

import io
import random
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from oxidb.auth.passwords import verify_password
from oxidb.auth.rbac import Role
from oxidb.auth.reset import reset_admin_password
from oxidb.auth.store import (
    ADMIN_PASSWORD_FILE,
    SeedAdmin,
    UserRecord,
    UserStore,
    create_user_op,
    ensure_first_admin,
)
from oxidb.datadir import DataDirLock
from oxidb.errors import BadRequestError, ConfigError
from oxidb.tap import makeService


def admin(directory: Path) -> UserRecord:
    record = UserStore.open(directory).get("admin")
    assert record is not None and record.role is Role.ADMIN
    return record


def test_a_generated_password_goes_to_a_private_file(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "_auth")
    out = io.StringIO()
    first = ensure_first_admin(
        store, random.Random(1), 4096, password_file=tmp_path / ADMIN_PASSWORD_FILE, stream=out
    )
    assert first is not None and first.password_file == tmp_path / ADMIN_PASSWORD_FILE
    path = tmp_path / ADMIN_PASSWORD_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = path.read_text().rstrip("\n")
    assert len(password) == 32
    assert verify_password(admin(tmp_path / "_auth").password_hash, password)
    # The banner of server.md 4.3 still goes to the stream given (stderr).
    assert f"  password: {password}\n" in out.getvalue()
    # A second start changes nothing.
    assert ensure_first_admin(UserStore.open(tmp_path / "_auth"), random.Random(2), 4096, password_file=path) is None
    assert path.read_text().rstrip("\n") == password


def test_a_given_password_writes_no_file_and_prints_nothing(tmp_path: Path) -> None:
    out = io.StringIO()
    store = UserStore(tmp_path / "_auth")
    first = ensure_first_admin(
        store, random.Random(1), 4096, password="s3cret pass", password_file=tmp_path / ADMIN_PASSWORD_FILE, stream=out
    )
    assert first is not None and first.password_file is None
    assert not (tmp_path / ADMIN_PASSWORD_FILE).exists() and out.getvalue() == ""
    assert verify_password(admin(tmp_path / "_auth").password_hash, "s3cret pass")


def test_a_password_no_client_could_send_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadRequestError, match="invalid password"):
        ensure_first_admin(UserStore(tmp_path), random.Random(1), 4096, password="a\u0007b")
    assert not (tmp_path / "users.json").exists()


# --- through the service ------------------------------------------------------


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def start(environ: dict[str, str]) -> Any:
    service = makeService({}, environ=environ, reactor=MemoryReactorClock())
    service.startService()
    service.engine.close()
    service.threadpool.stop()
    service.datadir_lock.release()
    return service


def messages(events: list[LogEvent]) -> str:
    return "\n".join(formatEvent(e) for e in events)


def test_the_service_logs_where_the_generated_password_is(tmp_path: Path, events: list[LogEvent]) -> None:
    start({"OXIDB_DATA": str(tmp_path), "OXIDB_AUTH": "true", "OXIDB_ADDR": "127.0.0.1:0"})
    password = (tmp_path / ADMIN_PASSWORD_FILE).read_text().rstrip("\n")
    text = messages(events)
    assert str(tmp_path / ADMIN_PASSWORD_FILE) in text and "mode 0600" in text
    assert password not in text
    assert verify_password(admin(tmp_path / "_auth").password_hash, password)


def test_the_service_takes_the_password_from_a_file(tmp_path: Path, events: list[LogEvent]) -> None:
    secret = tmp_path / "admin.pw"
    secret.write_text("from the file\n")
    data = tmp_path / "data"
    start({"OXIDB_DATA": str(data), "OXIDB_AUTH": "1", "OXIDB_ADDR": "127.0.0.1:0",
           "OXIDB_ADMIN_PASSWORD_FILE": str(secret)})
    assert verify_password(admin(data / "_auth").password_hash, "from the file")
    assert not (data / ADMIN_PASSWORD_FILE).exists()
    assert "with the password from OXIDB_ADMIN_PASSWORD_FILE" in messages(events)
    assert "from the file" not in messages(events)


def test_the_service_takes_the_password_from_the_environment(tmp_path: Path) -> None:
    start({"OXIDB_DATA": str(tmp_path), "OXIDB_AUTH": "true", "OXIDB_ADDR": "127.0.0.1:0",
           "OXIDB_ADMIN_PASSWORD": "pw"})
    assert verify_password(admin(tmp_path / "_auth").password_hash, "pw")


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ({"OXIDB_ADMIN_PASSWORD": "a", "OXIDB_ADMIN_PASSWORD_FILE": "/x"}, "both set"),
        ({"OXIDB_ADMIN_PASSWORD_FILE": "/nonexistent/pw"}, "OXIDB_ADMIN_PASSWORD_FILE='/nonexistent/pw': cannot read"),
        ({"OXIDB_ADMIN_PASSWORD": ""}, "OXIDB_ADMIN_PASSWORD=<redacted> is invalid: must not be empty"),
    ],
)
def test_bad_admin_password_settings(tmp_path: Path, extra: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        makeService({}, environ={"OXIDB_DATA": str(tmp_path), **extra}, reactor=MemoryReactorClock())


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("\nsecond line\n")
    with pytest.raises(ConfigError, match="first line is empty"):
        makeService({}, environ={"OXIDB_ADMIN_PASSWORD_FILE": str(tmp_path / "pw")}, reactor=MemoryReactorClock())


# --- the cluster's first admin --------------------------------------------------


def test_seed_admin_replaces_a_nodes_own_admin_and_its_stale_file(tmp_path: Path) -> None:
    leader = UserStore(tmp_path / "n1" / "_auth")
    ensure_first_admin(leader, random.Random(1), 4096, password="cluster pw")
    seeded = leader.get("admin")
    assert seeded is not None
    op = SeedAdmin.from_body(SeedAdmin(seeded).to_body(), 1)
    assert op == SeedAdmin(seeded)
    # A follower that created its own admin (generated password file) before joining.
    follower = UserStore(tmp_path / "n2" / "_auth")
    stale = tmp_path / "n2" / ADMIN_PASSWORD_FILE
    ensure_first_admin(follower, random.Random(2), 4096, password_file=stale)
    assert stale.exists()
    assert op.apply_to(follower) == "admin seeded"
    assert follower.get("admin") == seeded and UserStore.open(tmp_path / "n2" / "_auth").get("admin") == seeded
    assert not stale.exists()
    # Applied again (a replay), or on a node without users: the same state.
    assert op.apply_to(follower) == "admin seeded" and follower.get("admin") == seeded
    empty = UserStore(tmp_path / "n3" / "_auth")
    op.apply_to(empty)
    assert empty.users() == [seeded]


def test_seed_admin_bodies_are_checked(tmp_path: Path) -> None:
    reader = create_user_op("bob", Role.READ, _secrets()).record.to_json()
    with pytest.raises(BadRequestError, match="not an admin"):
        SeedAdmin.from_body(reader, 1)
    with pytest.raises(BadRequestError, match="malformed SeedAdmin"):
        SeedAdmin.from_body({"username": "admin"}, 1)


def _secrets() -> Any:
    from oxidb.auth.passwords import derive_secrets

    return derive_secrets("pw", b"s" * 16, b"t" * 16, 4096)


# --- offline reset ----------------------------------------------------------------


def test_reset_generates_a_password_and_removes_the_stale_file(tmp_path: Path) -> None:
    ensure_first_admin(
        UserStore(tmp_path / "_auth"), random.Random(1), 4096, password_file=tmp_path / ADMIN_PASSWORD_FILE
    )
    password = reset_admin_password(str(tmp_path), None, rng=random.Random(5))
    assert len(password) == 32
    assert verify_password(admin(tmp_path / "_auth").password_hash, password)
    assert not (tmp_path / ADMIN_PASSWORD_FILE).exists()
    assert not DataDirLock(str(tmp_path)).held


def test_reset_sets_a_given_password_and_restores_the_role(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "_auth")
    store.create(create_user_op("root", Role.ADMIN, _secrets()).record)
    store.create(create_user_op("admin", Role.READ, _secrets()).record)
    assert reset_admin_password(str(tmp_path), "new pw") == "new pw"
    record = admin(tmp_path / "_auth")
    assert verify_password(record.password_hash, "new pw") and record.role is Role.ADMIN
    # Creates the user in a data directory without one.
    other = tmp_path / "other"
    other.mkdir()
    reset_admin_password(str(other), "x")
    assert verify_password(admin(other / "_auth").password_hash, "x")


def test_reset_refuses_while_a_server_holds_the_data_directory(tmp_path: Path) -> None:
    lock = DataDirLock(str(tmp_path))
    lock.acquire()
    try:
        with pytest.raises(ConfigError, match="in use by another oxidb-server process"):
            reset_admin_password(str(tmp_path), "pw")
    finally:
        lock.release()
    assert not (tmp_path / "_auth" / "users.json").exists()


@pytest.mark.parametrize("password, fragment", [("", "must not be empty"), ("a\u0007b", "invalid password")])
def test_reset_refuses_bad_passwords(tmp_path: Path, password: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        reset_admin_password(str(tmp_path), password)


def test_reset_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a data directory"):
        reset_admin_password(str(tmp_path / "nope"), "pw")


# --- raft_init replicates the first admin ---------------------------------------------


class FakeContext:
    """What C{raft_init} uses of its context: the cluster, the users, and C{write}."""

    def __init__(self, store: UserStore | None, fail: bool = False) -> None:
        from types import SimpleNamespace

        from twisted.internet.defer import succeed

        self.cluster = SimpleNamespace(published_address="127.0.0.1:4445", initialize=lambda addr: succeed(None))
        self.auth = None if store is None else SimpleNamespace(store=store)
        self.written: list[Any] = []
        self.fail = fail

    def write(self, op: Any) -> Any:
        from twisted.internet.defer import fail, succeed

        from oxidb.errors import RaftError

        self.written.append(op)
        return fail(RaftError("no leader")) if self.fail else succeed("admin seeded")


def _init(ctx: FakeContext) -> Any:
    from oxidb.commands.raft import raft_init

    results: list[Any] = []
    raft_init(ctx, {}).addBoth(results.append)  # type: ignore[arg-type]
    return results[0]


def test_raft_init_replicates_the_local_admin(tmp_path: Path, events: list[LogEvent]) -> None:
    store = UserStore(tmp_path)
    ensure_first_admin(store, random.Random(1), 4096, password="pw")
    ctx = FakeContext(store)
    assert _init(ctx) == "cluster initialized"
    assert ctx.written == [SeedAdmin(store.get("admin"))]  # type: ignore[arg-type]
    # Without auth (or without an admin) nothing is written; a failed write is logged, not answered.
    assert _init(FakeContext(None)) == "cluster initialized"
    failing = FakeContext(store, fail=True)
    assert _init(failing) == "cluster initialized" and len(failing.written) == 1
    assert "could not replicate the first admin" in messages(events)


def test_seed_admin_applies_from_its_raft_log_form(tmp_path: Path) -> None:
    """What a node does with the entry: decode the log's JSON with the engine's codec, apply it to its users."""
    import json

    from oxidb.auth.store import register_appliers
    from oxidb.engine.engine import Engine

    leader = UserStore(tmp_path / "leader")
    ensure_first_admin(leader, random.Random(1), 4096, password="cluster pw")
    entry = json.loads(json.dumps(SeedAdmin(leader.get("admin")).to_json()))  # type: ignore[arg-type]
    assert list(entry) == ["SeedAdmin"]
    node = UserStore(tmp_path / "node" / "_auth")
    ensure_first_admin(node, random.Random(2), 4096, password="its own pw")
    engine = Engine(str(tmp_path / "node"))
    register_appliers(engine, node)
    engine.open()
    try:
        assert engine.apply(entry, 0.0, raft_index=1) == "admin seeded"
        assert engine.apply(entry, 0.0, raft_index=1) is None  # a replayed index is skipped
    finally:
        engine.close()
    assert verify_password(admin(tmp_path / "node" / "_auth").password_hash, "cluster pw")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream, shown", [(io.StringIO(), False), (Terminal(), True)])
def test_the_banner_goes_to_a_terminal_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: io.StringIO, shown: bool
) -> None:
    """Under a supervisor stderr is a log (the journal): the password must not go there."""
    monkeypatch.setattr("sys.__stderr__", stream)
    start({"OXIDB_DATA": str(tmp_path), "OXIDB_AUTH": "true", "OXIDB_ADDR": "127.0.0.1:0"})
    password = (tmp_path / ADMIN_PASSWORD_FILE).read_text().rstrip("\n")
    assert (f"  password: {password}\n" in stream.getvalue()) is shown
