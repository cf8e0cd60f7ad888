"""
Offline key rotation for encryption at rest (the server must be stopped):

    python -m oxidb.tools.rekey --data DIR [--old KEYFILE] [--new KEYFILE]

Re-encrypts the data directory's database (C{PRAGMA rekey}, which rewrites
every page), the database inside its current Raft snapshot file and the
payloads of its Raft log from the C{--old} key to the C{--new} one. Without
C{--old} a plain directory is encrypted; without C{--new} an encrypted one
is decrypted. Both key files are checked as the server checks them (mode
0600, at least 32 bytes).

The database is rekeyed in its own transaction, then the snapshot file and
the log are rewritten through a temporary file and a rename: if the tool is
interrupted, run it again with the same arguments; it recognises the parts
already done. Backups made with the old key keep it (restore them on a
server given that key).
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib

import orjson

from oxidb.atrest import AtRestKey, AtRestKeyError, LogCipher, load_key_file
from oxidb.datadir import DataDirLock
from oxidb.engine import sqlite, store
from oxidb.errors import ConfigError
from oxidb.raft.disk import OsDisk
from oxidb.raft.statemachine import pack_snapshot, unpack_snapshot
from oxidb.raft.storage import LOG_FILE, SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX, RaftStorage, seal, unseal


def _database_key(path: str, old: AtRestKey | None, new: AtRestKey | None) -> AtRestKey | None:
    """The key the database opens with now: C{old}, or C{new} if a run stopped half-way did it."""
    try:
        sqlite.check_key(path, old)
        return old
    except AtRestKeyError:
        sqlite.check_key(path, new)  # raises the error of the new key if that fails too
        return new


def rekey_database(path: str, old: AtRestKey | None, new: AtRestKey | None) -> None:
    """Re-encrypt the database file at C{path} from C{old} to C{new}."""
    if not os.path.exists(path):
        return
    current = _database_key(path, old, new)
    if current == new:
        return
    conn = sqlite.open_connection(path, current)
    try:
        # SQLite3MultipleCiphers rekeys a database in rollback journal mode.
        conn.execute("PRAGMA journal_mode=DELETE").fetchall()
        if new is None:
            conn.execute("PRAGMA rekey=''").fetchall()
        else:
            conn.execute(f"PRAGMA hexrekey='{new.database.hex()}'").fetchall()
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
    finally:
        conn.close()
    sqlite.check_key(path, new)


def rekey_snapshots(data_dir: str, old: AtRestKey | None, new: AtRestKey | None) -> None:
    """Rewrite the Raft snapshot files of C{data_dir} with their database under C{new}."""
    disk = OsDisk(data_dir)
    for name in sorted(disk.listdir()):
        if not (name.startswith(SNAPSHOT_PREFIX) and name.endswith(SNAPSHOT_SUFFIX)):
            continue
        raw = disk.read(name)
        end = raw.find(b"\n")
        header = unseal(raw[:end])
        database, users = unpack_snapshot(raw[end + 1 :])
        staged = os.path.join(data_dir, name + ".db.tmp")
        try:
            with open(staged, "wb") as f:
                f.write(database)
            rekey_database(staged, old, new)
            with open(staged, "rb") as f:
                database = f.read()
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                if os.path.exists(staged + suffix):
                    os.remove(staged + suffix)
        data = pack_snapshot(database, users)
        header.update(size=len(data), data_crc32=zlib.crc32(data))
        disk.write(name + ".tmp", seal(orjson.dumps(header)) + b"\n" + data)
        disk.fsync(name + ".tmp")
        disk.rename(name + ".tmp", name)
        disk.fsync_dir()


def rekey_log(data_dir: str, old: AtRestKey | None, new: AtRestKey | None) -> None:
    """Rewrite the Raft log of C{data_dir} with its payloads sealed by C{new}."""
    if not os.path.exists(os.path.join(data_dir, LOG_FILE)):
        return
    disk = OsDisk(data_dir)
    loaded = None
    for key in (old, new):
        try:
            loaded = RaftStorage(disk, None if key is None else LogCipher(key.log))._load_log([LOG_FILE])
            break
        except AtRestKeyError as e:
            error = e
    if loaded is None:
        raise error
    writer = RaftStorage(disk, None if new is None else LogCipher(new.log))
    lines = [writer._line(entry) for entry in loaded]
    disk.write(LOG_FILE + ".tmp", b"".join(lines))
    disk.fsync(LOG_FILE + ".tmp")
    disk.rename(LOG_FILE + ".tmp", LOG_FILE)
    disk.fsync_dir()


def rekey(data_dir: str, old: AtRestKey | None, new: AtRestKey | None) -> None:
    """Move a stopped server's data directory from key C{old} to key C{new}."""
    lock = DataDirLock(data_dir)
    lock.acquire()
    try:
        rekey_database(store.db_path(data_dir), old, new)
        rekey_snapshots(data_dir, old, new)
        rekey_log(data_dir, old, new)
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oxidb.tools.rekey", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the data directory (the server stopped)")
    parser.add_argument("--old", help="the current key file (omit for a plain directory)")
    parser.add_argument("--new", help="the new key file (omit to decrypt)")
    args = parser.parse_args(argv)
    try:
        old = None if args.old is None else load_key_file(args.old)
        new = None if args.new is None else load_key_file(args.new)
        if old == new:
            raise AtRestKeyError("--old and --new are the same key")
        rekey(args.data, old, new)
    except (ConfigError, sqlite.Error, OSError) as e:
        print(f"rekey: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a one-line message, not a traceback
        print(f"rekey: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"rekey: {args.data} now uses {'the new key' if new is not None else 'no encryption'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
