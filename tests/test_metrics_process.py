"""The process sampler behind proc_status and oxidb_process_* (server.md 10)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from oxidb.metrics import ProcessSampler, ProcSample
from oxidb.metrics._process import parse_stat_cpu_ticks, parse_status

# Fields 3.. of /proc/<pid>/stat with utime=150 (field 14) and stime=50 (field 15).
STAT_TAIL = b"S 1 1 1 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 3 0 12345 4096 300"


def status_text(rss_kib: int, threads: int) -> str:
    return f"Name:\tpython3\nState:\tS (sleeping)\nVmRSS:\t   {rss_kib} kB\nThreads:\t{threads}\n"


class FakeProc:
    """A procfs tree under tmp_path with a writable self/stat and self/status."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "self").mkdir()
        self.set(ticks=0, rss_kib=1024, threads=1)

    def set(self, ticks: int, rss_kib: int, threads: int) -> None:
        tail = f"S 1 1 1 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 {threads} 0 1 1 1".encode()
        (self.root / "self" / "stat").write_bytes(b"7 (oxi (db) x) " + tail)
        (self.root / "self" / "status").write_text(status_text(rss_kib, threads))


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path)


def make_sampler(proc: FakeProc, clock: Clock) -> ProcessSampler:
    return ProcessSampler(clock, clock.seconds(), proc_root=str(proc.root), ticks_per_second=100)


def test_stat_cpu_ticks_counts_from_the_last_parenthesis() -> None:
    assert parse_stat_cpu_ticks(b"42 (a) b (c)) " + STAT_TAIL) == 200


@settings(max_examples=50)
@given(name=st.text(alphabet="ab )(\t", max_size=12), utime=st.integers(0, 2**40), stime=st.integers(0, 2**40))
def test_stat_cpu_ticks_any_command_name(name: str, utime: int, stime: int) -> None:
    tail = f"S 1 1 1 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 3 0 9".encode()
    assert parse_stat_cpu_ticks(f"99 ({name}) ".encode() + tail) == utime + stime


@pytest.mark.parametrize(
    "line",
    [b"", b"42 python S 1 2 3", b"42 (x) S 1 2 3", b"42 (x) S 1 1 1 0 -1 0 0 0 0 0 ab 50 0"],
)
def test_malformed_stat_is_rejected(line: bytes) -> None:
    with pytest.raises(ValueError):
        parse_stat_cpu_ticks(line)


def test_real_stat_agrees_with_os_times() -> None:
    with open("/proc/self/stat", "rb") as f:
        ticks = parse_stat_cpu_ticks(f.read())
    times = os.times()
    assert abs(ticks / os.sysconf("SC_CLK_TCK") - (times.user + times.system)) < 0.5


def test_status_gives_rss_bytes_and_threads() -> None:
    assert parse_status(status_text(2048, 7)) == (2048 * 1024, 7)


@pytest.mark.parametrize(
    "text",
    [
        "VmRSS:\t 10 kB\n",  # no Threads
        "Threads:\t3\n",  # no VmRSS
        "VmRSS:\t 10 MB\nThreads:\t3\n",
        "VmRSS:\t ten kB\nThreads:\t3\n",
        "VmRSS:\t 10 kB\nThreads:\tmany\n",
    ],
)
def test_malformed_status_is_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_status(text)


def test_first_sample_reports_zero_cpu(proc: FakeProc) -> None:
    clock = Clock()
    clock.advance(1000)
    proc.set(ticks=500, rss_kib=1536, threads=4)
    sampler = make_sampler(proc, clock)
    clock.advance(3.5)
    assert sampler.sample() == ProcSample(0.0, 1536 * 1024, 4, 3.5)


def test_cpu_percent_is_the_average_since_the_previous_sample(proc: FakeProc) -> None:
    clock = Clock()
    sampler = make_sampler(proc, clock)
    proc.set(ticks=100, rss_kib=1024, threads=2)
    sampler.sample()
    clock.advance(2)
    proc.set(ticks=200, rss_kib=1024, threads=2)  # 1 CPU second in 2 s
    assert sampler.sample().cpu_percent == pytest.approx(50.0)
    clock.advance(1)
    proc.set(ticks=450, rss_kib=1024, threads=2)  # 2.5 CPU seconds in 1 s: several threads
    assert sampler.sample().cpu_percent == pytest.approx(250.0)


def test_samples_at_the_same_instant_report_zero(proc: FakeProc) -> None:
    clock = Clock()
    sampler = make_sampler(proc, clock)
    sampler.sample()
    proc.set(ticks=300, rss_kib=1024, threads=2)
    assert sampler.sample().cpu_percent == 0.0


def test_without_procfs_the_sample_is_zeros(tmp_path: Path) -> None:
    clock = Clock()
    sampler = ProcessSampler(clock, 0.0, proc_root=str(tmp_path / "missing"), ticks_per_second=100)
    clock.advance(12.9)
    assert sampler.sample() == ProcSample(0.0, 0, 0, 12.9)


def test_wire_shape_matches_upstream() -> None:
    wire = ProcSample(cpu_percent=12.345, rss_bytes=int(1.26 * 1024 * 1024), threads=9, uptime_s=61.99).to_wire()
    assert list(wire) == ["cpu_percent", "mem_rss_mb", "threads", "uptime_s"]
    assert wire == {"cpu_percent": 12.3, "mem_rss_mb": 1.3, "threads": 9, "uptime_s": 61}
    assert type(wire["uptime_s"]) is int and type(wire["mem_rss_mb"]) is float
