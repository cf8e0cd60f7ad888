"""
The process sampler behind C{proc_status} and the C{oxidb_process_*} series.

Linux only: values come from C{/proc/self/stat} (CPU time) and
C{/proc/self/status} (resident memory, threads). Where C{/proc} cannot be read
the sample reports zeros. Reading C{/proc} is blocking work: call
L{ProcessSampler.sample} off the reactor thread.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import attrs

from oxidb.metrics._values import ProcSample

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime


def parse_stat_cpu_ticks(text: bytes) -> int:
    """
    User plus system CPU time, in clock ticks, from a C{/proc/<pid>/stat} line.

    The command name (field 2) is parenthesised and may itself contain spaces
    and parentheses, so fields are counted from the last C{)}.

    @raise ValueError: the line is not in that format.
    """
    _, paren, rest = text.rpartition(b")")
    fields = rest.split()
    # After the name: state is field 3, utime field 14, stime field 15.
    if not paren or len(fields) < 13:
        raise ValueError("malformed /proc stat line")
    return int(fields[11]) + int(fields[12])


def parse_status(text: str) -> tuple[int, int]:
    """
    C{(resident bytes, threads)} from a C{/proc/<pid>/status} file.

    @raise ValueError: C{VmRSS} or C{Threads} is missing or malformed.
    """
    rss_kib: int | None = None
    threads: int | None = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            number, _, unit = value.strip().partition(" ")
            if unit.strip() != "kB":
                raise ValueError(f"unexpected VmRSS unit: {unit!r}")
            rss_kib = int(number)
        elif key == "Threads":
            threads = int(value)
    if rss_kib is None or threads is None:
        raise ValueError("VmRSS or Threads missing from /proc status")
    return rss_kib * 1024, threads


@attrs.frozen
class _Reading:
    wall: float
    cpu_seconds: float


class ProcessSampler:
    """
    Samples this process. CPU% is averaged over the time since the previous
    sample, whoever took it (a C{proc_status} call or a C{/metrics} scrape);
    the first sample reports 0.0. Safe to call from several threads.
    """

    def __init__(
        self,
        clock: IReactorTime,
        started_at: float,
        proc_root: str = "/proc",
        ticks_per_second: int | None = None,
    ) -> None:
        """
        @param clock: wall time for CPU% and uptime.
        @param started_at: C{clock.seconds()} when the server started.
        @param proc_root: where procfs is mounted (tests use a fake tree).
        @param ticks_per_second: C{SC_CLK_TCK}; read from the OS if C{None}.
        """
        self._clock = clock
        self._started_at = started_at
        self._self_dir = os.path.join(proc_root, "self")
        self._ticks = ticks_per_second or os.sysconf("SC_CLK_TCK")
        self._lock = threading.Lock()
        self._previous: _Reading | None = None

    def sample(self) -> ProcSample:
        """Read C{/proc} and return the sample (blocking)."""
        try:
            with open(os.path.join(self._self_dir, "stat"), "rb") as f:
                cpu_ticks = parse_stat_cpu_ticks(f.read())
            with open(os.path.join(self._self_dir, "status"), encoding="ascii", errors="replace") as f:
                rss_bytes, threads = parse_status(f.read())
        except OSError:
            return ProcSample(0.0, 0, 0, self._clock.seconds() - self._started_at)
        with self._lock:
            now = self._clock.seconds()
            reading = _Reading(now, cpu_ticks / self._ticks)
            previous, self._previous = self._previous, reading
        cpu_percent = 0.0
        if previous is not None and reading.wall > previous.wall:
            used = max(0.0, reading.cpu_seconds - previous.cpu_seconds)
            cpu_percent = 100.0 * used / (reading.wall - previous.wall)
        return ProcSample(cpu_percent, rss_bytes, threads, now - self._started_at)
