"""
A server's metrics: cheap counters on the request path, exported to
Prometheus by a custom collector at scrape time.

The hooks add to plain integers (no locks, no label lookups): each registered
command owns a preallocated record, so counting a request is one dictionary
lookup plus a few additions. The collector turns the records into metric
families when C{/metrics} is scraped; scrapes run on a thread pool and only
read. Values that are expensive to obtain (documents per collection, data
directory size) are measured off the reactor by
L{oxidb.metrics.MetricsRefresher} or C{server_status}, and the last
measurement is exported.
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString
from zope.interface import implementer

from oxidb import __version__
from oxidb.metrics._interfaces import ICommandCounter, IServerMetrics
from oxidb.metrics._process import ProcessSampler
from oxidb.metrics._values import RAFT_STATES, RaftStatus, StorageSample, ThreadPoolStats

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from oxidb.server.workers import WorkerPool

#: Values of the C{result} label.
RESULTS = ("ok", "error", "denied")

#: The C{cmd} label value of every name that is not a registered command.
UNKNOWN_COMMAND = "unknown"

#: The default database (L{oxidb.engine.databases.DEFAULT}), whose
#: collections have bare names.
DEFAULT_DATABASE = "oxidb"

#: The most databases exported as C{database} label values; the requests
#: and documents of the others are summed under L{OTHER_DATABASES} (no
#: database name starts with C{_}).
MAX_DATABASE_LABELS = 100
OTHER_DATABASES = "_other"

#: Upper bounds (seconds) of the command duration histogram; +Inf is implied.
DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@implementer(ICommandCounter)
class CommandCounter:
    """
    Counters of one command: replies by result and a duration histogram.
    The dispatcher takes each registered command's record once
    (L{ServerMetrics.counter}) and counts into it directly, with no lookup
    per request.
    """

    __slots__ = ("_ok", "_failed", "buckets", "seconds", "_bounds", "_first")

    def __init__(self, bounds: list[float]) -> None:
        self._ok = 0
        self._failed = dict.fromkeys(RESULTS[1:], 0)
        self.buckets = [0] * (len(bounds) + 1)
        self.seconds = 0.0
        self._bounds = bounds
        # Most requests fall in the first bucket: one comparison, no search.
        self._first = bounds[0] if bounds else math.inf

    @property
    def results(self) -> dict[str, int]:
        """Replies by result, every one of L{RESULTS}."""
        return {"ok": self._ok, **self._failed}

    def ok(self, seconds: float) -> None:
        """L{finished} with C{ok}, for the request path."""
        self._ok += 1
        if seconds <= self._first:
            self.buckets[0] += 1
        else:
            self.buckets[bisect_left(self._bounds, seconds)] += 1
        self.seconds += seconds

    def finished(self, result: str, seconds: float) -> None:
        """One reply with C{result}; an undefined result raises C{KeyError}."""
        if result == "ok":
            self._ok += 1
        else:
            self._failed[result] += 1
        self.buckets[bisect_left(self._bounds, seconds)] += 1
        self.seconds += seconds


def directory_size(path: str) -> int:
    """
    Total apparent size of the regular files under C{path}, not following
    symbolic links. Files that vanish during the walk are skipped (blocking).
    """
    total = 0
    pending = [path]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        pass
        except FileNotFoundError:
            pass
    return total


def threadpool_stats(pool: WorkerPool) -> ThreadPoolStats:
    """The L{ThreadPoolStats} of the server's worker pool (callable from any thread)."""
    return ThreadPoolStats(size=pool.size, busy=pool.busy)


@implementer(IServerMetrics)
class ServerMetrics:
    """
    One service's metrics and the sources read when they are exported.

    The sources are set by the service once the parts exist:

      - C{documents_source}: C{() -> Mapping[str, int]}, documents per
        collection; blocking, called on a pool thread only.
      - C{threadpool_source}: C{() -> ThreadPoolStats}; must be cheap and safe
        from any thread (see L{threadpool_stats}).
      - C{raft_source}: C{() -> RaftStatus}, cluster mode only; called on the
        reactor thread only, through L{sample_raft}.

    @ivar registry: this service's own C{CollectorRegistry} (never the global
        one), holding this collector and the standard C{process_*} collector.
    @ivar process: the L{ProcessSampler} shared by C{proc_status} and
        C{/metrics}.
    @ivar started_at: C{clock.seconds()} at construction.
    """

    documents_source: Callable[[], Mapping[str, int]] | None
    threadpool_source: Callable[[], ThreadPoolStats] | None
    raft_source: Callable[[], RaftStatus] | None

    def __init__(
        self,
        clock: IReactorTime,
        command_names: Iterable[str],
        *,
        data_dir: str | None = None,
        proc_root: str = "/proc",
        version: str = __version__,
        buckets: Sequence[float] = DURATION_BUCKETS,
        names: bool = False,
    ) -> None:
        """
        @param clock: wall time, for uptime and CPU%.
        @param command_names: the registered commands; the only C{cmd} label
            values besides C{unknown}.
        @param data_dir: the directory whose size is reported, if any.
        @param proc_root: where procfs is mounted.
        @param version: reported by C{oxidb_build_info} and C{server_status}.
        @param buckets: upper bounds of the duration histogram, ascending.
        @param names: export data names (collection names) as label values
            (C{oxidb_documents{collection=...}}); off by default, when only
            totals are exported (C{OXIDB_METRICS_NAMES}).
        """
        if list(buckets) != sorted(set(buckets)):
            raise ValueError("histogram buckets must be strictly ascending")
        self.version = version
        self.names = names
        self.data_dir = data_dir
        self.started_at = clock.seconds()
        self._clock = clock
        self._bounds = list(buckets)
        self._bucket_labels = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        self._commands = {name: CommandCounter(self._bounds) for name in command_names}
        self._unknown = self._commands.setdefault(UNKNOWN_COMMAND, CommandCounter(self._bounds))

        self._connections_opened = 0
        self._connections_closed = 0
        self._bytes_received = 0
        self._bytes_sent = 0
        self._auth_failures = 0
        self._tx_commits = 0
        self._tx_conflicts = 0
        self._db_commands: dict[str, int] = {}

        self.documents_source = None
        self.threadpool_source = None
        self.raft_source = None
        self._storage: StorageSample | None = None
        self._raft: RaftStatus | None = None
        self._leader_seen: int | None = None
        self._leader_changes = 0

        self.process = ProcessSampler(clock, self.started_at, proc_root)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(proc=proc_root, registry=self.registry)

    # -- request-path hooks (reactor thread) --------------------------------

    def connection_opened(self) -> None:
        self._connections_opened += 1

    def connection_closed(self) -> None:
        self._connections_closed += 1

    def bytes_received(self, n: int) -> None:
        self._bytes_received += n

    def bytes_sent(self, n: int) -> None:
        self._bytes_sent += n

    def command_finished(self, cmd: object, result: str, seconds: float, database: str | None = None) -> None:
        """
        Count one answered request; C{database}: the one a command acting in
        a database targeted, counted (with data names on) once it answered
        C{ok}, so that only databases that exist become label values.
        """
        if database is not None and result == "ok" and self.names:
            per_db = self._db_commands
            if database not in per_db and len(per_db) >= MAX_DATABASE_LABELS:
                database = OTHER_DATABASES
            per_db[database] = per_db.get(database, 0) + 1
        try:
            # Any request's cmd value is looked up; an unhashable one raises below.
            stats = self._commands.get(cmd, self._unknown)  # type: ignore[call-overload]
        except TypeError:  # an unhashable cmd value
            stats = self._unknown
        stats.finished(result, seconds)

    def counter(self, cmd: str) -> CommandCounter:
        """
        The record L{command_finished} counts C{cmd}'s replies in (that of
        C{unknown} for a name that is not a registered command).
        """
        return self._commands.get(cmd, self._unknown)

    def auth_failed(self) -> None:
        self._auth_failures += 1

    def tx_committed(self) -> None:
        self._tx_commits += 1

    def tx_conflicted(self) -> None:
        self._tx_conflicts += 1

    # -- reads for server_status (reactor thread) ---------------------------

    @property
    def connections(self) -> int:
        """Client connections open now."""
        return self._connections_opened - self._connections_closed

    @property
    def connections_total(self) -> int:
        return self._connections_opened

    @property
    def command_labels(self) -> frozenset[str]:
        """The C{cmd} label values: the registered commands and C{unknown}."""
        return frozenset(self._commands)

    def commands_served(self) -> int:
        """Requests answered since start, whatever the result."""
        return sum(sum(stats.results.values()) for stats in self._commands.values())

    def uptime(self) -> float:
        return self._clock.seconds() - self.started_at

    @property
    def last_storage(self) -> StorageSample | None:
        """The storage measurement being exported, if any."""
        return self._storage

    @property
    def last_raft(self) -> RaftStatus | None:
        """The Raft status being exported, if sampled."""
        return self._raft

    @property
    def leader_changes(self) -> int:
        return self._leader_changes

    def threadpool(self) -> ThreadPoolStats | None:
        source = self.threadpool_source
        return None if source is None else source()

    # -- slow values ---------------------------------------------------------

    def measure_storage(self) -> StorageSample:
        """Count documents and size the data directory (blocking)."""
        source = self.documents_source
        documents = None if source is None else dict(source())
        size = None if self.data_dir is None else directory_size(self.data_dir)
        return StorageSample(documents, size)

    def storage_measured(self, sample: StorageSample) -> StorageSample:
        """Keep C{sample} for export; returns it (reactor thread)."""
        self._storage = sample
        return sample

    def sample_raft(self) -> RaftStatus | None:
        """
        Read the Raft status now and keep it for export (reactor thread).
        C{None} in standalone mode.

        Leader changes are counted here: each time the known leader differs
        from the last one known (the first leader included; an interval
        without a known leader is not a change by itself).
        """
        source = self.raft_source
        if source is None:
            return None
        status = source()
        if status.leader_id is not None and status.leader_id != self._leader_seen:
            self._leader_changes += 1
            self._leader_seen = status.leader_id
        self._raft = status
        return status

    # -- export (any thread) -------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """The Prometheus collector protocol."""
        yield GaugeMetricFamily("oxidb_up", "1 while the server runs.", value=1)
        info = GaugeMetricFamily("oxidb_build_info", "The server's version.", labels=["version"])
        info.add_metric([self.version], 1)
        yield info
        yield GaugeMetricFamily("oxidb_uptime_seconds", "Seconds since the server started.", value=self.uptime())
        yield from self._collect_commands()
        yield from self._collect_databases()
        yield from self._collect_traffic()
        yield from self._collect_process()
        pool = self.threadpool()
        if pool is not None:
            yield GaugeMetricFamily("oxidb_threadpool_size", "Worker threads at most.", value=pool.size)
            yield GaugeMetricFamily("oxidb_threadpool_busy", "Worker threads running work now.", value=pool.busy)
        if self._storage is not None:
            yield from _storage_families(self._storage, self.names)
        if self._raft is not None:
            yield from _raft_families(self._raft)
            yield CounterMetricFamily(
                "oxidb_raft_leader_changes", "Leaders this node has come to know, one per change.",
                value=self._leader_changes,
            )

    def _collect_databases(self) -> Iterator[Metric]:
        if self._db_commands:
            per_db = CounterMetricFamily(
                "oxidb_database_commands", "Requests answered ok, by target database.", labels=["database"]
            )
            for database, count in sorted(self._db_commands.items()):
                per_db.add_metric([database], count)
            yield per_db

    def _collect_commands(self) -> Iterator[Metric]:
        counts = CounterMetricFamily(
            "oxidb_commands", "Requests answered, by command and result.", labels=["cmd", "result"]
        )
        durations = HistogramMetricFamily(
            "oxidb_command_duration_seconds", "Time from decoded request to encoded reply.", labels=["cmd"]
        )
        for name, stats in self._commands.items():
            buckets = list(stats.buckets)
            if not any(buckets):
                continue
            for result, count in list(stats.results.items()):
                counts.add_metric([name, result], count)
            cumulative = list(zip(self._bucket_labels, accumulate(buckets), strict=True))
            durations.add_metric([name], cumulative, sum_value=stats.seconds)
        yield counts
        yield durations

    def _collect_traffic(self) -> Iterator[Metric]:
        opened = self._connections_opened
        yield GaugeMetricFamily("oxidb_connections", "Client connections open now.",
                                value=opened - self._connections_closed)
        yield CounterMetricFamily("oxidb_connections", "Client connections accepted.", value=opened)
        yield CounterMetricFamily("oxidb_bytes_received", "Bytes received from clients.",
                                  value=self._bytes_received)
        yield CounterMetricFamily("oxidb_bytes_sent", "Bytes sent to clients.", value=self._bytes_sent)
        yield CounterMetricFamily("oxidb_auth_failures", "Failed login attempts.", value=self._auth_failures)
        yield CounterMetricFamily("oxidb_tx_commits", "Transactions committed.", value=self._tx_commits)
        yield CounterMetricFamily("oxidb_tx_conflicts", "Transactions that failed the conflict check.",
                                  value=self._tx_conflicts)

    def _collect_process(self) -> Iterator[Metric]:
        sample = self.process.sample()
        yield GaugeMetricFamily("oxidb_process_cpu_percent", "CPU use since the previous sample, % of one core.",
                                value=sample.cpu_percent)
        yield GaugeMetricFamily("oxidb_process_resident_memory_bytes", "Resident set size.",
                                value=sample.rss_bytes)
        yield GaugeMetricFamily("oxidb_process_threads", "OS threads of the process.", value=sample.threads)


def _per_database(documents: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """C{database -> (collections, documents)} of qualified collection names, capped."""
    totals: dict[str, tuple[int, int]] = {}
    for name, count in documents.items():
        database = name.partition("/")[0] if "/" in name else DEFAULT_DATABASE
        if database not in totals and len(totals) >= MAX_DATABASE_LABELS:
            database = OTHER_DATABASES
        collections, docs = totals.get(database, (0, 0))
        totals[database] = (collections + 1, docs + count)
    return totals


def _storage_families(sample: StorageSample, names: bool) -> Iterator[Metric]:
    if sample.documents is not None:
        if names:
            # The default database's collections, as upstream (server.md 10).
            per_collection = GaugeMetricFamily(
                "oxidb_documents", "Documents per collection (last measurement).", labels=["collection"]
            )
            for name, count in sorted(sample.documents.items()):
                if "/" not in name:
                    per_collection.add_metric([name], count)
            yield per_collection
            db_documents = GaugeMetricFamily(
                "oxidb_database_documents", "Documents per database (last measurement).", labels=["database"]
            )
            db_collections = GaugeMetricFamily(
                "oxidb_database_collections", "Collections per database (last measurement).", labels=["database"]
            )
            for database, (collections, docs) in sorted(_per_database(sample.documents).items()):
                db_documents.add_metric([database], docs)
                db_collections.add_metric([database], collections)
            yield db_documents
            yield db_collections
        yield GaugeMetricFamily("oxidb_documents_total", "Documents in all collections (last measurement).",
                                value=sum(sample.documents.values()))
        yield GaugeMetricFamily("oxidb_collections", "Collections (last measurement).",
                                value=len(sample.documents))
    if sample.data_dir_bytes is not None:
        yield GaugeMetricFamily("oxidb_data_dir_bytes", "Size of the data directory's files (last measurement).",
                                value=sample.data_dir_bytes)


def _raft_families(status: RaftStatus) -> Iterator[Metric]:
    yield GaugeMetricFamily("oxidb_raft_term", "Current Raft term.", value=status.term)
    state = GaugeMetricFamily("oxidb_raft_state", "1 for this node's Raft role, 0 for the others.", labels=["state"])
    for name in RAFT_STATES:
        state.add_metric([name], 1 if name == status.state else 0)
    yield state
    yield GaugeMetricFamily("oxidb_raft_has_leader", "1 if this node knows a leader.",
                            value=0 if status.leader_id is None else 1)
    yield GaugeMetricFamily("oxidb_raft_last_log_index", "Index of the last local log entry.",
                            value=status.last_log_index)
    yield GaugeMetricFamily("oxidb_raft_commit_index", "Highest index known committed.", value=status.commit_index)
    yield GaugeMetricFamily("oxidb_raft_applied_index", "Highest index applied locally.", value=status.applied_index)
    lag = GaugeMetricFamily(
        "oxidb_raft_replication_lag_entries", "Leader only: log entries a peer is behind the leader.", labels=["peer"]
    )
    for peer, matched in sorted(status.match_index.items()):
        lag.add_metric([str(peer)], max(0, status.last_log_index - matched))
    yield lag
