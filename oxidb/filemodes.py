"""
Private file modes for everything the server keeps on disk.

The data directory holds the database, its WAL and shared-memory files,
blobs (in the database), backups' staging copies, Raft snapshots, the Raft
meta and log, the audit log and the users file. None of it is for other
local users: directories are C{0700} and files C{0600}, whatever the
process umask. Files are created with their mode (C{os.open(..., 0o600)}
and a C{fchmod}, since the umask only ever removes bits), and
L{secure_tree} brings an existing data directory to these modes at start-up
(a directory written by an older version, or copied in by an operator).

SQLite creates C{<db>-wal} and C{<db>-shm} with the mode of the database
file itself, so a database file created here at C{0600} gives private WAL
and shared-memory files too.

No Twisted imports: the engine uses this module.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import IO

#: Mode of every directory the server creates in or as its data directory.
DIR_MODE = 0o700

#: Mode of every file the server writes.
FILE_MODE = 0o600


def private_dir(path: str | os.PathLike[str]) -> None:
    """Create C{path} (and missing parents) if needed, and make it C{0700}."""
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    if stat.S_IMODE(os.stat(path).st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)


def private_file(path: str | os.PathLike[str]) -> None:
    """
    Make sure a file exists at C{path} with mode C{0600} (created empty if
    missing, re-moded if it exists). An empty file is a valid new SQLite
    database, so calling this before SQLite opens it gives a private
    database (and so private C{-wal} and C{-shm} files). A symbolic link
    is followed (an operator may keep the database on another disk).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def open_private(path: str | os.PathLike[str], *, exclusive: bool = False) -> IO[bytes]:
    """C{open(path, "wb")}, but the file is C{0600} whatever the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_EXCL if exclusive else 0)
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


#: Top-level names in the data directory that are the server's: the
#: database (C{oxidb.sqlite3}, C{-wal}, C{-shm}, staged copies), Raft files
#: (C{raft_meta.json}, C{raft_log.jsonl}, C{raft_snapshot-*}), directories
#: such as C{_auth} and C{_audit}, and hidden temporary files.
SERVER_PREFIXES = ("oxidb", "raft_", "_", ".")


def secure_tree(root: str | os.PathLike[str]) -> None:
    """
    Bring a data directory to the private modes: C{root} itself C{0700}, and
    every top-level entry named like the server's (L{SERVER_PREFIXES}) with
    everything under it: directories C{0700}, regular files C{0600}.
    Anything else an operator put there is left alone (a data directory
    pointed at a shared directory by mistake is not re-moded wholesale).
    Symbolic links are neither followed nor changed. Used at start-up.
    """
    private_dir(root)
    for entry in os.scandir(root):
        if not entry.name.startswith(SERVER_PREFIXES):
            continue
        if entry.is_dir(follow_symlinks=False):
            _chmod_if(entry.path, stat.S_ISDIR, DIR_MODE)
            for directory, dirnames, filenames in os.walk(entry.path):
                for name in dirnames:
                    _chmod_if(os.path.join(directory, name), stat.S_ISDIR, DIR_MODE)
                for name in filenames:
                    _chmod_if(os.path.join(directory, name), stat.S_ISREG, FILE_MODE)
        else:
            _chmod_if(entry.path, stat.S_ISREG, FILE_MODE)


def _chmod_if(path: str, kind: Callable[[int], bool], mode: int) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if kind(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)
