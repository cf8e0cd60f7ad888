"""
Encryption at rest (C{OXIDB_ENCRYPTION_KEY}): known plaintext written through
the engine, its blobs, backups, Raft snapshots and the Raft log is found in
no file under the data directory; key mismatches stop startup and leave the
files alone; key files are checked; keys rotate with the offline tool.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from oxidb.atrest import AtRestKey, AtRestKeyError, LogCipher, load_key_file
from oxidb.engine import backup, blobs, vectors
from oxidb.engine.engine import Engine
from oxidb.engine.operations import CreateVectorIndex, InsertMany
from oxidb.errors import BackupError, ConfigError
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
)
from oxidb.raft.statemachine import EngineStateMachine, ReadGate, SnapshotError, pack_snapshot, unpack_snapshot
from oxidb.raft.storage import LOG_FILE, RaftStorage
from oxidb.tools import rekey

SECRET = "Zebra-Quasar-7731-plaintext"
BLOB_SECRET = b"Blob-Content-Nebula-5520"
NEEDLES = (SECRET.encode(), BLOB_SECRET, SECRET.encode("utf-16-le"), base64.b64encode(BLOB_SECRET))


def key_file(path: Path, material: bytes = b"k" * 40, mode: int = 0o600) -> str:
    path.write_bytes(material)
    os.chmod(path, mode)
    return str(path)


@pytest.fixture
def key(tmp_path: Path) -> AtRestKey:
    return load_key_file(key_file(tmp_path / "key"))


def found_in(directory: Path) -> list[str]:
    """Files under C{directory} holding a needle (gzip members are opened too)."""
    hits = []
    for path in directory.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data += gzip.decompress(data)
        if any(needle in data for needle in NEEDLES):
            hits.append(str(path))
    return hits


def fingerprint(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.name.endswith("-shm")
    }


def open_engine(data: Path, key: AtRestKey | None) -> Engine:
    engine = Engine(str(data), synchronous="NORMAL", key=key)
    blobs.register_appliers(engine)
    engine.open()
    return engine


def write_secrets(engine: Engine, raft_index: int | None = None) -> None:
    engine.apply({"Insert": {"collection": "notes", "document": {"text": SECRET, "n": 1}}}, 0.0, raft_index)
    engine.apply({"CreateTextIndex": {"collection": "notes", "fields": ["text"]}}, 0.0)
    engine.apply({"CreateIndex": {"collection": "notes", "field": "text"}}, 0.0)
    blob = {"bucket": "files", "key": "secret.txt", "data_b64": base64.b64encode(BLOB_SECRET).decode()}
    engine.apply({"PutObject": {**blob, "content_type": "text/plain"}}, 0.0)


# --- key files --------------------------------------------------------------------


def test_key_files_are_checked(tmp_path: Path) -> None:
    good = load_key_file(key_file(tmp_path / "good", b"  " + b"s" * 32 + b"\n"))
    assert good == AtRestKey.from_material(b"s" * 32)
    assert len(good.database) == len(good.log) == 32 and good.database != good.log
    assert repr(good) == "AtRestKey(<redacted>)"
    for mode in (0o640, 0o604, 0o644):
        with pytest.raises(AtRestKeyError, match=f"has mode 0{mode:o}; it must be readable by its owner only"):
            load_key_file(key_file(tmp_path / "open", mode=mode))
    with pytest.raises(AtRestKeyError, match="holds 31 bytes; at least 32 are needed"):
        load_key_file(key_file(tmp_path / "short", b"x" * 31))
    with pytest.raises(AtRestKeyError, match="larger than 4096 bytes"):
        load_key_file(key_file(tmp_path / "long", b"x" * 5000))
    with pytest.raises(AtRestKeyError, match="cannot read the key file: No such file"):
        load_key_file(str(tmp_path / "missing"))
    with pytest.raises(AtRestKeyError, match="not a regular file"):
        load_key_file(str(tmp_path))
    assert issubclass(AtRestKeyError, ConfigError)  # startup stops with a one-line message


def test_log_cipher_authenticates_the_entry_it_belongs_to(key: AtRestKey) -> None:
    cipher = LogCipher(key.log)
    sealed = cipher.seal(b"payload", b"1:2")
    assert cipher.open(sealed, b"1:2") == b"payload"
    assert b"payload" not in base64.b64decode(sealed)
    with pytest.raises(AtRestKeyError):
        cipher.open(sealed, b"1:3")
    with pytest.raises(AtRestKeyError):
        LogCipher(b"o" * 32).open(sealed, b"1:2")


# --- standalone ---------------------------------------------------------------------


def test_no_plaintext_under_the_data_directory(tmp_path: Path, key: AtRestKey) -> None:
    data = tmp_path / "data"
    engine = open_engine(data, key)
    try:
        write_secrets(engine)
        assert engine.find("notes", {"text": SECRET})[0]["n"] == 1
        assert engine.text_search("notes", SECRET.split("-")[0])[0]["n"] == 1
        # While open, the WAL holds the recent pages.
        assert list(data.glob("*-wal")) and found_in(data) == []
        report = backup.create_backup(engine, str(data / "backup.tar.gz"), 0.0)
        assert report["collections"] == 1
    finally:
        engine.close()
    assert found_in(data) == []
    # The plain control: the same writes without a key are found.
    plain = tmp_path / "plain"
    engine = open_engine(plain, None)
    try:
        write_secrets(engine)
    finally:
        engine.close()
    assert found_in(plain)
    # The encrypted backup restores with the key only.
    with pytest.raises(BackupError, match="archive does not open: the backup is encrypted; restore it on a server"):
        backup.restore_backup(str(data / "backup.tar.gz"), str(tmp_path / "restored-plain"))
    backup.restore_backup(str(data / "backup.tar.gz"), str(tmp_path / "restored"), key)
    engine = open_engine(tmp_path / "restored", key)
    try:
        assert engine.find("notes", {})[0]["text"] == SECRET
        assert engine.read(blobs.get_object, "files", "secret.txt")["content"] == base64.b64encode(BLOB_SECRET).decode()
    finally:
        engine.close()


def older(archive: str, dest: Path) -> str:
    """A copy of C{archive} whose manifest does not say whether it is encrypted."""
    with tarfile.open(archive, "r:gz") as tar, tarfile.open(dest, "w:gz") as out:
        for info in tar.getmembers():
            f = tar.extractfile(info)
            assert f is not None
            data = f.read()
            if info.name == backup.MANIFEST:
                manifest = json.loads(data)
                assert manifest.pop("encrypted") is True
                data = json.dumps(manifest).encode()
                info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return str(dest)


def test_restoring_with_another_key_names_the_cause(tmp_path: Path, key: AtRestKey) -> None:
    """Not SQLite's "file is not a database": one line saying which key is missing or wrong."""
    archives = {}
    for name, k in (("encrypted", key), ("plain", None)):
        engine = open_engine(tmp_path / name, k)
        try:
            write_secrets(engine)
            archives[name] = str(tmp_path / f"{name}.tar.gz")
            backup.create_backup(engine, archives[name], 0.0)
        finally:
            engine.close()
    other = load_key_file(key_file(tmp_path / "other", b"o" * 32))
    cases = [
        (
            archives["encrypted"],
            None,
            "archive does not open: the backup is encrypted; restore it on a server started with the "
            "OXIDB_ENCRYPTION_KEY it was made with",
        ),
        (
            archives["encrypted"],
            other,
            "archive does not open: the backup is encrypted with a different key than this server's "
            "OXIDB_ENCRYPTION_KEY",
        ),
        (archives["plain"], key, "archive does not open here: the backup is not encrypted and this server has"),
        # An archive from before the manifest said whether it is encrypted.
        (
            older(archives["encrypted"], tmp_path / "older.tar.gz"),
            None,
            "archive is corrupt or encrypted: its database is not a plain SQLite file (an encrypted backup "
            "restores only on a server started with the OXIDB_ENCRYPTION_KEY it was made with)",
        ),
        (
            older(archives["encrypted"], tmp_path / "older2.tar.gz"),
            other,
            "archive does not open: its database is encrypted with a different key than this server's "
            "OXIDB_ENCRYPTION_KEY, or the archive is corrupt",
        ),
    ]
    for archive, k, message in cases:
        target = tmp_path / "target"
        with pytest.raises(BackupError) as raised:
            backup.restore_backup(archive, str(target), k)
        assert str(raised.value).startswith(f"backup error: {message}")
        assert "\n" not in str(raised.value) and "file is not a database" not in str(raised.value)
        assert not target.exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".oxidb-restore-")] == []
    backup.restore_backup(archives["encrypted"], str(tmp_path / "target"), key)
    engine = open_engine(tmp_path / "target", key)
    try:
        assert engine.find("notes", {})[0]["text"] == SECRET
    finally:
        engine.close()


def test_vector_graphs_build_on_an_encrypted_database(tmp_path: Path, key: AtRestKey) -> None:
    """The graph is built on a read connection of its own, which needs the key too."""
    engine = Engine(
        str(tmp_path / "data"), synchronous="NORMAL", key=key, vector_exact_below=0, vector_runner=vectors.inline
    )
    engine.open()
    try:
        engine.apply(CreateVectorIndex("v", "emb", 3, "euclidean"), 0.0)
        engine.apply(InsertMany("v", [{"emb": [float(i), 0.0, 0.0]} for i in range(20)]), 0.0)
        found = engine.vector_search("v", "emb", [4.2, 0.0, 0.0], 2)
        assert [doc["emb"][0] for doc in found] == [4.0, 5.0]
        assert len(engine.vector_cache) == 1
    finally:
        engine.close()


def test_key_mismatches_stop_the_open_and_touch_nothing(tmp_path: Path, key: AtRestKey) -> None:
    encrypted, plain = tmp_path / "encrypted", tmp_path / "plain"
    for directory, k in ((encrypted, key), (plain, None)):
        engine = open_engine(directory, k)
        write_secrets(engine)
        engine.close()
    other = load_key_file(key_file(tmp_path / "other", b"o" * 32))
    cases = [
        (encrypted, None, "is encrypted (or is not a database): set OXIDB_ENCRYPTION_KEY to its key file"),
        (encrypted, other, "does not open with this encryption key (wrong key file?)"),
        (plain, key, "is not encrypted but OXIDB_ENCRYPTION_KEY is set"),
    ]
    for directory, k, message in cases:
        before = fingerprint(directory)
        engine = Engine(str(directory), key=k)
        with pytest.raises(AtRestKeyError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
            engine.open()
        assert fingerprint(directory) == before
    engine = open_engine(encrypted, key)
    try:
        assert engine.find("notes", {})[0]["text"] == SECRET
    finally:
        engine.close()


# --- Raft ---------------------------------------------------------------------------


def _entries(first: int, count: int) -> tuple[Entry, ...]:
    return tuple(
        Entry(LogId(1, 1, i), {"Insert": {"collection": "notes", "document": {"text": SECRET, "i": i}}}, 0)
        for i in range(first, first + count)
    )


def test_the_raft_log_payloads_are_sealed(tmp_path: Path, key: AtRestKey) -> None:
    cipher = LogCipher(key.log)
    storage = RaftStorage(OsDisk(str(tmp_path)), cipher)
    storage.load()
    entries = _entries(1, 3)
    storage.save(PersistBatch(hard_state=HardState(1, 1), entries=entries))
    assert found_in(tmp_path) == []
    assert RaftStorage(OsDisk(str(tmp_path)), cipher).load().entries == entries
    with pytest.raises(AtRestKeyError, match="raft_log.jsonl is encrypted: set OXIDB_ENCRYPTION_KEY"):
        RaftStorage(OsDisk(str(tmp_path))).load()
    with pytest.raises(AtRestKeyError, match="wrong key file"):
        RaftStorage(OsDisk(str(tmp_path)), LogCipher(b"o" * 32)).load()
    plain = tmp_path / "plain"
    plain.mkdir()
    RaftStorage(OsDisk(str(plain))).save(PersistBatch(hard_state=HardState(1, 1), entries=entries))
    assert found_in(plain)
    with pytest.raises(AtRestKeyError, match="raft_log.jsonl is not encrypted but OXIDB_ENCRYPTION_KEY is set"):
        RaftStorage(OsDisk(str(plain)), cipher).load()


@pytest.fixture
def pool() -> Generator[ThreadPool, None, None]:
    threadpool = ThreadPool(minthreads=1, maxthreads=2, name="test-encryption")
    threadpool.start()
    yield threadpool
    threadpool.stop()


@pytest_twisted.inlineCallbacks
def test_a_raft_backed_engine_and_its_snapshots_hold_no_plaintext(
    tmp_path: Path, key: AtRestKey, pool: ThreadPool
) -> Any:
    def machine(engine: Engine) -> EngineStateMachine:
        return EngineStateMachine(
            engine,
            reactor=reactor,
            threadpool=pool,
            run_io=lambda fn, *a: deferToThreadPool(reactor, pool, fn, *a),
            gate=ReadGate(),
            users=lambda: None,
        )

    leader_dir, follower_dir = tmp_path / "leader", tmp_path / "follower"
    leader, follower = open_engine(leader_dir, key), open_engine(follower_dir, key)
    leader_machine, follower_machine = machine(leader), machine(follower)
    try:
        storage = RaftStorage(OsDisk(str(leader_dir)), LogCipher(key.log))
        storage.load()
        entries = _entries(1, 5)
        storage.save(PersistBatch(hard_state=HardState(1, 1), entries=entries))
        outcomes = yield leader_machine.apply(list(entries))
        assert [o.value for o in outcomes] == [{"id": i} for i in range(1, 6)]
        write_secrets(leader)
        build = leader_machine.build_snapshot()
        yield build.pinned
        snapshot = yield build.data
        assert not any(needle in snapshot for needle in NEEDLES)
        (leader_dir / "snapshot.bin").write_bytes(snapshot)
        yield follower_machine.install_snapshot(snapshot)
        assert len(follower.find("notes", {"text": SECRET})) == 6
        assert follower.last_applied() == 5
        # A follower with another key, or none, refuses the snapshot and says why.
        refusals = [
            (
                load_key_file(key_file(tmp_path / "k2", b"o" * 32)),
                "the snapshot's database is encrypted with a different key than this node's OXIDB_ENCRYPTION_KEY",
            ),
            (None, "the snapshot's database is encrypted (or is not an OxiDB database) and this node has no"),
        ]
        for n, (other, message) in enumerate(refusals):
            stranger = open_engine(tmp_path / f"stranger{n}", other)
            try:
                with pytest.raises(SnapshotError) as raised:
                    yield machine(stranger).install_snapshot(snapshot)
                assert str(raised.value).startswith(message)
                assert str(raised.value).endswith("every node of a cluster needs the same key file")
                assert stranger.find("notes", {}) == []
            finally:
                stranger.close()
    finally:
        leader.close()
        follower.close()
    assert found_in(leader_dir) == [] and found_in(follower_dir) == []


# --- key rotation -------------------------------------------------------------------


def test_rekey_rotates_encrypts_and_decrypts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    engine = open_engine(data, None)
    write_secrets(engine)
    engine.close()
    RaftStorage(OsDisk(str(data))).save(PersistBatch(hard_state=HardState(1, 1), entries=_entries(1, 3)))
    # A snapshot file as Raft stores it: a copy of the database (under the current key).
    engine = open_engine(data, None)
    engine.backup(str(tmp_path / "copy.sqlite3"))
    engine.close()
    snapshot = pack_snapshot((tmp_path / "copy.sqlite3").read_bytes(), None)
    members = StoredMembership(LogId(1, 1, 1), Membership([{1}], {1: "127.0.0.1:1"}))
    storage = RaftStorage(OsDisk(str(data)))
    storage.load()
    storage.save(PersistBatch(snapshot=Snapshot(SnapshotMeta(LogId(1, 1, 3), members, "1-1-3"), snapshot)))
    first, second = key_file(tmp_path / "first", b"1" * 32), key_file(tmp_path / "second", b"2" * 32)

    def run(*args: str) -> int:
        return rekey.main(["--data", str(data), *args])

    assert run("--new", first) == 0
    assert found_in(data) == []
    assert run("--old", first, "--new", second) == 0
    assert found_in(data) == []
    for old in (None, first):
        with pytest.raises(AtRestKeyError):
            Engine(str(data), key=None if old is None else load_key_file(old)).open()
    second_key = load_key_file(second)
    engine = open_engine(data, second_key)
    try:
        assert engine.find("notes", {})[0]["text"] == SECRET
    finally:
        engine.close()
    state = RaftStorage(OsDisk(str(data)), LogCipher(second_key.log)).load()
    assert len(state.entries) == 3 and state.snapshot is not None
    (tmp_path / "snap.sqlite3").write_bytes(unpack_snapshot(state.snapshot.data)[0])
    copy = Engine(str(tmp_path / "snap-dir"), key=second_key)
    os.makedirs(copy.data_dir)
    os.replace(tmp_path / "snap.sqlite3", copy.path)
    copy.open()
    try:
        assert copy.find("notes", {})[0]["text"] == SECRET
    finally:
        copy.close()
    # Run again after it completed: nothing to do.
    assert run("--old", first, "--new", second) == 0
    # A wrong --old key is refused with one line, nothing changed.
    third = key_file(tmp_path / "third", b"3" * 32)
    before = fingerprint(data)
    assert run("--old", third, "--new", first) == 1
    assert "rekey: " in capsys.readouterr().err
    assert fingerprint(data) == before
    assert run("--old", second) == 0  # decrypt
    assert found_in(data)
    engine = open_engine(data, None)
    try:
        assert engine.find("notes", {})[0]["text"] == SECRET
    finally:
        engine.close()


# --- a real one-node cluster --------------------------------------------------------


def test_a_one_node_cluster_stores_no_plaintext(tmp_path: Path) -> None:
    """The server wiring: config, engine, Raft log; a restart without the key stops with one line."""
    from oxidb._harness import LocalCluster, wait_until

    keyfile = key_file(tmp_path / "key")
    cluster = LocalCluster(str(tmp_path / "cluster"), env={"OXIDB_ENCRYPTION_KEY": keyfile})
    try:
        cluster.start(1)
        cluster.bootstrap([1])
        reply = cluster.request(1, {"cmd": "insert", "collection": "notes", "doc": {"text": SECRET}})
        assert reply["ok"], reply
        put = {"cmd": "put_object", "bucket": "files", "key": "s.txt", "data": base64.b64encode(BLOB_SECRET).decode()}
        assert cluster.request(1, {"cmd": "create_bucket", "bucket": "files"})["ok"]
        assert cluster.request(1, put)["ok"]
        find = {"cmd": "find", "collection": "notes", "query": {}}
        found = wait_until(lambda: cluster.request(1, find)["data"], 10.0)
        assert found[0]["text"] == SECRET
    finally:
        cluster.stop()
    node = tmp_path / "cluster" / "node1"
    assert (node / LOG_FILE).stat().st_size > 0
    assert found_in(node) == []
    del cluster.env["OXIDB_ENCRYPTION_KEY"]
    with pytest.raises(RuntimeError, match="is encrypted"):
        cluster.start(1)
