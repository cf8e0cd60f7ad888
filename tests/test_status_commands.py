"""The server_status and proc_status wire commands."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from oxidb import __version__
from oxidb.commands import COMMAND_MODULES, CommandContext
from oxidb.commands.status import COMMANDS, proc_status, server_status
from oxidb.metrics import RaftStatus, ServerMetrics, StorageSample, ThreadPoolStats
from oxidb.server.session import Session
from oxidb.testing import fake_services


class RecordingExecutor:
    """Runs reads inline, or holds them until released; records what ran."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []
        self.ran: list[Callable[[], Any]] = []

    def read(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self.hold:
            d: Deferred[Any] = Deferred()
            self.pending.append((lambda: fn(*args), d))
            return d
        return self._run(fn, *args)

    def release(self) -> None:
        for fn, d in self.pending:
            self._run(fn).chainDeferred(d)

    def _run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.ran.append(fn)
        try:
            return succeed(fn(*args))
        except Exception:
            return fail(Failure())


def result_of(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


#: clock ticks per CPU second, as the sampler reads them.
TICKS = os.sysconf("SC_CLK_TCK")


def write_proc(root: Path, ticks: int, rss_kib: int = 2048, threads: int = 5) -> None:
    (root / "self").mkdir(exist_ok=True)
    tail = f"S 1 1 1 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 {threads} 0 1 1 1"
    (root / "self" / "stat").write_text("1 (oxidb) " + tail)
    (root / "self" / "status").write_text(f"VmRSS:\t{rss_kib} kB\nThreads:\t{threads}\n")


class Server:
    def __init__(self, tmp_path: Path, hold: bool = False) -> None:
        self.clock = Clock()
        self.data_dir = tmp_path / "data"
        self.data_dir.mkdir()
        self.proc = tmp_path / "proc"
        self.proc.mkdir()
        self.metrics = ServerMetrics(
            self.clock, ["ping", "find"], data_dir=str(self.data_dir), proc_root=str(self.proc)
        )
        self.executor = RecordingExecutor(hold)
        self.ctx = CommandContext(
            Session.anonymous_admin(), fake_services(metrics=self.metrics, executor=self.executor)
        )


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return Server(tmp_path)


def test_rows() -> None:
    assert "oxidb.commands.status" in COMMAND_MODULES
    rows = {row.name: row for row in COMMANDS}
    assert set(rows) == {"server_status", "proc_status"}
    for row in rows.values():
        assert (row.writes, row.pre_auth, row.audited, row.audit_collection) == (False, False, True, None)


def test_server_status_standalone(server: Server) -> None:
    (server.data_dir / "oxidb.sqlite").write_bytes(b"x" * 4096)
    metrics = server.metrics
    metrics.documents_source = lambda: {"users": 2, "orders": 5}
    metrics.threadpool_source = lambda: ThreadPoolStats(size=4, busy=1)
    for _ in range(3):
        metrics.connection_opened()
    metrics.connection_closed()
    metrics.command_finished("ping", "ok", 0.001)
    metrics.command_finished("bogus", "denied", 0.001)
    server.clock.advance(90.6)

    reply = result_of(server_status(server.ctx, {"cmd": "server_status"}))
    assert reply == {
        "version": __version__,
        "mode": "standalone",
        "uptime_s": 90,
        "connections": 2,
        "connections_total": 3,
        "commands_served": 2,
        "threadpool": {"size": 4, "busy": 1},
        "data_dir_bytes": 4096,
        "documents": {"total": 7, "collections": {"orders": 5, "users": 2}},
        "raft": None,
    }
    assert list(reply) == [
        "version", "mode", "uptime_s", "connections", "connections_total", "commands_served",
        "threadpool", "data_dir_bytes", "documents", "raft",
    ]  # fmt: skip
    assert metrics.last_storage == StorageSample({"users": 2, "orders": 5}, 4096)


def test_server_status_without_sources(server: Server) -> None:
    reply = result_of(server_status(server.ctx, {"cmd": "server_status"}))
    assert reply["threadpool"] is None and reply["documents"] is None and reply["raft"] is None
    assert reply["data_dir_bytes"] == 0


def test_server_status_in_a_cluster(server: Server) -> None:
    server.metrics.raft_source = lambda: RaftStatus(
        node_id=3, state="Follower", term=8, leader_id=1, last_log_index=70, commit_index=69, applied_index=68
    )
    reply = result_of(server_status(server.ctx, {"cmd": "server_status"}))
    assert reply["mode"] == "cluster"
    assert reply["raft"] == {
        "node_id": 3, "state": "Follower", "term": 8, "leader": 1, "commit_index": 69, "applied_index": 68,
    }  # fmt: skip
    assert server.metrics.leader_changes == 1


def test_server_status_does_blocking_work_through_ctx_read(tmp_path: Path) -> None:
    server = Server(tmp_path, hold=True)
    counted = []

    def count() -> dict[str, int]:
        counted.append(1)
        return {"c": 1}

    server.metrics.documents_source = count
    d = server_status(server.ctx, {"cmd": "server_status"})
    assert not d.called and counted == []
    server.executor.release()
    assert counted == [1]
    assert server.executor.ran and result_of(d)["documents"] == {"total": 1, "collections": {"c": 1}}


def test_server_status_passes_storage_errors_on(server: Server) -> None:
    def broken() -> dict[str, int]:
        raise OSError("disk gone")

    server.metrics.documents_source = broken
    with pytest.raises(OSError, match="disk gone"):
        result_of(server_status(server.ctx, {"cmd": "server_status"}))


def test_proc_status_first_call_then_average_since_previous(server: Server) -> None:
    write_proc(server.proc, ticks=1000, rss_kib=3 * 1024 + 512, threads=6)
    server.clock.advance(5)
    first = result_of(proc_status(server.ctx, {"cmd": "proc_status"}))
    assert first == {"cpu_percent": 0.0, "mem_rss_mb": 3.5, "threads": 6, "uptime_s": 5}
    assert server.executor.ran == [server.metrics.process.sample]

    write_proc(server.proc, ticks=1000 + int(0.75 * TICKS), rss_kib=3 * 1024 + 512, threads=6)  # 0.75 CPU s
    server.clock.advance(2)
    second = result_of(proc_status(server.ctx, {"cmd": "proc_status"}))
    assert second == {"cpu_percent": 37.5, "mem_rss_mb": 3.5, "threads": 6, "uptime_s": 7}


def test_proc_status_shares_its_sampler_with_metrics_scrapes(server: Server) -> None:
    write_proc(server.proc, ticks=0)
    result_of(proc_status(server.ctx, {"cmd": "proc_status"}))
    server.clock.advance(1)
    write_proc(server.proc, ticks=TICKS)
    assert b"oxidb_process_cpu_percent 100.0" in generate_latest(server.metrics.registry)
    server.clock.advance(1)
    assert result_of(proc_status(server.ctx, {"cmd": "proc_status"}))["cpu_percent"] == 0.0
