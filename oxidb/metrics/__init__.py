"""
Monitoring: request-path counters, a Prometheus registry per service, the
process sampler, and the twisted.web site serving C{/metrics}, C{/health} and
C{/ready}. See C{docs/monitoring.md} for every series.
"""

from oxidb.metrics._health import NodeHealth
from oxidb.metrics._interfaces import ICommandCounter, IHealth, IServerMetrics
from oxidb.metrics._process import ProcessSampler
from oxidb.metrics._refresh import MetricsRefresher
from oxidb.metrics._server import (
    DURATION_BUCKETS,
    RESULTS,
    UNKNOWN_COMMAND,
    CommandCounter,
    ServerMetrics,
    directory_size,
    threadpool_stats,
)
from oxidb.metrics._values import (
    RAFT_STATES,
    Probe,
    ProcSample,
    RaftStatus,
    Readiness,
    StorageSample,
    ThreadPoolStats,
)
from oxidb.metrics._web import make_metrics_site

__all__ = [
    "DURATION_BUCKETS",
    "CommandCounter",
    "ICommandCounter",
    "IHealth",
    "IServerMetrics",
    "MetricsRefresher",
    "NodeHealth",
    "Probe",
    "ProcSample",
    "ProcessSampler",
    "RAFT_STATES",
    "RESULTS",
    "RaftStatus",
    "Readiness",
    "ServerMetrics",
    "StorageSample",
    "ThreadPoolStats",
    "UNKNOWN_COMMAND",
    "directory_size",
    "make_metrics_site",
    "threadpool_stats",
]
