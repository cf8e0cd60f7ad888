"""
The engine-backed Raft state machine: group-committed applies that record
the Raft index, replays that apply nothing twice, snapshots that carry the
data (database and users) and installs that no read observes half-done.
"""

from __future__ import annotations

import io
import tarfile
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from oxidb.auth.rbac import Role
from oxidb.auth.scram import ScramVerifier
from oxidb.auth.store import UserRecord, UserStore
from oxidb.engine.engine import Engine
from oxidb.errors import OxiError
from oxidb.raft.messages import Entry, LogId, Membership
from oxidb.raft.statemachine import (
    EngineStateMachine,
    ReadGate,
    SnapshotError,
    pack_snapshot,
    unpack_snapshot,
)


@pytest.fixture
def pool() -> Generator[ThreadPool, None, None]:
    threadpool = ThreadPool(minthreads=2, maxthreads=2, name="test-sm")
    threadpool.start()
    yield threadpool
    threadpool.stop()


class Node:
    """An engine, its user store and the state machine over them."""

    def __init__(self, root: Path, name: str, pool: ThreadPool) -> None:
        self.dir = root / name
        self.engine = Engine(str(self.dir), synchronous="NORMAL", auto_create_on_read=False)
        self.engine.open()
        self.users = UserStore(self.dir / "_auth")
        self.io = ThreadPool(minthreads=1, maxthreads=1, name=f"io-{name}")
        self.io.start()
        self.gate = ReadGate()
        self.sm = EngineStateMachine(
            self.engine,
            reactor=reactor,
            threadpool=pool,
            run_io=lambda fn, *a: deferToThreadPool(reactor, self.io, fn, *a),
            gate=self.gate,
            users=lambda: self.users,
        )
        self.pool = pool

    def read(self, fn: Any, *args: Any) -> Deferred[Any]:
        return self.gate.run(lambda: deferToThreadPool(reactor, self.pool, fn, *args))

    def close(self) -> None:
        self.io.stop()
        self.engine.close()


@pytest.fixture
def nodes(tmp_path: Path, pool: ThreadPool) -> Generator[dict[str, Node], None, None]:
    made: dict[str, Node] = {}

    class Factory(dict):  # type: ignore[type-arg]
        def __missing__(self, name: str) -> Node:
            node = made[name] = Node(tmp_path, name, pool)
            return node

    yield Factory()
    for node in made.values():
        node.close()


def insert(index: int, n: int, term: int = 1) -> Entry:
    return Entry(LogId(term, 1, index), {"Insert": {"collection": "docs", "document": {"n": n}}}, 1_700_000_000_000)


def user(name: str, role: Role = Role.READ, password_hash: str = "h", scram: bool = False) -> UserRecord:
    verifier = ScramVerifier(b"s" * 16, 4096, b"k" * 32, b"v" * 32) if scram else None
    return UserRecord(name, role, password_hash, verifier)


@pytest_twisted.inlineCallbacks
def test_a_batch_is_applied_with_its_index_and_a_replay_applies_nothing(nodes: Any) -> Any:
    node = nodes["a"]
    membership = Membership([{1}], {1: "n1"})
    entries = [
        Entry(LogId(0, 1, 1), membership),
        Entry(LogId(1, 1, 2)),
        insert(3, 1),
        Entry(LogId(1, 1, 4), {"Insert": {"collection": "docs", "document": [1]}}, 1),
        insert(5, 2),
    ]
    outcomes = yield node.sm.apply(entries)
    assert [o.ok for o in outcomes] == [True, True, True, False, True]
    assert outcomes[0].value == "membership updated" and outcomes[1].value is None
    assert outcomes[2].value == {"id": 1} and outcomes[4].value == {"id": 2}
    assert isinstance(outcomes[3].value, OxiError)
    assert node.engine.last_applied() == 5
    # The same entries again (a restart that lost the Raft commit point).
    again = yield node.sm.apply(entries)
    assert [o.value for o in again[2:]] == [None, None, None]
    assert node.engine.count("docs") == 2


@pytest_twisted.inlineCallbacks
def test_entries_that_do_not_decode_fail_alone(nodes: Any) -> Any:
    """An unknown kind, a malformed body or a newer version: a failed outcome; its index still counts."""
    node = nodes["a"]
    entries = [
        Entry(LogId(1, 1, 1), {"Frobnicate": {}}, 1),
        Entry(LogId(1, 1, 2), {"Insert": ["docs"]}, 1),
        Entry(LogId(1, 1, 3), {"Insert": {"collection": "docs", "document": {}, "v": 2}}, 1),
        insert(4, 1),
    ]
    outcomes = yield node.sm.apply(entries)
    assert [o.ok for o in outcomes] == [False, False, False, True]
    assert [o.value.message for o in outcomes[:3]] == [
        "unknown operation: Frobnicate",
        "malformed operation",
        "unsupported operation version: Insert v2 (this server applies up to v1)",
    ]
    assert outcomes[3].value == {"id": 1}
    assert node.engine.last_applied() == 4


@pytest_twisted.inlineCallbacks
def test_a_snapshot_carries_documents_and_users(nodes: Any) -> Any:
    leader, follower = nodes["leader"], nodes["follower"]
    yield leader.sm.apply([insert(i, i) for i in range(1, 101)])
    leader.users.create(user("admin", Role.ADMIN, scram=True))
    leader.users.create(user("alice", Role.READWRITE, scram=True))
    leader.users.create(user("bob"))
    follower.users.create(user("admin", Role.ADMIN, password_hash="old", scram=True))
    follower.users.create(user("alice", Role.READ, scram=True))
    follower.users.create(user("bob", password_hash="old"))
    follower.users.create(user("mallory"))
    yield follower.sm.apply([insert(1, 999)])
    build = leader.sm.build_snapshot()
    yield build.pinned
    data = yield build.data
    yield follower.sm.install_snapshot(data)
    docs = yield follower.read(follower.engine.find, "docs", {}, {"n": 1})
    assert [d["n"] for d in docs] == list(range(1, 101))
    assert follower.engine.last_applied() == 100
    assert follower.users.users() == leader.users.users()
    on_disk = UserStore.open(follower.dir / "_auth")
    assert on_disk.users() == leader.users.users()
    # The follower goes on applying after the snapshot.
    outcomes = yield follower.sm.apply([insert(101, 101)])
    assert outcomes[0].value == {"id": 101}


@pytest_twisted.inlineCallbacks
def test_a_snapshot_captures_the_state_when_it_is_pinned(nodes: Any) -> Any:
    source, target = nodes["source"], nodes["target"]
    yield source.sm.apply([insert(i, i) for i in range(1, 11)])
    build = source.sm.build_snapshot()
    yield build.pinned
    # Applies go on while the backup runs; they are not in the snapshot.
    yield source.sm.apply([insert(i, i) for i in range(11, 21)])
    data = yield build.data
    yield target.sm.install_snapshot(data)
    assert target.engine.last_applied() == 10
    assert target.engine.count("docs") == 10
    assert source.engine.count("docs") == 20


@pytest_twisted.inlineCallbacks
def test_reads_never_see_a_half_installed_snapshot(nodes: Any) -> Any:
    source, target = nodes["source"], nodes["target"]
    yield source.sm.apply([insert(i, i) for i in range(1, 6)])
    build = source.sm.build_snapshot()
    data = yield build.data
    yield target.sm.apply([insert(1, 100)])

    release = threading.Event()

    def slow_count() -> int:
        release.wait(10)
        return target.engine.count("docs")

    order: list[str] = []
    before = target.read(slow_count).addCallback(lambda n: order.append(f"before={n}"))
    install = target.sm.install_snapshot(data).addCallback(lambda _: order.append("installed"))
    # Reads keep seeing the whole old state while the snapshot is staged...
    while not target.gate.closed:
        assert (yield target.read(target.engine.count, "docs")) == 1
    # ...then the install waits for the read in flight (which still sees the
    # old state), and a later read waits for the install (and sees the new).
    after = target.read(target.engine.count, "docs").addCallback(lambda n: order.append(f"after={n}"))
    assert order == []
    release.set()
    yield before
    yield install
    yield after
    assert order == ["before=1", "installed", "after=5"]
    assert not target.gate.closed


@pytest_twisted.inlineCallbacks
def test_a_damaged_snapshot_leaves_the_state_alone(nodes: Any) -> Any:
    node = nodes["a"]
    yield node.sm.apply([insert(1, 1)])
    for bad in (
        b"not a tar archive",
        pack_snapshot(b"SQLite format 3\x00" + b"\x00" * 200, None),
    ):
        with pytest.raises(SnapshotError):
            yield node.sm.install_snapshot(bad)
    assert node.engine.count("docs") == 1
    assert node.engine.last_applied() == 1


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize(
    "members, message",
    [
        ([("oxidb.sqlite3", b"db")], "no manifest"),
        ([("snapshot.json", b'{"format":2}'), ("oxidb.sqlite3", b"db")], "no manifest of a known format"),
        ([("snapshot.json", b'{"format":1}')], "no database"),
        ([("snapshot.json", b'{"format":1}'), ("../../etc/passwd", b"x")], "unexpected snapshot member"),
        ([("snapshot.json", b'{"format":1}'), ("oxidb.sqlite3", b"a"), ("oxidb.sqlite3", b"b")], "twice"),
    ],
)
def test_malformed_snapshot_archives(members: list[tuple[str, bytes]], message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        unpack_snapshot(_tar(members))


def test_snapshot_archive_round_trip() -> None:
    users = orjson.dumps([user("a").to_json()])
    assert unpack_snapshot(pack_snapshot(b"database", users)) == (b"database", users)
    assert unpack_snapshot(pack_snapshot(b"database", None)) == (b"database", None)


def test_the_read_gate() -> None:
    gate = ReadGate()
    started: list[int] = []
    pending: list[Deferred[Any]] = []

    def start(n: int) -> Any:
        def go() -> Deferred[Any]:
            started.append(n)
            d: Deferred[Any] = Deferred()
            pending.append(d)
            return d

        return go

    first = gate.run(start(1))
    closed = gate.close()
    assert not closed.called
    held = gate.run(start(2))
    assert started == [1]
    with pytest.raises(RuntimeError):
        gate.close()
    pending[0].callback("one")
    assert closed.called and first.result == "one"
    assert started == [1]
    gate.open()
    assert started == [1, 2]
    pending[1].callback("two")
    assert held.result == "two"
    assert gate.close().called  # nothing in flight: at once
