"""
The audit file: C{<data>/_audit/audit.log}, one JSON line per event, with
rotation (server.md 7.1).

L{AuditLog} is the sink the service runs: C{record} only puts the encoded line
on a queue; a dedicated thread writes lines in batches (one write and flush
per batch), fsyncs at least once per C{sync_interval} while there is
unsynced data, rotates, and on C{stop} flushes, fsyncs and closes. At most
the last second of lines can be lost in a machine crash; a clean stop loses
nothing.
"""

from __future__ import annotations

import enum
import gzip
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from zope.interface import implementer

from oxidb import filemodes
from oxidb._threads import fire_from_thread
from oxidb.audit.events import AuditEvent, IAuditSink
from oxidb.auth.settings import flag, parse_u64
from oxidb.errors import ConfigError
from oxidb.logs import Logger

AUDIT_FILE = "audit.log"


class Calendar(enum.Enum):
    """Calendar rotation: a new file when the UTC hour or day changes."""

    NONE = (None, "None")
    HOURLY = (3600, "HourlyUtc")
    DAILY = (86400, "DailyUtc")

    def bucket(self, ts: float) -> int | None:
        period = self.value[0]
        return None if period is None else int(ts // period)


_CALENDARS = {
    "": Calendar.NONE,
    "none": Calendar.NONE,
    "hourly": Calendar.HOURLY,
    "hourly-utc": Calendar.HOURLY,
    "hourlyutc": Calendar.HOURLY,
    "daily": Calendar.DAILY,
    "daily-utc": Calendar.DAILY,
    "dailyutc": Calendar.DAILY,
}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


@attrs.frozen
class AuditRotation:
    """
    When to start a new audit file; each trigger is independent and checked
    after every write.

    @ivar max_bytes: rotate once the live file holds this many bytes.
    @ivar max_age: rotate this many seconds after the file became active
        (opened by this process or by the last rotation).
    @ivar calendar: rotate when the UTC hour or day changes.
    @ivar compress: gzip rotated files (the plain copy is kept if that fails).
    """

    max_bytes: int | None = None
    max_age: int | None = None
    calendar: Calendar = Calendar.NONE
    compress: bool = False

    def due(self, size: int, opened_at: float, now: float) -> bool:
        if self.max_bytes and size >= self.max_bytes:
            return True
        if self.max_age and now - opened_at >= self.max_age:
            return True
        return self.calendar.bucket(now) != self.calendar.bucket(opened_at)

    def describe(self) -> str:
        """The startup line's rotation part, as upstream prints it."""
        parts = []
        if self.max_bytes:
            parts.append(f"size={self.max_bytes}B")
        if self.max_age:
            parts.append(f"age={self.max_age}s")
        if self.calendar is not Calendar.NONE:
            parts.append(f"calendar={self.calendar.value[1]}")
        if not parts:
            return "unbounded"
        if self.compress:
            parts.append("compress=gzip")
        return ", ".join(parts)


@attrs.frozen
class AuditSettings:
    enabled: bool = False
    rotation: AuditRotation = AuditRotation()

    def startup_line(self) -> str:
        return f"audit logging: enabled (rotation: {self.rotation.describe()})"


def parse_audit_settings(environ: Mapping[str, str]) -> AuditSettings:
    """
    C{OXIDB_AUDIT} (on for exactly C{true}/C{1}), C{OXIDB_AUDIT_MAX_BYTES},
    C{OXIDB_AUDIT_MAX_AGE_SECS} (u64; unset, empty or 0: off),
    C{OXIDB_AUDIT_CALENDAR}, C{OXIDB_AUDIT_COMPRESS} (case-insensitive).

    @raise ConfigError: with upstream's texts.
    """
    calendar_text = environ.get("OXIDB_AUDIT_CALENDAR", "")
    calendar = _CALENDARS.get(calendar_text.strip().lower())
    if calendar is None:
        raise ConfigError(f"OXIDB_AUDIT_CALENDAR must be 'hourly' / 'daily' / 'none', got \"{calendar_text}\"")
    compress_text = environ.get("OXIDB_AUDIT_COMPRESS", "")
    compress = compress_text.strip().lower()
    if compress not in _TRUE and compress not in _FALSE:
        raise ConfigError(
            "OXIDB_AUDIT_COMPRESS must be a bool-shaped value (true/false/1/0/yes/no/on/off), "
            f'got "{compress_text}"'
        )
    rotation = AuditRotation(
        max_bytes=parse_u64(environ, "OXIDB_AUDIT_MAX_BYTES", None) or None,
        max_age=parse_u64(environ, "OXIDB_AUDIT_MAX_AGE_SECS", None) or None,
        calendar=calendar,
        compress=compress in _TRUE,
    )
    return AuditSettings(enabled=flag(environ, "OXIDB_AUDIT"), rotation=rotation)


class AuditFile:
    """
    The live audit file and its rotation. Blocking: used by L{AuditLog}'s
    thread only (and directly by tests).
    """

    _log = Logger()

    def __init__(self, directory: Path, rotation: AuditRotation, now: float) -> None:
        self.directory = directory
        self.rotation = rotation
        self.path = directory / AUDIT_FILE
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._open(now)

    def _open(self, now: float) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "ab")
        self.size = os.fstat(fd).st_size
        self.opened_at = now

    def write(self, lines: list[bytes], now: float) -> None:
        """Append C{lines}, flush, and rotate if a trigger fired."""
        data = b"".join(lines)
        self._file.write(data)
        self._file.flush()
        self.size += len(data)
        if self.rotation.due(self.size, self.opened_at, now):
            self.rotate(now)

    def sync(self) -> None:
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.flush()
        self.sync()
        self._file.close()

    def rotate(self, now: float) -> Path:
        """
        Rename the live file to C{audit.log.<unix-microseconds>} (gzipped to
        C{....gz} when configured), open a new one, and return the rotated
        file's path.
        """
        self.close()
        micros = int(now * 1_000_000)
        target = self.path.with_name(f"{AUDIT_FILE}.{micros}")
        while target.exists() or target.with_name(target.name + ".gz").exists():
            micros += 1
            target = self.path.with_name(f"{AUDIT_FILE}.{micros}")
        os.replace(self.path, target)
        self._open(now)
        if self.rotation.compress:
            target = self._compress(target)
        _fsync_directory(self.directory)
        return target

    def _compress(self, plain: Path) -> Path:
        packed = plain.with_name(plain.name + ".gz")
        try:
            with open(plain, "rb") as source, filemodes.open_private(packed) as raw:
                with gzip.GzipFile(filename=plain.name, mode="wb", fileobj=raw) as out:
                    shutil.copyfileobj(source, out)
                raw.flush()
                os.fsync(raw.fileno())
        except OSError as e:
            self._log.error("could not compress {path}: {error}; keeping it uncompressed", path=str(plain), error=e)
            packed.unlink(missing_ok=True)
            return plain
        plain.unlink()
        return packed


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_STOP = object()


@implementer(IAuditSink)
class AuditLog:
    """
    The audit-file sink; see the module docstring.

    @param reactor: used only to report from the writer thread (C{stop}).
    @param wall: the clock of the writer thread (timestamps of rotation,
        fsync timing); C{time.time} in production.
    @param max_pending: lines held in memory before new ones are dropped
        (and counted in C{dropped}) rather than blocking the reactor.
    """

    _log = Logger()

    def __init__(
        self,
        directory: Path,
        rotation: AuditRotation,
        reactor: IReactorFromThreads,
        wall: Callable[[], float] = time.time,
        sync_interval: float = 1.0,
        max_pending: int = 100_000,
    ) -> None:
        self.directory = directory
        self.rotation = rotation
        self.reactor = reactor
        self.wall = wall
        self.sync_interval = sync_interval
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(max_pending)
        self._thread: threading.Thread | None = None
        self._stopped: Deferred[None] = Deferred()

    def start(self) -> None:
        """
        Open the file (blocking; startup only, so that an unwritable
        directory stops startup) and start the writer thread.
        """
        audit_file = AuditFile(self.directory, self.rotation, self.wall())
        self._thread = threading.Thread(target=self._run, args=(audit_file,), name="oxidb-audit", daemon=True)
        self._thread.start()

    def record(self, event: AuditEvent) -> None:
        try:
            self._queue.put_nowait(event.to_json_line())
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                self._log.error("audit queue full: {dropped} audit lines dropped so far", dropped=self.dropped)

    def stop(self) -> Deferred[None]:
        """Fires once every recorded line is written, fsynced and the file closed."""
        if self._thread is None:
            self._stopped.callback(None)
        else:
            self._queue.put(_STOP)
        return self._stopped

    def _run(self, audit_file: AuditFile) -> None:
        dirty = False
        last_sync = self.wall()
        stopping = False
        while not stopping:
            timeout = max(0.0, last_sync + self.sync_interval - self.wall()) if dirty else None
            batch: list[bytes] = []
            try:
                item = self._queue.get(timeout=timeout)
                while True:
                    if item is _STOP:
                        stopping = True
                        break
                    batch.append(item)
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            try:
                if batch:
                    audit_file.write(batch, self.wall())
                    dirty = True
                if dirty and (stopping or self.wall() - last_sync >= self.sync_interval):
                    last_sync = self.wall()  # a failing fsync is retried after the interval
                    audit_file.sync()
                    dirty = False
            except OSError:
                self._log.failure("audit file write failed; {count} lines lost", count=len(batch))
        try:
            audit_file.close()
        except OSError:
            self._log.failure("closing the audit file failed")
        fire_from_thread(self.reactor, self._stopped, None)
