"""MetricsRefresher: periodic storage measurement and Raft sampling on a Clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from oxidb.metrics import MetricsRefresher, RaftStatus, ServerMetrics, StorageSample


def inline_read(fn: Callable[[], Any]) -> Deferred[Any]:
    return succeed(fn())


class PendingReads:
    """A read() whose calls stay pending until the test finishes them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, fn: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((fn, d))
        return d

    def finish(self, index: int) -> None:
        fn, d = self.calls[index]
        d.callback(fn())


class Counter:
    def __init__(self) -> None:
        self.counts = {"c": 0}

    def __call__(self) -> dict[str, int]:
        self.counts["c"] += 1
        return dict(self.counts)


def make(read: Callable[..., Deferred[Any]]) -> tuple[ServerMetrics, Clock, MetricsRefresher]:
    clock = Clock()
    metrics = ServerMetrics(clock, ["ping"])
    return metrics, clock, MetricsRefresher(metrics, clock, read, storage_interval=15, raft_interval=1)


def test_measures_storage_at_start_and_every_interval() -> None:
    metrics, clock, refresher = make(inline_read)
    metrics.documents_source = Counter()
    refresher.startService()
    assert metrics.last_storage == StorageSample({"c": 1}, None)
    clock.advance(14)
    assert metrics.last_storage == StorageSample({"c": 1}, None)
    clock.advance(1)
    assert metrics.last_storage == StorageSample({"c": 2}, None)
    refresher.stopService()
    clock.advance(60)
    assert metrics.last_storage == StorageSample({"c": 2}, None)
    assert clock.getDelayedCalls() == []


def test_measurements_never_overlap_and_stop_waits_for_one_in_progress() -> None:
    reads = PendingReads()
    metrics, clock, refresher = make(reads)
    metrics.documents_source = Counter()
    refresher.startService()
    clock.advance(100)
    assert len(reads.calls) == 1
    stopped: list[object] = []
    refresher.stopService().addCallback(stopped.append)
    assert stopped == []
    reads.finish(0)
    assert len(stopped) == 1
    assert metrics.last_storage == StorageSample({"c": 1}, None)


def test_a_failed_measurement_is_logged_and_the_loop_goes_on() -> None:
    metrics, clock, refresher = make(inline_read)
    metrics.storage_measured(StorageSample({"kept": 1}, None))

    def broken() -> dict[str, int]:
        raise RuntimeError("engine closed")

    metrics.documents_source = broken
    with capturedLogs() as events:
        refresher.startService()
    assert [e["log_failure"].type for e in events if "log_failure" in e] == [RuntimeError]
    assert events[-1]["what"] == "storage"
    assert metrics.last_storage == StorageSample({"kept": 1}, None)
    metrics.documents_source = lambda: {"fixed": 2}
    clock.advance(15)
    assert metrics.last_storage == StorageSample({"fixed": 2}, None)
    refresher.stopService()


def test_samples_raft_every_second_in_cluster_mode() -> None:
    metrics, clock, refresher = make(inline_read)
    leaders = iter([1, 1, 2, 2, 3])
    metrics.raft_source = lambda: RaftStatus(
        node_id=1, state="Follower", term=1, leader_id=next(leaders), last_log_index=0, commit_index=0,
        applied_index=0,
    )
    refresher.startService()
    clock.pump([1, 1, 1, 1])
    assert metrics.leader_changes == 3
    refresher.stopService()
    assert clock.getDelayedCalls() == []


def test_a_failing_raft_source_is_logged_and_sampling_goes_on() -> None:
    metrics, clock, refresher = make(inline_read)
    calls = []

    def source() -> RaftStatus:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("not yet")
        return RaftStatus(node_id=1, state="Leader", term=1, leader_id=1, last_log_index=0, commit_index=0,
                          applied_index=0)

    metrics.raft_source = source
    with capturedLogs() as events:
        refresher.startService()
    assert [e["what"] for e in events if "log_failure" in e] == ["raft"]
    clock.advance(1)
    assert metrics.last_raft is not None and metrics.last_raft.is_leader
    refresher.stopService()


def test_standalone_never_samples_raft() -> None:
    metrics, clock, refresher = make(inline_read)
    refresher.startService()
    assert len(clock.getDelayedCalls()) == 1  # the storage loop only
    refresher.stopService()
