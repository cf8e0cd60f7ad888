"""
Backup archives of a data directory, and their restore (the C{backup} and
C{restore} commands). Blocking: run these on the thread pool.

An archive is a gzip-compressed tar file holding, in this order:

  - C{manifest.json}: C{{"format": "oxidb-backup", "format_version": 1,
    "created_at": "YYYY-MM-DDTHH:MM:SSZ", "collections": [names],
    "buckets": [names], "source_last_applied": <int>, "encrypted": <bool>,
    "files": [{"path", "size", "sha256"}]}} (C{encrypted}: the database is
    encrypted at rest; archives made before it was recorded lack it);
  - C{oxidb.sqlite3}: a consistent copy of the database (documents, indexes,
    id high-water marks, blobs and their search postings) taken with SQLite's
    online backup while the server keeps serving writes, in rollback-journal
    mode so that it is one self-contained file;
  - C{_auth/<file>}: the user store and the SCRAM secret, when present
    (which is why the archive file is created with mode 0600).

Raft state (C{raft_meta.json}, C{raft_log.jsonl}) and the audit log are not
part of a backup, and the copy's Raft apply index is reset to 0 (its old
value is kept in the manifest as C{source_last_applied}): a restored
directory is a fresh node whose state machine matches its empty Raft log.

Restoring unpacks an archive into a new data directory (missing or empty),
refusing any member that is not one of the files above (absolute paths,
C{..}, links and devices included), checks every file against the manifest
and the database with C{PRAGMA quick_check}, and only then moves the result
into place, so a failed restore leaves nothing behind.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterable
from typing import IO, Any

import orjson

from oxidb import filemodes
from oxidb.atrest import AtRestKey, EncryptedError, NotEncryptedError, WrongKeyError
from oxidb.engine import blobs, sqlite, store
from oxidb.errors import BackupError

FORMAT = "oxidb-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
AUTH_DIR = "_auth"

RESTORE_MESSAGE = "restore complete; restart server with this data directory to use"

_CHUNK = 1024 * 1024
_COMPRESS_LEVEL = 6


# --- backup -----------------------------------------------------------------


def _staging_next_to(path: str, prefix: str) -> str:
    """A new private directory beside C{path} (same file system: the result is renamed into place)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise BackupError(f"directory does not exist: {parent}")
    try:
        return tempfile.mkdtemp(prefix=prefix, dir=parent)
    except OSError as e:
        raise BackupError(str(e)) from None


def create_backup(engine: Any, path: str, now: float) -> dict[str, Any]:
    """
    Write an archive of the engine's data directory to C{path}, which must
    not exist (its directory must). C{now} stamps the manifest.

    @return: C{{"path", "size_bytes", "collections"}} (the number of
        collections in the copy).
    @raise BackupError: C{path} exists, or anything fails on the way (nothing
        is left at C{path} then).
    """
    if os.path.lexists(path):
        raise BackupError(f"path already exists: {path}")
    staging = _staging_next_to(path, ".oxidb-backup-")
    try:
        db_copy = os.path.join(staging, store.DB_FILENAME)
        engine.backup(db_copy)
        collections, buckets, last_applied = _seal_copy(db_copy, engine.key)
        members = [(store.DB_FILENAME, db_copy)] + _copy_auth_files(engine.data_dir, staging)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": blobs.format_created_at(now),
            "collections": collections,
            "buckets": buckets,
            "source_last_applied": last_applied,
            "encrypted": engine.key is not None,
            "files": [
                {"path": name, "size": os.path.getsize(source), "sha256": _sha256(source)}
                for name, source in members
            ],
        }
        archive = os.path.join(staging, "archive.tar.gz")
        _write_archive(archive, manifest, members, now)
        _publish(archive, path)
        size = os.path.getsize(path)
    except (OSError, sqlite.Error) as e:
        raise BackupError(str(e)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"path": path, "size_bytes": size, "collections": len(collections)}


def _seal_copy(db_path: str, key: AtRestKey | None) -> tuple[list[str], list[str], int]:
    """
    Make the copied database a fresh node's (apply index 0) and one
    self-contained file; its collection names, bucket names and the apply
    index it had.
    """
    conn = sqlite.open_connection(db_path, key)
    try:
        conn.execute("BEGIN IMMEDIATE")
        last_applied = int(store.get_meta(conn, "last_applied", 0))
        store.set_meta(conn, "last_applied", 0)
        collections = [info.name for info in store.list_collections(conn)]
        buckets = blobs.bucket_names(conn)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()
    return collections, buckets, last_applied


def _copy_auth_files(data_dir: str, staging: str) -> list[tuple[str, str]]:
    """
    Snapshot the regular files of C{<data>/_auth} (each is replaced
    atomically by its writer, so one read gives one whole version).
    """
    source_dir = os.path.join(data_dir, AUTH_DIR)
    if not os.path.isdir(source_dir):
        return []
    target_dir = os.path.join(staging, AUTH_DIR)
    os.mkdir(target_dir, 0o700)
    members = []
    for name in sorted(os.listdir(source_dir)):
        source = os.path.join(source_dir, name)
        if name.startswith(".") or not os.path.isfile(source) or os.path.islink(source):
            continue
        with open(source, "rb") as f:
            content = f.read()
        copy = os.path.join(target_dir, name)
        with filemodes.open_private(copy) as f:
            f.write(content)
        members.append((f"{AUTH_DIR}/{name}", copy))
    return members


def _write_archive(archive: str, manifest: dict[str, Any], members: Iterable[tuple[str, str]], now: float) -> None:
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=_COMPRESS_LEVEL) as tar:
            text = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
            tar.addfile(_tar_info(MANIFEST, len(text), now), io.BytesIO(text))
            for name, source in members:
                with open(source, "rb") as f:
                    tar.addfile(_tar_info(name, os.fstat(f.fileno()).st_size, now), f)
        raw.flush()
        os.fsync(raw.fileno())


def _tar_info(name: str, size: int, now: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = int(now)
    return info


def _publish(archive: str, path: str) -> None:
    """Make the finished archive appear at C{path}, never over an existing file."""
    try:
        os.link(archive, path)
    except FileExistsError:
        raise BackupError(f"path already exists: {path}") from None
    except OSError:
        # A file system without hard links: rename, after one more check.
        if os.path.lexists(path):
            raise BackupError(f"path already exists: {path}") from None
        os.rename(archive, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


# --- restore ----------------------------------------------------------------


def restore_backup(archive: str, target: str, key: AtRestKey | None = None) -> dict[str, Any]:
    """
    Unpack an archive into C{target}, a data directory a server can start
    on. C{target} must not exist or be an empty directory; its parent must
    exist. The archive's database must open with C{key} (the encryption at
    rest key of the server that made it, None for a plain one).

    @return: C{{"path", "collections", "message"}}.
    @raise BackupError: a bad archive or target (nothing is left behind).
    """
    if not os.path.isfile(archive):
        raise BackupError(f"archive not found: {archive}")
    if os.path.lexists(target):
        if os.path.islink(target) or not os.path.isdir(target) or os.listdir(target):
            raise BackupError(f"target exists and is not an empty directory: {target}")
    staging = _staging_next_to(target, ".oxidb-restore-")
    try:
        files = _unpack(archive, staging)
        manifest = _check_manifest(staging, files)
        collections = _check_database(os.path.join(staging, store.DB_FILENAME), key, manifest.get("encrypted"))
        if collections != manifest["collections"]:
            raise BackupError("archive is corrupt: the database does not hold the manifest's collections")
        for name in files:
            _fsync_file(os.path.join(staging, *name.split("/")))
        if os.path.isdir(os.path.join(staging, AUTH_DIR)):
            _fsync_dir(os.path.join(staging, AUTH_DIR))
        _fsync_dir(staging)
        if os.path.isdir(target):
            os.rmdir(target)
        os.rename(staging, target)
        _fsync_dir(os.path.dirname(staging))
    except (OSError, sqlite.Error) as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise BackupError(str(e)) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"path": target, "collections": len(collections), "message": RESTORE_MESSAGE}


def member_path(name: str) -> list[str]:
    """
    The components of a safe relative member name, else L{BackupError}:
    no absolute path, C{..}, backslash or NUL.
    """
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        raise BackupError(f"unsafe path in archive: {name}")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise BackupError(f"unsafe path in archive: {name}")
    return parts


def _allowed_file(parts: list[str]) -> bool:
    if len(parts) == 1:
        return parts[0] in (MANIFEST, store.DB_FILENAME)
    return len(parts) == 2 and parts[0] == AUTH_DIR and not parts[1].startswith(".")


def _unpack(archive: str, staging: str) -> list[str]:
    """Extract the archive's files into C{staging}; their names."""
    names: list[str] = []
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                parts = member_path(member.name)
                if member.isdir():
                    if parts != [AUTH_DIR]:
                        raise BackupError(f"unexpected entry in archive: {member.name}")
                    os.makedirs(os.path.join(staging, AUTH_DIR), mode=0o700, exist_ok=True)
                    continue
                if not member.isreg():
                    raise BackupError(f"unsupported entry in archive (not a regular file): {member.name}")
                if not _allowed_file(parts):
                    raise BackupError(f"unexpected entry in archive: {member.name}")
                name = "/".join(parts)
                if name in names:
                    raise BackupError(f"duplicate entry in archive: {name}")
                names.append(name)
                if len(parts) == 2:
                    os.makedirs(os.path.join(staging, AUTH_DIR), mode=0o700, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                _write_private(os.path.join(staging, *parts), source)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise BackupError(f"invalid archive: {e}") from None
    return names


def _write_private(path: str, source: IO[bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        shutil.copyfileobj(source, f, _CHUNK)


def _check_manifest(staging: str, files: list[str]) -> dict[str, Any]:
    if MANIFEST not in files:
        raise BackupError(f"invalid archive: no {MANIFEST}")
    with open(os.path.join(staging, MANIFEST), "rb") as f:
        try:
            manifest = orjson.loads(f.read())
        except orjson.JSONDecodeError as e:
            raise BackupError(f"invalid archive: bad {MANIFEST}: {e}") from None
    if type(manifest) is not dict or manifest.get("format") != FORMAT:
        raise BackupError(f"invalid archive: not an {FORMAT} archive")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BackupError(f"unsupported backup format version: {version}")
    listed = manifest.get("files")
    collections = manifest.get("collections")
    if (
        type(listed) is not list
        or not all(type(entry) is dict for entry in listed)
        or type(collections) is not list
        or not all(isinstance(name, str) for name in collections)
    ):
        raise BackupError(f"invalid archive: bad {MANIFEST}")
    expected = {entry.get("path"): entry for entry in listed}
    present = set(files) - {MANIFEST}
    if set(expected) != present or store.DB_FILENAME not in present:
        raise BackupError("archive is corrupt: its files do not match the manifest")
    for name, entry in expected.items():
        path = os.path.join(staging, *name.split("/"))
        if os.path.getsize(path) != entry.get("size") or _sha256(path) != entry.get("sha256"):
            raise BackupError(f"archive is corrupt: checksum mismatch for {name}")
    return manifest


def _check_database(path: str, key: AtRestKey | None, encrypted: object) -> list[str]:
    """The collection names of a sound database file, else L{BackupError}."""
    _check_key(path, key, encrypted)
    try:
        conn = store.connect(path, writer=False, key=key)
        try:
            result = conn.execute("PRAGMA quick_check").fetchall()
            names = [info.name for info in store.list_collections(conn)]
        finally:
            conn.close()
    except sqlite.Error as e:
        raise BackupError(f"archive is corrupt: {e}") from None
    if result != [("ok",)]:
        raise BackupError(f"archive is corrupt: database check failed: {result[0][0]}")
    return names


def _check_key(path: str, key: AtRestKey | None, encrypted: object) -> None:
    """
    L{BackupError} naming the cause if the archive's database does not open
    with the server's key (SQLite itself would only say "file is not a
    database"). C{encrypted} is the manifest's word (None in older
    archives): without it, ciphertext and damage look alike.
    """
    try:
        sqlite.check_key(path, key)
    except EncryptedError:
        if encrypted is True:
            raise BackupError(
                "archive does not open: the backup is encrypted; restore it on a server started with "
                "the OXIDB_ENCRYPTION_KEY it was made with"
            ) from None
        raise BackupError(
            "archive is corrupt or encrypted: its database is not a plain SQLite file (an encrypted backup "
            "restores only on a server started with the OXIDB_ENCRYPTION_KEY it was made with)"
        ) from None
    except WrongKeyError:
        if encrypted is True:
            raise BackupError(
                "archive does not open: the backup is encrypted with a different key than this server's "
                "OXIDB_ENCRYPTION_KEY"
            ) from None
        if encrypted is False:
            raise BackupError("archive is corrupt: its database is not a plain SQLite file") from None
        raise BackupError(
            "archive does not open: its database is encrypted with a different key than this server's "
            "OXIDB_ENCRYPTION_KEY, or the archive is corrupt"
        ) from None
    except NotEncryptedError:
        raise BackupError(
            "archive does not open here: the backup is not encrypted and this server has OXIDB_ENCRYPTION_KEY "
            "set; restore it without a key, then encrypt the directory (python -m oxidb.tools.rekey)"
        ) from None


# --- files ------------------------------------------------------------------


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["create_backup", "restore_backup", "member_path", "FORMAT", "FORMAT_VERSION", "RESTORE_MESSAGE"]
