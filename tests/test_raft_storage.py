"""
Storage conformance for the Raft log and meta (openraft's suite in spirit):
every operation survives a reopen, a crash at every fsync boundary leaves
either the old or the new state, a torn tail is cut, and damage elsewhere
stops the node.
"""

from __future__ import annotations

import os
import random

import orjson
import pytest

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
from oxidb.raft.storage import (
    LOG_FILE,
    META_FILE,
    DurableState,
    RaftStorage,
    StorageCorruptError,
    seal,
    snapshot_file_name,
    unseal,
)
from oxidb.testing import CrashingDisk, DiskCrashed

MEMBERS = Membership([{1, 2, 3}], {1: "a:1", 2: "b:2", 3: "c:3"})


def entry(term: int, index: int) -> Entry:
    if index == 1:
        return Entry(LogId(term, 1, 1), MEMBERS)
    return Entry(LogId(term, 1, index), {"Insert": {"collection": "c", "document": {"i": index}}}, 1000 + index)


def entries(term: int, first: int, last: int) -> tuple[Entry, ...]:
    return tuple(entry(term, i) for i in range(first, last + 1))


def snapshot_at(log_id: LogId, data: bytes = b"state") -> Snapshot:
    stored = StoredMembership(LogId(1, 1, 1), MEMBERS)
    return Snapshot(SnapshotMeta(log_id, stored, snapshot_id_for(log_id)), data)


def reopen(disk: CrashingDisk) -> DurableState:
    disk.crash()  # only what was made durable survives
    return RaftStorage(disk).load()


def fresh(*batches: PersistBatch) -> tuple[CrashingDisk, RaftStorage]:
    disk = CrashingDisk()
    storage = RaftStorage(disk)
    storage.load()
    for batch in batches:
        storage.save(batch)
    return disk, storage


def test_empty_directory_loads_an_empty_state() -> None:
    assert RaftStorage(CrashingDisk()).load() == DurableState()


def test_append_survives_a_reopen() -> None:
    disk, storage = fresh(PersistBatch(hard_state=HardState(1, 1), entries=entries(1, 1, 3)))
    storage.save(PersistBatch(entries=entries(1, 4, 5)))
    state = reopen(disk)
    assert state.hard_state == HardState(1, 1)
    assert state.entries == entries(1, 1, 5)
    assert state.entries[1].encoded == entry(1, 2).encoded


def test_append_must_be_contiguous() -> None:
    _disk, storage = fresh(PersistBatch(entries=entries(1, 1, 3)))
    with pytest.raises(ValueError, match="append of index 5 after 3"):
        storage.save(PersistBatch(entries=entries(1, 5, 5)))


def test_truncate_then_append_survives_a_reopen() -> None:
    disk, storage = fresh(PersistBatch(hard_state=HardState(2, 2), entries=entries(1, 1, 6)))
    storage.save(PersistBatch(hard_state=HardState(3, None), truncate_from=4, entries=entries(3, 4, 4)))
    state = reopen(disk)
    assert state.entries == entries(1, 1, 3) + entries(3, 4, 4)
    assert state.hard_state == HardState(3, None)
    # Appending after the truncation continues the file.
    storage = RaftStorage(disk)
    storage.load()
    storage.save(PersistBatch(entries=entries(3, 5, 6)))
    assert reopen(disk).entries == entries(1, 1, 3) + entries(3, 4, 6)


def test_purge_survives_a_reopen() -> None:
    disk, storage = fresh(PersistBatch(entries=entries(1, 1, 10)))
    storage.save(PersistBatch(snapshot=snapshot_at(LogId(1, 1, 8)), purge_upto=LogId(1, 1, 6)))
    state = reopen(disk)
    assert state.last_purged == LogId(1, 1, 6)
    assert state.entries == entries(1, 7, 10)
    assert state.snapshot == snapshot_at(LogId(1, 1, 8))
    assert disk.read(LOG_FILE).count(b"\n") == 4  # the file itself was rewritten


def test_snapshot_install_replaces_the_log() -> None:
    disk, storage = fresh(PersistBatch(hard_state=HardState(2, 1), entries=entries(1, 1, 5)))
    installed = snapshot_at(LogId(3, 2, 20), b"x" * 1000)
    storage.save(
        PersistBatch(snapshot=installed, truncate_from=21, purge_upto=LogId(3, 2, 20), committed=LogId(3, 2, 20))
    )
    state = reopen(disk)
    assert state.snapshot == installed
    assert state.entries == ()
    assert state.last_purged == LogId(3, 2, 20)
    assert state.committed == LogId(3, 2, 20)
    storage = RaftStorage(disk)
    storage.load()
    storage.save(PersistBatch(entries=(Entry(LogId(3, 2, 21), None),)))
    assert [e.index for e in reopen(disk).entries] == [21]


def test_a_new_snapshot_replaces_the_old_file() -> None:
    disk, storage = fresh(PersistBatch(entries=entries(1, 1, 10)))
    storage.save(PersistBatch(snapshot=snapshot_at(LogId(1, 1, 5), b"old")))
    storage.save(PersistBatch(snapshot=snapshot_at(LogId(1, 1, 9), b"new")))
    reopen(disk)
    snapshots = [n for n in disk.listdir() if n.startswith("raft_snapshot-")]
    assert snapshots == [snapshot_file_name(LogId(1, 1, 9))]
    assert reopen(disk).snapshot.data == b"new"  # type: ignore[union-attr]


def test_meta_is_written_only_when_it_changes() -> None:
    disk, storage = fresh(PersistBatch(hard_state=HardState(1, 1)))
    syncs = disk.syncs
    storage.save(PersistBatch(hard_state=HardState(1, 1), entries=entries(1, 1, 3), committed=LogId(1, 1, 2)))
    assert disk.syncs == syncs + 2  # the log fsync and the directory fsync of its creation
    storage.save(PersistBatch(entries=entries(1, 4, 9)))
    assert disk.syncs == syncs + 3  # one fsync for a whole batch


# --- crashes -------------------------------------------------------------------

OPERATIONS: list[tuple[str, list[PersistBatch], PersistBatch]] = [
    ("first append", [], PersistBatch(hard_state=HardState(1, 1), entries=entries(1, 1, 4))),
    ("append", [PersistBatch(entries=entries(1, 1, 4))], PersistBatch(entries=entries(1, 5, 9))),
    (
        "vote and truncate",
        [PersistBatch(hard_state=HardState(1, 1), entries=entries(1, 1, 6))],
        PersistBatch(hard_state=HardState(2, 3), truncate_from=3, entries=entries(2, 3, 5)),
    ),
    (
        "snapshot and purge",
        [PersistBatch(entries=entries(1, 1, 12))],
        PersistBatch(snapshot=snapshot_at(LogId(1, 1, 10)), purge_upto=LogId(1, 1, 7), entries=entries(1, 13, 14)),
    ),
    (
        "snapshot install",
        [
            PersistBatch(hard_state=HardState(1, 1), entries=entries(1, 1, 6)),
            PersistBatch(snapshot=snapshot_at(LogId(1, 1, 3)), purge_upto=LogId(1, 1, 2)),
        ],
        PersistBatch(snapshot=snapshot_at(LogId(4, 2, 30), b"big" * 100), truncate_from=31, purge_upto=LogId(4, 2, 30)),
    ),
]


def _observe(state: DurableState) -> tuple:
    return (state.hard_state, state.snapshot, state.entries)


@pytest.mark.parametrize("name,setup,operation", OPERATIONS, ids=[o[0] for o in OPERATIONS])
@pytest.mark.parametrize("torn", [False, True])
def test_crash_at_every_fsync_boundary(
    name: str, setup: list[PersistBatch], operation: PersistBatch, torn: bool
) -> None:
    disk, storage = fresh(*setup)
    before = _observe(reopen(disk))
    disk, storage = fresh(*setup)
    storage.save(operation)
    after = _observe(reopen(disk))
    boundary = 1
    while True:
        disk, storage = fresh(*setup)
        disk.crash_at_sync = disk.syncs + boundary
        try:
            storage.save(operation)
        except DiskCrashed:
            crashed = True
        else:
            crashed = False
        for seed in range(8 if torn else 1):
            if crashed and torn:
                # Replay the same crash point with different torn scraps.
                disk, storage = fresh(*setup)
                disk.crash_at_sync = disk.syncs + boundary
                with pytest.raises(DiskCrashed):
                    storage.save(operation)
                disk.crash(random.Random(seed))
                state = RaftStorage(disk).load()
            else:
                state = reopen(disk)
            observed = _observe(state)
            hard_state, snapshot, log = observed
            assert hard_state in (before[0], after[0])
            assert snapshot in (before[1], after[1])
            if snapshot == after[1] and after[1] != before[1]:
                # Once the new snapshot is in force the log is the new one
                # (an appended batch may be partly there).
                assert after[2][: len(log)] == log or log == after[2]
            else:
                ok = log == before[2] or log == after[2]
                ok = ok or (log[: len(before[2])] == before[2] and after[2][: len(log)] == log)
                ok = ok or (after[2][: len(log)] == log and len(log) >= len(after[2]) - len(operation.entries))
                assert ok, (boundary, log)
            # Whatever survived can be written to again.
            RaftStorage(disk).load()
        if not crashed:
            assert observed == after
            break
        boundary += 1
    assert boundary > 1


# --- damage --------------------------------------------------------------------


def _written(n: int = 4) -> CrashingDisk:
    disk, _storage = fresh(PersistBatch(hard_state=HardState(1, 1), entries=entries(1, 1, n)))
    return disk


@pytest.mark.parametrize(
    "tail",
    [b'{"log_id":{"leader_id":{"term":1,"node', b"\0\0\0\0\0\0", b'{"garbage"}\n', b"\n"],
    ids=["cut", "zeros", "bad-checksum", "empty-line"],
)
def test_a_torn_last_record_is_truncated(tail: bytes) -> None:
    disk = _written()
    good = disk.read(LOG_FILE)
    disk.append(LOG_FILE, tail)
    disk.fsync(LOG_FILE)
    storage = RaftStorage(disk)
    assert storage.load().entries == entries(1, 1, 4)
    assert disk.read(LOG_FILE) == good
    storage.save(PersistBatch(entries=entries(1, 5, 5)))
    assert reopen(disk).entries == entries(1, 1, 5)


def test_a_damaged_last_entry_line_is_truncated() -> None:
    disk = _written()
    data = bytearray(disk.read(LOG_FILE))
    data[-10] ^= 0x01
    disk.write(LOG_FILE, bytes(data))
    assert RaftStorage(disk).load().entries == entries(1, 1, 3)


def test_damage_before_the_last_record_stops_the_node() -> None:
    disk = _written()
    lines = disk.read(LOG_FILE).split(b"\n")
    lines[1] = lines[1].replace(b'"i":2', b'"i":7')
    disk.write(LOG_FILE, b"\n".join(lines))
    with pytest.raises(StorageCorruptError, match="valid entries follow"):
        RaftStorage(disk).load()


def test_a_gap_in_the_log_stops_the_node() -> None:
    disk = _written()
    lines = disk.read(LOG_FILE).split(b"\n")
    disk.write(LOG_FILE, b"\n".join(lines[:1] + lines[2:]))
    with pytest.raises(StorageCorruptError, match="does not follow"):
        RaftStorage(disk).load()


def test_a_log_that_starts_too_late_stops_the_node() -> None:
    disk = _written()
    lines = disk.read(LOG_FILE).split(b"\n")
    disk.write(LOG_FILE, b"\n".join(lines[2:]))
    with pytest.raises(StorageCorruptError, match="starts at index 3"):
        RaftStorage(disk).load()


def test_damaged_meta_stops_the_node() -> None:
    disk = _written()
    disk.write(META_FILE, disk.read(META_FILE).replace(b'"term":1', b'"term":9'))
    with pytest.raises(StorageCorruptError, match="raft_meta.json is damaged: checksum mismatch"):
        RaftStorage(disk).load()


def test_a_missing_or_damaged_snapshot_file_stops_the_node() -> None:
    disk, storage = fresh(PersistBatch(entries=entries(1, 1, 5)))
    storage.save(PersistBatch(snapshot=snapshot_at(LogId(1, 1, 4), b"abcdef")))
    name = snapshot_file_name(LogId(1, 1, 4))
    disk.write(name, disk.read(name)[:-1] + b"X")
    with pytest.raises(StorageCorruptError, match="size or checksum"):
        RaftStorage(disk).load()
    disk.remove(name)
    with pytest.raises(StorageCorruptError, match="missing"):
        RaftStorage(disk).load()


def test_an_interrupted_install_is_completed_on_load() -> None:
    # Meta already names a snapshot of another history at index 4 and purged
    # up to it, but the crash came before the log was rewritten.
    disk, storage = fresh(PersistBatch(entries=entries(1, 1, 8)))
    installed = snapshot_at(LogId(2, 3, 4))
    storage._meta.snapshot = installed.meta  # noqa: SLF001 - the crash point
    storage._meta.last_purged = installed.meta.last_log_id  # noqa: SLF001
    storage._write_snapshot(installed)  # noqa: SLF001
    storage._atomic_write(META_FILE, storage._meta.encode())  # noqa: SLF001
    state = reopen(disk)
    assert state.entries == ()
    assert RaftStorage(disk).load().entries == ()
    storage = RaftStorage(disk)
    storage.load()
    storage.save(PersistBatch(entries=(Entry(LogId(2, 3, 5), None),)))
    assert [e.index for e in reopen(disk).entries] == [5]


def test_leftover_temporary_files_are_removed() -> None:
    disk = _written()
    disk.write(META_FILE + ".tmp", b"half")
    disk.write(snapshot_file_name(LogId(9, 9, 9)), b"orphan")
    RaftStorage(disk).load()
    assert disk.listdir() == [LOG_FILE, META_FILE]


def test_seal_and_unseal() -> None:
    sealed = seal(b'{"a":1}')
    assert orjson.loads(sealed)["a"] == 1 and "crc32" in orjson.loads(sealed)
    assert unseal(sealed) == {"a": 1}
    for bad in (b'{"a":1}', sealed.replace(b"1", b"2", 1), b""):
        with pytest.raises(ValueError):
            unseal(bad)


# --- the real directory ---------------------------------------------------------


def test_os_disk_files_have_the_documented_shapes(tmp_path: os.PathLike[str]) -> None:
    directory = str(tmp_path)
    storage = RaftStorage(OsDisk(directory))
    storage.load()
    storage.save(PersistBatch(hard_state=HardState(2, 1), entries=entries(1, 1, 2), committed=LogId(1, 1, 1)))
    inode = os.stat(os.path.join(directory, LOG_FILE)).st_ino
    storage.save(PersistBatch(entries=(Entry(LogId(2, 1, 3), None),)))
    assert os.stat(os.path.join(directory, LOG_FILE)).st_ino == inode  # appended, not rewritten
    storage.close()
    assert sorted(os.listdir(directory)) == [LOG_FILE, META_FILE]
    with open(os.path.join(directory, LOG_FILE), "rb") as f:
        lines = [orjson.loads(line) for line in f]
    assert lines[1]["log_id"] == {"leader_id": {"term": 1, "node_id": 1}, "index": 2}
    assert lines[1]["payload"] == {"Normal": {"Insert": {"collection": "c", "document": {"i": 2}}}}
    assert lines[1]["ts"] == 1002
    assert lines[0]["payload"] == {
        "Membership": {
            "configs": [[1, 2, 3]],
            "nodes": {"1": {"addr": "a:1"}, "2": {"addr": "b:2"}, "3": {"addr": "c:3"}},
        }
    }
    assert lines[2]["payload"] == "Blank"
    assert all(len(line["crc32"]) == 8 for line in lines)
    with open(os.path.join(directory, META_FILE), "rb") as f:
        meta = orjson.loads(f.read())
    assert meta["term"] == 2 and meta["voted_for"] == 1
    assert meta["committed"] == {"leader_id": {"term": 1, "node_id": 1}, "index": 1}
    assert meta["last_purged_log_id"] is None and meta["snapshot"] is None
    again = RaftStorage(OsDisk(directory))
    assert [e.index for e in again.load().entries] == [1, 2, 3]
    again.save(PersistBatch(snapshot=snapshot_at(LogId(2, 1, 3)), purge_upto=LogId(1, 1, 2)))
    again.close()
    reloaded = RaftStorage(OsDisk(directory)).load()
    assert [e.index for e in reloaded.entries] == [3]
    assert reloaded.snapshot == snapshot_at(LogId(2, 1, 3))
    assert snapshot_file_name(LogId(2, 1, 3)) in os.listdir(directory)


def test_os_disk_primitives(tmp_path: os.PathLike[str]) -> None:
    disk = OsDisk(os.path.join(str(tmp_path), "sub"))
    disk.append("f", b"ab")
    disk.append("f", b"cd")
    disk.fsync("f")
    disk.truncate("f", 3)
    assert disk.read("f") == b"abc"
    disk.write("g", b"x")
    disk.fsync("g")
    disk.rename("g", "f")
    disk.fsync_dir()
    assert disk.read("f") == b"x"
    disk.remove("f")
    disk.remove("f")
    assert disk.listdir() == []
    with pytest.raises(FileNotFoundError):
        disk.read("f")
    disk.close()


def test_crashing_disk_loses_unsynced_writes() -> None:
    disk = CrashingDisk()
    disk.write("a", b"1")
    disk.crash()
    assert disk.listdir() == []  # never made durable in the directory
    disk.write("a", b"1")
    disk.fsync("a")
    disk.fsync_dir()
    disk.append("a", b"2345")
    disk.crash()
    assert disk.read("a") == b"1"
    disk.append("a", b"2345")
    scraps = set()
    for seed in range(40):
        copy = CrashingDisk()
        copy.write("a", b"1")
        copy.fsync("a")
        copy.fsync_dir()
        copy.append("a", b"2345")
        copy.crash(random.Random(seed))
        scraps.add(copy.read("a"))
    assert b"1" in scraps and any(len(s) > 1 for s in scraps)
    assert all(s[:1] == b"1" for s in scraps)

    def check(s: bytes) -> bool:
        return all(c in b"12345\0" for c in s)

    assert all(check(s) for s in scraps)


def test_meta_of_an_earlier_version_loads_and_gains_an_identity() -> None:
    # raft_meta.json as written before identities: no incarnation, no cluster id.
    disk, _storage = fresh(PersistBatch(hard_state=HardState(4, 2)))
    meta = orjson.loads(disk.read("raft_meta.json").rstrip(b"\n")[: -len(',"crc32":"00000000"}')] + b"}")
    assert "incarnation" not in meta and "cluster_id" not in meta
    state = reopen(disk)
    assert state.hard_state == HardState(4, 2) and state.hard_state.incarnation is None
    storage = RaftStorage(disk)
    storage.load()
    storage.save(PersistBatch(hard_state=HardState(4, 2, "inc-1", "cluster-1")))
    hard = reopen(disk).hard_state
    assert (hard.term, hard.voted_for, hard.incarnation, hard.cluster_id) == (4, 2, "inc-1", "cluster-1")
    # A later hard state without them (never written so by the core) keeps them.
    storage.save(PersistBatch(hard_state=HardState(5, None)))
    hard = reopen(disk).hard_state
    assert (hard.term, hard.incarnation, hard.cluster_id) == (5, "inc-1", "cluster-1")
