"""
Durable Raft state: C{raft_meta.json}, C{raft_log.jsonl} and the current
snapshot file, in one directory (L{oxidb.raft.disk.IDisk}).

* C{raft_meta.json}: term, vote, commit (a lower bound), last purged log id
  and the snapshot's metadata (which carries the membership in force at the
  snapshot); rewritten whole through a temporary file, fsync, rename and a
  directory fsync.
* C{raft_log.jsonl}: one entry per line in the shape of server.md 8.6, each
  line ending in a C{"crc32"} field over the rest of the line. Appends are one
  write and one fsync per batch. A conflicting suffix is cut with a truncate
  and the same fsync; a purged prefix is dropped by rewriting the file through
  a temporary file and rename.
* C{raft_snapshot-<term>-<node>-<index>.bin}: a JSON header line (snapshot
  metadata, size, crc32) followed by the state machine's bytes; written and
  renamed into place before the meta file points at it.

With encryption at rest (L{oxidb.atrest}) each log line's payload is
C{{"Sealed": <base64>}}: the entry's payload JSON sealed with AES-256-GCM,
its C{log_id} JSON as associated data. A log sealed with another key, a
sealed log without a key or a plain log with one fails to load with
L{oxidb.atrest.AtRestKeyError}.

On load a torn tail of the log (a last record cut short or garbled by a
crash, with nothing valid after it) is truncated; any other damage raises
L{StorageCorruptError}: committed entries are never dropped silently.

Blocking file I/O: run it off the reactor thread. An C{OSError} from the disk
(a failed fsync above all) must stop the node; do not retry it.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import attrs
import orjson

from oxidb.atrest import AtRestKeyError, LogCipher
from oxidb.logs import Logger
from oxidb.raft.disk import IDisk
from oxidb.raft.messages import (
    Entry,
    HardState,
    LogId,
    MessageDecodeError,
    PersistBatch,
    Snapshot,
    SnapshotMeta,
    log_id_from_json,
    log_id_json,
)

META_FILE = "raft_meta.json"
LOG_FILE = "raft_log.jsonl"
SNAPSHOT_PREFIX = "raft_snapshot-"
SNAPSHOT_SUFFIX = ".bin"
TMP_SUFFIX = ".tmp"

_CRC_TAIL = re.compile(rb',"crc32":"([0-9a-f]{8})"\}$')


class StorageCorruptError(Exception):
    """The durable Raft state is damaged beyond a torn last record."""


def seal(body: bytes) -> bytes:
    """Add a C{"crc32"} field to a compact JSON object's bytes."""
    return body[:-1] + b',"crc32":"%08x"}' % zlib.crc32(body)


def unseal(line: bytes) -> Any:
    """
    Check and strip the C{"crc32"} field added by L{seal}; return the decoded
    JSON. Raises C{ValueError} if the line is damaged.
    """
    match = _CRC_TAIL.search(line)
    if match is None:
        raise ValueError("no checksum")
    body = line[: match.start()] + b"}"
    if zlib.crc32(body) != int(match.group(1), 16):
        raise ValueError("checksum mismatch")
    return orjson.loads(body)


def snapshot_file_name(log_id: LogId) -> str:
    return f"{SNAPSHOT_PREFIX}{log_id.term}-{log_id.node_id}-{log_id.index}{SNAPSHOT_SUFFIX}"


@attrs.frozen
class DurableState:
    """
    What a node finds on disk at start-up.

    @ivar entries: the log after C{last_purged} (contiguous).
    @ivar committed: a lower bound of the commit point.
    """

    hard_state: HardState = HardState()
    committed: LogId | None = None
    last_purged: LogId | None = None
    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()


@attrs.define
class _Meta:
    term: int = 0
    voted_for: int | None = None
    committed: LogId | None = None
    last_purged: LogId | None = None
    snapshot: SnapshotMeta | None = None
    incarnation: str | None = None
    cluster_id: str | None = None

    def encode(self) -> bytes:
        obj: dict[str, Any] = {
            "term": self.term,
            "voted_for": self.voted_for,
            "committed": log_id_json(self.committed),
            "last_purged_log_id": log_id_json(self.last_purged),
            "snapshot": None if self.snapshot is None else self.snapshot.to_json(),
        }
        if self.incarnation is not None:
            obj["incarnation"] = self.incarnation
        if self.cluster_id is not None:
            obj["cluster_id"] = self.cluster_id
        return seal(orjson.dumps(obj))

    @classmethod
    def decode(cls, data: bytes) -> _Meta:
        obj = unseal(data.rstrip(b"\n"))
        if not isinstance(obj, dict):
            raise ValueError("not an object")
        term, voted_for = obj.get("term"), obj.get("voted_for")
        if not isinstance(term, int) or not (voted_for is None or isinstance(voted_for, int)):
            raise ValueError("bad term or vote")
        snapshot = obj.get("snapshot")
        # Written by versions before identities: no incarnation (the core
        # mints one) and no cluster id.
        incarnation, cluster_id = obj.get("incarnation"), obj.get("cluster_id")
        for value in (incarnation, cluster_id):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError("bad incarnation or cluster id")
        return cls(
            term=term,
            voted_for=voted_for,
            incarnation=incarnation,
            cluster_id=cluster_id,
            committed=log_id_from_json(obj.get("committed")),
            last_purged=log_id_from_json(obj.get("last_purged_log_id")),
            snapshot=None if snapshot is None else SnapshotMeta.from_json(snapshot),
        )


class RaftStorage:
    """
    The durable log and meta of one node. Call L{load} once, then L{save} for
    every L{PersistBatch} the core hands out, one at a time; L{save} returns
    when the batch is durable.
    """

    _log = Logger()

    def __init__(self, disk: IDisk, cipher: LogCipher | None = None) -> None:
        self.disk = disk
        self._cipher = cipher
        self._meta = _Meta()
        # Byte offset of each line of the log file; _first_index is the index
        # of the first line (meaningful only when _offsets is not empty).
        self._offsets: list[int] = []
        self._first_index = 0
        self._size = 0
        self._log_exists = False

    # --- loading ------------------------------------------------------------

    def load(self) -> DurableState:
        """Read the state, cleaning temporary files and a torn log tail."""
        names = self.disk.listdir()
        for name in names:
            if name.endswith(TMP_SUFFIX):
                self.disk.remove(name)
        if META_FILE in names:
            try:
                self._meta = _Meta.decode(self.disk.read(META_FILE))
            except (ValueError, MessageDecodeError) as e:
                raise StorageCorruptError(f"{META_FILE} is damaged: {e}") from None
        snapshot = self._load_snapshot(names)
        entries = self._load_log(names)
        self._log.info(
            "raft: loaded state ({n} log entries, term={term}, vote={vote}, "
            "snapshot={snapshot}, incarnation={incarnation}, cluster={cluster})",
            incarnation=self._meta.incarnation,
            cluster=self._meta.cluster_id,
            n=len(entries),
            term=self._meta.term,
            vote=self._meta.voted_for,
            snapshot=None if snapshot is None else snapshot.meta.last_log_id.display(),
        )
        return DurableState(
            hard_state=HardState(
                self._meta.term, self._meta.voted_for, self._meta.incarnation, self._meta.cluster_id
            ),
            committed=self._meta.committed,
            last_purged=self._meta.last_purged,
            snapshot=snapshot,
            entries=tuple(entries),
        )

    def _load_snapshot(self, names: list[str]) -> Snapshot | None:
        meta = self._meta.snapshot
        current = None if meta is None else snapshot_file_name(meta.last_log_id)
        for name in names:
            if name.startswith(SNAPSHOT_PREFIX) and name.endswith(SNAPSHOT_SUFFIX):
                if name != current:
                    self.disk.remove(name)
        if meta is None or current is None:
            return None
        try:
            raw = self.disk.read(current)
        except FileNotFoundError:
            raise StorageCorruptError(f"snapshot file {current} is missing") from None
        header_end = raw.find(b"\n")
        try:
            header = unseal(raw[:header_end])
            data = raw[header_end + 1 :]
            if SnapshotMeta.from_json(header["meta"]) != meta:
                raise ValueError("metadata differs from the meta file")
            if header["size"] != len(data) or header["data_crc32"] != zlib.crc32(data):
                raise ValueError("size or checksum mismatch")
        except (ValueError, KeyError, TypeError, MessageDecodeError) as e:
            raise StorageCorruptError(f"snapshot file {current} is damaged: {e}") from None
        return Snapshot(meta, data)

    def _load_log(self, names: list[str]) -> list[Entry]:
        if LOG_FILE not in names:
            return []
        self._log_exists = True
        data = self.disk.read(LOG_FILE)
        entries: list[Entry] = []
        offsets: list[int] = []
        pos = 0
        torn_at: int | None = None
        while pos < len(data):
            end = data.find(b"\n", pos)
            line = data[pos:] if end < 0 else data[pos:end]
            try:
                if end < 0:
                    raise ValueError("no line end")
                entry = Entry.from_json(self._open_payload(unseal(line)))
            except (ValueError, MessageDecodeError) as e:
                if torn_at is None:
                    torn_at, reason = pos, str(e)
                pos = len(data) if end < 0 else end + 1
                continue
            if torn_at is not None:
                raise StorageCorruptError(
                    f"{LOG_FILE} is damaged at byte {torn_at} ({reason}) "
                    f"and valid entries follow"
                )
            if entries and (
                entry.index != entries[-1].index + 1 or entry.term < entries[-1].term
            ):
                raise StorageCorruptError(
                    f"{LOG_FILE}: entry {entry.log_id.display()} does not follow "
                    f"{entries[-1].log_id.display()}"
                )
            entries.append(entry)
            offsets.append(pos)
            pos = end + 1
        self._offsets = offsets
        self._first_index = entries[0].index if entries else 0
        self._size = len(data)
        if torn_at is not None:
            self._log.warn(
                "raft: truncating a torn tail of {file} at byte {pos} ({reason})",
                file=LOG_FILE,
                pos=torn_at,
                reason=reason,
            )
            self._cut(torn_at)
        snapshot = self._meta.snapshot
        if snapshot is not None:
            at = self._entry_at(entries, snapshot.last_log_id.index)
            if at is not None and at.log_id != snapshot.last_log_id:
                # An interrupted snapshot install: the log after the snapshot
                # belongs to a different history.
                self._truncate_from(snapshot.last_log_id.index + 1)
                entries = entries[: snapshot.last_log_id.index + 1 - entries[0].index]
        if self._size != len(data):
            self.disk.fsync(LOG_FILE)
        base = 0 if self._meta.last_purged is None else self._meta.last_purged.index
        if entries and entries[0].index > base + 1:
            raise StorageCorruptError(
                f"{LOG_FILE} starts at index {entries[0].index} but only entries "
                f"up to {base} were purged"
            )
        if entries and entries[0].index <= base:
            # An interrupted purge (or snapshot install): finish it.
            self._purge_upto(base)
        return [e for e in entries if e.index > base]

    @staticmethod
    def _entry_at(entries: list[Entry], index: int) -> Entry | None:
        if not entries or not entries[0].index <= index <= entries[-1].index:
            return None
        return entries[index - entries[0].index]

    # --- saving -------------------------------------------------------------

    def save(self, batch: PersistBatch) -> None:
        """Make C{batch} durable, in the order documented on L{PersistBatch}."""
        if batch.is_empty:
            return
        old_snapshot = self._meta.snapshot
        meta = attrs.evolve(self._meta)
        if batch.hard_state is not None:
            meta.term, meta.voted_for = batch.hard_state.term, batch.hard_state.voted_for
            if batch.hard_state.incarnation is not None:
                meta.incarnation = batch.hard_state.incarnation
            if batch.hard_state.cluster_id is not None:
                meta.cluster_id = batch.hard_state.cluster_id
        if batch.snapshot is not None:
            self._write_snapshot(batch.snapshot)
            meta.snapshot = batch.snapshot.meta
        if batch.purge_upto is not None:
            meta.last_purged = batch.purge_upto
        if meta != self._meta:
            if batch.committed is not None and (
                meta.committed is None or batch.committed.index > meta.committed.index
            ):
                meta.committed = batch.committed
            self._atomic_write(META_FILE, meta.encode())
            self._meta = meta
            if old_snapshot is not None and old_snapshot != meta.snapshot:
                self.disk.remove(snapshot_file_name(old_snapshot.last_log_id))
        if batch.truncate_from is not None:
            self._truncate_from(batch.truncate_from)
        if batch.purge_upto is not None:
            self._purge_upto(batch.purge_upto.index)
        if batch.entries:
            self._append(batch.entries)
        if batch.truncate_from is not None or batch.entries:
            self.disk.fsync(LOG_FILE)
            if not self._log_exists:
                self.disk.fsync_dir()
                self._log_exists = True

    def _write_snapshot(self, snapshot: Snapshot) -> None:
        header = seal(
            orjson.dumps(
                {
                    "meta": snapshot.meta.to_json(),
                    "size": len(snapshot.data),
                    "data_crc32": zlib.crc32(snapshot.data),
                }
            )
        )
        name = snapshot_file_name(snapshot.meta.last_log_id)
        self.disk.write(name + TMP_SUFFIX, header + b"\n" + snapshot.data)
        self.disk.fsync(name + TMP_SUFFIX)
        self.disk.rename(name + TMP_SUFFIX, name)
        # The directory fsync of the meta write that follows covers the rename.

    def _atomic_write(self, name: str, data: bytes) -> None:
        self.disk.write(name + TMP_SUFFIX, data)
        self.disk.fsync(name + TMP_SUFFIX)
        self.disk.rename(name + TMP_SUFFIX, name)
        self.disk.fsync_dir()

    @property
    def _last_index(self) -> int:
        return self._first_index + len(self._offsets) - 1 if self._offsets else 0

    def _cut(self, size: int) -> None:
        self.disk.truncate(LOG_FILE, size)
        self._size = size

    def _truncate_from(self, index: int) -> None:
        if not self._offsets or index > self._last_index:
            return
        keep = max(0, index - self._first_index)
        self._cut(self._offsets[keep] if keep < len(self._offsets) else self._size)
        del self._offsets[keep:]

    def _append(self, entries: tuple[Entry, ...]) -> None:
        if self._offsets and entries[0].index != self._last_index + 1:
            raise ValueError(
                f"append of index {entries[0].index} after {self._last_index}"
            )
        if not self._offsets:
            self._first_index = entries[0].index
        chunks = []
        pos = self._size
        for entry in entries:
            line = self._line(entry)
            self._offsets.append(pos)
            chunks.append(line)
            pos += len(line)
        self.disk.append(LOG_FILE, b"".join(chunks))
        self._size = pos

    def _line(self, entry: Entry) -> bytes:
        """The log file line of an entry."""
        return seal(self._encode(entry)) + b"\n"

    def _encode(self, entry: Entry) -> bytes:
        """A log line's JSON: the entry's, its payload sealed if there is a cipher."""
        if self._cipher is None:
            return entry.encoded
        value = entry.to_json()
        associated = orjson.dumps(value["log_id"])
        value["payload"] = {"Sealed": self._cipher.seal(orjson.dumps(value["payload"]), associated)}
        return orjson.dumps(value)

    def _open_payload(self, value: Any) -> Any:
        """A loaded line's JSON with its payload opened (L{AtRestKeyError} on a key mismatch)."""
        payload = value.get("payload") if isinstance(value, dict) else None
        text = payload.get("Sealed") if isinstance(payload, dict) else None
        if self._cipher is None:
            if text is not None:
                raise AtRestKeyError(f"{LOG_FILE} is encrypted: set OXIDB_ENCRYPTION_KEY to its key file")
            return value
        if text is None:
            raise AtRestKeyError(f"{LOG_FILE} is not encrypted but OXIDB_ENCRYPTION_KEY is set")
        if not isinstance(text, str):
            raise ValueError("malformed sealed payload")
        try:
            opened = self._cipher.open(text, orjson.dumps(value.get("log_id")))
        except AtRestKeyError as e:
            raise AtRestKeyError(f"{LOG_FILE}: {e} (wrong key file?)") from None
        return {**value, "payload": orjson.loads(opened)}

    def _purge_upto(self, index: int) -> None:
        if not self._offsets or index < self._first_index:
            return
        drop = min(len(self._offsets), index - self._first_index + 1)
        start = self._offsets[drop] if drop < len(self._offsets) else self._size
        rest = self.disk.read(LOG_FILE)[start : self._size]
        self._atomic_write(LOG_FILE, rest)
        self._offsets = [o - start for o in self._offsets[drop:]]
        self._first_index += drop
        self._size = len(rest)
        self._log_exists = True

    def close(self) -> None:
        self.disk.close()
