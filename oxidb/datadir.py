"""
One server per data directory: L{DataDirLock}, an OS lock on
C{<OXIDB_DATA>/oxidb.lock}.

Two processes on the same data directory would both append to the Raft log
and write the database behind each other's back. The lock is C{flock(2)}:
the kernel drops it when the holder exits, however it exits (a crash or
C{kill -9} leaves no stale lock to clean up). The holder writes its pid into
the file so that the refusal can name it.
"""

from __future__ import annotations

import errno
import fcntl
import os

import attrs

from oxidb.errors import ConfigError

LOCK_FILE = "oxidb.lock"


@attrs.define(eq=False)
class DataDirLock:
    """
    The lock of one data directory. L{acquire} takes it or raises
    L{ConfigError} naming the holder; L{release} gives it back.

    The lock belongs to an open file description: a second L{acquire} on the
    same directory fails even in the same process.
    """

    data_dir: str
    path: str = attrs.field(init=False)
    _fd: int | None = attrs.field(init=False, default=None)

    @path.default
    def _lock_path(self) -> str:
        return os.path.join(self.data_dir, LOCK_FILE)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"OXIDB_DATA={self.data_dir!r}: cannot lock {LOCK_FILE}: {e.strerror}") from None
            raise ConfigError(
                f"OXIDB_DATA={self.data_dir!r} is in use by another oxidb-server process "
                f"(pid {holder or 'unknown'}, holder of {self.path}); one server per data directory"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Give the lock back (the file stays: removing it would race a new holder)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
