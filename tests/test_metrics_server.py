"""ServerMetrics: request-path hooks, slow values and their Prometheus export."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from oxidb.metrics import (
    DURATION_BUCKETS,
    ICommandCounter,
    IServerMetrics,
    RaftStatus,
    ServerMetrics,
    StorageSample,
    ThreadPoolStats,
    directory_size,
    threadpool_stats,
)
from oxidb.server.workers import WorkerPool

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

COMMANDS = ["ping", "find", "insert"]


def scrape(metrics: ServerMetrics) -> Samples:
    """Every sample of the classic text exposition, keyed by name and labels."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for n, labels in samples if n == name}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics(clock: Clock) -> ServerMetrics:
    return ServerMetrics(clock, COMMANDS)


def raft(**changes: Any) -> RaftStatus:
    fields: dict[str, Any] = dict(
        node_id=1, state="Follower", term=4, leader_id=2, last_log_index=20, commit_index=18, applied_index=17
    )
    fields.update(changes)
    return RaftStatus(**fields)


def test_provides_the_hook_interface(metrics: ServerMetrics) -> None:
    assert verifyObject(IServerMetrics, metrics)


def test_fresh_metrics(clock: Clock, metrics: ServerMetrics) -> None:
    clock.advance(42)
    samples = scrape(metrics)
    assert value(samples, "oxidb_up") == 1
    assert value(samples, "oxidb_build_info", version=metrics.version) == 1
    assert value(samples, "oxidb_uptime_seconds") == 42
    for name in [
        "oxidb_connections",
        "oxidb_connections_total",
        "oxidb_bytes_received_total",
        "oxidb_bytes_sent_total",
        "oxidb_auth_failures_total",
        "oxidb_tx_commits_total",
        "oxidb_tx_conflicts_total",
    ]:
        assert value(samples, name) == 0, name
    assert not any(n.startswith(("oxidb_commands", "oxidb_command_duration")) for n in names(samples))
    assert not any(n.startswith(("oxidb_documents", "oxidb_raft", "oxidb_threadpool")) for n in names(samples))
    assert "process_cpu_seconds_total" in names(samples)
    assert value(samples, "oxidb_process_threads") >= 1


def test_traffic_hooks(metrics: ServerMetrics) -> None:
    for _ in range(3):
        metrics.connection_opened()
    metrics.connection_closed()
    metrics.bytes_received(26)
    metrics.bytes_received(100)
    metrics.bytes_sent(17)
    metrics.auth_failed()
    metrics.tx_committed()
    metrics.tx_committed()
    metrics.tx_conflicted()
    samples = scrape(metrics)
    assert value(samples, "oxidb_connections") == 2
    assert value(samples, "oxidb_connections_total") == 3
    assert value(samples, "oxidb_bytes_received_total") == 126
    assert value(samples, "oxidb_bytes_sent_total") == 17
    assert value(samples, "oxidb_auth_failures_total") == 1
    assert value(samples, "oxidb_tx_commits_total") == 2
    assert value(samples, "oxidb_tx_conflicts_total") == 1
    assert (metrics.connections, metrics.connections_total) == (2, 3)


def test_commands_by_name_and_result(metrics: ServerMetrics) -> None:
    metrics.command_finished("ping", "ok", 0.0002)
    metrics.command_finished("ping", "ok", 0.0002)
    metrics.command_finished("find", "error", 0.003)
    metrics.command_finished("insert", "denied", 0.00001)
    samples = scrape(metrics)
    assert value(samples, "oxidb_commands_total", cmd="ping", result="ok") == 2
    assert value(samples, "oxidb_commands_total", cmd="ping", result="error") == 0
    assert value(samples, "oxidb_commands_total", cmd="find", result="error") == 1
    assert value(samples, "oxidb_commands_total", cmd="insert", result="denied") == 1
    assert label_values(samples, "oxidb_commands_total", "cmd") == {"ping", "find", "insert"}
    assert metrics.commands_served() == 4


@pytest.mark.parametrize("buckets", [DURATION_BUCKETS, [], [0.001, 0.01]])
def test_a_commands_counter_counts_as_command_finished(clock: Clock, buckets: Any) -> None:
    by_hook = ServerMetrics(clock, COMMANDS, buckets=buckets)
    by_counter = ServerMetrics(clock, COMMANDS, buckets=buckets)
    ping, unknown = by_counter.counter("ping"), by_counter.counter("drop_everything")
    assert verifyObject(ICommandCounter, ping)
    assert by_counter.counter("ping") is ping
    assert by_counter.counter("nope") is unknown
    # Each side of each of the first bounds, and on them.
    for seconds in (0.0, 0.00002, 0.0001, 0.00011, 0.0002, 0.001, 0.0011, 0.3, 20.0):
        by_hook.command_finished("ping", "ok", seconds)
        ping.ok(seconds)
    by_hook.command_finished("ping", "denied", 0.001)
    ping.finished("denied", 0.001)
    by_hook.command_finished("drop_everything", "error", 0.001)
    unknown.finished("error", 0.001)
    def commands(metrics: ServerMetrics) -> Samples:
        return {key: v for key, v in scrape(metrics).items() if key[0].startswith("oxidb_command")}

    assert commands(by_counter) == commands(by_hook)
    assert len(commands(by_hook)) >= 12  # counts, buckets, sums
    assert by_counter.commands_served() == 11
    with pytest.raises(KeyError):
        ping.finished("maybe", 0.0)


def test_duration_histogram_uses_le_buckets(clock: Clock) -> None:
    metrics = ServerMetrics(clock, ["ping"], buckets=[0.001, 0.01])
    for seconds in [0.0005, 0.001, 0.002, 0.01, 3.0]:
        metrics.command_finished("ping", "ok", seconds)
    samples = scrape(metrics)
    bucket = "oxidb_command_duration_seconds_bucket"
    assert value(samples, bucket, cmd="ping", le="0.001") == 2
    assert value(samples, bucket, cmd="ping", le="0.01") == 4
    assert value(samples, bucket, cmd="ping", le="+Inf") == 5
    assert value(samples, "oxidb_command_duration_seconds_count", cmd="ping") == 5
    assert value(samples, "oxidb_command_duration_seconds_sum", cmd="ping") == pytest.approx(3.0135)


@pytest.mark.parametrize("buckets", [[0.1, 0.01], [0.1, 0.1]])
def test_buckets_must_ascend(clock: Clock, buckets: list[float]) -> None:
    with pytest.raises(ValueError):
        ServerMetrics(clock, ["ping"], buckets=buckets)


def test_no_buckets_leaves_only_inf(clock: Clock) -> None:
    metrics = ServerMetrics(clock, ["ping"], buckets=[])
    metrics.command_finished("ping", "ok", 0.5)
    samples = scrape(metrics)
    assert label_values(samples, "oxidb_command_duration_seconds_bucket", "le") == {"+Inf"}
    assert value(samples, "oxidb_command_duration_seconds_bucket", cmd="ping", le="+Inf") == 1


@pytest.mark.parametrize("cmd", ["drop_everything", "", "PING", None, 7, ["x"], {"cmd": "ping"}])
def test_unregistered_command_names_fold_into_unknown(metrics: ServerMetrics, cmd: object) -> None:
    metrics.command_finished(cmd, "error", 0.001)
    samples = scrape(metrics)
    assert value(samples, "oxidb_commands_total", cmd="unknown", result="error") == 1
    assert label_values(samples, "oxidb_commands_total", "cmd") == {"unknown"}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from(COMMANDS)), max_size=40))
def test_series_stay_bounded_whatever_the_names(calls: list[str]) -> None:
    metrics = ServerMetrics(Clock(), COMMANDS)
    for name in calls:
        metrics.command_finished(name, "ok", 0.0)
    samples = scrape(metrics)
    assert label_values(samples, "oxidb_commands_total", "cmd") <= {*COMMANDS, "unknown"}
    served = sum(v for (n, _), v in samples.items() if n == "oxidb_commands_total")
    assert served == len(calls) == metrics.commands_served()


def test_an_undefined_result_is_a_programming_error(metrics: ServerMetrics) -> None:
    with pytest.raises(KeyError):
        metrics.command_finished("ping", "maybe", 0.0)


def test_each_service_has_its_own_registry(clock: Clock) -> None:
    first, second = ServerMetrics(clock, COMMANDS), ServerMetrics(clock, COMMANDS)
    first.connection_opened()
    assert value(scrape(first), "oxidb_connections") == 1
    assert value(scrape(second), "oxidb_connections") == 0
    assert b"oxidb_" not in generate_latest(REGISTRY)


def test_storage_is_exported_once_measured(tmp_path: Path, clock: Clock) -> None:
    (tmp_path / "db.sqlite").write_bytes(b"x" * 1000)
    metrics = ServerMetrics(clock, COMMANDS, data_dir=str(tmp_path), names=True)
    metrics.documents_source = lambda: {"users": 3, "orders": 5}
    assert not any(n.startswith("oxidb_documents") for n in names(scrape(metrics)))

    sample = metrics.measure_storage()
    assert sample == StorageSample({"users": 3, "orders": 5}, 1000)
    assert metrics.storage_measured(sample) is sample
    samples = scrape(metrics)
    assert value(samples, "oxidb_documents", collection="users") == 3
    assert value(samples, "oxidb_documents", collection="orders") == 5
    assert value(samples, "oxidb_documents_total") == 8
    assert value(samples, "oxidb_collections") == 2
    assert value(samples, "oxidb_data_dir_bytes") == 1000


def test_collection_names_are_not_exported_by_default(clock: Clock) -> None:
    metrics = ServerMetrics(clock, COMMANDS)
    metrics.storage_measured(StorageSample({"payroll_2026": 3, "secret_merger": 5}, 10))
    samples = scrape(metrics)
    assert not any(n == "oxidb_documents" for n in names(samples))
    assert value(samples, "oxidb_documents_total") == 8
    assert value(samples, "oxidb_collections") == 2
    text = generate_latest(metrics.registry)
    assert b"payroll" not in text and b"secret_merger" not in text


def test_storage_without_sources(metrics: ServerMetrics) -> None:
    metrics.storage_measured(metrics.measure_storage())
    assert metrics.measure_storage() == StorageSample(None, None)
    assert not any(n.startswith(("oxidb_documents", "oxidb_data_dir")) for n in names(scrape(metrics)))


def test_collection_names_are_escaped_label_values(clock: Clock) -> None:
    metrics = ServerMetrics(clock, COMMANDS, names=True)
    odd = 'a"b\\c\nd'
    metrics.storage_measured(StorageSample({odd: 1}, None))
    assert value(scrape(metrics), "oxidb_documents", collection=odd) == 1


def test_directory_size_counts_files_only_once(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1" * 10)
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "b").write_bytes(b"2" * 25)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(b"3" * 1000)
    (tmp_path / "link").symlink_to(outside)
    (tmp_path / "dirlink").symlink_to(tmp_path / "sub", target_is_directory=True)
    assert directory_size(str(tmp_path)) == 35
    assert directory_size(str(tmp_path / "missing")) == 0


def test_threadpool_stats_of_the_worker_pool(metrics: ServerMetrics) -> None:
    pool = WorkerPool(MemoryReactorClock(), 3)
    assert threadpool_stats(pool) == ThreadPoolStats(size=3, busy=0)
    started, release = threading.Event(), threading.Event()

    def work() -> None:
        started.set()
        release.wait(10)

    pool.start()
    try:
        pool.callInThread(work)
        assert started.wait(10)
        metrics.threadpool_source = lambda: threadpool_stats(pool)
        assert metrics.threadpool() == ThreadPoolStats(size=3, busy=1)
        samples = scrape(metrics)
        assert value(samples, "oxidb_threadpool_size") == 3
        assert value(samples, "oxidb_threadpool_busy") == 1
    finally:
        release.set()
        pool.stop()


def test_standalone_has_no_raft(metrics: ServerMetrics) -> None:
    assert metrics.sample_raft() is None
    assert not any(n.startswith("oxidb_raft") for n in names(scrape(metrics)))


def test_raft_status_is_exported_after_sampling(metrics: ServerMetrics) -> None:
    status = raft(state="Leader", leader_id=1, last_log_index=30, commit_index=29, applied_index=28,
                  match_index={2: 30, 3: 21})
    metrics.raft_source = lambda: status
    assert not any(n.startswith("oxidb_raft") for n in names(scrape(metrics)))
    assert metrics.sample_raft() is status
    samples = scrape(metrics)
    assert value(samples, "oxidb_raft_term") == 4
    assert value(samples, "oxidb_raft_state", state="Leader") == 1
    for other in ["Follower", "Candidate", "Learner", "Shutdown"]:
        assert value(samples, "oxidb_raft_state", state=other) == 0
    assert value(samples, "oxidb_raft_has_leader") == 1
    assert value(samples, "oxidb_raft_last_log_index") == 30
    assert value(samples, "oxidb_raft_commit_index") == 29
    assert value(samples, "oxidb_raft_applied_index") == 28
    assert value(samples, "oxidb_raft_replication_lag_entries", peer="2") == 0
    assert value(samples, "oxidb_raft_replication_lag_entries", peer="3") == 9
    assert value(samples, "oxidb_raft_leader_changes_total") == 1


def test_leader_changes_count_each_new_known_leader(metrics: ServerMetrics) -> None:
    leaders = iter([None, 2, 2, None, 2, 3, None, None, 2])
    metrics.raft_source = lambda: raft(leader_id=next(leaders))
    seen = []
    for _ in range(9):
        metrics.sample_raft()
        seen.append(value(scrape(metrics), "oxidb_raft_leader_changes_total"))
    assert seen == [0, 1, 1, 1, 1, 2, 2, 2, 3]
    assert value(scrape(metrics), "oxidb_raft_has_leader") == 1


def test_raft_state_must_be_an_upstream_spelling() -> None:
    with pytest.raises(ValueError):
        raft(state="leader")
