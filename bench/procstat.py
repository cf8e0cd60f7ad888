"""Memory figures of a process from C{/proc/<pid>/status}, for the benches' reports."""

from __future__ import annotations

import os


def memory_mib(pid: int | str = "self", field: str = "VmRSS") -> float:
    """
    C{field} of process C{pid} in MiB: C{VmRSS} (resident now) or
    C{VmHWM} (peak resident); 0 if the kernel does not report it.
    """
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key == field:
                return int(value.split()[0]) / 1024
    return 0.0


def cpu_seconds(pid: int | str = "self") -> float:
    """User plus system CPU time of process C{pid} so far, in seconds (from C{/proc/<pid>/stat})."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
