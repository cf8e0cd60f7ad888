"""
Backup archives and restore (server.md 3.3): the archive's contents, a
backup taken under write load and while a write transaction is open,
restoring into a directory an engine starts on, and every way a restore
refuses a bad archive or target.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import threading
import zlib
from collections.abc import Iterator
from typing import Any, ClassVar

import attrs
import pytest

from oxidb.auth.rbac import Role
from oxidb.commands import default_registry
from oxidb.config import Config
from oxidb.engine import backup, blobs, store
from oxidb.engine.engine import Engine
from oxidb.engine.operations import Operation
from oxidb.engine.writes import WriteTxn
from oxidb.errors import BackupError
from oxidb.testing import MemoryServer

NOW = 1_700_000_000.0
WAIT = 60.0


def open_engine(data_dir: str, synchronous: str = "NORMAL") -> Engine:
    engine = Engine(data_dir, synchronous=synchronous)
    blobs.register_appliers(engine)
    engine.open()
    return engine


@pytest.fixture
def data_dir(tmp_path: Any) -> str:
    return str(tmp_path / "data")


@pytest.fixture
def engine(data_dir: str) -> Iterator[Engine]:
    engine = open_engine(data_dir)
    yield engine
    engine.close()


def put(engine: Engine, bucket: str, key: str, data: bytes, content_type: str = "text/plain") -> Any:
    body = {"bucket": bucket, "key": key, "data_b64": base64.b64encode(data).decode(), "content_type": content_type}
    return engine.apply({"PutObject": body}, NOW)


def populate(engine: Engine) -> None:
    engine.apply({"CreateUniqueIndex": {"collection": "users", "field": "email"}}, NOW)
    engine.apply({"CreateTextIndex": {"collection": "notes", "fields": ["body"]}}, NOW)
    engine.apply({"InsertMany": {"collection": "users", "documents": [{"email": f"u{i}@x"} for i in range(5)]}}, NOW)
    engine.apply({"Insert": {"collection": "notes", "document": {"body": "remember the milk"}}}, NOW)
    engine.apply({"Delete": {"collection": "users", "query": {"email": "u4@x"}}}, NOW)
    put(engine, "files", "a.txt", b"alpha document")


def members(path: str) -> list[tarfile.TarInfo]:
    with tarfile.open(path, "r:gz") as tar:
        return tar.getmembers()


def read_member(path: str, name: str) -> bytes:
    with tarfile.open(path, "r:gz") as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


# --- the archive --------------------------------------------------------------


def test_archive_contents(engine: Engine, data_dir: str, tmp_path: Any) -> None:
    populate(engine)
    auth = os.path.join(data_dir, "_auth")
    os.mkdir(auth)
    with open(os.path.join(auth, "users.json"), "w") as f:
        f.write('{"users": []}')
    with open(os.path.join(auth, "scram_mock_secret"), "wb") as f:
        f.write(b"\x01" * 32)
    # Never archived: Raft state, the audit log, temp files.
    for name in ("raft_meta.json", "raft_log.jsonl"):
        with open(os.path.join(data_dir, name), "w") as f:
            f.write("{}")
    os.mkdir(os.path.join(data_dir, "_audit"))
    with open(os.path.join(data_dir, "_audit", "audit.log"), "w") as f:
        f.write("line\n")
    with open(os.path.join(auth, ".users.json.tmp"), "w") as f:
        f.write("partial")
    path = str(tmp_path / "backup.tar.gz")
    reply = backup.create_backup(engine, path, NOW)
    assert reply == {"path": path, "size_bytes": os.path.getsize(path), "collections": 2}
    assert os.stat(path).st_mode & 0o777 == 0o600  # it holds password verifiers
    infos = members(path)
    assert [i.name for i in infos] == ["manifest.json", "oxidb.sqlite3", "_auth/scram_mock_secret", "_auth/users.json"]
    assert all(i.isreg() and i.mode == 0o600 and i.mtime == int(NOW) for i in infos)
    manifest = json.loads(read_member(path, "manifest.json"))
    assert manifest["format"] == "oxidb-backup"
    assert manifest["format_version"] == 1
    assert manifest["created_at"] == "2023-11-14T22:13:20Z"
    assert manifest["collections"] == ["notes", "users"]
    assert manifest["buckets"] == ["files"]
    assert manifest["source_last_applied"] == 0
    for entry in manifest["files"]:
        content = read_member(path, entry["path"])
        assert entry["size"] == len(content)
        assert entry["sha256"] == hashlib.sha256(content).hexdigest()
    assert read_member(path, "_auth/users.json") == b'{"users": []}'
    # No staging directory is left next to the archive.
    assert sorted(os.listdir(tmp_path)) == ["backup.tar.gz", "data"]


def test_backup_refuses_an_existing_path(engine: Engine, tmp_path: Any) -> None:
    path = tmp_path / "exists.tar.gz"
    path.write_bytes(b"precious")
    with pytest.raises(BackupError, match=f"^backup error: path already exists: {path}$"):
        backup.create_backup(engine, str(path), NOW)
    assert path.read_bytes() == b"precious"
    (tmp_path / "dir").mkdir()
    with pytest.raises(BackupError, match="path already exists"):
        backup.create_backup(engine, str(tmp_path / "dir"), NOW)
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    with pytest.raises(BackupError, match="path already exists"):
        backup.create_backup(engine, str(tmp_path / "dangling"), NOW)


def test_backup_into_a_missing_directory(engine: Engine, tmp_path: Any) -> None:
    with pytest.raises(BackupError, match="^backup error: directory does not exist: "):
        backup.create_backup(engine, str(tmp_path / "no" / "such" / "b.tar.gz"), NOW)


def test_a_failed_backup_leaves_nothing(engine: Engine, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine, "backup", broken)
    with pytest.raises(BackupError, match=r"^backup error: \[Errno 28\] No space left on device$"):
        backup.create_backup(engine, str(tmp_path / "b.tar.gz"), NOW)
    assert sorted(os.listdir(tmp_path)) == ["data"]


# --- round trip ---------------------------------------------------------------


def test_restore_round_trip(engine: Engine, tmp_path: Any) -> None:
    populate(engine)
    path = str(tmp_path / "b.tar.gz")
    backup.create_backup(engine, path, NOW)
    target = str(tmp_path / "restored")
    reply = backup.restore_backup(path, target)
    assert reply == {
        "path": target,
        "collections": 2,
        "message": "restore complete; restart server with this data directory to use",
    }
    assert sorted(os.listdir(target)) == ["manifest.json", "oxidb.sqlite3"]
    copy = open_engine(target)
    try:
        assert copy.list_collections() == ["notes", "users"]
        assert [d["email"] for d in copy.find("users")] == ["u0@x", "u1@x", "u2@x", "u3@x"]
        assert copy.list_indexes("users") == engine.list_indexes("users")
        assert [d["_id"] for d in copy.text_search("notes", "milk")] == [1]
        # The id high-water mark survived: the deleted id 5 is not reused.
        assert copy.apply({"Insert": {"collection": "users", "document": {"email": "new@x"}}}, NOW) == {"id": 6}
        with pytest.raises(Exception, match="unique constraint violated"):
            copy.apply({"Insert": {"collection": "users", "document": {"email": "u1@x"}}}, NOW)
        assert copy.read(blobs.read_object, "files", "a.txt")[0] == b"alpha document"
        assert [r["key"] for r in copy.read(blobs.search, "alpha", None, 10)] == ["a.txt"]
    finally:
        copy.close()


def test_restore_into_an_existing_empty_directory(engine: Engine, tmp_path: Any) -> None:
    path = str(tmp_path / "b.tar.gz")
    backup.create_backup(engine, path, NOW)
    target = tmp_path / "empty"
    target.mkdir()
    assert backup.restore_backup(path, str(target))["path"] == str(target)
    assert "oxidb.sqlite3" in os.listdir(target)


def test_restored_copy_is_a_fresh_raft_node(tmp_path: Any) -> None:
    data_dir = str(tmp_path / "data")
    engine = open_engine(data_dir)
    try:
        engine.apply({"Insert": {"collection": "c", "document": {"x": 1}}}, NOW, raft_index=41)
        assert engine.last_applied() == 41
        path = str(tmp_path / "b.tar.gz")
        backup.create_backup(engine, path, NOW)
    finally:
        engine.close()
    assert json.loads(read_member(path, "manifest.json"))["source_last_applied"] == 41
    target = str(tmp_path / "restored")
    backup.restore_backup(path, target)
    copy = open_engine(target)
    try:
        assert copy.last_applied() == 0
        # Entry 1 of a new Raft log is applied, not skipped as already seen.
        copy.apply({"Insert": {"collection": "c", "document": {"x": 2}}}, NOW, raft_index=1)
        assert [d["x"] for d in copy.find("c")] == [1, 2]
    finally:
        copy.close()


def test_backup_does_not_wait_for_an_open_write_transaction(engine: Engine, tmp_path: Any) -> None:
    entered = threading.Event()
    release = threading.Event()

    @attrs.frozen
    class Gate(Operation):
        KIND: ClassVar[str] = "Gate"

    def gate(txn: WriteTxn, op: Gate, now: float) -> str:
        txn.insert("c", {"uncommitted": True})
        entered.set()
        assert release.wait(WAIT)
        return "done"

    engine.register_operation(Gate, gate)
    engine.apply({"Insert": {"collection": "c", "document": {"committed": True}}}, NOW)
    future = engine.submit({"Gate": {}}, NOW)
    assert entered.wait(WAIT)
    try:
        path = str(tmp_path / "b.tar.gz")
        backup.create_backup(engine, path, NOW)  # completes while the writer holds its transaction
    finally:
        release.set()
    assert future.result(WAIT) == "done"
    target = str(tmp_path / "restored")
    backup.restore_backup(path, target)
    copy = open_engine(target)
    try:
        assert copy.find("c") == [{"committed": True, "_id": 1, "_version": 1}]
    finally:
        copy.close()
    assert len(engine.find("c")) == 2


def test_backup_under_write_load(tmp_path: Any) -> None:
    """
    A thread inserts documents and puts blobs without pause; a backup taken
    meanwhile holds everything acknowledged before it started, and the copy
    is internally consistent.
    """
    data_dir = str(tmp_path / "data")
    engine = open_engine(data_dir, synchronous="FULL")
    engine.apply({"CreateUniqueIndex": {"collection": "load", "field": "n"}}, NOW)
    # Some bulk, so that the backup takes a while.
    for i in range(6):
        put(engine, "bulk", f"blob{i}", os.urandom(512 * 1024), "application/octet-stream")
    acked_docs: list[tuple[int, int]] = []
    acked_blobs: list[tuple[str, str]] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def load() -> None:
        n = 0
        try:
            while not stop.is_set():
                n += 1
                reply = engine.apply({"Insert": {"collection": "load", "document": {"n": n, "word": f"w{n}"}}}, NOW)
                acked_docs.append((n, reply["id"]))
                if n % 5 == 0:
                    record = put(engine, "live", f"obj{n}", f"token{n} payload {n}".encode())
                    acked_blobs.append((record["key"], record["etag"]))
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    writer = threading.Thread(target=load)
    writer.start()
    try:
        while len(acked_docs) < 200:
            assert writer.is_alive(), failures
            stop.wait(0.001)
        docs_before = list(acked_docs)
        blobs_before = list(acked_blobs)
        path = str(tmp_path / "b.tar.gz")
        backup.create_backup(engine, path, NOW)
        docs_during = len(acked_docs) - len(docs_before)
        while len(acked_docs) < len(docs_before) + docs_during + 50:
            assert writer.is_alive(), failures
            stop.wait(0.001)
    finally:
        stop.set()
        writer.join(WAIT)
        engine.close()
    assert not failures
    target = str(tmp_path / "restored")
    backup.restore_backup(path, target)
    copy = open_engine(target)
    try:
        docs = copy.find("load")
        by_n = {d["n"]: d["_id"] for d in docs}
        # Everything acknowledged before the backup started is in the copy...
        for n, doc_id in docs_before:
            assert by_n.get(n) == doc_id
        # ... as a prefix of the acknowledged sequence, with no holes.
        assert sorted(by_n) == list(range(1, len(docs) + 1))
        assert all(doc_id == by_n[n] for n, doc_id in acked_docs if n in by_n)
        assert copy.count("load") == len(docs)
        # The unique index agrees with a full scan.
        for n in (1, len(docs) // 2, len(docs)):
            assert [d["_id"] for d in copy.find("load", {"n": n})] == [by_n[n]]
        # The id high-water mark is the copy's, and ids continue from it.
        assert copy.apply({"Insert": {"collection": "load", "document": {"n": 0}}}, NOW) == {"id": len(docs) + 1}
        # Blobs: every acknowledged one is there, every one is intact, the
        # search postings cover exactly the objects present.
        stored = {r["key"]: r for r in copy.read(blobs.list_objects, "live", None, 100000)}
        for key, etag in blobs_before:
            assert stored[key]["etag"] == etag
        for key, record in stored.items():
            data, _ = copy.read(blobs.read_object, "live", key)
            assert format(zlib.crc32(data), "08x") == record["etag"]
            n = int(key[3:])
            assert [r["key"] for r in copy.read(blobs.search, f"token{n}", "live", 10)] == [key]
        for i in range(6):
            data, record = copy.read(blobs.read_object, "bulk", f"blob{i}")
            assert format(zlib.crc32(data), "08x") == record["etag"]

        def postings(reader: Any) -> int:
            return reader.conn.execute("SELECT count(*) FROM oxi_blob_docs").fetchone()[0]

        assert copy.read(postings) == len(stored)
    finally:
        copy.close()


# --- restore refusals ---------------------------------------------------------


@pytest.fixture
def archive(engine: Engine, tmp_path: Any) -> str:
    populate(engine)
    path = str(tmp_path / "good.tar.gz")
    backup.create_backup(engine, path, NOW)
    return path


def rewrite(source: str, dest: str, edit: Any) -> str:
    """Copy an archive member by member through C{edit(info, data) -> [(info, data)]}."""
    out = io.BytesIO()
    with tarfile.open(source, "r:gz") as tar, tarfile.open(fileobj=out, mode="w:gz") as new:
        for info in tar.getmembers():
            f = tar.extractfile(info)
            data = f.read() if f is not None else b""
            for new_info, new_data in edit(info, data):
                new_info.size = len(new_data)
                new.addfile(new_info, io.BytesIO(new_data) if new_info.isreg() else None)
    with open(dest, "wb") as f:
        f.write(out.getvalue())
    return dest


def assert_refused(archive_path: str, tmp_path: Any, message: str) -> None:
    before = sorted(os.listdir(tmp_path))
    target = str(tmp_path / "target")
    with pytest.raises(BackupError) as info:
        backup.restore_backup(archive_path, target)
    assert str(info.value).startswith("backup error: ")
    assert message in str(info.value)
    assert not os.path.exists(target)
    assert sorted(os.listdir(tmp_path)) == before  # no staging directory left behind


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    "name",
    ["../evil", "../../etc/cron.d/x", "/etc/passwd", "_auth/../../escape", "a\\..\\b", "", "./..", "nul\x00"],
)
def test_restore_refuses_path_traversal(archive: str, tmp_path: Any, name: str) -> None:
    def add_evil(info: tarfile.TarInfo, data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
        extra = [(member(name), b"evil")] if info.name == "oxidb.sqlite3" else []
        return [(info, data)] + extra

    if "\x00" in name:
        # tarfile cannot even write such a name; check the validator directly.
        with pytest.raises(BackupError, match="unsafe path in archive"):
            backup.member_path(name)
        return
    bad = rewrite(archive, str(tmp_path / "bad.tar.gz"), add_evil)
    assert_refused(bad, tmp_path, "unsafe path in archive")
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize(
    "info",
    [
        member("_auth/link", tarfile.SYMTYPE, "/etc/passwd"),
        member("oxidb.sqlite3-wal", tarfile.LNKTYPE, "oxidb.sqlite3"),
        member("fifo", tarfile.FIFOTYPE),
        member("dev", tarfile.CHRTYPE),
    ],
    ids=["symlink", "hardlink", "fifo", "device"],
)
def test_restore_refuses_links_and_devices(archive: str, tmp_path: Any, info: tarfile.TarInfo) -> None:
    bad = rewrite(
        archive,
        str(tmp_path / "bad.tar.gz"),
        lambda i, d: [(i, d)] + ([(info, b"")] if i.name == "manifest.json" else []),
    )
    assert_refused(bad, tmp_path, "not a regular file")


@pytest.mark.parametrize("name", ["raft_log.jsonl", "other/file", "_auth/sub/dir", "_auth/.hidden", "extra.txt"])
def test_restore_refuses_unexpected_files(archive: str, tmp_path: Any, name: str) -> None:
    bad = rewrite(
        archive,
        str(tmp_path / "bad.tar.gz"),
        lambda i, d: [(i, d)] + ([(member(name), b"x")] if i.name == "manifest.json" else []),
    )
    assert_refused(bad, tmp_path, f"unexpected entry in archive: {name}")


def test_restore_refuses_duplicates(archive: str, tmp_path: Any) -> None:
    bad = rewrite(
        archive, str(tmp_path / "bad.tar.gz"), lambda i, d: [(i, d), (i, d)] if i.name == "oxidb.sqlite3" else [(i, d)]
    )
    assert_refused(bad, tmp_path, "duplicate entry in archive: oxidb.sqlite3")


def test_restore_checks_the_manifest(archive: str, tmp_path: Any) -> None:
    def tamper_db(info: tarfile.TarInfo, data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
        if info.name == "oxidb.sqlite3":
            data = data[:-1] + bytes([data[-1] ^ 1])
        return [(info, data)]

    assert_refused(
        rewrite(archive, str(tmp_path / "t1.tar.gz"), tamper_db), tmp_path, "checksum mismatch for oxidb.sqlite3"
    )
    assert_refused(
        rewrite(archive, str(tmp_path / "t2.tar.gz"), lambda i, d: [] if i.name == "manifest.json" else [(i, d)]),
        tmp_path,
        "invalid archive: no manifest.json",
    )
    assert_refused(
        rewrite(archive, str(tmp_path / "t3.tar.gz"), lambda i, d: [] if i.name == "oxidb.sqlite3" else [(i, d)]),
        tmp_path,
        "files do not match the manifest",
    )

    def manifest_edit(change: dict[str, Any]) -> Any:
        def edit(info: tarfile.TarInfo, data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
            if info.name == "manifest.json":
                data = json.dumps({**json.loads(data), **change}).encode()
            return [(info, data)]

        return edit

    assert_refused(
        rewrite(archive, str(tmp_path / "t4.tar.gz"), manifest_edit({"format_version": 2})),
        tmp_path,
        "unsupported backup format version: 2",
    )
    assert_refused(
        rewrite(archive, str(tmp_path / "t5.tar.gz"), manifest_edit({"format": "zip"})),
        tmp_path,
        "not an oxidb-backup archive",
    )
    assert_refused(
        rewrite(archive, str(tmp_path / "t6.tar.gz"), manifest_edit({"files": "x"})), tmp_path, "bad manifest.json"
    )
    assert_refused(
        rewrite(archive, str(tmp_path / "t7.tar.gz"), manifest_edit({"collections": ["other"]})),
        tmp_path,
        "does not hold the manifest's collections",
    )
    assert_refused(
        rewrite(archive, str(tmp_path / "t8.tar.gz"), lambda i, d: [(i, b"{nope" if i.name == "manifest.json" else d)]),
        tmp_path,
        "bad manifest.json",
    )


def test_restore_checks_the_database(tmp_path: Any) -> None:
    garbage = b"this is not an SQLite database" * 100
    manifest = {
        "format": "oxidb-backup",
        "format_version": 1,
        "collections": [],
        "files": [{"path": "oxidb.sqlite3", "size": len(garbage), "sha256": hashlib.sha256(garbage).hexdigest()}],
    }
    out = str(tmp_path / "fake.tar.gz")
    with tarfile.open(out, "w:gz") as tar:
        for name, data in (("manifest.json", json.dumps(manifest).encode()), ("oxidb.sqlite3", garbage)):
            info = member(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert_refused(out, tmp_path, "archive is corrupt")


def test_restore_refuses_broken_files(archive: str, tmp_path: Any) -> None:
    with open(archive, "rb") as f:
        content = f.read()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(content[: len(content) // 2])
    assert_refused(str(truncated), tmp_path, "invalid archive")
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"hello, not a tarball")
    assert_refused(str(plain), tmp_path, "invalid archive")
    assert_refused(str(tmp_path / "missing.tar.gz"), tmp_path, f"archive not found: {tmp_path / 'missing.tar.gz'}")


def test_restore_refuses_a_non_empty_or_odd_target(archive: str, tmp_path: Any) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("keep")
    with pytest.raises(BackupError, match="target exists and is not an empty directory"):
        backup.restore_backup(archive, str(full))
    assert os.listdir(full) == ["keep.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(BackupError, match="target exists and is not an empty directory"):
        backup.restore_backup(archive, str(a_file))
    (tmp_path / "realdir").mkdir()
    os.symlink(tmp_path / "realdir", tmp_path / "link")
    with pytest.raises(BackupError, match="target exists and is not an empty directory"):
        backup.restore_backup(archive, str(tmp_path / "link"))
    with pytest.raises(BackupError, match="directory does not exist"):
        backup.restore_backup(archive, str(tmp_path / "no" / "parent"))


# --- commands -----------------------------------------------------------------


@pytest.fixture
def server(engine: Engine, data_dir: str) -> MemoryServer:
    server = MemoryServer(Config(data_dir=data_dir), engine=engine)
    server.clock.advance(NOW)
    return server


def test_backup_and_restore_commands(server: MemoryServer, engine: Engine, tmp_path: Any) -> None:
    populate(engine)
    path = str(tmp_path / "cmd.tar.gz")
    reply = server.request({"cmd": "backup", "path": path})
    assert reply == {"ok": True, "data": {"path": path, "size_bytes": os.path.getsize(path), "collections": 2}}
    assert json.loads(read_member(path, "manifest.json"))["created_at"] == "2023-11-14T22:13:20Z"
    assert server.request({"cmd": "backup", "path": path}) == {
        "ok": False,
        "error": f"backup error: path already exists: {path}",
    }
    target = str(tmp_path / "restored")
    assert server.request({"cmd": "restore", "archive": path, "target": target}) == {
        "ok": True,
        "data": {
            "path": target,
            "collections": 2,
            "message": "restore complete; restart server with this data directory to use",
        },
    }
    assert server.request({"cmd": "restore", "archive": path, "target": target})["error"].startswith(
        "backup error: target exists"
    )


@pytest.mark.parametrize(
    "request_, expected",
    [
        ({"cmd": "backup"}, "missing 'path'"),
        ({"cmd": "backup", "path": 5}, "missing 'path'"),
        ({"cmd": "backup", "path": ""}, "missing 'path'"),
        ({"cmd": "restore", "target": "/tmp/x"}, "missing 'archive'"),
        ({"cmd": "restore", "archive": "/tmp/x"}, "missing 'target'"),
        ({"cmd": "restore", "archive": "/tmp/x", "target": ""}, "missing 'target'"),
        ({"cmd": "restore", "archive": ["a"], "target": "/tmp/y"}, "missing 'archive'"),
    ],
)
def test_backup_command_validation(server: MemoryServer, request_: dict[str, Any], expected: str) -> None:
    assert server.request(request_) == {"ok": False, "error": expected}


def test_backup_commands_are_admin_only_and_local() -> None:
    registry = default_registry()
    for name in ("backup", "restore"):
        command = registry.get(name)
        assert command is not None and command.writes is False
        assert command.role is Role.ADMIN
        assert registry.access.required_role(name) is Role.ADMIN
        assert not registry.access.allowed(Role.READWRITE, name)


def test_archive_database_is_one_file(engine: Engine, tmp_path: Any) -> None:
    path = str(tmp_path / "b.tar.gz")
    backup.create_backup(engine, path, NOW)
    header = read_member(path, store.DB_FILENAME)[:20]
    assert header.startswith(b"SQLite format 3\x00")
    # File format bytes 18/19 are 1 in rollback-journal mode (2 in WAL mode).
    assert header[18:20] == b"\x01\x01"
