"""
The file-system seam under the Raft storage.

L{IDisk} names the few operations the storage needs, each with its durability
spelled out: nothing written is durable until C{fsync} (file contents) or
C{fsync_dir} (creations, renames and removals) returns. L{OsDisk} is the real
directory; tests use an in-memory disk that loses what was not synced and can
tear the last write when it "crashes".

Blocking file I/O: call it off the reactor thread.
"""

from __future__ import annotations

import os

from zope.interface import Interface, implementer

from oxidb import filemodes


class IDisk(Interface):
    """One directory of files, addressed by plain file names."""

    def listdir() -> list[str]:
        """The names of the files in the directory."""

    def read(name: str) -> bytes:
        """The whole file; raises C{FileNotFoundError} if it does not exist."""

    def write(name: str, data: bytes) -> None:
        """Create or replace the file with C{data} (not durable)."""

    def append(name: str, data: bytes) -> None:
        """Append to the file, creating it if needed (not durable)."""

    def truncate(name: str, size: int) -> None:
        """Cut the file to C{size} bytes (not durable)."""

    def fsync(name: str) -> None:
        """Make the file's contents durable."""

    def rename(src: str, dst: str) -> None:
        """Atomically replace C{dst} with C{src} (durable after L{fsync_dir})."""

    def remove(name: str) -> None:
        """Delete the file if it exists (durable after L{fsync_dir})."""

    def fsync_dir() -> None:
        """Make creations, renames and removals in the directory durable."""

    def close() -> None:
        """Release open handles."""


@implementer(IDisk)
class OsDisk:
    """
    L{IDisk} on a real directory, created if missing. The file being appended
    to stays open between appends, so the log's append path is one
    C{write(2)} per batch.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        filemodes.private_dir(directory)
        self._append_fds: dict[str, int] = {}

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _forget(self, name: str) -> None:
        fd = self._append_fds.pop(name, None)
        if fd is not None:
            os.close(fd)

    def listdir(self) -> list[str]:
        return sorted(os.listdir(self.directory))

    def read(self, name: str) -> bytes:
        with open(self._path(name), "rb") as f:
            return f.read()

    def write(self, name: str, data: bytes) -> None:
        self._forget(name)
        fd = os.open(self._path(name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)

    def append(self, name: str, data: bytes) -> None:
        fd = self._append_fds.get(name)
        if fd is None:
            fd = os.open(self._path(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._append_fds[name] = fd
        _write_all(fd, data)

    def truncate(self, name: str, size: int) -> None:
        os.truncate(self._path(name), size)

    def fsync(self, name: str) -> None:
        fd = self._append_fds.get(name)
        if fd is not None:
            os.fdatasync(fd)
            return
        fd = os.open(self._path(name), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        self._forget(src)
        self._forget(dst)
        os.replace(self._path(src), self._path(dst))

    def remove(self, name: str) -> None:
        self._forget(name)
        try:
            os.remove(self._path(name))
        except FileNotFoundError:
            pass

    def fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        for name in list(self._append_fds):
            self._forget(name)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
