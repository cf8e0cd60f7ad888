"""
Every file the server keeps under its data directory is private (files
0600, directories 0700) whatever the process umask, and start-up brings an
existing data directory to these modes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from oxidb.audit.log import AuditFile, AuditRotation
from oxidb.auth.passwords import derive_secrets
from oxidb.auth.rbac import Role
from oxidb.auth.store import UserRecord, UserStore
from oxidb.config import Config
from oxidb.engine import blobs, transactions
from oxidb.engine.backup import create_backup
from oxidb.engine.engine import Engine
from oxidb.raft.disk import OsDisk
from oxidb.raft.messages import (
    Entry,
    HardState,
    LogId,
    Membership,
    PersistBatch,
    Snapshot,
    SnapshotMeta,
    StoredMembership,
    snapshot_id_for,
)
from oxidb.raft.statemachine import EngineStateMachine, ReadGate
from oxidb.raft.storage import RaftStorage

NOW = 1_700_000_000.0


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: str) -> dict[str, int]:
    """Relative path -> permission bits of everything under C{root} (and root itself as '.')."""
    found = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


def loose(found: dict[str, int], root: str) -> dict[str, str]:
    wrong = {}
    for name, mode in found.items():
        path = os.path.join(root, name)
        expected = 0o700 if os.path.isdir(path) else 0o600
        if mode != expected:
            wrong[name] = oct(mode)
    return wrong


def test_everything_under_the_data_directory_is_private(tmp_path: Path, loose_umask: None) -> None:
    data = str(tmp_path / "data")
    Config(data_dir=data).prepare_data_dir()
    engine = Engine(data, synchronous="OFF")
    transactions.register_appliers(engine)
    blobs.register_appliers(engine)
    with engine:
        engine.apply({"Insert": {"collection": "c", "document": {"a": 1}}}, NOW)
        engine.apply({"CreateTextIndex": {"collection": "c", "fields": ["a"]}}, NOW)
        engine.apply({"PutObject": {"bucket": "b", "key": "k", "data_b64": "aGVsbG8="}}, NOW)
        users = UserStore.open(Path(data) / "_auth")
        secrets = derive_secrets("pw", b"s" * 16, b"t" * 16, 4096)
        users.create(UserRecord("root", Role.ADMIN, secrets.password_hash, secrets.verifier))
        audit = AuditFile(Path(data) / "_audit", AuditRotation(compress=True), NOW)
        audit.write([b'{"cmd":"find"}\n'], NOW)
        audit.rotate(NOW + 1)
        audit.close()
        create_backup(engine, os.path.join(data, "backup.tar.gz"), NOW)
        # A cluster snapshot: built from the engine, stored by the Raft storage,
        # and staged for installation beside the database.
        machine = EngineStateMachine(
            engine, reactor=None, threadpool=None, run_io=lambda *a: None, gate=ReadGate(), users=lambda: users
        )
        snapshot = machine._build(lambda: None)
        machine._stage(snapshot, engine.path + ".install.tmp")
        storage = RaftStorage(OsDisk(data))
        storage.load()
        log_id = LogId(1, 1, 2)
        members = StoredMembership(LogId(1, 1, 1), Membership([{1}], {1: "127.0.0.1:1"}))
        storage.save(PersistBatch(hard_state=HardState(1, 1), entries=(Entry(LogId(1, 1, 1), members.membership),)))
        storage.save(PersistBatch(snapshot=Snapshot(SnapshotMeta(log_id, members, snapshot_id_for(log_id)), snapshot)))
        storage.close()
        found = modes(data)
    names = set(found)
    for expected in ("oxidb.sqlite3", "oxidb.sqlite3-wal", "oxidb.sqlite3-shm", "backup.tar.gz", "_auth", "_audit"):
        assert expected in names, sorted(names)
    assert any(name.endswith(".gz") and name.startswith("_audit/") for name in names), sorted(names)
    assert any("raft" in name for name in names), sorted(names)
    assert loose(found, data) == {}


def test_startup_makes_an_existing_data_directory_private(tmp_path: Path, loose_umask: None) -> None:
    data = tmp_path / "data"
    (data / "_audit").mkdir(parents=True, mode=0o755)
    os.chmod(data, 0o755)
    for name in ("oxidb.sqlite3", "oxidb.sqlite3-wal", "_audit/audit.log", "raft_meta.json"):
        (data / name).write_bytes(b"")
        os.chmod(data / name, 0o644)
    os.symlink("/etc/hostname", data / "_link")
    (data / "operator-notes.txt").write_bytes(b"")
    os.chmod(data / "operator-notes.txt", 0o644)
    Config(data_dir=str(data)).prepare_data_dir()
    found = modes(str(data))
    del found["_link"]  # symbolic links are left alone (and never followed)
    assert found.pop("operator-notes.txt") == 0o644  # not the server's: left alone
    assert loose(found, str(data)) == {}


def test_a_standalone_database_is_private_from_its_creation(tmp_path: Path, loose_umask: None) -> None:
    data = str(tmp_path / "fresh")
    with Engine(data, synchronous="OFF") as engine:
        engine.apply({"Insert": {"collection": "c", "document": {"a": 1}}}, NOW)
        assert loose(modes(data), data) == {}
